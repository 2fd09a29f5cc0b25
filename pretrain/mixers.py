"""Image mixers for contrastive pretraining behind one interface (PatchMix and the Table 5 baselines).

A mixer maps a batch x: (B, C, H, W) and a generator to a `MixResult`: the mixed images and their
composition P: (B, B), where P[g, s] is the share of source image s in mixed image g (rows sum to
1). The targets follow from P alone, the same way for every mixer:
- mix-to-origin: row g of P (the mixed image should match its sources by their shares);
- mix-to-mix between the mixed batches of two views with compositions P_q (queries) and P_k (keys):
  T = row-normalised P_q @ P_k^T, the overlap of their source shares. For PatchMix this is exactly
  the published target, (m - |g - h|) / m^2 (tests/pretrain/test_mixers.py checks it).
Targets index the keys gathered from all ranks: `place_targets` offsets the columns by rank * B.

Mixers (each as in its paper or the code the paper's Table 5 cites; docs/fidelity.md lists the checks):
- `patchmix`: pretrain/patchmix.py (Shen et al., this paper's method).
- `mixup` (Zhang et al., ICLR 2018): x_g' = lam x_g + (1 - lam) x_pi(g), lam ~ Beta(a, a) per batch;
  P[g, g] = lam, P[g, pi(g)] = 1 - lam.
- `cutmix` (Yun et al., ICCV 2019): a box of area (1 - lam) H W, lam ~ Beta(1, 1), centred uniformly
  and clipped to the image, filled from x_pi(g); lam is recomputed from the clipped area.
- `cutmix_mixup`: CutMix or Mixup, switched per batch with probability 1/2 (timm's convention,
  used by DeiT and MAE finetuning).
  Mixup and CutMix pair image g with pi(g) = B - 1 - g, timm's batch flip: pairs are mutual and an
  image is never its own partner for an even B.
- `regionswap` (RegionCL, Xu et al., ECCV 2022; its published configuration): one region per batch
  whose width and height are k/7 of the image, k in {3, 4, 5} drawn independently (RegionCL: 3 to 5
  cells of 32 px on 224 px images), snapped to the ViT's patch grid; its corner is a uniform grid
  position clipped so that the region fits. Image g swaps the region with B - 1 - g (RegionCL's
  reversed batch), so both swapped images are kept; shares by area.
- `resizemix` (the mix of SDMP, Ren et al., CVPR 2022, as its published code draws it): per image, an
  own share lam = 0.1 + 0.8 U; the partner x_{B-1-g} resized (bilinear, no antialias) into a box of
  side sqrt(1 - lam) of the image's, centred uniformly and clipped at the border; shares by the
  pasted area.
"""
from __future__ import annotations

from typing import ClassVar

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.config import ConfigError
from pretrain.patchmix import mix_to_origin_targets, patch_mix

MIXERS = ("patchmix", "mixup", "cutmix", "cutmix_mixup", "regionswap", "resizemix")


@dataclass
class MixConfig:
    RANGES: ClassVar[dict[str, str]] = {"num_mixed": "[1, inf)", "smoothing": "[0, 1)"}
    method: str = "patchmix"  # patchmix | mixup | cutmix | cutmix_mixup | regionswap | resizemix (pretrain/mixers.py)
    num_mixed: int = 2  # PatchMix's m: images per mixed image. 1 = no mixing (the MoCo v3 baseline)
    smoothing: float = 0.0  # label smoothing of the soft targets (published default 0)

    def check(self) -> None:
        if self.method not in MIXERS:
            raise ConfigError(f"method must be one of {', '.join(MIXERS)}, got {self.method!r}")


@dataclass
class MixResult:
    images: torch.Tensor  # (B, C, H, W)
    composition: torch.Tensor  # (B, B) float32, rows sum to 1
    info: dict  # what a test needs to check provenance: partner, lam, box, ...


