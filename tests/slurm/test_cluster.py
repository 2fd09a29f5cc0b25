"""The launcher's promises against a real SLURM: the one-node sandbox of `make slurm-up`.

Every job goes through sbatch, srun, scontrol and sacct as on a cluster: dependencies between stages,
time limits that end in USR2 -> checkpoint -> requeue -> resume, preemption and cancellation, a stage
that fails, relaunches that must submit nothing, two tasks of one stage, and code snapshots. Requeued
jobs start a few seconds after their requeue instead of SLURM's two minutes (Sandbox.start_requeued_now).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
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


def _logged(run_dir: Path) -> list[dict]:
    """The run's metrics records without their wall-clock time."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "time"} for record in records]


def _log(log_folder: Path, job_id: str) -> str:
    """What the job's first task printed (submitit appends every attempt to the same files)."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(log_folder.glob(f"{job_id}_0_log.*")))


def _seconds_per_step() -> float:
    """This machine's seconds per debug_cpu pretraining step on one thread (16 steps)."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"calibrate-{os.getpid()}"
    config = apply_overrides(preset("debug_cpu"), [*PRETRAIN, "optim.epochs=2", f"run.output_root={folder}"])
    try:
        run_dir = Path(pretrain(config)["run_dir"])
        times = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (times[-1] - times[0]) / ((len(times) - 1) * 2)  # metrics every 2 steps


@pytest.fixture(scope="module")
def smoke_on_slurm(sandbox_session, tmp_path_factory):
    """The smoke plan submitted through SLURM from a checkout that is edited right after submission,
    and the same plan run inline (in this process, meanwhile) as the reference."""
    folder = tmp_path_factory.mktemp("smoke")
    checkout, plan = _checkout(folder), build_plan("smoke")
    pretrain_overrides = [*PRETRAIN, "optim.epochs=2"]
    here = os.getcwd()
    os.chdir(checkout)  # where a user launches from: the jobs' working directory
    try:
        outcome = launch(plan, "slurm", folder / "runs", sandbox_session.cluster(),
                         pretrain_overrides=pretrain_overrides, eval_overrides=EVALUATE, echo=lambda line: None,
                         snapshot_code_of=checkout)
    finally:
        os.chdir(here)
    jobs = sandbox_session.submitted(outcome)
    dependencies = {key: sandbox_session.show(job).get("Dependency", "") for key, job in jobs.items()}
    # Edited while the evaluations wait for the pretraining: a job importing from the checkout would fail.
    for package in ("evaluate", "pretrain", "common"):
        with open(checkout / package / "__init__.py", "a") as handle:
            handle.write("\nraise RuntimeError('the checkout was edited after submission')\n")
    states_at_edit = {key: sandbox_session.state(job) for key, job in jobs.items()}
    inline = launch(plan, "inline", folder / "inline", ClusterConfig(), pretrain_overrides=pretrain_overrides,
                    eval_overrides=EVALUATE, echo=lambda line: None)
    try:
        final = sandbox_session.wait_ended(jobs.values(), timeout=300)
        yield SimpleNamespace(folder=folder, checkout=checkout, outcome=outcome, jobs=jobs, dependencies=dependencies,
                              states_at_edit=states_at_edit, inline=inline, final=final)
    finally:
        sandbox_session.cancel(list(jobs.values()))


def test_smoke_plan_runs_its_jobs_after_their_dependency_and_equals_the_inline_run(sandbox, smoke_on_slurm):
    run = smoke_on_slurm
    pretrain_key = "smoke/m2/seed0/pretrain"
    assert set(run.outcome) == set(run.inline) and len(run.jobs) == 3, run.outcome
    pretrain_job = run.jobs[pretrain_key]
    # SLURM holds each evaluation behind the pretraining job, as planned: afterok on its id.
    for key, job in run.jobs.items():
        held = re.sub(r"\(\w+\)$", "", run.dependencies[key])  # "afterok:12(unfulfilled)", "(null)": none
        assert held == ("" if key == pretrain_key else f"afterok:{pretrain_job}"), (key, run.dependencies[key])
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
    (pretrain_dir,) = [where for where in inline if len(where.parts) == 1]  # evaluations live under it
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


