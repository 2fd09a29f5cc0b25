"""`make bench` smoke runs on CPU: the JSON fields exist and hold sane values (no timing assertions)."""
from __future__ import annotations

import torch

from evaluate.bench import run as knn_bench
from pretrain.bench import bench_config


def test_pretrain_step_bench_reports_every_field():
    result = bench_config("debug", torch.device("cpu"), warmup=1, steps=1, variant="baseline")
    assert result["losses_finite"] and result["img_per_s"] > 0 and result["gflop_per_image"] > 0
    assert result["encoder_bound_img_per_s"] > 0 and result["ratio_to_encoder_bound"] > 0
    assert result["mfu"] is None and result["peak_memory_gib"] is None  # CPU: no peak FLOPs or CUDA memory


def test_knn_bench_times_each_available_backend():
    report = knn_bench("tiny", repeats=1)
    assert report["bank"] == 5000 and {r["backend"] for r in report["results"]} >= {"torch"}
    assert all(r["seconds_best"] > 0 for r in report["results"])


def test_augmentation_bench_runs_both_paths():
    from pretrain.bench_augment import measure

    results = [measure(gpu, 32, 0, 8, 2, torch.device("cpu")) for gpu in (False, True)]
    assert [r["path"] for r in results] == ["pil", "gpu"] and all(r["img_per_s"] > 0 for r in results)
