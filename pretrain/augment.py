"""Table 10 two-view augmentations (BYOL/MoCo v3 style) and the optional multi-crop local views."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

from torchvision import transforms

from common.config import ConfigError, added_field
from common.transforms import RandomGaussianBlur, to_three_channels
from pretrain.device_decode import CropBox

BICUBIC = transforms.InterpolationMode.BICUBIC
CROP_INTERPOLATIONS = {"bicubic": BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}


@dataclass
class AugmentConfig:
    RANGES: ClassVar[dict[str, str]] = {"crop_scale_min": "(0, 1]", "crop_scale_max": "(0, 1]",
        "num_local_crops": "[0, inf)", "local_crop_size": "[1, inf)", "local_crop_scale_min": "(0, 1]",
        "local_crop_scale_max": "(0, 1]"}
    crop_scale_min: float = 0.08  # random resized crop: smallest area share of the global views
    crop_scale_max: float = 1.0  # random resized crop: largest area share of the global views
    num_local_crops: int = 0  # multi-crop of the official ImageNet preset: 8
    local_crop_size: int = 96  # side of the local crops in pixels
    local_crop_scale_min: float = 0.05  # smallest area share of the local crops
    local_crop_scale_max: float = 0.35  # largest area share of the local crops
    # Resampling of the random resized crop: bicubic (PatchMix, DINO) or bilinear (torchvision's
    # default, which MoCo v3 and SDMP use).
    crop_interpolation: str = added_field("bicubic")
    # Colour jitter, grayscale, blur and solarize batched on the training device (pretrain/gpu_augment.py);
    # the loader workers then only decode, crop and flip. The PIL path stays the default.
    gpu: bool = False
    # With gpu: the workers only read files and draw crop boxes; JPEG decoding (nvJPEG), crop, resize
    # and flip run on the device too (pretrain/device_decode.py).
    gpu_decode: bool = False
    # With gpu: torch.compile the batched colour augmentations (fuses their memory-bound passes).
    gpu_compile: bool = False

    def check(self) -> None:
        for low, high, what in ((self.crop_scale_min, self.crop_scale_max, "crop_scale"),
                                (self.local_crop_scale_min, self.local_crop_scale_max, "local_crop_scale")):
            if low > high:
                raise ConfigError(f"{what}_min/max must satisfy 0 < min <= max <= 1, got {low}, {high}")
        if self.crop_interpolation not in CROP_INTERPOLATIONS:
            raise ConfigError(f"crop_interpolation must be one of {', '.join(CROP_INTERPOLATIONS)}, "
                              f"got {self.crop_interpolation!r}")
        if self.gpu_decode and self.crop_interpolation != "bicubic":
            raise ConfigError("augment.gpu_decode=true resamples crops bicubically only: set "
                              "augment.crop_interpolation=bicubic or augment.gpu_decode=false")
        if self.gpu_decode and not self.gpu:
            raise ConfigError("augment.gpu_decode=true needs augment.gpu=true (the colour augmentations "
                              "then run on the device too)")


def view_transform(size: int, scale: tuple[float, float], blur_probability: float,
                   solarize_probability: float, interpolation: str = "bicubic") -> Callable:
    """PIL image (RGB, or grey 'L') -> uint8 (3, size, size) tensor with Table 10's random augmentations;
    `normalise_uint8` then scales and normalises whole batches on the training device (the values
    ToTensor + NORMALIZE give per image, at a fifth less loading time and a quarter of the bytes).

    A grey image stays single-channel until the tensor: each operation gives every channel of a grey
    RGB image the same values as it gives the 'L' image (hue and saturation leave grey unchanged, the
    others act per channel or on the luminance) and draws the same random numbers, so the views are
    the same as from its RGB expansion at about three quarters of the loading time."""
    return crop_transform(size, scale, interpolation, colour=[
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([RandomGaussianBlur(0.1, 2.0)], p=blur_probability),
        transforms.RandomSolarize(threshold=128, p=solarize_probability),
    ])


def view_probabilities(config: AugmentConfig) -> list[tuple[float, float]]:
    """(blur, solarize) probability of each view: Table 10 for the two global views; the local crops
    use DINO's settings (blur 0.5, no solarisation)."""
    return [(1.0, 0.0), (0.1, 0.2)] + [(0.5, 0.0)] * config.num_local_crops


def crop_transform(size: int, scale: tuple[float, float], interpolation: str = "bicubic",
                   colour: Sequence[Callable] = ()) -> Callable:
    """PIL image -> uint8 (3, size, size) tensor: random resized crop, flip, then the `colour` steps
    (none on the GPU path, the CPU half of it: its colour augmentations run on the device)."""
    return transforms.Compose([transforms.RandomResizedCrop(size, scale=scale,
                                                            interpolation=CROP_INTERPOLATIONS[interpolation]),
                               transforms.RandomHorizontalFlip(), *colour, transforms.PILToTensor(), to_three_channels])


def view_sizes(config: AugmentConfig, image_size: int) -> list[tuple[int, tuple[float, float]]]:
    """(output size, crop scale range) of each view: two global views, then the local crops."""
    scale = (config.crop_scale_min, config.crop_scale_max)
    local_scale = (config.local_crop_scale_min, config.local_crop_scale_max)
    return [(image_size, scale)] * 2 + [(config.local_crop_size, local_scale)] * config.num_local_crops


def pretraining_views(config: AugmentConfig, image_size: int) -> list[Callable]:
    """[view 1 (blur 1.0, no solarize), view 2 (blur 0.1, solarize 0.2), local crops...], each giving a
    uint8 tensor (`normalise_uint8` finishes the batches of the PIL path); with
    `gpu` only their crop and flip (the rest runs in `gpu_augment.augment_views`); with `gpu_decode`
    only their crop boxes (pretrain/device_decode.py)."""
    sizes = view_sizes(config, image_size)
    if config.gpu_decode:
        return [CropBox(crop_scale) for _, crop_scale in sizes]
    if config.gpu:
        return [crop_transform(size, crop_scale, config.crop_interpolation) for size, crop_scale in sizes]
    return [view_transform(size, crop_scale, blur, solarize, config.crop_interpolation)
            for (size, crop_scale), (blur, solarize) in zip(sizes, view_probabilities(config))]
