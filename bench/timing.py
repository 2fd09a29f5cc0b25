"""Wall-clock timing of device work for the benchmarks: synchronise, then read the host clock."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Mean seconds per call of `function` after `warmup` untimed calls; one synchronisation at each end."""
    for _ in range(warmup):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def emit_report(report: dict, output: Path | None) -> None:
    """Print a benchmark's JSON report, and write it to `output` too when one is given."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
