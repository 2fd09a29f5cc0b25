"""`make status`: every run under an output root, how far it got and what SLURM says of its job.

States: done (result.json), running (a live process holds the run's lock), queued (its recorded job
is pending or running in SLURM, or in a state SLURM cannot tell), failed (its job ended without a
result: the last lines of its error log follow), stale (no process, no job, no result). Submitted jobs
whose run has no directory yet (waiting, or failed before the run began) are listed by stage key.
What cannot be read (a damaged job record or config, metrics records whose time is not a number) is
skipped and named under the listing; every other run is still listed.
"""
from __future__ import annotations

import fcntl
import json
import numbers
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.rundir import RunDirectory
from plans.launches import launch_file
from slurm.graph import ENDED_STATES, job_state, read_job_record


@dataclass
class RunStatus:
    stage: str
    state: str
    run_dir: Path | None  # None: a submitted job whose run has no directory yet
    progress: str = ""  # "step 4000/150000 (3%) 2551 /s ETA 15:53:10, last metric 12 s ago"
    job: str = ""  # "job 1001 PENDING (requeued 2 times, waiting for BeginTime, may start ...) log: <path>"
    error: tuple[str, ...] = ()
    experiment: str = ""  # the plan's stage key, shown where there is no run directory


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


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _timed_records(run_dir: Path) -> tuple[list[dict], int]:
    """The metrics records that carry a numeric time and position, and how many others carry a time."""
    records = [r for r in RunDirectory(run_dir).read_metrics() if "time" in r]
    usable = [r for r in records if all(_is_number(r.get(key, 0)) for key in ("time", "step", "epoch", "total"))]
    return usable, len(records) - len(usable)


def _progress(records: list[dict], now: float) -> str:
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


def _waiting(job_id: str) -> str:
    """What the controller says of an active job besides its state: how often it was requeued (a time
    limit or a preemption), why it waits and when it may start; "" when it does not know the job."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):  # no scontrol here, or no answer
        return ""
    fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout)) if shown.returncode == 0 else {}
    details = []
    restarts = int(fields["Restarts"]) if fields.get("Restarts", "").isdigit() else 0
    if restarts:
        details.append(f"requeued {restarts} time{'s' if restarts > 1 else ''}")
    if fields.get("JobState") == "PENDING" and fields.get("Reason", "None") != "None":
        details.append(f"waiting for {fields['Reason']}")
        if fields.get("StartTime", "Unknown") not in ("Unknown", "None"):
            details.append(f"may start {fields['StartTime']}")
    return f" ({', '.join(details)})" if details else ""


def _jobs(output_root: Path, skipped: list[str]) -> dict[str, dict]:
    """{stage key: registry entry} of every launch under output_root; damaged records are skipped."""
    entries = {}
    for record in sorted(Path(output_root).glob(".jobs/*/*.json")):
        if record == launch_file(output_root, record.parent.name):  # what was launched, not a job
            continue
        try:
            entries[record.stem.replace("__", "/")] = read_job_record(record)
        except ValueError as error:
            skipped.append(str(error))
    return entries


def _experiment(config_path: Path) -> str:
    """The plan's stage key recorded in a run's config.yaml; ValueError when the file cannot be read."""
    try:
        config = OmegaConf.load(config_path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise ValueError(f"{config_path}: not readable YAML ({str(error).splitlines()[0] if str(error) else error!r})")
    if not isinstance(config, DictConfig):
        raise ValueError(f"{config_path}: not a mapping of config sections")
    run = config.get("run", {})
    return str(run.get("experiment", "") or "") if isinstance(run, DictConfig) else ""


def _provenance(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_statuses(output_root: Path, skipped: list[str] | None = None) -> list[RunStatus]:
    """The status of every run under `output_root`, then of every submitted job whose run has no
    directory (a job waiting for its turn, or one that failed before its run began); what cannot be
    read is named in `skipped`."""
    skipped = [] if skipped is None else skipped
    now, jobs, statuses, listed = time.time(), _jobs(output_root, skipped), [], set()
    for config_path in sorted(Path(output_root).glob("**/config.yaml")):
        run_dir = config_path.parent
        try:
            experiment = _experiment(config_path)  # the plan's stage key
        except ValueError as error:
            skipped.append(f"{error}; the run is not listed")
            continue
        listed.add(experiment)
        records, unusable = _timed_records(run_dir)
        if unusable:
            skipped.append(f"{run_dir / 'metrics.jsonl'}: {unusable} record(s) whose time, step, epoch or total "
                           "is not a number, left out of the progress")
        status = RunStatus(_provenance(run_dir).get("stage") or "run", "stale", run_dir, _progress(records, now))
        entry = jobs.get(experiment)
        scheduler = _describe_job(status, entry) if entry else ""
        if (run_dir / "result.json").is_file():
            status.state = "done"
        elif _lock_is_held(run_dir):
            status.state = "running"
        elif entry:
            status.state = "failed" if scheduler in ENDED_STATES else "queued"
        if status.state != "failed":
            status.error = ()
        statuses.append(status)
    for experiment, entry in jobs.items():
        if experiment in listed:
            continue
        status = RunStatus(experiment.rsplit("/", 1)[-1], "queued", None, experiment=experiment)
        scheduler = _describe_job(status, entry)
        if scheduler == "COMPLETED":  # its run lies elsewhere (another plan's stage of the same config)
            continue
        status.state = "failed" if scheduler in ENDED_STATES else "queued"
        statuses.append(status)
    return statuses


def _describe_job(status: RunStatus, entry: dict) -> str:
    """Fill in the job line (and the error log's last lines, for an ended job) of `status` from its
    registry entry; returns the job's state."""
    scheduler = job_state(entry["job_id"])
    log = Path(entry["log_folder"]) / f"{entry['job_id']}_0_log.err"
    waiting = _waiting(entry["job_id"]) if scheduler not in ENDED_STATES else ""
    status.job = f"job {entry['job_id']} {scheduler}{waiting} log: {log}"
    if scheduler in ENDED_STATES and log.is_file():
        status.error = tuple(log.read_text(errors="replace").splitlines()[-5:])
    return scheduler


def print_status(output_root: Path) -> None:
    skipped: list[str] = []
    statuses = run_statuses(output_root, skipped)
    if not statuses:
        print(f"no runs under {output_root}")
    for status in statuses:
        where = (status.run_dir.relative_to(output_root) if status.run_dir
                 else f"{status.experiment} (no run directory yet)")
        print(f"{status.state:8} {status.stage:20} {where}")
        for detail in (status.progress, status.job, *status.error):
            if detail:
                print(f"{'':8} {detail}")
    for reason in skipped:
        print(f"skipped  {reason}")
