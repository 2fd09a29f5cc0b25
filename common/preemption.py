"""Preemption and timeout signals, handled at a step boundary instead of inside the handler.

A signal handler interrupts the training loop anywhere (mid optimizer step, mid collective), so it
only records the request. The loop polls `requested()` at its periodic synchronisation point,
where every rank agrees on the same step, saves a checkpoint, and then calls `hand_over()`: that
runs the handler that was installed before ours (submitit's requeue-and-exit on SLURM) or, with
none, exits with status 128 + signal so that a scheduler requeues the job.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

# SIGUSR2: submitit's time-limit / preemption signal (sbatch --signal=USR2@delay); SIGUSR1 and SIGTERM:
# what other launchers and SLURM's own preemption send.
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
_received: list[int] = []
_previous: dict[int, Callable | int | None] = {}


def _record(signum: int, frame) -> None:
    _received.append(signum)  # nothing else: no I/O, no collective, no lock


def can_install() -> bool:
    """Signal handlers can only be set from the main thread (not from a launcher's worker thread)."""
    return threading.current_thread() is threading.main_thread()


def install(signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
    """Replace the handlers of `signals` by a recorder (main thread only; idempotent)."""
    for signum in signals:
        current = signal.getsignal(signum)
        if current is not _record:
            _previous[signum] = current
            signal.signal(signum, _record)


def request_checkpoint(signum: int = signal.SIGUSR1) -> None:
    """What a launcher's `checkpoint()` may call: ask for a save at the next step boundary."""
    _received.append(signum)


def requested() -> bool:
    return bool(_received)


def reset() -> None:
    _received.clear()


def hand_over() -> None:
    """After the checkpoint is saved: run the previous handler of the first signal received, or exit."""
    signum = _received[0] if _received else signal.SIGTERM
    previous = _previous.get(signum)
    reset()
    if callable(previous):
        previous(signum, None)  # submitit: requeue and sys.exit on rank 0, return on the others
    sys.exit(128 + signum)
