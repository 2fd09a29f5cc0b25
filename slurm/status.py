"""`make status`: every run under an output root, how far it got and what SLURM says of its job.

States: done (result.json), running (a live process holds the run's lock), queued (its recorded job
is pending or running in SLURM, or in a state SLURM cannot tell), failed (its job ended without a
result: the last lines of its error log follow), stale (no process, no job, no result).
"""
from __future__ import annotations

import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from common.rundir import RunDirectory
from slurm.graph import ENDED_STATES, job_state


@dataclass
class RunStatus:
    stage: str
    state: str
    run_dir: Path
    progress: str = ""  # "step 4000/150000 (3%) 2551 /s ETA 15:53:10, last metric 12 s ago"
    job: str = ""  # "job 1001 RUNNING log: <path>"
    error: tuple[str, ...] = ()


def _lock_is_held(run_dir: Path) -> bool:
    path = run_dir / ".lock"
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _progress(run_dir: Path, now: float) -> str:
    records = [r for r in RunDirectory(run_dir).read_metrics() if "time" in r]
    if not records:
        return ""
    last, first = records[-1], records[0]
    unit = "step" if "step" in last else "epoch"
    position, total = last.get(unit, 0), last.get("total", 0)
    text = f"{unit} {position:g}" + (f"/{total} ({100 * position / total:.0f}%)" if total else "")
    elapsed = last["time"] - first["time"]
    if elapsed > 0 and position > first.get(unit, 0):
        rate = (position - first.get(unit, 0)) / elapsed
        text += f" {rate:.3g} {unit}/s"
        if total:
            remaining = int((total - position) / rate)
            text += f" ETA {remaining // 3600}:{remaining // 60 % 60:02d}:{remaining % 60:02d}"
    return text + f", last metric {int(now - last['time'])} s ago"


def _jobs(output_root: Path) -> dict[str, dict]:
    """{stage key: registry entry} of every launch under output_root."""
    entries = {}
    for record in Path(output_root).glob(".jobs/*/*.json"):
        entries[record.stem.replace("__", "/")] = json.loads(record.read_text())
    return entries


def run_statuses(output_root: Path) -> list[RunStatus]:
    now, jobs, statuses = time.time(), _jobs(output_root), []
    for config_path in sorted(Path(output_root).glob("**/config.yaml")):
        run_dir = config_path.parent
        try:
            provenance = json.loads((run_dir / "provenance.json").read_text())
        except (OSError, ValueError):
            provenance = {}
        status = RunStatus(provenance.get("stage") or "run", "stale", run_dir, _progress(run_dir, now))
        experiment = OmegaConf.load(config_path).get("run", {}).get("experiment", "")  # the plan's stage key
        entry = jobs.get(experiment)
        scheduler = job_state(entry["job_id"], entry["log_folder"]) if entry else ""
        if entry:
            log = Path(entry["log_folder"]) / f"{entry['job_id']}_0_log.err"
            status.job = f"job {entry['job_id']} {scheduler} log: {log}"
        if (run_dir / "result.json").is_file():
            status.state = "done"
        elif _lock_is_held(run_dir):
            status.state = "running"
        elif entry and scheduler in ENDED_STATES:
            status.state = "failed"
            status.error = tuple(log.read_text(errors="replace").splitlines()[-5:]) if log.is_file() else ()
        elif entry:
            status.state = "queued"
        statuses.append(status)
    return statuses


def print_status(output_root: Path) -> None:
    statuses = run_statuses(output_root)
    if not statuses:
        print(f"no runs under {output_root}")
    for status in statuses:
        print(f"{status.state:8} {status.stage:20} {status.run_dir.relative_to(output_root)}")
        for detail in (status.progress, status.job, *status.error):
            if detail:
                print(f"{'':8} {detail}")
