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


def test_resizemix_pastes_the_resized_flipped_partner_as_sdmp():
    images = torch.randn(6, 3, 32, 32)
    result = mixers.resizemix(images, torch.Generator().manual_seed(2))
    assert torch.equal(result.info["partner"], torch.arange(5, -1, -1))  # SDMP pairs g with B - 1 - g
    for g, (top, left, height, width) in enumerate(result.info["boxes"]):
        # SDMP's box: side int(32 * sqrt(1 - lam)), half of it each side of a uniform centre, clipped.
        cut = int(32 * np.sqrt(1 - result.info["lam"][g]))
        assert height <= 2 * (cut // 2) and width <= 2 * (cut // 2)
        if 0 < top and top + height < 32:
            assert height == 2 * (cut // 2)
        expected = F.interpolate(images[5 - g: 6 - g], size=(height, width), mode="bilinear", align_corners=False)
        torch.testing.assert_close(result.images[g, :, top:top + height, left:left + width], expected[0])
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[top:top + height, left:left + width] = False
        torch.testing.assert_close(result.images[g][:, outside], images[g][:, outside])
        assert result.composition[g, 5 - g] == pytest.approx(height * width / 32**2)


def test_resizemix_partner_share_follows_sdmp():
    """Mean partner share against SDMP's draw written out here: lam = 0.1 + 0.8 U per image, a box of
    side int(H sqrt(1 - lam)) around a uniform centre, clipped at the border."""
    rng = np.random.default_rng(0)
    size, shares = 32, []
    for _ in range(20000):
        cut = int(size * np.sqrt(1 - (0.1 + 0.8 * rng.uniform())))
        centre_y, centre_x = rng.integers(size), rng.integers(size)
        height = min(centre_y + cut // 2, size) - max(centre_y - cut // 2, 0)
        width = min(centre_x + cut // 2, size) - max(centre_x - cut // 2, 0)
        shares.append(height * width / size**2)
    expected = float(np.mean(shares))
    assert 0.28 < expected < 0.36  # the 0.31: clipping takes a third off the mean area 0.5
    ours = [1 - mixers.resizemix(torch.zeros(8, 1, size, size), torch.Generator().manual_seed(i)).composition.diag()
            for i in range(600)]
    assert float(torch.cat(ours).mean()) == pytest.approx(expected, abs=0.01)
    lam = np.concatenate([mixers.resizemix(torch.zeros(8, 1, 8, 8), torch.Generator().manual_seed(i)).info["lam"]
                          for i in range(400)])
    assert _uniform_ks(lam, 0.1, 0.9) < 1.63 / np.sqrt(len(lam))  # KS at 1 %


@pytest.mark.parametrize("batch", [6, 7])
def test_regionswap_follows_regionCL_on_the_patch_grid(batch):
    patch, size = 16, 224
    draws = [mixers.regionswap(identity_images(batch, size), torch.Generator().manual_seed(i), patch)
             for i in range(300)]
    assert torch.equal(draws[0].info["partner"], torch.arange(batch - 1, -1, -1))  # RegionCL's reversed batch
    sides = set()
    for result in draws:
        top, left, height, width = result.info["box"]
        assert top % patch == left % patch == height % patch == width % patch == 0  # whole tokens
        assert top + height <= size and left + width <= size
        sides |= {height, width}
        for g in range(batch):
            source = result.images[g, 0].long() - 1
            assert torch.all(source[top:top + height, left:left + width] == batch - 1 - g)
    # RegionCL on 224 px: sides of 3, 4 or 5 cells of 32 px = 96, 128, 160 px (6, 8, 10 tokens).
    assert sides == {96, 128, 160}
    # Mean area: the sides are drawn independently and uniformly from {3, 4, 5} / 7.
    expected = np.mean([a * b / 49 for a in (3, 4, 5) for b in (3, 4, 5)])
    area = np.mean([r.info["box"][2] * r.info["box"][3] / size**2 for r in draws])
    assert area == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_mixup_and_cutmix_pair_with_the_flipped_batch_as_timm(method):
    for batch in (6, 7):
        result = mixers.apply_mixer(method, torch.randn(batch, 3, 16, 16), torch.Generator().manual_seed(0), 2, 4)
        partner = result.info["partner"]
        assert partner.tolist() == [batch - 1 - g for g in range(batch)]
        assert (partner != torch.arange(batch)).sum() == batch - batch % 2  # only an odd batch's middle is its own


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


def test_cutmix_lambda_is_uniform():
    assert _uniform_ks(_draws(mixers.cutmix, "lam"), 0.0, 1.0) < 1.63 / np.sqrt(3000)  # KS at 1 %


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
