"""kNN search benchmark: seconds per backend for an ImageNet-sized bank (JSON on stdout / --output).

    python -m bench.knn                  # ImageNet size on a GPU, a small size on CPU
    python -m bench.knn --size imagenet  # 1,281,167 x 384 bank, 50,000 queries, all k, top-1/5

Random features with 1000 random labels: the work (one search with k = 200, the weighted votes for
k in {10, 20, 100, 200}) is what a real evaluation does once features exist.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.timing import emit_report, synchronize
from evaluate.knn import KnnConfig, faiss_available, faiss_has_gpu, knn_accuracy

SIZES = {"imagenet": (1_281_167, 50_000, 384), "small": (100_000, 5_000, 384), "tiny": (5_000, 500, 64)}


def time_backend(backend: str, bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, config: KnnConfig, repeats: int) -> dict:
    knn_accuracy(bank, labels, queries[:256], query_labels[:256], 1000, config, backend)  # warm up
    seconds = []
    for _ in range(repeats):
        synchronize(bank.device)
        start = time.perf_counter()
        knn_accuracy(bank, labels, queries, query_labels, 1000, config, backend)
        synchronize(bank.device)
        seconds.append(time.perf_counter() - start)
    return {"backend": backend, "device": str(bank.device), "seconds_best": min(seconds),
            "seconds_all": seconds, "half_precision": config.half_precision and bank.device.type == "cuda"}


def run(size: str, repeats: int) -> dict:
    bank_size, query_size, dim = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(bank_size, dim, generator=generator)
    queries = torch.randn(query_size, dim, generator=generator)
    labels = torch.randint(0, 1000, (bank_size,), generator=generator)
    query_labels = torch.randint(0, 1000, (query_size,), generator=generator)
    config = KnnConfig()
    results = []
    devices = [torch.device("cuda")] if torch.cuda.is_available() else []
    devices.append(torch.device("cpu"))
    for device in devices:
        if device.type == "cpu" and devices[0].type == "cuda" and size == "imagenet":
            continue  # minutes per run on a CPU: not informative next to the GPU numbers
        on_device = bank.to(device)
        backends = ["torch"] + (["faiss"] if faiss_available() and (device.type == "cpu" or faiss_has_gpu()) else [])
        for backend in backends:
            results.append(time_backend(backend, on_device, labels.to(device), queries.to(device),
                                        query_labels.to(device), config, repeats))
            if device.type == "cuda" and backend == "torch":
                results.append(time_backend(backend, on_device, labels.to(device), queries.to(device),
                                            query_labels.to(device), KnnConfig(half_precision=False), repeats))
    return {"benchmark": "knn", "bank": bank_size, "queries": query_size, "dim": dim, "ks": config.ks,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.knn")
    parser.add_argument("--size", choices=sorted(SIZES), default="imagenet" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    emit_report(run(arguments.size, arguments.repeats), arguments.output)


if __name__ == "__main__":
    main()