def numpy_generator(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator derived from the torch one (torch has no Beta sampler taking a generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return np.random.default_rng(seed)


def _flipped(batch: int, device: torch.device) -> torch.Tensor:
    """Partner of image g: B - 1 - g (timm's Mixup/CutMix batch flip; RegionCL and SDMP do the same)."""
    return torch.arange(batch - 1, -1, -1, device=device)


def _two_source_composition(batch: int, partner: torch.Tensor, own_share: torch.Tensor) -> torch.Tensor:
    """P with own_share (B,) on the diagonal and the rest on the partner (adds up if partner == g)."""
    composition = torch.zeros(batch, batch, device=partner.device)
    rows = torch.arange(batch, device=partner.device)
    composition[rows, rows] += own_share
    composition[rows, partner] += 1.0 - own_share
    return composition


def _box_mask(height: int, width: int, top: int, left: int, box_height: int, box_width: int,
              device: torch.device) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top: top + box_height, left: left + box_width] = True
    return mask


def mixup(images: torch.Tensor, generator: torch.Generator, alpha: float = 0.8) -> MixResult:
    batch = images.shape[0]
    lam = float(numpy_generator(generator).beta(alpha, alpha))
    partner = _flipped(batch, images.device)
    mixed = lam * images + (1.0 - lam) * images[partner]
    share = torch.full((batch,), lam, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share), {"lam": lam, "partner": partner})


def cutmix(images: torch.Tensor, generator: torch.Generator, alpha: float = 1.0) -> MixResult:
    batch, _, height, width = images.shape
    rng = numpy_generator(generator)
    lam = float(rng.beta(alpha, alpha))
    cut = np.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * cut), int(width * cut)
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip(centre_y - cut_height // 2, 0, height), np.clip(centre_y + cut_height // 2, 0, height)
    left, right = np.clip(centre_x - cut_width // 2, 0, width), np.clip(centre_x + cut_width // 2, 0, width)
    mask = _box_mask(height, width, int(top), int(left), int(bottom - top), int(right - left), images.device)
    partner = _flipped(batch, images.device)
    mixed = torch.where(mask, images[partner], images)
    own = 1.0 - float((bottom - top) * (right - left)) / (height * width)  # from the clipped box, on the host
    share = torch.full((batch,), own, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share),
                     {"lam": lam, "partner": partner, "mask": mask})


def cutmix_mixup(images: torch.Tensor, generator: torch.Generator, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0) -> MixResult:
    use_cutmix = bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
    result = cutmix(images, generator, cutmix_alpha) if use_cutmix else mixup(images, generator, mixup_alpha)
    result.info["method"] = "cutmix" if use_cutmix else "mixup"
    return result


# RegionCL's configuration: region sides of 3, 4 or 5 cells of a 7-cell grid (32 px on 224 px images).
REGION_CELLS = (3, 4, 5)
REGION_GRID = 7


def regionswap(images: torch.Tensor, generator: torch.Generator, patch_size: int = 1) -> MixResult:
    """RegionCL's region swapping, snapped to the patch grid of side `patch_size` (1 = pixels)."""
    batch, _, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    rng = numpy_generator(generator)
    # RegionCL draws the width first, then the height, then the left and the top position.
    cells_wide, cells_high = (int(rng.integers(REGION_CELLS[0], REGION_CELLS[-1] + 1)) for _ in range(2))
    box_cols = min(cols, max(1, round(cols * cells_wide / REGION_GRID)))
    box_rows = min(rows, max(1, round(rows * cells_high / REGION_GRID)))
    left = min(int(rng.integers(cols)), cols - box_cols) * patch_size
    top = min(int(rng.integers(rows)), rows - box_rows) * patch_size
    box_height, box_width = box_rows * patch_size, box_cols * patch_size
    mask = _box_mask(height, width, top, left, box_height, box_width, images.device)
    partner = _flipped(batch, images.device)  # mutual pairs; the middle image of an odd batch keeps its own
    mixed = torch.where(mask, images[partner], images)
    own = 1.0 - box_height * box_width / (height * width)  # host arithmetic: no device synchronisation
    share = torch.full((batch,), own, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share),
                     {"partner": partner, "mask": mask, "box": (top, left, box_height, box_width)})


