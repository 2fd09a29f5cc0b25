"""Images as loader workers send them when the training device decodes: JPEG bytes, else pixels.

A worker reads the file and parses only its header. A complete baseline/progressive JPEG in RGB or
grayscale travels as its bytes (the device decodes it, `pretrain/device_decode.py`); anything else
(PNG, CMYK JPEG, a file cut short) is decoded on the worker with PIL, so broken files fail there,
exactly as in the PIL path, and travel as pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

JPEG_END_OF_IMAGE = b"\xff\xd9"


@dataclass
class EncodedImage:
    """data: (N,) uint8 JPEG bytes, or (3, H, W) uint8 RGB pixels; height and width in pixels."""

    data: torch.Tensor
    height: int
    width: int

    @property
    def is_jpeg(self) -> bool:
        return self.data.ndim == 1


def _complete_jpeg(data: bytes) -> bool:
    # A truncated JPEG lacks its end-of-image marker; some writers pad after it with zeros or newlines.
    return data.rstrip(b"\x00\r\n ").endswith(JPEG_END_OF_IMAGE)


# PIL's 16-bit grayscale modes ("I" is how some Pillow versions open 16-bit PNGs).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16-bit grayscale is scaled (v * 255 / 65535, rounded): PIL's own
    convert clips it at 255, which turns almost every pixel of a 16-bit PNG white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    return image.convert("RGB")


def pixels_of(image: Image.Image) -> EncodedImage:
    """A decoded PIL image as an RGB pixel payload."""
    pixels = torch.from_numpy(np.array(to_rgb(image)))  # np.array copies into a writable array
    return EncodedImage(pixels.permute(2, 0, 1).contiguous(), image.height, image.width)


def read_encoded(data: bytes) -> EncodedImage:
    """File contents -> EncodedImage. Raises (OSError, ValueError, ...) as PIL does on a broken file."""
    with Image.open(io.BytesIO(data)) as header:  # parses the header only
        if header.format == "JPEG" and header.mode in ("RGB", "L") and _complete_jpeg(data):
            return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), header.height, header.width)
        return pixels_of(header)  # forces the full decode: truncation and corruption fail here
