"""Mixers: pixel provenance, targets from the composition, sampling distributions, training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import apply_overrides
from pretrain import mixers
from pretrain.patchmix import mix_to_mix_targets, mix_to_origin_targets

CUT_LIKE = ("cutmix", "regionswap", "resizemix")


def identity_images(batch: int, size: int = 16) -> torch.Tensor:
    """Image s is the constant s + 1 in every channel: a pixel tells which image it came from."""
    return (torch.arange(batch, dtype=torch.float) + 1).view(batch, 1, 1, 1).expand(batch, 3, size, size).clone()


@pytest.mark.parametrize("batch,num_mixed", [(8, 2), (8, 3), (5, 4), (3, 3)])
def test_patchmix_composition_gives_the_published_targets(batch, num_mixed):
    result = mixers.patchmix(torch.randn(batch, 3, 8, 8), torch.Generator().manual_seed(0), num_mixed, 2)
    torch.testing.assert_close(result.composition, mix_to_origin_targets(batch, num_mixed))
    torch.testing.assert_close(mixers.mix_to_mix_from_compositions(result.composition, result.composition),
                               mix_to_mix_targets(batch, num_mixed))


@pytest.mark.parametrize("method", mixers.MIXERS)
def test_shapes_and_rows(method):
    images = torch.randn(6, 3, 16, 16)
    result = mixers.apply_mixer(method, images, torch.Generator().manual_seed(1), 2, 4)
    assert result.images.shape == images.shape and result.composition.shape == (6, 6)
    torch.testing.assert_close(result.composition.sum(1), torch.ones(6))
    assert torch.all(result.composition >= 0)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_pixels_are_the_claimed_convex_combination(seed):
    images = torch.randn(7, 3, 8, 8)
    result = mixers.mixup(images, torch.Generator().manual_seed(seed))
    # Every pixel of mixed image g is sum_s P[g, s] x_s.
    expected = torch.einsum("gs,schw->gchw", result.composition, images)
    torch.testing.assert_close(result.images, expected)
    assert ((result.composition > 0).sum(1) <= 2).all()


@pytest.mark.parametrize("method", CUT_LIKE)
@pytest.mark.parametrize("seed", range(5))
def test_cut_mixers_pixel_provenance_matches_shares(method, seed):
    batch = 8
    result = mixers.apply_mixer(method, identity_images(batch), torch.Generator().manual_seed(seed), 2, 4)
    source = result.images[:, 0].round().long() - 1  # (B, H, W): the source image of every pixel
    assert torch.all(result.images == result.images[:, :1])  # channels agree: no blending
    counted = torch.stack([torch.bincount(source[g].flatten(), minlength=batch) for g in range(batch)]).float()
    torch.testing.assert_close(counted / source[0].numel(), result.composition)


def test_regionswap_keeps_both_swapped_images():
    result = mixers.regionswap(identity_images(6), torch.Generator().manual_seed(3))
    partner = result.info["partner"]
    assert torch.equal(partner[partner], torch.arange(6))  # pairs: g's partner's partner is g
    mask = result.info["mask"]
    for g in range(6):
        assert torch.all(result.images[g, 0][mask] == partner[g] + 1)  # region from the partner
        assert torch.all(result.images[g, 0][~mask] == g + 1)


def test_resizemix_pastes_the_resized_partner():
    images = torch.randn(4, 3, 32, 32)
    result = mixers.resizemix(images, torch.Generator().manual_seed(2))
    top, left, height, width = result.info["box"]
    partner = result.info["partner"]
    expected = F.interpolate(images[partner], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(result.images[:, :, top:top + height, left:left + width], expected)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[top:top + height, left:left + width] = False
    torch.testing.assert_close(result.images[:, :, outside], images[:, :, outside])
    assert result.composition[0, partner[0]] == pytest.approx(height * width / 32**2)


def _draws(function, key, count=3000):
    return np.array([function(torch.randn(2, 3, 32, 32), torch.Generator().manual_seed(i)).info[key]
                     for i in range(count)])


def _uniform_ks(samples: np.ndarray, low: float, high: float) -> float:
    ordered = np.sort((samples - low) / (high - low))
    n = len(ordered)
    return float(np.max(np.maximum(np.arange(1, n + 1) / n - ordered, ordered - np.arange(n) / n)))


def test_mixup_lambda_follows_beta():
    lam = _draws(mixers.mixup, "lam")
    alpha = 0.8
    variance = 1 / (4 * (2 * alpha + 1))
    standard_error = np.sqrt(variance / len(lam))
    assert abs(lam.mean() - 0.5) < 4 * standard_error
    assert abs(lam.var() - variance) < 0.1 * variance


def test_cutmix_lambda_is_uniform_and_resizemix_scale_in_range():
    assert _uniform_ks(_draws(mixers.cutmix, "lam"), 0.0, 1.0) < 1.63 / np.sqrt(3000)  # KS at 1 %
    tau = _draws(mixers.resizemix, "tau")
    assert _uniform_ks(tau, 0.1, 0.8) < 1.63 / np.sqrt(3000)


def test_cutmix_mixup_switches_half_the_time():
    methods = [mixers.cutmix_mixup(torch.randn(2, 3, 8, 8), torch.Generator().manual_seed(i)).info["method"]
               for i in range(1000)]
    assert 0.45 < methods.count("cutmix") / 1000 < 0.55


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in mixers.MIXERS if m != "patchmix"])
def test_training_with_each_mixer_lowers_the_loss(debug_config, method):
    from pretrain.train import main

    config = apply_overrides(debug_config, [f"mix.method={method}", "optim.epochs=6", "run.log_every_steps=1"])
    run_dir = Path(main(config)["run_dir"])
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.2, (losses[:8], losses[-8:])
