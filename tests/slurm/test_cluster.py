"""The launcher's promises against a real SLURM: the one-node sandbox of `make slurm-up`.

Every job goes through sbatch, srun, scontrol and sacct as on a cluster: dependencies between stages,
time limits that end in USR2 -> checkpoint -> requeue -> resume, preemption and cancellation, a stage
that fails, relaunches that must submit nothing, two tasks of one stage, and code snapshots. Requeued
jobs are started at once instead of after SLURM's two-minute wait (conftest.Sandbox.start_requeued_now).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.config import apply_overrides
from plans.tables import Plan, build_plan
from pretrain.configs import preset, run_directory
from pretrain.train import main as pretrain
from slurm.executors import ClusterConfig, StageTask, job_parameters, make_executor
from slurm.graph import launch
from slurm.snapshot import snapshot_code
from slurm.status import print_status

pytestmark = pytest.mark.slurm

REPOSITORY = Path(__file__).resolve().parents[2]
# One intra-op thread per run: a job and the reference computed beside it share the two cores, and
# the same thread count on both sides keeps their results comparable bit for bit.
PRETRAIN = ["run.progress=false", "run.cpu_threads=1"]
EVALUATE = ["run.progress=false", "run.cpu_threads=1"]


def _submitted(outcome: dict[str, str]) -> dict[str, str]:
    """{stage key: job id} of the stages a launch submitted."""
    return {key: what.split()[1] for key, what in outcome.items() if what.startswith("submitted")}


def _checkout(folder: Path) -> Path:
    """A git checkout of the code under test (its uncommitted changes committed), to edit freely."""
    snapshot = snapshot_code(REPOSITORY, folder / "snapshots")
    checkout = folder / "checkout"
    shutil.copytree(snapshot.folder, checkout, ignore=shutil.ignore_patterns("code.json"))
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=test", "-c", "user.email=test@localhost",
                                                    "commit", "-q", "-m", "code under test"]):
        subprocess.run(["git", *command], cwd=checkout, check=True, capture_output=True)
    return checkout


def _results(root: Path) -> dict[Path, dict]:
    """{run directory relative to root: its result.json} of every finished run."""
    return {path.parent.relative_to(root): json.loads(path.read_text()) for path in root.rglob("result.json")}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("checkpoint_*.pt"))[-1]
    return torch.load(newest, map_location="cpu")["model"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def _step(run_dir: Path) -> int:
    """The newest step logged in the run's metrics (0 before the first)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _log(log_folder: Path, job_id: str) -> str:
    """What the job's first task printed (submitit appends every attempt to the same files)."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(log_folder.glob(f"{job_id}_0_log.*")))


def _seconds_per_step() -> float:
    """This machine's seconds per debug_cpu pretraining step on one thread (16 steps)."""
    config = apply_overrides(preset("debug_cpu"), [*PRETRAIN, "optim.epochs=2", "run.output_root=/dev/null"])
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"calibrate-{os.getpid()}"
    try:
        run_dir = Path(pretrain(apply_overrides(config, [f"run.output_root={folder}"]))["run_dir"])
        times = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (times[-1] - times[0]) / ((len(times) - 1) * 2)  # metrics every 2 steps


@pytest.fixture(scope="module")
def smoke_on_slurm(sandbox, tmp_path_factory):
    """The smoke plan submitted through SLURM from a checkout that is edited right after submission,
    and the same plan run inline (in this process, meanwhile) as the reference."""
    folder = tmp_path_factory.mktemp("smoke")
    checkout, plan = _checkout(folder), build_plan("smoke")
    pretrain_overrides = [*PRETRAIN, "optim.epochs=2"]
    here = os.getcwd()
    os.chdir(checkout)  # where a user launches from: the jobs' working directory
    try:
        outcome = launch(plan, "slurm", folder / "runs", sandbox.cluster(), pretrain_overrides=pretrain_overrides,
                         eval_overrides=EVALUATE, echo=lambda line: None, snapshot_code_of=checkout)
    finally:
        os.chdir(here)
    jobs = _submitted(outcome)
    dependencies = {key: sandbox.show(job).get("Dependency", "") for key, job in jobs.items()}
    # Edited while the evaluations wait for the pretraining: a job importing from the checkout would fail.
    for package in ("evaluate", "pretrain", "common"):
        with open(checkout / package / "__init__.py", "a") as handle:
            handle.write("\nraise RuntimeError('the checkout was edited after submission')\n")
    states_at_edit = {key: sandbox.state(job) for key, job in jobs.items()}
    inline = launch(plan, "inline", folder / "inline", ClusterConfig(), pretrain_overrides=pretrain_overrides,
                    eval_overrides=EVALUATE, echo=lambda line: None)
    final = sandbox.wait_ended(jobs.values(), timeout=400)
    return SimpleNamespace(folder=folder, checkout=checkout, outcome=outcome, jobs=jobs, dependencies=dependencies,
                           states_at_edit=states_at_edit, inline=inline, final=final)


def test_smoke_plan_runs_its_jobs_after_their_dependency_and_equals_the_inline_run(sandbox, smoke_on_slurm):
    run = smoke_on_slurm
    pretrain_key = "smoke/m2/seed0/pretrain"
    assert set(run.outcome) == set(run.inline) and len(run.jobs) == 3, run.outcome
    pretrain_job = run.jobs[pretrain_key]
    # SLURM holds each evaluation behind the pretraining job, as planned: afterok on its id.
    for key, job in run.jobs.items():
        expected = "" if key == pretrain_key else f"afterok:{pretrain_job}"
        assert re.sub(r"\(.*\)$", "", run.dependencies[key]) in ({expected}, {"(null)", ""})[key == pretrain_key], \
            (key, run.dependencies[key])
    assert set(run.final.values()) == {"COMPLETED"}, run.final
    pretrain_end = sandbox.attempts(pretrain_job)[-1]["End"]
    for key, job in run.jobs.items():
        if key != pretrain_key:
            assert sandbox.attempts(job)[-1]["Start"] >= pretrain_end, (key, sandbox.attempts(job))

    # The same configs give the same run directories, metrics and weights as the inline executor.
    on_slurm, inline = _results(run.folder / "runs"), _results(run.folder / "inline")
    assert sorted(on_slurm) == sorted(inline) and len(inline) == 3
    for where, result in inline.items():
        assert on_slurm[where].get("metrics") == result.get("metrics"), where
        assert on_slurm[where].get("final_metrics") == result.get("final_metrics"), where
    (pretrain_dir,) = [where for where in inline if (run.folder / "inline" / where / "checkpoints").is_dir()]
    assert _same_weights(_final_weights(run.folder / "runs" / pretrain_dir),
                         _final_weights(run.folder / "inline" / pretrain_dir))


def test_jobs_run_the_code_snapshot_they_were_submitted_with(sandbox, smoke_on_slurm):
    run = smoke_on_slurm
    waiting = [key for key, state in run.states_at_edit.items() if state == "PENDING"]
    assert waiting, f"no job was still waiting when the checkout was edited: {run.states_at_edit}"
    assert set(run.final.values()) == {"COMPLETED"}, run.final  # none imported the edited checkout
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run.checkout, capture_output=True, text=True).stdout
    (snapshot,) = (run.folder / "runs" / ".code").iterdir()
    for where in _results(run.folder / "runs"):
        provenance = json.loads((run.folder / "runs" / where / "provenance.json").read_text())
        assert provenance["git_commit"] == commit.strip() and provenance["code_snapshot"] == str(snapshot), where
    assert "edited after submission" not in (snapshot / "evaluate" / "__init__.py").read_text()
