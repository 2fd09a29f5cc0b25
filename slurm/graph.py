"""From a plan to jobs: resolve every stage's config and run directory, skip what is done or
already queued, and submit the rest with afterok dependencies.

Idempotence follows from the run directories: a pretraining run is named by its config hash, so
its directory (and whether it holds result.json) is known before anything runs; an evaluation
lives under its pretraining run and is named by the weights' digest, so it is checked once those
weights exist and otherwise waits behind its pretraining job. Submitted SLURM jobs are recorded in
`<output_root>/.jobs/<plan>/`, and a stage whose recorded job is still pending or running is not
submitted again.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import submitit

from common.cli import RUN_FAILURES
from common.encoder import ENCODER_RECORD, read_encoder_record
from common.rundir import REPOSITORY_ROOT, RunDirectory, record_experiment, releases_run_locks
from common.stage import UnreadableData, Upstream
from plans.registry import stage_record
from plans.tables import Plan, Stage
from slurm.executors import ClusterConfig, StageTask, job_parameters, make_executor, run_stage
from slurm.snapshot import CodeSnapshot, snapshot_code, submitting_from
from slurm.workers import end_if_orphaned, end_with_parent
# SLURM job states that end a job (it will not run again by itself); any other counts as active.
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", "REVOKED"}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass
class ResolvedStage:
    stage: Stage
    config: Any  # the stage record's config
    run_dir: Path | None  # None for a stage whose upstream weights do not exist yet
    data_problem: str = ""  # why the stage's dataset cannot be read from here (then run_dir is a guess)

    def is_complete(self) -> bool:
        return self.run_dir is not None and (self.run_dir / "result.json").is_file()


def resolve_plan(plan: Plan, output_root: Path, pretrain_overrides: list[str] = (),
                 eval_overrides: list[str] = ()) -> list[ResolvedStage]:
    """Every stage's config and (where knowable) run directory, in plan order, through its stage
    record. Stages that read no other run take `pretrain_overrides`, the others `eval_overrides`."""
    resolved: dict[str, ResolvedStage] = {}
    for stage in plan.stages:
        record = stage_record(stage.kind)
        tag = f"run.experiment={stage.key}"
        if not stage.after:
            config = record.resolve(stage.preset, [*stage.overrides, f"run.output_root={output_root}", tag,
                                                   *pretrain_overrides], None)
            try:
                run_dir, data_problem = record.run_directory(config), ""
            except UnreadableData as error:
                run_dir, data_problem = error.placeholder, str(error)
            resolved[stage.key] = ResolvedStage(stage, config, run_dir, data_problem)
            continue
        source = resolved[stage.after]
        encoder = read_encoder_record(source.run_dir) if (source.run_dir / ENCODER_RECORD).is_file() \
            else stage_record(source.stage.kind).encoder_record(source.config)
        config = record.resolve(stage.preset, [*stage.overrides, tag, *eval_overrides], Upstream(source.run_dir, encoder))
        # Named by the weights' digest: known once the weights are final.
        resolved[stage.key] = ResolvedStage(stage, config, record.run_directory(config) if source.is_complete() else None)
    return list(resolved.values())


class JobRegistry:
    """Submitted SLURM job ids per stage key, so a queued stage is never submitted twice."""

    def __init__(self, output_root: Path, plan_name: str):
        self.folder = Path(output_root) / ".jobs" / plan_name

    def _path(self, key: str) -> Path:
        return self.folder / (key.replace("/", "__") + ".json")

    def record(self, key: str, job_id: str, log_folder: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path(key).write_text(json.dumps({"job_id": job_id, "log_folder": str(log_folder)}))

    def read(self, key: str) -> dict | None:
        path = self._path(key)
        return read_job_record(path) if path.is_file() else None

    def active_job(self, key: str) -> tuple[str, str] | None:
        """(job id, state) of the recorded job unless SLURM says it ended. A state that neither sacct
        nor squeue knows (accounting disabled, slurmdbd lagging) counts as active: submitting a second
        copy would train two jobs into one run directory (whose lock is the last guard)."""
        entry = self.read(key)
        if entry is None:
            return None
        state = job_state(entry["job_id"])
        return None if state in ENDED_STATES else (entry["job_id"], state)

    def path(self, key: str) -> Path:
        return self._path(key)


def read_job_record(path: Path) -> dict:
    """{"job_id": str, "log_folder": str} of a submitted job; a damaged record is refused with its path
    (deleting it lets the stage be submitted again)."""
    try:
        entry = json.loads(Path(path).read_text())
    except ValueError as error:
        raise ValueError(f"job record {path} is damaged (not readable JSON: {error}); delete it to submit the "
                         "stage again (check first that its job no longer runs)") from None
    if not (isinstance(entry, dict) and isinstance(entry.get("job_id"), (str, int))
            and not isinstance(entry.get("job_id"), bool) and isinstance(entry.get("log_folder"), str)):
        raise ValueError(f"job record {path} is damaged (not {{job_id, log_folder}}); delete it to submit the "
                         "stage again (check first that its job no longer runs)")
    return {**entry, "job_id": str(entry["job_id"])}


def job_state(job_id: str) -> str:
    """The job's state from sacct, else from squeue, else UNKNOWN."""
    state = (_accounted_state(job_id).split() or ["UNKNOWN"])[0]
    if state in ACTIVE_STATES or state in ENDED_STATES:
        return state
    try:
        queued = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    return (queued.stdout.split() or ["UNKNOWN"])[0] if queued.returncode == 0 else "UNKNOWN"