def test_a_time_limit_shorter_than_the_run_requeues_it_until_it_finishes_as_if_uninterrupted(sandbox, tmp_path):
    """A 2-minute limit with USR2 60 s before it: SLURM signals each attempt 30 to 60 s after its start;
    the run saves at its next step boundary, submitit requeues the job, the next attempt resumes. The run
    is sized from this machine's step time to need at least three attempts; the uninterrupted reference
    runs beside it."""
    steps = int(150 / _seconds_per_step())  # about 150 s of steps: more than two attempts can do
    overrides = [*PRETRAIN, "optim.epochs=1000", f"optim.max_steps={steps}", "run.log_every_steps=4",
                 "run.checkpoint_every_steps=100000"]  # no periodic checkpoints: every resume is a preemption's
    plan = build_plan("smoke")
    plan = Plan("limit", plan.description, [stage for stage in plan.stages if stage.kind == "pretrain"])
    root = tmp_path / "runs"
    outcome = launch(plan, "slurm", root, sandbox.cluster(f"max_hours={2 / 60}", "signal_delay_s=60"),
                     pretrain_overrides=overrides, echo=lambda line: None)
    (job,) = sandbox.submitted(outcome).values()
    reference = subprocess.Popen([sys.executable, "-m", "pretrain", "--preset", "debug_cpu", *overrides,
                                  f"run.output_root={tmp_path / 'reference'}"], cwd=REPOSITORY,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = run_directory(apply_overrides(preset("debug_cpu"), [*overrides, f"run.output_root={root}"])).path
    status_while_requeued: list[str] = []

    def finished() -> bool:
        """Ended; on the way, `slurm status` as a user sees it while the requeued job waits."""
        shown = sandbox.show(job)
        if shown.get("JobState") == "PENDING" and int(shown.get("Restarts", 0)) >= 1 and not status_while_requeued:
            status_while_requeued.append(_status(root))
        return sandbox.state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

    sandbox.wait(finished, [job], timeout=600, what="the time-limited job to finish")
    assert sandbox.state(job) == "COMPLETED", sandbox.attempts(job)
    log = _log(root / ".submitit" / "limit", job)
    saved = [int(step) for step in re.findall(r"preemption: checkpoint saved at step (\d+)", log)]
    resumed = [int(step) for step in re.findall(r"resuming .* at step (\d+)", log)]
    assert len(saved) >= 2 and resumed == saved, log[-3000:]  # each attempt resumes where the last one saved
    assert [attempt["State"] for attempt in sandbox.attempts(job)].count("REQUEUED") >= 2, sandbox.attempts(job)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    (reference_dir,) = (tmp_path / "reference").iterdir()
    assert reference_dir.name == run_dir.name
    assert _same_weights(_final_weights(run_dir), _final_weights(reference_dir))
    (text,) = status_while_requeued
    # sacct reads REQUEUED until the job is pending again, then PENDING
    assert text.startswith("queued") and re.search(rf"job {job} (REQUEUED|PENDING) \(requeued \d+ times?", text), text
    assert re.search(rf"step \d+/{steps} ", text), text  # its progress so far


def _status(root: Path) -> str:
    """What `python -m slurm status --output-root ROOT` prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_status(root)
    return printed.getvalue()


def test_preemption_and_cancellation_resume_from_the_checkpoint_and_run_nothing_twice(sandbox, tmp_path):
    """`scontrol requeue` mid-run (preemption): the run saves at its next boundary and resumes there.
    Relaunching meanwhile submits nothing, also with slurmdbd stopped. `scancel` mid-run, then a new
    launch: the pretraining resumes from its checkpoint and the evaluations that waited on the cancelled
    job run once, behind the new one."""
    steps = int(60 / _seconds_per_step())
    plan, root = build_plan("smoke"), tmp_path / "runs"
    overrides = [*PRETRAIN, "optim.epochs=1000", f"optim.max_steps={steps}", "run.log_every_steps=4",
                 "run.checkpoint_every_steps=100000"]
    lines: list[str] = []

    def launch_again() -> dict[str, str]:
        lines.clear()
        return launch(plan, "slurm", root, sandbox.cluster(), pretrain_overrides=overrides, eval_overrides=EVALUATE,
                      echo=lines.append)

    first = sandbox.submitted(launch_again())
    pretrain_key = "smoke/m2/seed0/pretrain"
    job, evaluations = first[pretrain_key], {key: job for key, job in first.items() if key != pretrain_key}
    run_dir = run_directory(apply_overrides(preset("debug_cpu"), [*overrides, f"run.output_root={root}"])).path
    log_folder = root / ".submitit" / "smoke"
    sandbox.wait(lambda: _step(run_dir) >= 20, [job], what="the pretraining to reach step 20")
    # Running and pending: nothing is submitted again (sacct answers).
    assert all(what.startswith("queued as") for what in launch_again().values()), lines

    # Preemption: SLURM requeues the running job (SIGTERM to its tasks).
    step_at_preemption = _step(run_dir)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    sandbox.wait(lambda: sandbox.show(job).get("JobState") == "PENDING", what="the preempted job to be requeued")
    # While it waits, with slurmdbd stopped (sacct silent), squeue still answers: a relaunch submits nothing,
    # here (where sacct said RUNNING before) as from the shell (a new process).
    subprocess.run(["sacctmgr", "-i", "shutdown"], check=True, capture_output=True)
    try:
        sandbox.wait(lambda: subprocess.run(["sacct", "-j", job], capture_output=True).returncode != 0,
                     what="sacct to fail")
        assert all(what.startswith("queued as") for what in launch_again().values()), lines
        assert f"[queued] {pretrain_key}: job {job}, state PENDING" in lines, lines  # squeue's, not sacct's last
        relaunched = subprocess.run(
            [sys.executable, "-m", "slurm", "run", "smoke", "--executor", "slurm", "--output-root", str(root),
             "--profile", "slurm/sandbox/profile.yaml", "--set", *overrides, "--eval-set", *EVALUATE],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    finally:
        sandbox.restart_daemons()
    printed = relaunched.stdout + relaunched.stderr
    assert relaunched.returncode == 0 and "[smoke] 3 queued as" in relaunched.stdout, printed
    assert f"[queued] {pretrain_key}: job {job}, state PENDING" in relaunched.stdout, relaunched.stdout  # squeue's
    sandbox.wait(lambda: "resuming" in _log(log_folder, job), [job], what="the preempted job to resume")
    log = _log(log_folder, job)
    (saved,) = map(int, re.findall(r"preemption: checkpoint saved at step (\d+)", log))
    (resumed,) = map(int, re.findall(r"resuming .* at step (\d+)", log))
    assert resumed == saved >= step_at_preemption, log[-3000:]  # nothing logged before the signal is lost

    # Cancelled mid-run, after some more steps: the evaluations behind it can never start.
    sandbox.wait(lambda: _step(run_dir) >= resumed + 20, [job], what="the resumed run to progress")
    subprocess.run(["scancel", job], check=True, capture_output=True)
    sandbox.wait(lambda: sandbox.state(job) == "CANCELLED", what="the job to be cancelled")
    cancelled_at = int(re.findall(r"preemption: checkpoint saved at step (\d+)", _log(log_folder, job))[-1])

    second = launch_again()
    assert second[pretrain_key].startswith("submitted"), lines
    assert all(second[key].startswith("submitted") for key in evaluations), lines
    new = sandbox.submitted(second)
    final = sandbox.wait_ended([*new.values(), *evaluations.values()], timeout=300)
    assert all(final[new[key]] == "COMPLETED" for key in new), final
    assert re.search(rf"resuming .* at step {cancelled_at}\b", _log(log_folder, new[pretrain_key]))
    # Nothing ran twice: the first evaluation jobs never started; each stage has one finished run.
    for key, old in evaluations.items():
        assert all(attempt["Start"] in ("None", "Unknown") for attempt in sandbox.attempts(old)), sandbox.attempts(old)
    assert len(_results(root)) == 3


def test_a_failed_stage_stops_its_dependants_is_named_by_status_and_the_next_launch_runs_what_is_missing(
        sandbox, tmp_path, monkeypatch):
    """A pretraining job that fails (a bug, here one line added to the checkout): its evaluations never
    start; `slurm status` names the failed job, its state and its log; once the bug is fixed, the next
    launch submits the pretraining and its evaluations again, and they run."""
    checkout, root = _checkout(tmp_path), tmp_path / "runs"
    monkeypatch.chdir(checkout)
    train = checkout / "pretrain" / "train.py"
    fixed = train.read_text()
    train.write_text(fixed.replace("    device = resolve_device(config.run.device)\n",
                                   "    raise RuntimeError('a bug in the pretraining')\n"
                                   "    device = resolve_device(config.run.device)\n", 1))
    plan, overrides = build_plan("smoke"), [*PRETRAIN, "optim.epochs=1"]

    def launch_here() -> dict[str, str]:
        return launch(plan, "slurm", root, sandbox.cluster(), pretrain_overrides=overrides, eval_overrides=EVALUATE,
                      echo=lambda line: None, snapshot_code_of=checkout)

    first = sandbox.submitted(launch_here())
    pretrain_key = "smoke/m2/seed0/pretrain"
    final = sandbox.wait_ended(first.values(), timeout=120)
    assert final[first[pretrain_key]] == "FAILED", final
    for key, job in first.items():
        if key != pretrain_key:  # never started: held for good behind the failed job
            assert final[job] == "DependencyNeverSatisfied", final
            assert all(attempt["Start"] in ("None", "Unknown") for attempt in sandbox.attempts(job))

    text = _status(root)
    log = root / ".submitit" / "smoke" / f"{first[pretrain_key]}_0_log.err"
    assert f"job {first[pretrain_key]} FAILED log: {log}" in text, text
    assert "RuntimeError: a bug in the pretraining" in text, text
    assert f"failed   pretrain             {pretrain_key} (no run directory yet)" in text, text

    train.write_text(fixed)
    second = launch_here()
    assert all(what.startswith("submitted") for what in second.values()), second
    final = sandbox.wait_ended(sandbox.submitted(second).values(), timeout=300)
    assert set(final.values()) == {"COMPLETED"}, final
    assert len(_results(root)) == 3
    assert all(line.startswith("done") for line in _status(root).splitlines() if line[:1].strip()), _status(root)


def test_two_tasks_of_one_stage_take_their_environment_from_slurm_and_equal_torchrun(sandbox, tmp_path):
    """One job of two SLURM tasks on one node: each task learns its rank, the world size and the master
    from SLURM (StageTask exports them), joins the gloo group and trains its half of every batch; the
    run equals the same two processes started by torchrun, which runs beside it."""
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from distributed import torchrun

    overrides = [*PRETRAIN, "optim.epochs=1", "optim.batch_size=16", "run.log_every_steps=4"]
    config = apply_overrides(preset("debug_cpu"), [*overrides, f"run.output_root={tmp_path / 'slurm'}"])
    cluster = sandbox.cluster()
    executor = make_executor("slurm", tmp_path / "logs", cluster)
    executor.update_parameters(**job_parameters("slurm", "ddp", 1, 0, 0.5, cluster, []))
    executor.update_parameters(ntasks_per_node=2)  # the launcher asks one task per GPU; on CPUs, two here
    job = executor.submit(StageTask("pretrain", config))
    sandbox.tracked.add(job.job_id)
    reference = torchrun(2, "--output", str(tmp_path / "torchrun"), *overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]
    final = sandbox.wait_ended([job.job_id], timeout=300)
    assert final == {job.job_id: "COMPLETED"}, _log(tmp_path / "logs", job.job_id)

    tasks = subprocess.run(["sacct", "-n", "-P", "-j", f"{job.job_id}.0", "-o", "NTasks"], capture_output=True,
                           text=True).stdout.split()
    assert tasks == ["2"], tasks  # one SLURM step of two tasks
    (slurm_dir,), (torchrun_dir,) = (tmp_path / "slurm").iterdir(), (tmp_path / "torchrun").iterdir()
    assert slurm_dir.name == torchrun_dir.name
    assert json.loads((slurm_dir / "provenance.json").read_text())["world_size"] == 2
    assert _logged(slurm_dir) == _logged(torchrun_dir) and len(_logged(slurm_dir)) == 4  # steps 4, 8, 12, 16
    assert _same_weights(_final_weights(slurm_dir), _final_weights(torchrun_dir))
