"""Image transforms shared by the stages (evaluation resize/crop, normalisation, blur)."""
from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

# The recipe normalises with ImageNet statistics on every dataset, CIFAR and Fashion-MNIST included.
NORMALIZE = transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


class RandomGaussianBlur:
    """PIL Gaussian blur with sigma ~ U(sigma_min, sigma_max), as in MoCo v3 / BYOL (Table 10).

    Draws from torch's global generator so that seeding per sample makes it reproducible.
    """

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 2.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma=({self.sigma_min}, {self.sigma_max}))"


def to_three_channels(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W) -> (3, H, W) by repeating the grey channel; (3, H, W) unchanged.

    Lets a transform take the single-channel images of a grey dataset (`build_dataset(...,
    keep_gray=True)`) and still give what `NORMALIZE` and the models expect: the same values as
    expanding to RGB first, when every operation before it treats the channels alike."""
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def normalise_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 scaled to [0, 1] and normalised with `NORMALIZE`: the values of
    `ToTensor` + `NORMALIZE` on each image (the same element-wise operations), for a whole batch at once."""
    return NORMALIZE(images.to(torch.get_default_dtype()).div(255))


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize(size * 256/224, bicubic) + CenterCrop(size): 256/224 on ImageNet, 36/32 on CIFAR."""
    return transforms.Compose([
        transforms.Resize(int(image_size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        NORMALIZE,
    ])
