"""Image mixers for contrastive pretraining behind one interface (PatchMix and the Table 5 baselines).

A mixer maps a batch x: (B, C, H, W) and a generator to a `MixResult`: the mixed images and their
composition P: (B, B), where P[g, s] is the share of source image s in mixed image g (rows sum to
1). The targets follow from P alone, the same way for every mixer:
- mix-to-origin: row g of P (the mixed image should match its sources by their shares);
- mix-to-mix between the mixed batches of two views with compositions P_q (queries) and P_k (keys):
  T = row-normalised P_q @ P_k^T, the overlap of their source shares. For PatchMix this is exactly
  the published target, (m - |g - h|) / m^2 (tests/pretrain/test_mixers.py checks it).
Targets index the keys gathered from all ranks: `place_targets` offsets the columns by rank * B.

Mixers (each as in its paper, within what a two-view contrastive setting allows):
- `patchmix`: pretrain/patchmix.py (Shen et al., this paper's method).
- `mixup` (Zhang et al., ICLR 2018): x_g' = lam x_g + (1 - lam) x_pi(g), lam ~ Beta(a, a) per batch,
  pi a random permutation; P[g, g] = lam, P[g, pi(g)] = 1 - lam.
- `cutmix` (Yun et al., ICCV 2019): a box of area (1 - lam) H W, lam ~ Beta(1, 1), centred uniformly
  and clipped to the image, filled from x_pi(g); lam is recomputed from the clipped area.
- `cutmix_mixup`: CutMix or Mixup, switched per batch with probability 1/2 (timm's convention,
  used by DeiT and MAE finetuning).
- `regionswap` (RegionCL, Xu et al., ECCV 2022): pairs (g, g + B/2) swap the same random region,
  side fractions ~ U(0.3, 0.7), so both swapped images are kept; shares by area.
- `resizemix` (Qin et al., 2020; the mix of SDMP): the partner image x_pi(g) resized by a scale
  tau ~ U(0.1, 0.8) and pasted at a random position; shares 1 - tau^2 and tau^2 (by area).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.patchmix import mix_to_origin_targets, patch_mix

MIXERS = ("patchmix", "mixup", "cutmix", "cutmix_mixup", "regionswap", "resizemix")


@dataclass
class MixResult:
    images: torch.Tensor  # (B, C, H, W)
    composition: torch.Tensor  # (B, B) float32, rows sum to 1
    info: dict  # what a test needs to check provenance: partner, lam, box, ...


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator derived from the torch one (torch has no Beta sampler taking a generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return np.random.default_rng(seed)


def _permutation(batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(batch, generator=generator, device=generator.device).to(device)


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
    lam = float(_numpy_rng(generator).beta(alpha, alpha))
    partner = _permutation(batch, generator, images.device)
    mixed = lam * images + (1.0 - lam) * images[partner]
    share = torch.full((batch,), lam, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share), {"lam": lam, "partner": partner})


def cutmix(images: torch.Tensor, generator: torch.Generator, alpha: float = 1.0) -> MixResult:
    batch, _, height, width = images.shape
    rng = _numpy_rng(generator)
    lam = float(rng.beta(alpha, alpha))
    cut = np.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * cut), int(width * cut)
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip(centre_y - cut_height // 2, 0, height), np.clip(centre_y + cut_height // 2, 0, height)
    left, right = np.clip(centre_x - cut_width // 2, 0, width), np.clip(centre_x + cut_width // 2, 0, width)
    mask = _box_mask(height, width, int(top), int(left), int(bottom - top), int(right - left), images.device)
    partner = _permutation(batch, generator, images.device)
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


def regionswap(images: torch.Tensor, generator: torch.Generator, side_range: tuple[float, float] = (0.3, 0.7)
               ) -> MixResult:
    batch, _, height, width = images.shape
    rng = _numpy_rng(generator)
    box_height = max(1, int(round(height * rng.uniform(*side_range))))
    box_width = max(1, int(round(width * rng.uniform(*side_range))))
    top, left = int(rng.integers(0, height - box_height + 1)), int(rng.integers(0, width - box_width + 1))
    mask = _box_mask(height, width, top, left, box_height, box_width, images.device)
    # (g, g + B/2) are swapped with each other; an odd batch's last image keeps its own region.
    half = batch // 2
    partner = torch.arange(batch, device=images.device)
    partner[:half] += half
    partner[half: 2 * half] -= half
    mixed = torch.where(mask, images[partner], images)
    own = 1.0 - box_height * box_width / (height * width)  # host arithmetic: no device synchronisation
    share = torch.full((batch,), own, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share), {"partner": partner, "mask": mask})


def resizemix(images: torch.Tensor, generator: torch.Generator, scale_range: tuple[float, float] = (0.1, 0.8)
              ) -> MixResult:
    batch, _, height, width = images.shape
    rng = _numpy_rng(generator)
    tau = float(rng.uniform(*scale_range))
    paste_height, paste_width = max(1, int(round(height * tau))), max(1, int(round(width * tau)))
    top, left = int(rng.integers(0, height - paste_height + 1)), int(rng.integers(0, width - paste_width + 1))
    partner = _permutation(batch, generator, images.device)
    resized = F.interpolate(images[partner], size=(paste_height, paste_width), mode="bilinear",
                            align_corners=False, antialias=True)
    mixed = images.clone()
    mixed[:, :, top: top + paste_height, left: left + paste_width] = resized
    own = 1.0 - paste_height * paste_width / (height * width)
    share = torch.full((batch,), own, device=images.device)
    return MixResult(mixed, _two_source_composition(batch, partner, share),
                     {"tau": tau, "partner": partner, "box": (top, left, paste_height, paste_width)})


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
        return regionswap(images, generator)
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