def _accounted_state(job_id: str) -> str:
    """The job's state in SLURM's accounting ("" when sacct fails or knows nothing of it yet), asked afresh:
    submitit's watcher would answer a failed sacct with the state it read last, and never asks again of a
    job it once saw end, so in a process that launched before, a stale state would stand in for squeue's."""
    try:
        listed = subprocess.run(["sacct", "-o", "JobID,State", "--parsable2", "-j", str(job_id)], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = listed.stdout.splitlines() if listed.returncode == 0 else []
    names = lines[0].split("|") if lines else []
    records = [dict(zip(names, line.split("|"))) for line in lines[1:]]
    return next((record.get("State", "") for record in records if record.get("JobID") == str(job_id)), "")


def never_starts(job_id: str) -> bool:
    """Whether SLURM holds the job pending on a dependency that can no longer be satisfied: the job it
    waits for (afterok) failed or was cancelled. Such a job stays pending for good (unless the cluster
    sets kill_invalid_depend, which cancels it)."""
    try:
        queued = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%r"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return queued.returncode == 0 and queued.stdout.strip() == "DependencyNeverSatisfied"


class LaunchRefused(ValueError):
    """A launch refused for several reasons, all named at once."""


@releases_run_locks
def launch(plan: Plan, executor: str, output_root: Path, cluster: ClusterConfig, dry_run: bool = False,
           pretrain_overrides: list[str] = (), eval_overrides: list[str] = (),
           echo: Callable[[str], None] = print, snapshot_code_of: Path | None = REPOSITORY_ROOT,
           on_accepted: Callable[[], None] | None = None, jobs: int = 1,
           check: Callable[[], object] | None = None) -> dict[str, str]:
    """Run or submit the plan's stages that are not complete. Returns {stage key: what happened}.
    `jobs` > 1 (inline executor only) runs up to that many stages at a time, each in one of `jobs`
    worker processes, a stage once the run it reads has finished (`run_inline_in_parallel`).
    Submitted jobs run a snapshot of the code taken at their submission (`snapshot_code_of`, the
    repository; None: the working tree as it is when each job starts).
    Every refusal comes first, the same in a dry run (`launch_refusals`; `check` raises the caller's
    own, e.g. a sweep name taken by another preset), so a dry run refuses what the launch would, with
    the same message. `on_accepted` is called once the plan has passed every check, before any stage
    runs or is submitted (not in a dry run): what a caller keeps of a launch (its seeds, a sweep's
    definition) then never describes a refused one."""
    if jobs < 1 or (jobs > 1 and executor != "inline"):
        raise ValueError(f"--jobs {jobs}: it must be >= 1, and more than 1 runs stages at a time on this machine "
                         "with the inline executor only (SLURM runs submitted jobs as the cluster schedules them; "
                         "the local executor runs them one after the other)")
    stages = resolve_plan(plan, output_root, pretrain_overrides, eval_overrides)
    launcher = _Launcher(plan.name, stages, executor, Path(output_root), cluster, echo, snapshot_code_of)
    refuse(launch_refusals(stages, executor, cluster, launcher.registry, check))
    if dry_run:
        for item in stages:
            launcher.handle(item, dry_run=True)
        launcher.summarise_dry_run()
        return launcher.outcome
    RunDirectory(launcher.registry.folder).acquire()  # two launchers of one plan would both submit every stage
    if on_accepted is not None:
        on_accepted()
    if jobs > 1:
        launcher.run_inline_in_parallel(jobs)
    else:
        for item in stages:
            launcher.handle(item, dry_run=False)
    return launcher.outcome


def launch_refusals(stages: list[ResolvedStage], executor: str, cluster: ClusterConfig, registry: JobRegistry,
                    check: Callable[[], object] | None = None) -> list[Exception]:
    """Why a launch of `stages` would be refused, every check run (one refusal does not hide the next),
    writing nothing: a dataset this machine cannot read, a SLURM launch without partition and account, a
    damaged job record, another launcher of the plan at work, and the caller's own `check`."""
    checks = [partial(_refuse_unreadable_data, stages), partial(_refuse_slurm_without_account, executor, cluster),
              partial(_refuse_damaged_job_records, stages, executor, registry),
              RunDirectory(registry.folder).refuse_if_busy, *([check] if check is not None else [])]
    refusals = []
    for run_check in checks:
        try:
            run_check()
        except RUN_FAILURES as error:
            refusals.append(error)
    return refusals


def refuse(refusals: list[Exception]) -> None:
    """Raise the one refusal as it is, or several as one LaunchRefused naming each."""
    if len(refusals) == 1:
        raise refusals[0]
    if refusals:
        raise LaunchRefused(f"the launch is refused for {len(refusals)} reasons:\n"
                            + "\n".join(f"  {number}. {error}" for number, error in enumerate(refusals, 1)))


def _refuse_unreadable_data(stages: list[ResolvedStage]) -> None:
    """A stage whose dataset this machine cannot read would fail as a job."""
    unreadable = [f"{item.stage.key}: {item.data_problem}" for item in stages
                  if item.data_problem and not item.is_complete()]
    if unreadable:
        raise ValueError("the dataset of these stages cannot be read from here, so their jobs would fail:\n  "
                         + "\n  ".join(unreadable))


def _refuse_slurm_without_account(executor: str, cluster: ClusterConfig) -> None:
    if executor == "slurm" and not (cluster.partition and cluster.account):
        raise ValueError("EXECUTOR=slurm needs a partition and an account: set PARTITION= and ACCOUNT= (or "
                         "partition/account in the --profile file); nothing was queued")


def _refuse_damaged_job_records(stages: list[ResolvedStage], executor: str, registry: JobRegistry) -> None:
    """A SLURM launch reads the job record of every stage it may submit (is it still queued?): a damaged
    one is refused here, before the first submission, rather than halfway through the plan."""
    if executor != "slurm":
        return
    damaged = []
    for item in stages:
        if not item.is_complete():
            try:
                registry.read(item.stage.key)
            except ValueError as error:
                damaged.append(str(error))
    if damaged:
        raise ValueError("\n".join(damaged))


class _Launcher:
    """One launch, stage by stage in plan order: the job ids so far (the dependencies of later stages),
    what happened to each stage, the dry run's GPU-hours, and the code snapshot (taken at the first
    submission, once)."""

    def __init__(self, plan_name: str, stages: list[ResolvedStage], executor: str, output_root: Path,
                 cluster: ClusterConfig, echo: Callable[[str], None], snapshot_code_of: Path | None):
        self.stages, self.executor, self.output_root = stages, executor, output_root
        self.cluster, self.echo = cluster, echo
        self.registry = JobRegistry(output_root, plan_name)
        self.log_folder = output_root / ".submitit" / plan_name
        self.snapshot_code_of, self.snapshot = snapshot_code_of, None
        self.snapshot_taken = snapshot_code_of is None  # taken (or not wanted): once per launch
        self.job_ids: dict[str, str] = {}
        self.outcome: dict[str, str] = {}
        self.gpu_hours = 0.0

    def handle(self, item: ResolvedStage, dry_run: bool) -> None:
        """Skip the stage if it is complete or queued; otherwise describe, run or submit it."""
        if item.is_complete():
            self.mark_complete(item, dry_run)
        elif self.executor == "slurm" and self.is_queued(item.stage):  # a dry run says so too (read only)
            return
        elif dry_run:
            self.describe(item)
        elif self.executor == "inline":
            self.run_inline(item)
        else:
            self.submit(item)

    def mark_complete(self, item: ResolvedStage, dry_run: bool) -> None:
        self.outcome[item.stage.key] = "complete"
        if not dry_run:  # a run made for another stage (same config) serves this one too
            record_experiment(item.run_dir, item.stage.key)
        self.echo(f"[done] {item.stage.key}: {item.run_dir}")
        # A stage reading this one learns its run directory now (a run made for another stage of the
        # plan, earlier in this launch, may already hold its evaluations).
        _refresh_downstream_dirs(self.stages, item)

    def is_queued(self, stage: Stage) -> bool:
        """Whether the stage's recorded job may still run (then it is not submitted again)."""
        active = self.registry.active_job(stage.key)
        if not active:
            return False
        job_id, state = active
        if state == "PENDING" and never_starts(job_id):
            # Its upstream job ended without a result: this one will never start. It is cancelled and
            # submitted again, behind the upstream stage's new job and from this launch's code.
            try:
                submitit.SlurmJob(folder=self.registry.read(stage.key)["log_folder"], job_id=job_id).cancel(check=True)
            except Exception as error:  # scancel refused (another user's job) or missing
                raise ValueError(f"{stage.key}: job {job_id} can never start (the job it depends on ended without "
                                 f"success) and could not be cancelled ({error}): cancel it (scancel {job_id}) and "
                                 "launch again") from None
            self.echo(f"[cancelled] {stage.key}: job {job_id} could never start (the job it depended on ended "
                      "without success); submitting it again")
            return False
        self.job_ids[stage.key] = job_id
        self.outcome[stage.key] = f"queued as {job_id}"
        why = (f"state {state}" if state != "UNKNOWN" else "state unknown to sacct and squeue (accounting "
               f"off or lagging), counted as active; delete {self.registry.path(stage.key)} to submit it again")
        self.echo(f"[queued] {stage.key}: job {job_id}, {why}")
        return True

    def dependencies(self, stage: Stage) -> list[str]:
        return [self.job_ids[stage.after]] if stage.after in self.job_ids else []

    def parameters(self, stage: Stage) -> dict[str, Any]:
        return job_parameters(self.executor if self.executor != "inline" else "local", stage.key.replace("/", "."),
                              stage.nodes, stage.gpus_per_node, stage.hours, self.cluster, self.dependencies(stage))

    def describe(self, item: ResolvedStage) -> None:
        """A dry run's line: the job, its resources and its dependency."""
        stage = item.stage
        self.job_ids[stage.key] = f"<{stage.key}>"
        self.outcome[stage.key] = "would submit"
        shown = {k: v for k, v in self.parameters(stage).items() if v not in ({}, None, "")}
        self.gpu_hours += resources_of(stage, self.cluster)["gpu_hours"]
        self.echo(f"[dry-run] {stage.key}: {stage.kind} preset={stage.preset} "
                  f"run_dir={item.run_dir or '(after ' + stage.after + ')'} {describe_resources(stage, self.cluster)} "
                  f"after={','.join(self.dependencies(stage)) or '-'} {json.dumps(shown)}")

    def run_inline(self, item: ResolvedStage) -> None:
        self.echo(f"[run] {item.stage.key}")
        run_stage(item.stage.kind, item.config)
        self.mark_ran(item)

    def mark_ran(self, item: ResolvedStage) -> None:
        self.outcome[item.stage.key] = "ran"
        _refresh_downstream_dirs(self.stages, item)  # the stages reading this run now know their directories

    def run_inline_in_parallel(self, jobs: int) -> None:
        """Every stage not complete, up to `jobs` at a time in as many worker processes (each runs
        stages one after another, as `run_inline` would): a stage starts once the stage it reads has
        finished, and never beside a running stage of the same run directory (rows that share a run
        wait for it, then find it complete). After a failure nothing new starts; the running stages
        finish, then the first failure is raised. The workers end with this process, even when it is
        killed outright (slurm/workers.py)."""
        pending, running, finished = list(self.stages), {}, set()
        failure: BaseException | None = None
        launcher = os.getpid()
        # spawn: the workers start from a clean interpreter, not a copy of this one's state; they may
        # start processes of their own (loader workers).
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=end_with_parent,
                                 initargs=(launcher,)) as pool:
            while True:
                for item in list(pending) if failure is None else ():
                    if len(running) >= jobs:
                        break
                    upstream_done = not item.stage.after or item.stage.after in finished
                    same_run = item.run_dir is not None and any(item.run_dir == other.run_dir
                                                                for other in running.values())
                    if not upstream_done or same_run:
                        continue
                    pending.remove(item)
                    if item.is_complete():
                        self.mark_complete(item, dry_run=False)
                        finished.add(item.stage.key)
                        continue
                    self.echo(f"[run] {item.stage.key}")
                    running[pool.submit(run_stage_in_worker, launcher, item.stage.kind, item.config)] = item
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    try:
                        future.result()
                    except Exception as error:  # a stage that failed: let the others end first
                        failure = failure or error
                        self.echo(f"[failed] {item.stage.key}: {error}")
                        continue
                    self.mark_ran(item)
                    finished.add(item.stage.key)
        if failure is not None:
            raise failure

    def submit(self, item: ResolvedStage) -> None:
        """Submit the stage from the code snapshot; on one machine (local), wait for it to finish."""
        stage, dependencies = item.stage, self.dependencies(item.stage)
        if not self.snapshot_taken:
            self.snapshot = _snapshot(self.snapshot_code_of, self.output_root / ".code", self.cluster, self.echo)
            self.snapshot_taken = True
        submitit_executor = make_executor(self.executor, self.log_folder, self.cluster)
        submitit_executor.update_parameters(**self.parameters(stage))
        folder = self.snapshot.folder if self.snapshot else None
        task = StageTask(stage.kind, item.config, str(folder or ""))  # workdir: here
        with submitting_from(folder):
            job = submitit_executor.submit(task)
        self.job_ids[stage.key] = str(job.job_id)
        self.outcome[stage.key] = f"submitted {job.job_id}"
        self.echo(f"[submitted] {stage.key}: job {job.job_id}" + (f" after {dependencies}" if dependencies else ""))
        if self.executor == "slurm":
            self.registry.record(stage.key, str(job.job_id), self.log_folder)
        else:  # one machine: run stages one after the other, evaluations after their pretraining
            job.result()
            _refresh_downstream_dirs(self.stages, item)

    def summarise_dry_run(self) -> None:
        self.echo(f"[dry-run] {sum(v == 'would submit' for v in self.outcome.values())} job(s), at most "
                  f"{self.gpu_hours:,.0f} GPU-hours (each job's GPUs x its time limit; requeued jobs add their "
                  "extra attempts)")


