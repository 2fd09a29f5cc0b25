"""Decode, crop, resize and flip the views on the training device (`augment.gpu_decode`).

With it the loader workers only read files, parse JPEG headers and draw each view's crop box and
flip (`CropBox`, the same draws as torchvision's RandomResizedCrop + RandomHorizontalFlip under the
same seed, so the crops equal the CPU paths' crops). On the device, `decode_views`:
1. decodes the batch's JPEGs in one call (torchvision.io.decode_jpeg, nvJPEG on CUDA);
2. crops, resizes and flips each view with PIL's antialiased bicubic filter written as two
   matrices per image, so a whole batch is two batched matrix products per view instead of one
   small kernel sequence per image; the first (horizontal) pass is rounded to 8 bits as PIL does.
   Pillow runs the vertical pass first for some shapes, so pixels can differ by a level or two.
The colour augmentations then follow as in `augment.gpu` (pretrain/gpu_augment.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop

from common.encoded_images import EncodedImage, pixels_of
from common.sampling import SeededViews

# torchvision 0.29 marks its image decoding deprecated in favour of TorchCodec. Kept, with torchvision
# pinned: the device pipeline's batched nvJPEG decode_jpeg is what was measured on the H200
# (docs/measurements); TorchCodec's batched GPU decoding has not been measured against it (no GPU was
# lent for that). Its notice on every call is silenced here, for this message only.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range, as in the PIL path
BICUBIC_A = -0.5  # PIL's bicubic kernel coefficient
PADDED_PIXELS = 1024 * 1024  # images up to this size share a padded batch; larger ones go alone


class CropBox:
    """image (PIL or EncodedImage) -> int64 tensor [top, left, height, width, flip]."""

    def __init__(self, scale: tuple[float, float]):
        self.scale = scale

    def __call__(self, image) -> torch.Tensor:
        # RandomResizedCrop.get_params only reads the shape; an expanded 1-element tensor has it for free.
        shape_only = torch.empty(1, 1, 1).expand(3, image.height, image.width)
        top, left, height, width = RandomResizedCrop.get_params(shape_only, list(self.scale), list(RATIO))
        flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip's draw
        return torch.tensor([top, left, height, width, int(flip)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class EncodedViews(SeededViews):
    """(index, epoch) -> ((image payload, crop boxes (V, 5)), label); the payload is an
    EncodedImage's data (JPEG bytes or pixels). Same seeding as SeededViews."""

    def seeded_sample(self, key: tuple[int, int]):
        image, label = self.base[key[0]]
        encoded = pixels_of(image) if isinstance(image, Image.Image) else image
        return (encoded.data, torch.stack(self.draw_views(encoded, key))), label


@dataclass
class EncodedBatch:
    """A collated EncodedViews batch: every payload in one flat uint8 tensor, so a batch crosses from
    a worker in one shared-memory segment (not one per image) and is pinned in one copy.

    flat: (total bytes,) uint8; shapes: (B, 3) int64, (N, 0, 0) for N JPEG bytes, (3, H, W) for
    pixels; boxes: (B, V, 5) int64.
    """

    flat: torch.Tensor
    shapes: torch.Tensor
    boxes: torch.Tensor

    def payloads(self) -> list[torch.Tensor]:
        """The per-image payloads, as views into `flat`."""
        shapes = self.shapes.tolist()
        sizes = [shape[0] if shape[1] == 0 else shape[0] * shape[1] * shape[2] for shape in shapes]
        pieces = self.flat.split(sizes)
        return [piece if shape[1] == 0 else piece.view(*shape) for piece, shape in zip(pieces, shapes)]

    def pin_memory(self) -> "EncodedBatch":  # called by DataLoader(pin_memory=True)
        return EncodedBatch(self.flat.pin_memory(), self.shapes, self.boxes.pin_memory())


def collate_encoded(samples: list) -> tuple[EncodedBatch, torch.Tensor]:
    """DataLoader collate for EncodedViews -> (EncodedBatch, labels (B,))."""
    payloads = [payload for (payload, _), _ in samples]
    shapes = torch.tensor([list(payload.shape) if payload.ndim == 3 else [payload.numel(), 0, 0] for payload in payloads])
    flat = torch.cat([payload.reshape(-1) for payload in payloads])
    boxes = torch.stack([boxes for (_, boxes), _ in samples])
    return EncodedBatch(flat, shapes, boxes), torch.tensor([label for _, label in samples])


