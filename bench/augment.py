"""Input-pipeline benchmark: two-view Table 10 augmentation, img/s, for each path in the same run.

    python -m bench.augment --size 224 --workers 16 --output runs/bench/augment.json

The source images are JPEG bytes held in memory (ImageNet-typical 500 x 375 by default), read in
DataLoader workers. Paths:
- pil: the workers decode and do all of Table 10 with PIL (the default on CPU);
- gpu (augment.gpu): the workers decode, crop and flip; colour jitter, grayscale, blur and solarize
  run batched on the device (pretrain/gpu_augment.py);
- gpu_decode (augment.gpu_decode): the workers only parse headers and draw crop boxes; decoding,
  crop, resize and flip run on the device too (pretrain/device_decode.py).
Throughput counts source images (two views each), the views ready on the device.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.timing import synchronize, timed
from common.encoded_images import read_encoded
from common.sampling import EpochSampler, SeededViews
from common.transforms import normalise_uint8
from pretrain.augment import AugmentConfig, pretraining_views, view_probabilities
from pretrain.device_decode import EncodedViews, collate_encoded, decode_images, decode_views
from pretrain.gpu_augment import augment_views

PATHS = ("pil", "gpu", "gpu_decode")


POOL = 128  # distinct source JPEGs, reused cyclically


@functools.lru_cache(maxsize=4)
def jpeg_pool(width: int, height: int) -> tuple[bytes, ...]:
    """Photo-like JPEGs: smooth colour regions plus sensor-like noise, so files have realistic sizes
    (about 100 KB at 500 x 375, quality 90, as ImageNet's) and decode at realistic speeds."""
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(POOL):
        coarse = rng.integers(0, 256, size=(8, 10, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int16)
        noisy = (smooth + rng.normal(0, 18, size=smooth.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return tuple(blobs)


class JpegBytes(Dataset):
    """`count` JPEGs held in memory (cycling over a pool), decoded (or header-parsed) on every
    access, as from disk."""

    def __init__(self, count: int, width: int, height: int, decode: bool = True):
        self.count, self.decode, self.blobs = count, decode, jpeg_pool(width, height)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        blob = self.blobs[index % len(self.blobs)]
        if not self.decode:
            return read_encoded(blob), 0
        return Image.open(io.BytesIO(blob)).convert("RGB"), 0


def measure(path: str, size: int, workers: int, batch: int, batches: int, device: torch.device,
            source_size: tuple[int, int] = (500, 375), compiled: bool = False) -> dict:
    """img/s of one path; source_size is (width, height) of the JPEGs."""
    decode_on_device = path == "gpu_decode"
    config = AugmentConfig(crop_scale_min=0.08, gpu=path != "pil", gpu_decode=decode_on_device, gpu_compile=compiled)
    # One epoch covers the whole measurement and the clock starts at the first batch, when the workers
    # have just started: the batches queued ahead then are at most one per worker, a small share of
    # a long run (use batches >> workers).
    warmup = 3 if compiled else 1  # compiled: the first batches compile (and recompile for view 2's branches)
    base = JpegBytes(batch * (batches + warmup), *source_size, decode=not decode_on_device)
    transforms = pretraining_views(config, size)
    dataset = (EncodedViews if decode_on_device else SeededViews)(base, transforms, seed=0)
    sampler = EpochSampler(len(dataset), batch, seed=0)
    probabilities = view_probabilities(config)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", collate_fn=collate_encoded if decode_on_device else None)
    images, started = 0, None
    for index, (views, _) in enumerate(loader):
        if decode_on_device:
            views = decode_views(views.payloads(), views.boxes, [size, size], device)
        else:
            views = [v.to(device, non_blocking=True) for v in views]
        views = (augment_views(views, probabilities, seed=index, compiled=compiled) if config.gpu
                 else [normalise_uint8(view) for view in views])
        synchronize(device)
        if index + 1 == warmup:  # every worker has delivered its first batch
            started = time.perf_counter()
        elif started is not None:
            images += batch
    seconds = time.perf_counter() - started
    mean_kib = sum(map(len, base.blobs)) / len(base.blobs) / 1024
    return {"path": path, "device": str(device), "image_size": size, "source_size": list(source_size),
            "source_jpeg_kib": round(mean_kib, 1),
            "workers": workers, "batch": batch, "gpu_compile": compiled, "img_per_s": images / seconds}


def stage_costs(size: int, batch: int, device: torch.device, source_size: tuple[int, int] = (500, 375),
                repeats: int = 5) -> dict:
    """Where the pipeline's time goes: each stage timed alone, as img/s one worker (CPU stages, per
    process) or the main process (device stages) could sustain."""
    blobs = jpeg_pool(*source_size)[:batch]
    images = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs]
    encoded = [read_encoded(blob) for blob in blobs]
    pil_views = pretraining_views(AugmentConfig(), size)
    crop_views = pretraining_views(AugmentConfig(gpu=True), size)
    box_views = pretraining_views(AugmentConfig(gpu=True, gpu_decode=True), size)
    cpu = torch.device("cpu")
    per_image = {
        "worker_pil_decode": lambda: [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs],
        "worker_pil_table10_two_views": lambda: [[view(image) for view in pil_views] for image in images],
        "worker_pil_crop_flip_two_views": lambda: [[view(image) for view in crop_views] for image in images],
        "worker_header_and_boxes": lambda: [[view(read_encoded(blob)) for view in box_views] for blob in blobs],
    }
    result = {name: len(blobs) / timed(function, cpu, 1, 1) for name, function in per_image.items()}
    payloads = [item.data for item in encoded]
    boxes = torch.stack([torch.stack([view(item) for view in box_views]) for item in encoded])
    decoded = decode_images(payloads, device)
    uint8_views = decode_views(payloads, boxes, [size, size], device)
    probabilities = view_probabilities(AugmentConfig())
    device_stages = {
        "device_jpeg_decode": lambda: decode_images(payloads, device),
        "device_crop_resize_two_views": lambda: decode_views(decoded, boxes, [size, size], device),  # no decoding left
        "device_colour_two_views": lambda: augment_views(uint8_views, probabilities, seed=0),
        "device_colour_two_views_compiled": lambda: augment_views(uint8_views, probabilities, seed=0, compiled=True),
    }
    for name, function in device_stages.items():
        result[name] = len(blobs) / timed(function, device, 1, repeats)
    return {"unit": "img/s of one process", "batch": len(blobs), **result}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.augment")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150, help="timed batches (keep >> workers)")
    parser.add_argument("--source-size", default="500x375", help="WIDTHxHEIGHT of the source JPEGs")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated from {', '.join(PATHS)}")
    parser.add_argument("--gpu-compile", action="store_true", help="torch.compile the device colour augmentations")
    parser.add_argument("--stages", action="store_true", help="also time each stage alone (where the time goes)")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    source_size = tuple(int(side) for side in arguments.source_size.lower().split("x"))
    results = [measure(path, arguments.size, arguments.workers, arguments.batch, arguments.batches, device, source_size,
                       arguments.gpu_compile and path != "pil")
               for path in arguments.paths.replace(",", " ").split()]
    if arguments.stages:
        results.append({"path": "stages", **stage_costs(arguments.size, arguments.batch, device, source_size)})
    for result in results:
        print(json.dumps(result), flush=True)
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps({"benchmark": "augmentation", "results": results}, indent=2))


if __name__ == "__main__":
    main()
