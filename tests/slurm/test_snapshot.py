"""Code snapshots at submission: a job runs the code it was submitted with."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import submitit

from common.rundir import REPOSITORY_ROOT
from plans.tables import build_plan
from slurm.executors import ClusterConfig
from slurm.graph import launch
from slurm.snapshot import changes_digest, snapshot_code, submitting_from


def git(repository: Path, *arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=repository, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repository(tmp_path) -> Path:
    """A git repository with probe.py committed (VALUE = 1), then changed (VALUE = 2) and an untracked
    helper.py, plus an ignored folder."""
    root = tmp_path / "repository"
    root.mkdir()
    git(root, "init", "-q")
    (root / "probe.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text("runs/\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "first")
    (root / "probe.py").write_text("VALUE = 2\n")
    (root / "helper.py").write_text("HELP = 'yes'\n")
    (root / "runs").mkdir()
    (root / "runs" / "big.bin").write_bytes(b"0" * 100)
    return root


def test_the_job_runs_the_code_of_its_submission_not_later_edits(repository, tmp_path):
    snapshot = snapshot_code(repository, tmp_path / "code")
    commit = git(repository, "rev-parse", "HEAD").strip()
    assert snapshot.commit == commit and snapshot.dirty and len(snapshot.diff_digest) == 12
    assert (snapshot.folder / "probe.py").read_text() == "VALUE = 2\n"  # the uncommitted change
    assert (snapshot.folder / "helper.py").is_file() and not (snapshot.folder / "runs").exists()
    assert json.loads((snapshot.folder / "code.json").read_text())["commit"] == commit

    (repository / "probe.py").write_text("VALUE = 3\n")  # edited after the submission's snapshot
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=5)
    with submitting_from(snapshot.folder):
        job = executor.submit(submitit.helpers.CommandFunction(
            [sys.executable, "-c", "import probe, helper; print(probe.VALUE, helper.HELP)"]))
    assert job.result().strip() == "2 yes"

    again = snapshot_code(repository, tmp_path / "code")  # other code: another snapshot
    assert again.folder != snapshot.folder and (again.folder / "probe.py").read_text() == "VALUE = 3\n"
    (repository / "probe.py").write_text("VALUE = 2\n")
    assert snapshot_code(repository, tmp_path / "code").folder == snapshot.folder  # the same code: reused


@pytest.mark.slow
def test_submitted_stages_run_from_the_snapshot_and_record_it(tmp_path):
    """The local executor runs the smoke plan from a snapshot of this repository; provenance names
    the snapshot and the commit it was taken from."""
    root = tmp_path / "runs"
    lines: list[str] = []
    outcome = launch(build_plan("smoke"), "local", root, ClusterConfig(), echo=lines.append,
                     pretrain_overrides=["optim.epochs=1", "run.progress=false"], eval_overrides=["run.progress=false"])
    assert all(value.startswith("submitted") for value in outcome.values()), outcome
    snapshots = list((root / ".code").iterdir())
    assert len(snapshots) == 1 and any(line.startswith(f"[code] jobs run from {snapshots[0]}") for line in lines)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY_ROOT, capture_output=True,
                            text=True).stdout.strip()
    results = list(root.glob("**/result.json"))
    assert len(results) == 3
    for result in results:
        provenance = json.loads((result.parent / "provenance.json").read_text())
        assert provenance["code_snapshot"] == str(snapshots[0]) and provenance["git_commit"] == commit, provenance


def test_large_untracked_files_are_left_out_named_and_hashed_by_streaming(repository, tmp_path):
    """An untracked file over the limit is neither copied nor hashed (editing it reuses the snapshot)
    and the launch names it with the setting that changes the limit; the others are hashed in chunks."""
    from submitit.slurm.test_slurm import mocked_slurm

    (repository / "weights.bin").write_bytes(os.urandom(3 * 2**20))
    lines: list[str] = []
    cluster = ClusterConfig(partition="gpu", account="lab", snapshot_max_file_mb=1)
    with mocked_slurm():
        launch(build_plan("smoke"), "slurm", tmp_path / "runs", cluster, echo=lines.append,
               snapshot_code_of=repository)
    (snapshot,) = (tmp_path / "runs" / ".code").iterdir()
    assert not (snapshot / "weights.bin").exists() and (snapshot / "helper.py").is_file()
    assert json.loads((snapshot / "code.json").read_text())["left_out"] == ["weights.bin"]
    (named,) = [line for line in lines if "weights.bin" in line]
    assert "3.0 MB" in named and "snapshot_max_file_mb=1" in named and "--cluster snapshot_max_file_mb=" in named

    (repository / "weights.bin").write_bytes(os.urandom(3 * 2**20))
    assert snapshot_code(repository, tmp_path / "runs" / ".code", max_file_bytes=2**20).folder == snapshot

    (repository / "data.bin").write_bytes(os.urandom(32 * 2**20))
    tracemalloc.start()
    digest = changes_digest(repository, b"", ["data.bin"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(digest) == 12 and peak < 4 * 2**20, peak  # never the whole 32 MB in memory


def test_a_snapshot_killed_mid_copy_leaves_nothing_behind_at_the_next_launch(repository, tmp_path):
    """Partial snapshots of dead processes on this host are removed (also those named by earlier
    versions, `<id>.partial-<pid>`); a live process's and another host's are left alone."""
    root = tmp_path / "code"
    killed = subprocess.run([sys.executable, "-c", "import os, shutil, sys; from slurm.snapshot import snapshot_code; "
                             "shutil.copy2 = lambda *a, **k: os._exit(9); snapshot_code(sys.argv[1], sys.argv[2])",
                             str(repository), str(root)], cwd=REPOSITORY_ROOT)
    assert killed.returncode == 9
    (partial,) = root.iterdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    legacy = root / f"0123456789ab.partial-{dead.pid}"
    alive = subprocess.Popen(["sleep", "60"])
    try:
        kept = [root / f".0123456789ab.tmp-{alive.pid}@{socket.gethostname()}",
                root / f".0123456789ab.tmp-{dead.pid}@another-host"]
        for folder in (legacy, *kept):
            folder.mkdir()
            (folder / "probe.py").write_text("VALUE = 0\n")
        snapshot = snapshot_code(repository, root)
    finally:
        alive.kill()
        alive.wait()
    assert not partial.exists() and not legacy.exists() and all(folder.is_dir() for folder in kept)
    assert sorted(root.iterdir()) == sorted([snapshot.folder, *kept])