def _decode_one(payload: torch.Tensor, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(payload, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # a JPEG variant the device decoder refuses: decode it on the CPU instead
        return decode_jpeg(payload, mode=ImageReadMode.RGB).to(device)


def decode_images(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Payloads (JPEG bytes (N,) or pixels (3, H, W), uint8, on the CPU) -> (3, H, W) uint8 on `device`."""
    images: list[torch.Tensor | None] = [None] * len(payloads)
    jpegs = [index for index, payload in enumerate(payloads) if payload.ndim == 1]
    if jpegs:
        try:
            decoded = decode_jpeg([payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad apple fails the batched call: decode one by one
            decoded = [_decode_one(payloads[i], device) for i in jpegs]
        for index, image in zip(jpegs, decoded):
            images[index] = image
    for index, payload in enumerate(payloads):
        if payload.ndim == 3:
            images[index] = payload.to(device, non_blocking=True)
    return images


def _bicubic(distance: torch.Tensor) -> torch.Tensor:
    x = distance.abs()
    near = ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resampling_matrices(start: torch.Tensor, length: torch.Tensor, input_size: int, output_size: int,
                        flip: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's antialiased bicubic resampling of input[start : start + length] to `output_size` samples,
    one matrix per image: (B,) crops -> (B, output_size, input_size) float32 weights.

    Follows Pillow's precompute_coeffs: the filter widens by the downscaling factor, its window is
    truncated as in C and clipped to the crop, and each output's weights are normalised to sum to 1.
    """
    device = start.device
    scale = (length.float() / output_size).view(-1, 1)  # (B, 1)
    filter_scale = scale.clamp(min=1.0)
    support = 2.0 * filter_scale
    center = (torch.arange(output_size, device=device, dtype=torch.float32).view(1, -1) + 0.5) * scale  # (B, S)
    first = torch.trunc(center - support + 0.5).clamp(min=0)
    last = torch.minimum(torch.trunc(center + support + 0.5), length.float().view(-1, 1))
    position = (torch.arange(input_size, device=device, dtype=torch.float32).view(1, 1, -1)
                - start.float().view(-1, 1, 1))  # crop coordinates, (B, 1, input)
    inside = (position >= first.unsqueeze(-1)) & (position < last.unsqueeze(-1))
    weights = _bicubic((position - center.unsqueeze(-1) + 0.5) / filter_scale.unsqueeze(-1)) * inside
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    if flip is not None:
        weights = torch.where(flip.view(-1, 1, 1).bool(), weights.flip(1), weights)
    return weights


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, 3, H, W) float holding 0..255, boxes (B, 5) [top, left, height, width, flip]
    -> (B, 3, size, size) uint8: each image's box resized as PIL's bicubic resize, then flipped."""
    _, _, height, width = images.shape
    rows = resampling_matrices(boxes[:, 0], boxes[:, 2], height, size)  # (B, S, H)
    columns = resampling_matrices(boxes[:, 1], boxes[:, 3], width, size, flip=boxes[:, 4])  # (B, S, W)
    horizontal = (images @ columns.transpose(1, 2).unsqueeze(1)).round_().clamp_(0, 255)  # (B, 3, H, S)
    return (rows.unsqueeze(1) @ horizontal).round_().clamp_(0, 255).to(torch.uint8)


def _groups(images: list[torch.Tensor]) -> list[list[int]]:
    """Indices batched together: all images up to PADDED_PIXELS in one padded group, larger ones alone."""
    small = [i for i, image in enumerate(images) if image.shape[1] * image.shape[2] <= PADDED_PIXELS]
    large = sorted(set(range(len(images))) - set(small))
    return ([small] if small else []) + [[i] for i in large]


def decode_views(payloads: list[torch.Tensor], boxes: torch.Tensor, sizes: list[int],
                 device: torch.device) -> list[torch.Tensor]:
    """A collated EncodedViews batch -> one (B, 3, size, size) uint8 tensor per view on `device`.

    boxes: (B, V, 5) int64 as drawn by the workers; sizes: the V output sizes.
    """
    images = decode_images(payloads, device)
    boxes = boxes.to(device, non_blocking=True)
    views = [torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=device) for size in sizes]
    for group in _groups(images):
        height = max(images[i].shape[1] for i in group)
        width = max(images[i].shape[2] for i in group)
        padded = torch.zeros(len(group), 3, height, width, device=device)
        for slot, index in enumerate(group):  # the resampling weights are zero over the padding
            padded[slot, :, :images[index].shape[1], :images[index].shape[2]] = images[index]
        rows = torch.tensor(group, device=device)
        for view, (output, size) in enumerate(zip(views, sizes)):
            output[rows] = crop_resize(padded, boxes[rows, view], size)
    return views
