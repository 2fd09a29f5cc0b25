"""Table 10's colour and blur augmentations, batched on the GPU with per-sample parameters.

The loader workers (or pretrain/device_decode.py) decode, crop (RandomResizedCrop, bicubic) and flip, giving uint8
tensors; this module then applies, per image, with the probabilities and ranges of Table 10:
colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in a random order, p 0.8),
grayscale (p 0.2), Gaussian blur (sigma ~ U(0.1, 2), p 1.0 / 0.1 / 0.5 per view) and solarize
(threshold 128, p 0 / 0.2), then the ImageNet normalisation. It runs on any device (tests run it
on the CPU) and draws its parameters from a generator seeded per (seed, step, rank, view), so a
resumed run repeats it. The operations follow torchvision's tensor definitions, which follow PIL's;
the blur is a true Gaussian where PIL approximates one with box filters (tests bound the gap).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2)
MAX_SIGMA = 2.0
KERNEL_RADIUS = math.ceil(3 * MAX_SIGMA)  # one kernel size for the whole batch: 13 taps


@dataclass
class ViewParameters:
    """Per-image parameters, each a tensor of shape (B,) (order: (B, 4), a permutation of 0..3)."""

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def sample_parameters(batch: int, blur_probability: float, solarize_probability: float,
                      generator: torch.Generator) -> ViewParameters:
    """Table 10's distributions, drawn on the generator's device."""
    device = generator.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    def coin(probability: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device) < probability

    return ViewParameters(
        jitter=coin(0.8), brightness=uniform(0.6, 1.4), contrast=uniform(0.6, 1.4), saturation=uniform(0.8, 1.2),
        hue=uniform(-0.1, 0.1), order=torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1),
        grayscale=coin(0.2), blur=coin(blur_probability), sigma=uniform(0.1, MAX_SIGMA), solarize=coin(solarize_probability))


def _gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by shift (B,) turns, through HSV (torchvision's definition)."""
    red, green, blue = images.unbind(dim=1)
    maximum, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    chroma = maximum - minimum
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    hue_red = ((green - blue) / safe) % 6
    hue_green = (blue - red) / safe + 2
    hue_blue = (red - green) / safe + 4
    hue = torch.where(maximum == red, hue_red, torch.where(maximum == green, hue_green, hue_blue)) / 6
    hue = torch.where(chroma == 0, torch.zeros_like(hue), hue)
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    saturation = torch.where(maximum == 0, torch.zeros_like(chroma), chroma / torch.where(maximum == 0,
                                                                                          torch.ones_like(maximum), maximum))
    # HSV -> RGB
    sector = hue * 6
    index = sector.floor()
    fraction = sector - index
    value = maximum
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    index = index.long() % 6
    choices = torch.stack([torch.stack(c, dim=1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                                           (p, q, value), (t, p, value), (value, p, q))], dim=1)
    return choices.gather(1, index.view(index.shape[0], 1, 1, *index.shape[1:]).expand(-1, 1, 3, -1, -1)).squeeze(1)


def _colour_jitter(images: torch.Tensor, parameters: ViewParameters) -> torch.Tensor:
    """Each image gets its own factors in its own order; images without jitter pass through."""
    result = images
    for position in range(4):
        operation = parameters.order[:, position]
        candidates = [
            _blend(result, torch.zeros_like(result), parameters.brightness),
            _blend(result, _gray(result).mean(dim=(1, 2, 3), keepdim=True), parameters.contrast),
            _blend(result, _gray(result), parameters.saturation),
            _adjust_hue(result, parameters.hue),
        ]
        chosen = torch.stack(candidates, dim=1).gather(
            1, operation.view(-1, 1, 1, 1, 1).expand(-1, 1, *result.shape[1:])).squeeze(1)
        result = torch.where(parameters.jitter.view(-1, 1, 1, 1), chosen, result)
    return result


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian with a per-image sigma, reflect padding, one grouped convolution per axis."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(-KERNEL_RADIUS, KERNEL_RADIUS + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = images.reshape(1, batch * channels, height, width)
    size = 2 * KERNEL_RADIUS + 1
    flat = F.conv2d(F.pad(flat, (KERNEL_RADIUS, KERNEL_RADIUS, 0, 0), mode="reflect"),
                    kernel.view(-1, 1, 1, size), groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, KERNEL_RADIUS, KERNEL_RADIUS), mode="reflect"),
                    kernel.view(-1, 1, size, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def augment(images: torch.Tensor, parameters: ViewParameters, normalize: bool = True,
            may_blur: bool = True) -> torch.Tensor:
    """images: (B, 3, H, W) uint8 (or float in [0, 1]) -> (B, 3, H, W) float32, normalised.

    may_blur: False when the view's blur probability is 0, so the blur is skipped without asking
    the device whether any image drew it (a host synchronisation)."""
    result = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    result = _colour_jitter(result, parameters)
    result = torch.where(parameters.grayscale.view(-1, 1, 1, 1), _gray(result).expand_as(result), result)
    if may_blur:
        result = torch.where(parameters.blur.view(-1, 1, 1, 1), _gaussian_blur(result, parameters.sigma), result)
    result = torch.where(parameters.solarize.view(-1, 1, 1, 1) & (result >= 128 / 255), 1.0 - result, result)
    if not normalize:
        return result
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=result.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=result.device).view(1, 3, 1, 1)
    return (result - mean) / std


@functools.cache
def _compiled_augment():
    # Fuses the many elementwise passes of the colour operations (they are memory-bound) into a few
    # kernels.
    return torch.compile(augment, dynamic=False)


def augment_views(views: list[torch.Tensor], probabilities: list[tuple[float, float]], seed: int,
                  compiled: bool = False) -> list[torch.Tensor]:
    """uint8 views on the device -> augmented, normalised float views; parameters drawn on the
    device from a generator seeded with `seed` (derived from seed, step and rank by the caller).
    `compiled`: run `augment` through torch.compile (same operations, fused)."""
    generator = torch.Generator(device=views[0].device).manual_seed(seed)
    function = _compiled_augment() if compiled else augment
    return [function(view, sample_parameters(view.shape[0], blur, solarize, generator), may_blur=blur > 0)
            for view, (blur, solarize) in zip(views, probabilities)]
