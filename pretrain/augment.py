"""Table 10 two-view augmentations (BYOL/MoCo v3 style) and the optional multi-crop local views."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torchvision import transforms

from common.config import ConfigError
from common.transforms import NORMALIZE, RandomGaussianBlur

BICUBIC = transforms.InterpolationMode.BICUBIC


@dataclass
class AugmentConfig:
    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    num_local_crops: int = 0  # multi-crop of the official ImageNet preset: 8
    local_crop_size: int = 96
    local_crop_scale_min: float = 0.05
    local_crop_scale_max: float = 0.35

    def check(self) -> None:
        for low, high, what in ((self.crop_scale_min, self.crop_scale_max, "crop_scale"),
                                (self.local_crop_scale_min, self.local_crop_scale_max, "local_crop_scale")):
            if not 0 < low <= high <= 1:
                raise ConfigError(f"{what}_min/max must satisfy 0 < min <= max <= 1, got {low}, {high}")
        if self.num_local_crops < 0:
            raise ConfigError("num_local_crops must be >= 0")


def view_transform(size: int, scale: tuple[float, float], blur_probability: float,
                   solarize_probability: float) -> Callable:
    """PIL image -> normalised (3, size, size) tensor with Table 10's random augmentations."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([RandomGaussianBlur(0.1, 2.0)], p=blur_probability),
        transforms.RandomSolarize(threshold=128, p=solarize_probability),
        transforms.ToTensor(),
        NORMALIZE,
    ])


def pretraining_views(config: AugmentConfig, image_size: int) -> list[Callable]:
    """[view 1 (blur 1.0, no solarize), view 2 (blur 0.1, solarize 0.2), local crops...]."""
    scale = (config.crop_scale_min, config.crop_scale_max)
    views = [view_transform(image_size, scale, 1.0, 0.0), view_transform(image_size, scale, 0.1, 0.2)]
    local_scale = (config.local_crop_scale_min, config.local_crop_scale_max)
    # Local crops use DINO's settings (blur 0.5, no solarisation).
    views += [view_transform(config.local_crop_size, local_scale, 0.5, 0.0)] * config.num_local_crops
    return views
