"""The official presets against the published code's computation, each point checked against an
independent computation written here (docs/fidelity.md lists them)."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from common.vit import build_vit
from pretrain.configs import PRESETS, preset
from pretrain.loss import soft_target_cross_entropy
from pretrain.methods import sdmp
from pretrain.model import PatchMixModel
from pretrain.methods.patchmix import patchmix_loss
from tests.pretrain.test_loss import hand_written_cross_entropy


def _multi_crop(config, *, smoothing=0.0, batch_local_heads=False, local_crops=2):
    model = dataclasses.replace(config.model, drop_path_rate=0.0, batch_local_heads=batch_local_heads)
    return dataclasses.replace(
        config, model=model, loss=dataclasses.replace(config.loss, origin_smoothing=smoothing),
        augment=dataclasses.replace(config.augment, num_local_crops=local_crops, local_crop_size=16))


def _views(batch=8, local_crops=2):
    generator = torch.Generator().manual_seed(1)
    return ([torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(2)]
            + [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(local_crops)])


def smoothed_one_hot(batch: int, smoothing: float) -> list[list[float]]:
    """The published no_mixer targets, element by element: 1 - s + s/N on the diagonal, s/N elsewhere."""
    return [[(1 - smoothing if i == j else 0.0) + smoothing / batch for j in range(batch)] for i in range(batch)]


def test_origin_targets_are_label_smoothed_like_the_published_code(debug_config):
    """o2o and local o2o terms with loss.origin_smoothing = 0.1, against the hand-written loss."""
    config = _multi_crop(debug_config, smoothing=0.1)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    views = [v.double() for v in _views()]
    _, metrics = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(0))
    key1, key2 = model.keys(views[:2])
    query1, _, local1, local2, _, _ = model(views[:1] + views[1:2] + views[2:] + views[2:])  # heads in train mode
    targets = torch.tensor(smoothed_one_hot(8, 0.1), dtype=torch.float64)
    tau = config.loss.temperature
    assert metrics["origin"].item() == pytest.approx(hand_written_cross_entropy(query1, key2, targets, tau), rel=1e-6)
    expected_local = sum(hand_written_cross_entropy(q, k, targets, tau)
                         for q in (local1, local2) for k in (key1, key2)) / 2
    assert metrics["local_origin"].item() == pytest.approx(expected_local, rel=1e-6)


def test_origin_smoothing_zero_is_one_hot(debug_config):
    config = _multi_crop(debug_config, local_crops=0)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    views = [v.double() for v in _views(local_crops=0)]
    _, metrics = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(0))
    (key2,) = model.keys(views[1:2])
    (query1,) = model(views[:1])
    one_hot = torch.eye(8, dtype=torch.float64)
    assert metrics["origin"].item() == pytest.approx(
        hand_written_cross_entropy(query1, key2, one_hot, config.loss.temperature), rel=1e-6)


def test_local_crops_pass_the_heads_as_one_batch(debug_config):
    """batch_local_heads: BatchNorm statistics of the heads over all n local crops together (n x B rows)."""
    config = _multi_crop(debug_config, batch_local_heads=True)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    views = [v.double() for v in _views()]
    queries = model(views, [1, 1, 2])
    features = [model.base_encoder(v) for v in views]
    # Written out here: the two local crops' features concatenated, through projector and predictor.
    joined = model.predictor(model.projector(torch.cat(features[2:])))
    torch.testing.assert_close(torch.cat(queries[2:]), joined)
    alone = model.predictor(model.projector(features[2]))
    assert not torch.allclose(queries[2], alone)  # per-view BatchNorm statistics differ
    torch.testing.assert_close(queries[0], model.predictor(model.projector(features[0])))


def test_loss_uses_one_head_batch_per_local_group(debug_config):
    """The local o2o term of the published multi-crop equals the loss computed from queries of the
    local crops through the heads together (and of the mixed local crops together)."""
    config = _multi_crop(debug_config, batch_local_heads=True)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    views = [v.double() for v in _views()]
    _, metrics = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(0))
    key1, key2 = model.keys(views[:2])
    local = model.predictor(model.projector(torch.cat([model.base_encoder(v) for v in views[2:]]))).split(8)
    one_hot = torch.eye(8, dtype=torch.float64)
    tau = config.loss.temperature
    expected = sum(soft_target_cross_entropy(q, k, one_hot, tau) for q in local for k in (key1, key2)) / 2
    torch.testing.assert_close(metrics["local_origin"], expected.detach())


def dino_interpolation(pos_embed: torch.Tensor, width: int, height: int, patch: int) -> torch.Tensor:
    """DINO's interpolate_pos_encoding, written out: bicubic, scale factor (size/patch + 0.1)/sqrt(N)."""
    patch_pos = pos_embed[:, 1:]
    grid = int(math.sqrt(patch_pos.shape[1]))
    w0, h0 = width // patch + 0.1, height // patch + 0.1
    patch_pos = F.interpolate(patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2),
                              scale_factor=(w0 / grid, h0 / grid), mode="bicubic")
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    return torch.cat([pos_embed[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


def test_dino_position_embedding_for_local_crops():
    torch.manual_seed(0)
    encoder = build_vit("vit_debug", 16, 224, pos_embed_interpolation="dino")
    with torch.no_grad():
        encoder.pos_embed.normal_()  # a random table: where the two resamplings differ most
    tokens = torch.zeros(2, 6, 6, encoder.embed_dim)  # 96 px crop: 6 x 6 patches
    prefix = torch.cat([encoder.cls_token.expand(2, -1, -1), torch.zeros(2, 36, encoder.embed_dim)], dim=1)
    got = encoder._pos_embed(tokens) - prefix  # the position table added to the tokens
    expected = dino_interpolation(encoder.pos_embed, 96, 96, 16)
    torch.testing.assert_close(got[0:1], expected)
    # timm's resampling (exact size, antialiased) gives another table...
    timm_encoder = build_vit("vit_debug", 16, 224)
    timm_encoder.load_state_dict(encoder.state_dict())
    timm_table = timm_encoder._pos_embed(tokens) - prefix
    assert (timm_table[0:1] - expected).abs().mean() > 0.05 * expected.abs().mean()
    # ...and at the build size both are the table itself.
    full = torch.zeros(1, 14, 14, encoder.embed_dim)
    torch.testing.assert_close(encoder._pos_embed(full), timm_encoder._pos_embed(full))


def test_dino_encoder_forward_on_a_local_crop():
    torch.manual_seed(0)
    encoder = build_vit("vit_debug", 16, 224, pos_embed_interpolation="dino").eval()
    image = torch.randn(1, 3, 96, 96)
    x = encoder.patch_embed(image)  # (1, 6, 6, D) with timm's dynamic size
    x = torch.cat([encoder.cls_token, x.reshape(1, 36, -1)], dim=1) + dino_interpolation(encoder.pos_embed, 96, 96, 16)
    x = encoder.norm(encoder.blocks(encoder.norm_pre(x)))
    torch.testing.assert_close(encoder(image), x[:, 0])


OFFICIAL_FIELDS = {"loss.origin_smoothing": 0.1, "run.precision": "fp16"}


@pytest.mark.parametrize("name", [n for n in PRESETS if n.endswith(("_official", "_paper"))
                                  and PRESETS[n]().method == "patchmix"])
def test_every_official_preset_carries_the_published_fields(name):
    config = preset(name)
    official = name.endswith("_official")
    assert config.loss.origin_smoothing == (0.1 if official else 0.0)
    # The Fashion-MNIST cpu scale runs on CPUs, where fp16 autocast is refused: fp32 (documented).
    cpu_scale = name.startswith("fashion_mnist_cpu_")
    assert config.run.precision == ("fp32" if cpu_scale else "fp16" if official else "auto")
    multi_crop = config.augment.num_local_crops > 0
    assert multi_crop == (official and name.startswith("imagenet"))
    assert config.model.batch_local_heads == multi_crop
    assert config.model.pos_embed_interpolation == ("dino" if multi_crop else "timm")


@pytest.mark.parametrize("name", [n for n in PRESETS if PRESETS[n]().method != "patchmix"])
def test_every_baseline_preset_carries_its_published_fields(name):
    """DINO and SDMP presets (docs/fidelity.md): fp16 as published (fp32 on the Fashion-MNIST cpu scale);
    DINO multi-crop with DINO's 96 px position embeddings on ImageNet only; SDMP two views, MoCo v3's stem."""
    config = preset(name)
    assert config.run.precision == ("fp32" if name.startswith("fashion_mnist_cpu_") else "fp16")
    assert not hasattr(config, "mix") and not hasattr(config, "loss")  # PatchMix's sections are not theirs
    if config.method == "dino":
        assert config.augment.num_local_crops == (8 if name.startswith("imagenet") else 0)
        assert config.model.pos_embed_interpolation == "dino"  # DINO's own resampling, at every scale
        assert config.model.initialisation == "dino" and config.dino.freeze_last_layer == 1
        assert config.dino.student_temp == 0.1 and config.dino.center_momentum == 0.9
        assert (config.optim.momentum, config.optim.momentum_end) == ((0.996 if not name.startswith("fashion") else 0.99), 1.0)
    else:
        assert config.method == "sdmp" and config.augment.num_local_crops == 0
        assert config.model.freeze_patch_embedding and config.model.position_embedding == "sincos"
        # 0.2 as published; the cpu Fashion-MNIST scale takes its tuned point (plans/tuning.py)
        tuned = name.startswith("fashion_mnist_cpu_") and sdmp.TUNED_POINTS["cpu"].get("sdmp.temperature")
        assert config.augment.crop_interpolation == "bilinear" and config.sdmp.temperature == (tuned or 0.2)
        assert config.sdmp.paste_partner == name.endswith("_paper")


def test_print_config_shows_the_official_fields():
    text = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "imagenet_vit_s16_300ep_official",
                           "--print-config"], capture_output=True, text=True, check=True).stdout
    for line in ("origin_smoothing: 0.1", "precision: fp16", "pos_embed_interpolation: dino",
                 "batch_local_heads: true"):
        assert line in text, line