def run_stage_in_worker(launcher: int, kind: str, config: Any) -> dict:
    """What a worker of `run_inline_in_parallel` runs: the stage, unless the launcher (its parent) is gone,
    a stage handed over just before the launcher died included."""
    end_if_orphaned(launcher)
    return run_stage(kind, config)


def _snapshot(repository: Path, root: Path, cluster: ClusterConfig,
              echo: Callable[[str], None]) -> CodeSnapshot | None:
    try:
        snapshot = snapshot_code(repository, root, max_file_bytes=int(cluster.snapshot_max_file_mb * 2**20))
    except (OSError, RuntimeError) as error:  # not a git checkout, or git missing
        echo(f"[warning] no code snapshot ({error}); jobs run the working tree as it is when they start")
        return None
    changes = f", uncommitted changes {snapshot.diff_digest}" if snapshot.dirty else ""
    echo(f"[code] jobs run from {snapshot.folder} (commit {snapshot.commit[:10]}{changes})")
    if snapshot.left_out:
        echo(f"[code] left out of the snapshot, untracked and over snapshot_max_file_mb="
             f"{cluster.snapshot_max_file_mb:g} (raise it with --cluster snapshot_max_file_mb=N or in the --profile "
             "file; jobs will not see these files): "
             + ", ".join(f"{path} ({size / 2**20:.1f} MB)" for path, size in snapshot.left_out))
    return snapshot


def resources_of(stage: Stage, cluster: ClusterConfig) -> dict:
    """What one job of `stage` asks SLURM for, in total over its nodes (slurm/executors.job_parameters)."""
    gpus = stage.nodes * stage.gpus_per_node
    tasks = stage.nodes * max(stage.gpus_per_node, 1)
    hours = min(stage.hours, cluster.max_hours)
    return {"nodes": stage.nodes, "gpus": gpus, "cpus": tasks * cluster.cpus_per_gpu,
            "memory_gb": tasks * cluster.mem_gb_per_gpu, "hours": hours, "gpu_hours": gpus * hours}


def describe_resources(stage: Stage, cluster: ClusterConfig) -> str:
    r = resources_of(stage, cluster)
    return f"nodes={r['nodes']} gpus={r['gpus']} cpus={r['cpus']} mem={r['memory_gb']}GB time={r['hours']:g}h"


def _refresh_downstream_dirs(stages: list[ResolvedStage], finished: ResolvedStage) -> None:
    """After a run finishes, the run directories of the stages that read it become known."""
    for item in stages:
        if item.stage.after == finished.stage.key:
            item.run_dir = stage_record(item.stage.kind).run_directory(item.config)
