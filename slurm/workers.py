"""The inline executor's worker processes (`--jobs N`) end with the launcher that started them.

A launcher killed outright (`kill -9`, the OOM killer) runs no cleanup, and its workers would go on
running stages, even start one that was already handed to them, beside the launch that replaces it
(the run locks keep the runs safe, not the machine's cores). So each worker ends itself when its
parent is gone, by two means:
- Linux: the kernel sends the worker SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG), at once;
- elsewhere, or where prctl fails: a watchdog thread sees the worker's parent process change
  (an orphan is adopted by init or a subreaper) within `POLL_SECONDS`.
A worker also checks its parent before each stage it starts (`end_if_orphaned`).

Standard library only: a worker runs this before it imports any stage.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5


def end_with_parent(parent_pid: int) -> None:
    """A worker's initializer: end this process when `parent_pid`, its parent, dies. The kernel's signal
    follows the thread that started the worker (the launcher's thread running the pool, alive as long
    as the pool is), and is only armed from now on: a parent that died before is caught by the check
    that follows."""
    _ask_the_kernel(signal.SIGKILL)
    watch_parent(parent_pid)
    end_if_orphaned(parent_pid)


def _ask_the_kernel(signum: int) -> bool:
    """Have Linux send `signum` to this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no C library to load, or no prctl in it
        return False


def watch_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process once its parent is no longer `parent_pid`."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        _end()

    thread = threading.Thread(target=watch, name="end-with-parent", daemon=True)
    thread.start()
    return thread


def end_if_orphaned(parent_pid: int) -> None:
    """End this process now if its parent is no longer `parent_pid`: nothing left to report to."""
    if os.getppid() != parent_pid:
        _end()


def _end() -> None:
    # SIGKILL, as the launcher got: no cleanup that could outlast it; the run directory's lock is
    # released by the OS, and the next launch resumes the run from its last checkpoint.
    os.kill(os.getpid(), signal.SIGKILL)
