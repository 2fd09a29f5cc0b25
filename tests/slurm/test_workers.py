"""The inline executor's worker processes (--jobs N) end with their launcher, even one killed by SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def _processes() -> dict[int, tuple[int, str, str]]:
    """{pid: (parent pid, state, start time)} of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while listed
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])  # ppid, state, starttime
    return table


def _descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of `pid`."""
    table, found, frontier = _processes(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state, started) in table.items():
            if ppid == parent and state != "Z" and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    """Those of `processes` still running (the same pid and start time, not a zombie)."""
    table = _processes()
    return [pid for pid, started in processes.items()
            if pid in table and table[pid][2] == started and table[pid][1] != "Z"]


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_workers_end_with_a_launcher_killed_by_sigkill_and_start_no_stage(tmp_path):
    """kill -9 of a `--jobs 2` launcher while both workers run a pretraining stage: every process it
    started is gone within seconds, and no stage (the evaluations waiting on those runs) starts after."""
    root = tmp_path / "runs"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "slurm", "run", "smoke", "--executor", "inline", "--jobs", "2", "--seeds", "0,1",
         "--output-root", str(root), "--set", "optim.epochs=1000", "run.progress=false",
         "--eval-set", "run.progress=false"],
        cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Both workers are running a stage once both pretraining runs have written their config.
        assert _wait_for(lambda: len(list(root.glob("**/config.yaml"))) >= 2 or launcher.poll() is not None, 60)
        assert launcher.poll() is None, "the launcher ended before its workers ran two stages"
        started = _descendants(launcher.pid)
        workers = [pid for pid in started if "multiprocessing" in _cmdline(pid) and "spawn" in _cmdline(pid)]
        assert len(workers) >= 2, {pid: _cmdline(pid) for pid in started}
        runs = sorted(root.glob("**/config.yaml"))

        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert _wait_for(lambda: not _alive(started), 5), {pid: _cmdline(pid) for pid in _alive(started)}
        time.sleep(1)
        assert sorted(root.glob("**/config.yaml")) == runs  # no stage started after the kill
        assert not list(root.glob("**/eval"))
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)  # whatever outlived it (the failure this test is for)
        except ProcessLookupError:
            pass
        launcher.wait()


def _orphan(code: str) -> tuple[subprocess.Popen, int]:
    """A parent process that starts a child running `code` (with {parent} its pid), prints the child's
    pid and waits; the child prints 'ready' to the parent's stdout once it is set up."""
    parent = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {code!r}.format(parent=os.getpid())], cwd={str(REPOSITORY)!r})
print(child.pid, flush=True)
time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=REPOSITORY,
                               start_new_session=True)
    return process, int(process.stdout.readline())


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_the_watchdog_ends_a_worker_whose_parent_died_without_the_kernels_help(tmp_path):
    """The portable way (no prctl): a thread that sees the parent change ends the worker."""
    ready = tmp_path / "ready"
    code = ("import pathlib, time; from slurm.workers import watch_parent; watch_parent({parent}, 0.1); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    parent, child = _orphan(code)
    try:
        assert _wait_for(ready.exists, 20)
        started = {child: _processes()[child][2]}
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_for(lambda: not _alive(started), 3)
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_worker_whose_launcher_is_gone_starts_nothing():
    """`end_if_orphaned`, checked before each stage: a live parent lets the worker go on, another ends it."""
    code = ("import os; from slurm.workers import end_if_orphaned; end_if_orphaned(os.getppid()); "
            "print('went on', flush=True); end_if_orphaned(os.getppid() + 1); print('started a stage')")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY)
    assert completed.returncode == -signal.SIGKILL and completed.stdout == "went on\n", completed