def resizemix(images: torch.Tensor, generator: torch.Generator, own_share_range: tuple[float, float] = (0.1, 0.9)
              ) -> MixResult:
    """SDMP's mixing: per image its own share lam ~ U(own_share_range), a box of side
    sqrt(1 - lam) x (H, W) centred uniformly and clipped at the border, filled with the bilinearly
    resized partner. The shares follow the clipped (pasted) area."""
    batch, _, height, width = images.shape
    rng = numpy_generator(generator)
    low, high = own_share_range
    lam = low + (high - low) * rng.uniform(size=batch)  # SDMP: 0.1 + 0.8 Beta(1, 1)
    partner = _flipped(batch, images.device)
    mixed = images.clone()
    own, boxes = [], []
    for g in range(batch):  # one box per image, as SDMP (a baseline: a host loop of B small copies)
        ratio = math.sqrt(1.0 - lam[g])
        cut_height, cut_width = int(height * ratio), int(width * ratio)
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(centre_y - cut_height // 2, 0), min(centre_y + cut_height // 2, height)
        left, right = max(centre_x - cut_width // 2, 0), min(centre_x + cut_width // 2, width)
        if bottom > top and right > left:
            mixed[g, :, top:bottom, left:right] = F.interpolate(
                images[int(batch - 1 - g)].unsqueeze(0), size=(bottom - top, right - left), mode="bilinear",
                align_corners=False)[0]
        own.append(1.0 - (bottom - top) * (right - left) / (height * width))
        boxes.append((top, left, bottom - top, right - left))
    share = torch.tensor(own, dtype=torch.float32, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share),
                     {"lam": lam, "partner": partner, "boxes": boxes})


def patchmix(images: torch.Tensor, generator: torch.Generator, num_mixed: int, patch_size: int) -> MixResult:
    mixed, offsets = patch_mix(images, num_mixed, patch_size, generator)
    composition = mix_to_origin_targets(images.shape[0], num_mixed, device=images.device)
    return MixResult(mixed, composition, {"offsets": offsets})


def apply_mixer(method: str, images: torch.Tensor, generator: torch.Generator, num_mixed: int,
                patch_size: int) -> MixResult:
    """The configured mixer (mix.method); PatchMix uses mix.num_mixed and the ViT patch size."""
    if method == "patchmix":
        return patchmix(images, generator, num_mixed, patch_size)
    if method == "mixup":
        return mixup(images, generator)
    if method == "cutmix":
        return cutmix(images, generator)
    if method == "cutmix_mixup":
        return cutmix_mixup(images, generator)
    if method == "regionswap":
        return regionswap(images, generator, patch_size)
    if method == "resizemix":
        return resizemix(images, generator)
    raise ValueError(f"unknown mix method {method!r}; choose one of {', '.join(MIXERS)}")


def place_targets(local: torch.Tensor, rank: int, world_size: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B, B) targets over this rank's keys -> (B, world*B) over the gathered keys, optionally smoothed."""
    batch = local.shape[0]
    targets = torch.zeros(batch, world_size * batch, device=local.device)
    targets[:, rank * batch:(rank + 1) * batch] = local
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    return targets


def mix_to_mix_from_compositions(query_composition: torch.Tensor, key_composition: torch.Tensor) -> torch.Tensor:
    """(B, B): overlap of source shares between query mixed image g and key mixed image h, rows
    normalised to sum to 1."""
    overlap = query_composition @ key_composition.T
    return overlap / overlap.sum(dim=1, keepdim=True).clamp(min=1e-12)
