"""Frozen-encoder features of a split (train, validation or test), in dataset order, cached on disk.

Under data parallelism each rank encodes one contiguous shard and the shards are gathered, so the
result is the same tensor whatever the number of processes. The cache key covers the encoder
weights' digest, the feature kind, the transform and the dataset (with the fingerprint of its images
for folder datasets), so the kNN and linear protocols
of one checkpoint share one extraction.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from common import dist
from common.checkpoint import atomic_torch_save, load_torch, remove_stale_temporaries
from common.datasets import DataConfig, build_dataset, dataset_fingerprint
from common.transforms import eval_transform
from evaluate.configs import FeatureConfig

def encode(encoder: nn.Module, images: torch.Tensor, kind: str, last_n: int) -> torch.Tensor:
    """images: (B, 3, H, W) -> features (B, D) or (B, last_n * D) for cls_last_n."""
    if kind == "cls":
        return encoder(images)
    if kind == "mean_patch":
        tokens = encoder.forward_features(images)  # (B, 1 + T, D) after the final norm
        return tokens[:, encoder.num_prefix_tokens:].mean(dim=1)
    layers = encoder.get_intermediate_layers(images, n=last_n, return_prefix_tokens=True, norm=True)
    return torch.cat([prefix[:, 0] for _, prefix in layers], dim=1)


@torch.no_grad()
def extract(encoder: nn.Module, dataset: Dataset, config: FeatureConfig, device: torch.device,
            num_workers: int = 0, description: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image of `dataset` (yielding (image tensor, label)).

    Returns features (N, D) float32 and labels (N,) long, on the CPU, in dataset order.
    """
    encoder = encoder.to(device).eval()
    size, rank, world = len(dataset), dist.rank(), dist.world_size()
    shard = math.ceil(size / world)
    indices = range(rank * shard, min((rank + 1) * shard, size))
    loader = DataLoader(Subset(dataset, indices), batch_size=config.batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    features, labels = [], []
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    # A bar on a terminal only: in a batch log, bar redraws are noise.
    for images, targets in tqdm(loader, desc=description, disable=not (dist.is_main_process() and sys.stderr.isatty()),
                                dynamic_ncols=True, leave=False):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = encode(encoder, images.to(device, non_blocking=True), config.kind, config.last_n)
        features.append(output.float())
        labels.append(targets.to(device))
    features_local = torch.cat(features) if features else torch.empty(0, 0, device=device)
    labels_local = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=device)
    if world == 1:
        return features_local.cpu(), labels_local.cpu()
    # Pad every shard to the same length, gather, then drop the padding.
    width = encode(encoder, dataset[0][0].unsqueeze(0).to(device), config.kind, config.last_n).shape[1]
    padded = torch.zeros(shard, width, device=device)
    padded[: len(features_local)] = features_local
    padded_labels = torch.full((shard,), -1, dtype=torch.long, device=device)
    padded_labels[: len(labels_local)] = labels_local
    gathered = dist.all_gather_no_grad(padded)[:size]
    gathered_labels = dist.all_gather_no_grad(padded_labels)[:size]
    return gathered.cpu(), gathered_labels.cpu()


def cache_key(encoder_digest: str, config: FeatureConfig, data: DataConfig, split: str, image_size: int) -> str:
    relevant = {"encoder": encoder_digest, "kind": config.kind,
                "last_n": config.last_n if config.kind == "cls_last_n" else 0,
                "transform": f"resize{int(image_size * 256 / 224)}-center{image_size}-bicubic-imagenet-norm",
                "dataset": data.dataset, "split": split,
                "subset": data.test_subset if split == "test" else data.train_subset,
                "synthetic": [data.synthetic_train_size, data.synthetic_test_size, data.synthetic_classes,
                              data.synthetic_image_size] if data.dataset == "synthetic" else None}
    if split != "test" and data.validation_size:  # the training images without (or only) the held-out ones
        relevant["validation_size"] = data.validation_size
    fingerprint = dataset_fingerprint(data)
    if fingerprint:  # folder datasets: which images, wherever they are mounted
        relevant["images"] = fingerprint
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def features_for(encoder: nn.Module, encoder_digest: str, data: DataConfig, split: str, image_size: int,
                 config: FeatureConfig, device: torch.device,
                 cache_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one split with the evaluation transform, from the cache when present."""
    path = None
    if cache_dir is not None and config.cache:
        path = Path(cache_dir) / f"{split}-{cache_key(encoder_digest, config, data, split, image_size)}.pt"
        if path.is_file():
            try:
                cached = load_torch(path)
                return cached["features"], cached["labels"]
            except Exception as error:  # a damaged cache is only a cache: compute it again
                warnings.warn(f"feature cache {path} is unreadable ({type(error).__name__}); recomputing it")
        remove_stale_temporaries(Path(cache_dir))
    dataset = build_dataset(data, split, eval_transform(image_size))
    features, labels = extract(encoder, dataset, config, device, data.num_workers, f"{split} features")
    if path is not None and dist.is_main_process():
        atomic_torch_save({"features": features, "labels": labels, "meta": asdict(config)}, path)
    return features, labels
