"""Encoder sizes (Table 8), heads (Table 9), EMA update and schedules."""
from __future__ import annotations

import pytest
import torch

from common.vit import build_vit, count_parameters
from common import schedules
from pretrain.configs import OptimConfig
from pretrain.model import ModelConfig, PatchMixModel
from pretrain.configs import PretrainConfig
from pretrain.methods import method_named
from pretrain.train import apply_schedule, build_optimizer


@pytest.mark.parametrize("arch,patch,size,millions", [
    ("vit_tiny", 2, 32, 5.4), ("vit_small", 2, 32, 21.3), ("vit_base", 2, 32, 85.1),
    ("vit_small", 16, 224, 21.6), ("vit_base", 16, 224, 85.7),
])
def test_encoder_parameter_counts_match_table8(arch, patch, size, millions):
    encoder = build_vit(arch, patch, size)
    assert abs(count_parameters(encoder) / 1e6 - millions) < 0.2
    if arch == "vit_small":  # 6 heads (paper) and 12 heads (published) have the same size
        assert count_parameters(build_vit(arch, patch, size, num_heads=6)) == count_parameters(encoder)


def test_encoder_feature_is_normalised_cls_token():
    encoder = build_vit("vit_debug", 4, 32).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = encoder.forward_features(images)  # (B, 1 + T, D), after the final norm
    assert tokens.shape == (2, 1 + 64, 48)
    torch.testing.assert_close(encoder(images), tokens[:, 0])
    assert encoder(torch.randn(2, 3, 16, 16)).shape == (2, 48)  # other sizes: resampled positions


def test_moco_v3_initialisation():
    encoder = build_vit("vit_small", 16, 224)
    qkv = encoder.blocks[0].attn.qkv.weight  # (3D, D): fan split in three
    bound = (6.0 / (qkv.shape[0] // 3 + qkv.shape[1])) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    projection = encoder.patch_embed.proj.weight
    patch_bound = (6.0 / (3 * 16 * 16 + 384)) ** 0.5
    assert projection.abs().max() <= patch_bound and projection.abs().max() > 0.9 * patch_bound
    assert encoder.cls_token.std() < 1e-5
    assert torch.all(encoder.blocks[0].mlp.fc1.bias == 0)


def test_heads_follow_table9():
    model = PatchMixModel(ModelConfig(arch="vit_debug", patch_size=4, image_size=32))
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [l.out_features for l in linears] == [4096, 4096, 256]
    assert all(l.bias is None for l in linears)
    assert not model.projector[-1].affine and model.projector[1].affine
    assert [m.out_features for m in model.predictor if isinstance(m, torch.nn.Linear)] == [4096, 256]


def test_momentum_update_is_ema():
    model = PatchMixModel(ModelConfig(arch="vit_debug", patch_size=4, image_size=32,
                                      projector_hidden_dim=16, predictor_hidden_dim=16, output_dim=8))
    with torch.no_grad():
        for p in model.online_parameters_for_momentum():
            p.add_(torch.randn_like(p))
    before_key = [p.clone() for p in model.momentum_parameters()]
    query = [p.clone() for p in model.online_parameters_for_momentum()]
    model.update_momentum(0.9)
    for key_old, q, key_new in zip(before_key, query, model.momentum_parameters()):
        torch.testing.assert_close(key_new, 0.9 * key_old + 0.1 * q)
    assert not any(p.requires_grad for p in model.momentum_parameters())


def test_schedules_hit_endpoints():
    total, warmup, peak, low = 1000, 100, 1e-3, 1e-6
    assert schedules.learning_rate(0, total, warmup, peak, low) == 0.0
    assert schedules.learning_rate(warmup, total, warmup, peak, low) == pytest.approx(peak)
    assert schedules.learning_rate(total, total, warmup, peak, low) == pytest.approx(low)
    assert schedules.learning_rate(50, total, warmup, peak, low) == pytest.approx(peak / 2)
    assert schedules.weight_decay(0, total, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.weight_decay(total, total, 0.04, 0.4) == pytest.approx(0.4)
    assert schedules.momentum(0, total, 0.996, 1.0) == pytest.approx(0.996)
    assert schedules.momentum(total, total, 0.996, 1.0) == pytest.approx(1.0)
    assert schedules.momentum(total // 2, total, 0.996, 1.0) == pytest.approx(0.998)


def test_optimizer_groups_and_schedule_application():
    model = PatchMixModel(ModelConfig(arch="vit_debug", patch_size=4, image_size=32,
                                      projector_hidden_dim=16, predictor_hidden_dim=16, output_dim=8))
    config = OptimConfig(epochs=10, warmup_epochs=1, batch_size=512, base_lr=1e-3)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    decayed, not_decayed = optimizer.param_groups
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in not_decayed["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    schedule = method_named("patchmix").schedule(PretrainConfig(optim=config), step=10, steps_per_epoch=10)
    apply_schedule(optimizer, schedule)
    assert schedule.learning_rate == pytest.approx(2e-3)  # peak = base_lr * 512 / 256, reached at the end of warmup
    assert decayed["lr"] == not_decayed["lr"] == schedule.learning_rate
    assert decayed["weight_decay"] == schedule.weight_decay and not_decayed["weight_decay"] == 0.0


def momentum_at(optim: OptimConfig, step: int, steps_per_epoch: int) -> float:
    return method_named("patchmix").schedule(PretrainConfig(optim=optim), step, steps_per_epoch).momentum


def test_published_per_epoch_momentum_holds_within_an_epoch():
    per_epoch = OptimConfig(epochs=10, momentum_update="epoch")
    per_step = OptimConfig(epochs=10, momentum_update="step")
    assert momentum_at(per_epoch, 15, 10) == momentum_at(per_epoch, 10, 10) == momentum_at(per_step, 10, 10)
    assert momentum_at(per_step, 15, 10) > momentum_at(per_step, 10, 10)
