"""`make status`: done / running / queued / failed / stale, progress with ETA, the job and its log."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.rundir import RunDirectory
from slurm.graph import JobRegistry
from slurm.status import print_status, run_statuses

SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
case "$*" in *2001*) echo "2001|PENDING|";; *2002*) echo "2002|FAILED|node1";; esac
"""
# The controller's view of job 2001: a job that was requeued twice and waits for its begin time.
SCONTROL = """#!/bin/sh
case "$*" in
  *2001*) echo "JobId=2001 JobName=p JobState=PENDING Reason=BeginTime Dependency=(null) Restarts=2 \
StartTime=2026-01-01T10:00:00 EndTime=Unknown";;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;
esac
"""


def _run(root: Path, name: str, experiment: str, records: list[dict] = ()) -> Path:
    run = RunDirectory(root / name)
    run.path.mkdir(parents=True)
    (run.path / "config.yaml").write_text(f"run:\n  experiment: {experiment}\n")
    (run.path / "provenance.json").write_text(json.dumps({"stage": "pretrain"}))
    for record in records:
        run.append_metrics(record)
    return run.path


def test_status_states_progress_and_errors(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(SACCT)
    (bin_dir / "sacct").chmod(0o755)
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "squeue").chmod(0o755)
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root, now = tmp_path / "runs", time.time()
    done = _run(root, "done", "p/done")
    (done / "result.json").write_text("{}")
    running = _run(root, "running", "p/running", [{"step": 100, "total": 1000, "time": now - 100},
                                                  {"step": 300, "total": 1000, "time": now - 10}])
    _run(root, "queued", "p/queued")
    _run(root, "failed", "p/failed", [{"step": 5, "total": 10, "time": now - 3600}])
    _run(root, "stale", "p/stale")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "2002_0_log.err").write_text("Traceback (most recent call last):\n  ...\nerror: non-finite loss at step 5\n")
    for key, job in (("p/queued", "2001"), ("p/failed", "2002"), ("p/early", "2002")):
        JobRegistry(root, "p").record(key, job, logs)  # p/early: failed before its run directory existed
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.rundir import RunDirectory; "
                               "RunDirectory(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(running)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        every = run_statuses(root)
    finally:
        holder.kill()
        holder.wait()
    statuses = {status.run_dir.name: status for status in every if status.run_dir}
    early = [status for status in every if status.run_dir is None]
    assert {name: status.state for name, status in statuses.items()} == {
        "done": "done", "running": "running", "queued": "queued", "failed": "failed", "stale": "stale"}
    assert [(s.experiment, s.state, s.error[-1]) for s in early] == [("p/early", "failed",
                                                                       "error: non-finite loss at step 5")]
    progress = statuses["running"].progress
    assert progress.startswith("step 300/1000 (30%) 2.22 step/s ETA 0:05:15") and "last metric 1" in progress
    # A waiting job says how often it was requeued, why it waits and when it may start.
    assert "job 2001 PENDING (requeued 2 times, waiting for BeginTime, may start 2026-01-01T10:00:00) log:" \
        in statuses["queued"].job
    assert "job 2002 FAILED log:" in statuses["failed"].job
    assert statuses["failed"].error[-1] == "error: non-finite loss at step 5"


def test_status_lists_every_other_run_and_names_what_it_skipped(tmp_path, monkeypatch, capsys):
    """A damaged launch record, job record or config, and metrics whose time is text: every other run
    is listed, and each thing skipped is named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("sacct", SACCT), ("squeue", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root, now = tmp_path / "runs", time.time()
    _run(root, "queued", "p/queued", [{"step": 1, "total": 4, "time": now - 20},
                                      {"step": 2, "total": 4, "time": "yesterday"},
                                      {"step": 3, "total": 4, "time": now - 10}])
    _run(root, "done", "p/done")
    (root / "done" / "result.json").write_text("{}")
    broken = _run(root, "broken", "p/broken")
    (broken / "config.yaml").write_text("run: [unclosed\n")
    not_mapping = _run(root, "not_mapping", "p/not_mapping")
    (not_mapping / "config.yaml").write_text("- 1\n- 2\n")  # YAML, but no mapping
    JobRegistry(root, "p").record("p/queued", "2001", tmp_path / "logs")
    (root / ".jobs" / "p" / "launch.json").write_text('{"official": {"seeds": [0')
    damaged_job = root / ".jobs" / "p" / "p__done.json"
    damaged_job.write_text('{"job_id": ')

    print_status(root)
    printed = capsys.readouterr().out
    assert "queued   pretrain             queued" in printed and "job 2001 PENDING" in printed
    assert "step 3/4 (75%)" in printed  # the record with a text time is left out of the rate
    assert "done     pretrain             done" in printed
    skipped = [line for line in printed.splitlines() if line.startswith("skipped")]
    assert any(str(broken / "config.yaml") in line for line in skipped), skipped
    assert any(str(not_mapping / "config.yaml") in line for line in skipped), skipped
    assert any(str(damaged_job) in line for line in skipped), skipped
    assert any(str(root / "queued" / "metrics.jsonl") in line and "1 record" in line for line in skipped), skipped
    assert not any("launch.json" in line for line in printed.splitlines())  # no job record, not read as one
