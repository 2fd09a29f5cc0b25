"""Device decoding (augment.gpu_decode): same crops as the CPU paths, PIL's resize within 2 levels.

Pillow runs the vertical pass first for some shapes and rounds between the passes; the device path
always runs the horizontal pass first, so a pixel can differ by a level or two from that rounding.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from common.encoded_images import read_encoded
from common.sampling import SeededViews
from pretrain import device_decode
from pretrain.augment import AugmentConfig, pretraining_views
from pretrain.device_decode import EncodedViews, collate_encoded, crop_resize, decode_views


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colours plus noise: edges and texture for the resampling filter to get wrong."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse).astype(np.int16) + rng.integers(-25, 25, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def test_crop_resize_flip_matches_pil_within_two_levels():
    rng = np.random.default_rng(0)
    mean_differences = []
    for _ in range(12):
        width, height = (int(side) for side in rng.integers(30, 260, 2))
        image = _photo(rng, width, height)
        crop_height, crop_width = int(rng.integers(4, height + 1)), int(rng.integers(4, width + 1))
        top, left = int(rng.integers(0, height - crop_height + 1)), int(rng.integers(0, width - crop_width + 1))
        flip, size = int(rng.integers(0, 2)), int(rng.choice([16, 32, 96, 224]))  # down- and upscaling
        reference = image.crop((left, top, left + crop_width, top + crop_height)).resize((size, size), Image.BICUBIC)
        if flip:
            reference = reference.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None]
        ours = crop_resize(pixels, torch.tensor([[top, left, crop_height, crop_width, flip]]), size)[0]
        difference = (ours.int() - torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1).int()).abs()
        assert difference.max() <= 2
        mean_differences.append(difference.float().mean().item())
    assert np.mean(mean_differences) < 0.15


class _JpegFiles(torch.utils.data.Dataset):
    def __init__(self, blobs: list[bytes], decode: bool):
        self.blobs, self.decode = blobs, decode

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int):
        if self.decode:
            return Image.open(io.BytesIO(self.blobs[index])).convert("RGB"), index
        return read_encoded(self.blobs[index]), index


def test_device_decoded_views_equal_the_cpu_crop_path():
    """Same seed -> same crop boxes and flips as RandomResizedCrop + RandomHorizontalFlip on the worker;
    pixels within the decoders' and resamplers' rounding."""
    rng = np.random.default_rng(1)
    blobs = []
    for index in range(6):
        buffer = io.BytesIO()
        image = _photo(rng, 90 + 13 * index, 70 + 7 * index)
        (image.convert("L") if index == 5 else image).save(buffer, format="JPEG", quality=92)  # one grayscale
        blobs.append(buffer.getvalue())
    cpu_config = AugmentConfig(gpu=True)
    device_config = AugmentConfig(gpu=True, gpu_decode=True, num_local_crops=1, local_crop_size=24)
    cpu = SeededViews(_JpegFiles(blobs, decode=True), pretraining_views(cpu_config, 48), seed=3)
    device = EncodedViews(_JpegFiles(blobs, decode=False), pretraining_views(device_config, 48), seed=3)
    keys = [(index, 2) for index in range(len(blobs))]
    batch, labels = collate_encoded([device[key] for key in keys])
    payloads, boxes = batch.payloads(), batch.boxes
    assert all(payload.ndim == 1 for payload in payloads) and labels.tolist() == list(range(6))
    views = decode_views(payloads, boxes, [48, 48, 24], torch.device("cpu"))
    assert [tuple(v.shape) for v in views] == [(6, 3, 48, 48)] * 2 + [(6, 3, 24, 24)] and views[0].dtype == torch.uint8
    for key, index in zip(keys, range(6)):
        expected, _ = cpu[key]
        for view in range(2):
            difference = (views[view][index].int() - expected[view].int()).abs()
            assert difference.max() <= 2 and difference.float().mean() < 0.3


def test_large_images_are_resized_alone_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(2)
    payloads = [torch.from_numpy(np.asarray(_photo(rng, w, h)).copy()).permute(2, 0, 1).contiguous()
                for w, h in ((60, 40), (200, 150), (50, 90))]
    boxes = torch.tensor([[[0, 0, 40, 60, 0]], [[10, 20, 120, 150, 1]], [[5, 5, 60, 40, 0]]])
    together = decode_views(payloads, boxes, [32], torch.device("cpu"))[0]
    monkeypatch.setattr(device_decode, "PADDED_PIXELS", 100 * 100)  # the 200 x 150 image now goes alone
    assert device_decode._groups([p for p in payloads]) == [[0, 2], [1]]
    assert torch.equal(decode_views(payloads, boxes, [32], torch.device("cpu"))[0], together)


def test_workers_send_jpeg_bytes_and_decode_everything_else(tmp_path):
    gray, cmyk, png, truncated = (io.BytesIO() for _ in range(4))
    Image.new("L", (20, 10), 128).save(gray, format="JPEG")
    Image.new("CMYK", (20, 10), (10, 20, 30, 40)).save(cmyk, format="JPEG")
    Image.new("RGB", (20, 10), (1, 2, 3)).save(png, format="PNG")
    Image.effect_noise((64, 64), 50).convert("RGB").save(truncated, format="JPEG", quality=95)
    assert read_encoded(gray.getvalue()).is_jpeg
    for pixels in (read_encoded(cmyk.getvalue()), read_encoded(png.getvalue())):
        assert not pixels.is_jpeg and tuple(pixels.data.shape) == (3, 10, 20)
    with pytest.raises(OSError):  # cut short: no end-of-image marker, so PIL decodes it here and fails
        read_encoded(truncated.getvalue()[:300])


def test_pixel_payloads_travel_with_jpeg_ones_and_give_the_same_views():
    """PNG/CMYK files and in-memory datasets reach the device as pixels inside the same flat batch;
    decoded by the same CPU decoder, a JPEG and its pixels give identical views."""
    from torchvision.io import decode_jpeg

    from common.encoded_images import EncodedImage

    rng = np.random.default_rng(4)
    blobs = []
    for index in range(5):
        buffer = io.BytesIO()
        _photo(rng, 80 + 9 * index, 60).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())

    class Mixed(_JpegFiles):  # odd indices arrive as pixels
        def __getitem__(self, index: int):
            encoded = read_encoded(self.blobs[index])
            if index % 2:
                encoded = EncodedImage(decode_jpeg(encoded.data), encoded.height, encoded.width)
            return encoded, index

    transforms = pretraining_views(AugmentConfig(gpu=True, gpu_decode=True), 32)
    outputs = []
    for base in (_JpegFiles(blobs, decode=False), Mixed(blobs, decode=False)):
        batch, _ = collate_encoded([EncodedViews(base, transforms, seed=0)[(index, 0)] for index in range(5)])
        payloads = batch.payloads()
        assert [p.ndim for p in payloads] == ([1] * 5 if type(base) is _JpegFiles else [1, 3, 1, 3, 1])
        outputs.append(decode_views(payloads, batch.boxes, [32, 32], torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
