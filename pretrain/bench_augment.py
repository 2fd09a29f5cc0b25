"""Input-pipeline benchmark: two-view Table 10 augmentation, img/s, PIL path against the GPU path.

    python -m pretrain.bench_augment --size 224 --workers 16 --output runs/bench/augment.json

Both paths decode JPEG bytes held in memory in DataLoader workers. The PIL path does all of Table 10
there; the GPU path crops and flips there and runs colour jitter, grayscale, blur and solarize
batched on the device (pretrain/gpu_augment.py). Throughput counts source images (two views each).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common.sampling import EpochSampler, SeededViews
from pretrain.augment import AugmentConfig, pretraining_views, view_probabilities
from pretrain.gpu_augment import augment_views


class JpegBytes(Dataset):
    """Smooth random photos, JPEG-encoded once, decoded on every access (as from disk)."""

    def __init__(self, count: int, width: int, height: int):
        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(count):
            coarse = rng.integers(0, 256, size=(8, 10, 3)).astype(np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            self.blobs.append(buffer.getvalue())

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int):
        return Image.open(io.BytesIO(self.blobs[index])).convert("RGB"), 0


def measure(gpu: bool, size: int, workers: int, batch: int, batches: int, device: torch.device) -> dict:
    config = AugmentConfig(crop_scale_min=0.08, gpu=gpu)
    # One epoch covers the whole measurement and the clock starts at the first batch, when the workers
    # have just started: the batches queued ahead then are at most one per worker, a small share of
    # a long run (use batches >> workers).
    warmup = 1
    base = JpegBytes(batch * (batches + warmup), int(size * 1.4), int(size * 1.15))
    dataset = SeededViews(base, pretraining_views(config, size), seed=0)
    sampler = EpochSampler(len(dataset), batch, seed=0)
    probabilities = view_probabilities(config)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    images, started = 0, None
    for index, (views, _) in enumerate(loader):
        views = [v.to(device, non_blocking=True) for v in views]
        if gpu:
            views = augment_views(views, probabilities, seed=index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index + 1 == warmup:  # every worker has delivered its first batch
            started = time.perf_counter()
        elif started is not None:
            images += batch
    seconds = time.perf_counter() - started
    return {"path": "gpu" if gpu else "pil", "device": str(device), "image_size": size, "workers": workers,
            "batch": batch, "img_per_s": images / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.bench_augment")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150, help="timed batches (keep >> workers)")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = [measure(gpu, arguments.size, arguments.workers, arguments.batch, arguments.batches, device)
               for gpu in (False, True)]
    for result in results:
        print(json.dumps(result), flush=True)
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps({"benchmark": "augmentation", "results": results}, indent=2))


if __name__ == "__main__":
    main()
