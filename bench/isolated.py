"""Run one measurement in a forked child process with a wall-clock budget (bench/gpu_check.py).

Why a fork: the parent imports torch and the stages once and never touches the device, so each
child starts with the imports done (seconds saved per part on CPU smoke runs) but with a fresh CUDA
context, fresh compile caches and a fresh allocator (one part's state never reaches the next one's
numbers). The child leads its own process group, so on timeout its loader workers and subprocesses
are killed with it.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Outcome:
    """What became of one part: `status` is ok, timeout or failed; `result` is what the part
    returned (ok only); `error` the last lines of its traceback (failed only)."""

    status: str
    seconds: float
    budget_s: float
    result: dict | None = None
    error: str = ""

    def as_record(self) -> dict:
        return {"status": self.status, "seconds": round(self.seconds, 1), "budget_s": self.budget_s,
                **({"error": self.error} if self.error else {})}


def _child(function: Callable[[], dict], result_path: Path) -> None:
    os.setsid()  # its own process group: killed as a whole on timeout
    try:
        payload = {"result": function()}
    except BaseException:  # noqa: BLE001 - reported to the parent, whatever it was
        payload = {"error": "".join(traceback.format_exc().splitlines(keepends=True)[-12:])}
    result_path.write_text(json.dumps(payload, default=str))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_isolated(function: Callable[[], dict], budget_s: float, result_path: Path) -> Outcome:
    """Run `function` in a forked child; kill it (and its process group) after `budget_s` seconds.
    The function returns a JSON-serialisable dict, which comes back through `result_path`."""
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    process = multiprocessing.get_context("fork").Process(target=_child, args=(function, result_path))
    started = time.perf_counter()
    process.start()
    process.join(budget_s)
    seconds = time.perf_counter() - started
    if process.is_alive():
        _kill_group(process.pid)
        process.join()
        return Outcome("timeout", seconds, budget_s)
    _kill_group(process.pid)  # loader workers or subprocesses the part left behind
    if not result_path.is_file():
        return Outcome("failed", seconds, budget_s, error=f"the part exited with status {process.exitcode} "
                                                          "and wrote no result")
    payload = json.loads(result_path.read_text())
    if "error" in payload:
        return Outcome("failed", seconds, budget_s, error=payload["error"])
    return Outcome("ok", seconds, budget_s, payload["result"])
