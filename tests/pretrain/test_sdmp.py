"""SDMP as published: its box draw and shares, its targets and weights, both releases' mix losses and
the paste, against values worked out by hand (OliverRensu/SDMP moco/moco/builder.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import apply_overrides
from pretrain.configs import preset
from pretrain.methods import method_named
from pretrain.methods.base import LossContext
from pretrain.methods.sdmp import (contrastive_loss, mix_batch, mix_to_mix_weights, mixing_box, mixture_loss,
                                   weighted_contrastive_loss)
from pretrain.model import PatchMixModel


def test_box_and_share_of_a_hand_checked_draw():
    # own share 0.5 on 32 x 32: side int(32 sqrt(0.5)) = 22, area 484, share 1 - 484 / 1024
    top, bottom, left, right, area = mixing_box(32, 32, 0.5, np.random.default_rng(0))
    assert area == 22 * 22 and bottom - top == 22 and right - left == 22
    assert 0 <= top and bottom <= 32 and 0 <= left and right <= 32  # always inside the image
    # odd side: int(32 sqrt(0.75)) = 27 -> the pasted box spans 2 * 13 = 26 pixels, the share counts 27 x 27
    top, bottom, left, right, area = mixing_box(32, 32, 0.25, np.random.default_rng(1))
    assert area == 27 * 27 and bottom - top == 26


def test_shares_follow_lam_through_the_box():
    lam = torch.tensor([0.5, 0.0, 1.0, 0.25])  # own share 0.1 + 0.8 lam = 0.5, 0.1, 0.9, 0.3
    images = torch.rand(4, 3, 32, 32)
    mixed, shares = mix_batch(images, lam, np.random.default_rng(0), 0, None)
    sides = [int(32 * math.sqrt(1 - own)) for own in (0.5, 0.1, 0.9, 0.3)]
    assert shares.tolist() == pytest.approx([1 - side * side / 1024 for side in sides])
    assert torch.equal(mixed, images)  # nothing to paste from: the newest release's behaviour


def test_paste_puts_the_resized_flipped_partner_in_the_box():
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])  # image i is constant i
    lam = torch.tensor([0.5, 0.5, 0.5, 0.5])
    mixed, _ = mix_batch(images[2:], lam, np.random.default_rng(3), 2, images)  # this process holds images 2, 3
    for row, index in enumerate((2, 3)):
        partner_value = float(3 - index)  # partner of i is N - 1 - i
        pasted = (mixed[row] - partner_value).abs() < 1e-5  # a resized constant image stays constant
        own = mixed[row] == float(index)
        assert pasted.any() and own.any() and bool((pasted | own).all())
        rows, cols = pasted[0].nonzero(as_tuple=True)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == pasted[0].sum()  # one rectangle


def test_mix_to_mix_weights_by_hand():
    own, partner = torch.tensor([0.6, 0.3]), torch.tensor([0.3, 0.6])
    # image 0: c = min(0.6, 1 - 0.3) + min(0.4, 0.3) = 0.9 ; image 1: c = min(0.3, 0.4) + min(0.7, 0.6) = 0.9
    own_weight, partner_weight = mix_to_mix_weights(own, partner)
    assert own_weight.tolist() == pytest.approx([1 / 1.9, 1 / 1.9])
    assert partner_weight.tolist() == pytest.approx([0.9 / 1.9, 0.9 / 1.9])


def _hand_probabilities(queries, keys, tau):
    rows = []
    for q in queries:
        q = q / q.norm()
        logits = [float(q @ (k / k.norm())) / tau for k in keys]
        exps = [math.exp(v) for v in logits]
        rows.append([e / sum(exps) for e in exps])
    return rows


def test_both_mix_losses_and_the_contrastive_loss_by_hand():
    torch.manual_seed(0)
    queries, keys, tau = torch.randn(2, 4), torch.randn(4, 4), 0.2  # 2 queries of rank 1 in a world of 2
    own, partner = torch.tensor([2, 3]), torch.tensor([1, 0])  # global flip of rows 2, 3 of 4
    own_weight, partner_weight = torch.tensor([0.7, 0.4]), torch.tensor([0.3, 0.6])
    p = _hand_probabilities(queries, keys, tau)
    likelihood = -sum(math.log(own_weight[i] * p[i][own[i]] + partner_weight[i] * p[i][partner[i]])
                      for i in range(2)) / 2 * 2 * tau
    weighted = (sum(own_weight[i] * -math.log(p[i][own[i]]) for i in range(2)) / 2
                + sum(partner_weight[i] * -math.log(p[i][partner[i]]) for i in range(2)) / 2) * 2 * tau
    plain = -sum(math.log(p[i][own[i]]) for i in range(2)) / 2 * 2 * tau
    assert mixture_loss(queries, keys, own, partner, own_weight, partner_weight, tau).item() == pytest.approx(likelihood)
    assert weighted_contrastive_loss(queries, keys, own, partner, own_weight, partner_weight,
                                     tau).item() == pytest.approx(weighted)
    assert contrastive_loss(queries, keys, own, tau).item() == pytest.approx(plain)


def _sdmp_debug(flavour: str):
    paste = "true" if flavour == "paper" else "false"
    loss = "weighted_cross_entropy" if flavour == "paper" else "mixture_likelihood"
    return apply_overrides(preset("debug_cpu"), ["method=sdmp", f"sdmp.paste_partner={paste}", f"sdmp.mix_loss={loss}"])


@pytest.mark.parametrize("flavour", ["paper", "official"])
def test_loss_is_source_plus_half_of_each_mix_term(flavour):
    config = _sdmp_debug(flavour)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    views = [torch.randn(6, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    method = method_named("sdmp")
    context = LossContext(0, 4, method.schedule(config, 0, 4), torch.Generator().manual_seed(7))
    loss, metrics = method.loss(model, model, views, config, context)
    assert set(metrics) == {"source", "mix_to_source", "mix_to_mix", "key_std"}
    expected = metrics["source"] + 0.5 * metrics["mix_to_source"] + 0.5 * metrics["mix_to_mix"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    loss.backward()
    assert model.base_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.momentum_parameters())  # keys carry no gradient


def test_official_preset_trains_like_the_published_command():
    config = preset("imagenet_sdmp_vit_s16_300ep_official")
    assert (config.optim.base_lr, config.optim.weight_decay, config.optim.weight_decay_end) == (1.5e-4, 0.1, 0.1)
    assert (config.optim.warmup_epochs, config.optim.min_lr, config.optim.momentum) == (40, 0.0, 0.99)
    assert config.sdmp.temperature == 0.2 and not config.sdmp.paste_partner
    assert config.model.freeze_patch_embedding and config.model.position_embedding == "sincos"
    model = method_named("sdmp").build_model(apply_overrides(config, ["model.compile=false", "model.arch=vit_debug"]))
    assert not model.base_encoder.pos_embed.requires_grad and not model.base_encoder.patch_embed.proj.weight.requires_grad
    groups = method_named("sdmp").parameter_groups(model, config)
    assert len(groups) == 1 and any(p.ndim == 1 for p in groups[0]["params"])  # biases and norms decayed too


@pytest.mark.parametrize("name", ["sdmp", "patchmix"])
def test_head_batchnorms_are_synchronised_under_ddp_on_gpus(name, monkeypatch):
    """MoCo v3's code (and SDMP's) converts the BatchNorms to SyncBatchNorm under DDP; the ViT has none."""
    from common import dist
    from pretrain.methods.base import PretrainingMethod

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(PretrainingMethod, "distributed", lambda self, model, device: model)  # no DDP wrapper here
    model = PatchMixModel(_sdmp_debug("official").model)
    method_named(name).distributed(model, torch.device("cuda"))
    for head in (model.projector, model.predictor, model.momentum_projector):
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in head.modules())
        assert not any(type(m) is torch.nn.BatchNorm1d for m in head.modules())


def test_box_side_is_computed_in_float32_as_published():
    """rand_bbox of the published code takes its share from a float32 tensor: sqrt(1 - share) and the
    side size x ratio round in float32. Shares within a few float32 steps of every side boundary of a
    224 px image give the sides of the published arithmetic, where float64 differs."""
    import math

    shares, differs = [], 0
    for side in range(2, 224):
        boundary = torch.tensor(1 - (side / 224) ** 2, dtype=torch.float32)
        for steps in range(-3, 4):
            share = boundary
            for _ in range(abs(steps)):
                share = torch.nextafter(share, torch.tensor(math.inf if steps > 0 else -math.inf))
            shares.append(share)
    for share in shares:
        # As published: 1 - share on a float32 tensor, then numpy's sqrt of it, times the side in float32.
        expected = int(224 * np.sqrt((1 - share).numpy()))
        top, bottom, left, right, area = mixing_box(224, 224, share.item(), np.random.default_rng(0))
        assert area == expected * expected, share.item()
        differs += int(224 * math.sqrt(1.0 - share.item())) != expected
    assert differs > 0  # the float64 side differs from the published one for some of these shares
