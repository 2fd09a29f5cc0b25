"""The stage graph through the inline, local (submitit) and mocked-SLURM executors."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from reports.__main__ import write_reports
from slurm.executors import ClusterConfig, StageTask, job_parameters, load_cluster_config
from slurm.graph import launch
from plans.tables import build_plan


def _quiet(_: str) -> None:
    pass


@pytest.mark.slow
def test_inline_graph_runs_once_and_reports(tmp_path):
    plan = build_plan("smoke")
    common = {"pretrain_overrides": ["optim.epochs=2", "run.progress=false"], "eval_overrides": ["run.progress=false"],
              "echo": _quiet}
    first = launch(plan, "inline", tmp_path / "runs", ClusterConfig(), **common)
    assert set(first.values()) == {"ran"} and len(first) == 3
    second = launch(plan, "inline", tmp_path / "runs", ClusterConfig(), **common)
    assert set(second.values()) == {"complete"}  # nothing submitted or run again

    (report,) = write_reports(["smoke"], tmp_path / "runs", tmp_path / "out")
    text = report.read_text()
    knn_line = next(line for line in text.splitlines() if line.startswith("| PatchMix m=2") and "knn" in line)
    linear_line = next(line for line in text.splitlines() if line.startswith("| PatchMix m=2") and "linear" in line)
    for line in (knn_line, linear_line):
        ours = line.split("|")[7].strip()
        assert ours != "not run" and 0.0 <= float(ours) <= 100.0
    assert "2 of 2 rows have results" in text
    assert (tmp_path / "out" / "smoke.png").is_file()


@pytest.mark.slow
def test_local_executor_timeout_requeues_and_matches_uninterrupted(tmp_path):
    """submitit's time-limit signal (SIGUSR2) reaches the running job; the run saves at its next step
    boundary, is requeued by submitit and resumes to the same final weights. The signal is sent once
    the run has made progress (step >= 40 of 240), read from its own metrics, so a slow machine cannot
    interrupt every attempt before it starts: the test is deterministic in what it exercises."""
    import json
    import os
    import signal
    import time

    overrides = ["optim.epochs=30", "run.log_every_steps=4", "run.checkpoint_every_steps=1000", "run.progress=false"]
    from common.config import apply_overrides
    from pretrain.configs import preset, run_directory
    from pretrain.train import main

    config = apply_overrides(preset("debug_cpu"), [*overrides, f"run.output_root={tmp_path / 'reference'}"])
    reference = Path(main(config)["run_dir"])

    import submitit

    executor = submitit.LocalExecutor(folder=tmp_path / "logs", max_num_timeout=3)
    executor.update_parameters(timeout_min=30.0)  # no time-limit signal of its own during the test
    requeued_config = apply_overrides(config, [f"run.output_root={tmp_path / 'requeued'}"])
    run_dir = run_directory(requeued_config).path
    job = executor.submit(StageTask("pretrain", requeued_config))
    deadline = time.time() + 600
    while time.time() < deadline and not job.done():
        text = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").is_file() else ""
        if any(line.endswith("}") and json.loads(line)["step"] >= 40 for line in text.splitlines()):
            owner = int((run_dir / ".lock").read_text().split()[1])  # "pid N on HOST since ..."
            os.kill(owner, signal.SIGUSR2)  # what submitit's controller sends before the time limit
            break
        time.sleep(0.2)
    else:
        pytest.fail("the job finished or stalled before step 40: nothing was interrupted")
    result = job.result()
    log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.*"))
    assert "resuming" in log and "Requeued" in log, log[-3000:]
    assert result["steps"] == 240
    final = "checkpoints/checkpoint_00000240.pt"
    a = torch.load(reference / final)["model"]
    b = torch.load(Path(result["run_dir"]) / final)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mocked_slurm_submission_parameters_and_dependencies(tmp_path, monkeypatch):
    from submitit.slurm.test_slurm import mocked_slurm

    # submitit's mock answers sbatch; sacct and squeue (the launcher asks them itself) would otherwise be
    # this machine's own, which may run a SLURM with jobs of the same ids: here sacct says odd ids are
    # pending and even ones running, and squeue knows no job.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text('#!/bin/sh\necho "JobID|State"\nwhile [ $# -gt 0 ]; do\n'
                                   '  [ "$1" = -j ] && echo "$2|$(if [ $(($2 % 2)) = 1 ]; then echo PENDING; '
                                   'else echo RUNNING; fi)"\n  shift\ndone\n')
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sacct", "squeue"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")

    cluster = load_cluster_config(None, ["partition=gpu", "account=lab", "qos=high", "constraint=a100",
                                         "cpus_per_gpu=8", "max_hours=12"])
    plan = build_plan("table6", datasets=("cifar100",))
    with mocked_slurm() as mock:
        outcome = launch(plan, "slurm", tmp_path / "runs", cluster, echo=_quiet)
        assert list(outcome.values()).count("submitted 12") == 1
        scripts = {int(p.name.split("_")[0]): p.read_text()
                   for p in (tmp_path / "runs" / ".submitit" / "table6").glob("*_submission.sh")}
        assert sorted(scripts) == list(range(12, 24))  # 4 pretrain + 8 evaluation jobs
        pretrain_m1, linear_m1, knn_m1, pretrain_m2 = scripts[12], scripts[13], scripts[14], scripts[15]
        for expected in ("--partition=gpu", "--account=lab", "--qos=high", "--constraint=a100", "--nodes=1",
                         "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8", "--time=720",
                         "--signal=USR2@120", "--job-name=table6.cifar100.m1.seed0.pretrain"):
            assert f"#SBATCH {expected}" in pretrain_m1, expected
        assert "--dependency" not in pretrain_m1 and "--dependency" not in pretrain_m2
        assert "#SBATCH --dependency=afterok:12" in linear_m1 and "#SBATCH --dependency=afterok:12" in knn_m1
        assert "#SBATCH --dependency=afterok:15" in scripts[16]
        assert "#SBATCH --time=120" in knn_m1  # evaluations ask for less time

        # Submitting again while the jobs are queued or running submits nothing.
        lines: list[str] = []
        again = launch(plan, "slurm", tmp_path / "runs", cluster, echo=lines.append)
        assert all(value.startswith("queued as") for value in again.values())
        assert "[queued] table6/cifar100/m1/seed0/linear: job 13, state PENDING" in lines, lines
        assert "[queued] table6/cifar100/m1/seed0/pretrain: job 12, state RUNNING" in lines, lines
        assert len(list((tmp_path / "runs" / ".submitit" / "table6").glob("*_submission.sh"))) == 12


def _tiny_image_folder(root: Path) -> Path:
    """train/ and val/ with one class of one file: enough for a run directory's data fingerprint."""
    for split in ("train", "val"):
        (root / split / "n01").mkdir(parents=True)
        (root / split / "n01" / "image.JPEG").write_bytes(b"not decoded when planning")
    return root


def test_dry_run_lists_jobs_with_dependencies(tmp_path):
    lines: list[str] = []
    imagenet = _tiny_image_folder(tmp_path / "imagenet")
    root = tmp_path / "runs"
    outcome = launch(build_plan("table2"), "slurm", root, ClusterConfig(partition="p", account="a"), dry_run=True,
                     echo=lines.append, pretrain_overrides=[f"data.root={imagenet}"])
    total = lines[-1]
    lines = [line for line in lines[:-1] if line.startswith("[dry-run]")]
    assert set(outcome.values()) == {"would submit"} and len(lines) == 24
    # Resources in one unit each, the dependency, and the plan's GPU-hours: 6 x (2 x 8 GPUs x 48 h)
    # pretraining (PatchMix S/16 300 and 800, B/16; DINO S/16, B/16; SDMP S/16), then per run kNN
    # 8 x 2 h, linear and finetune 8 x 24 h each.
    assert "nodes=2 gpus=16 cpus=160 mem=960GB time=48h after=-" in lines[0]
    assert "nodes=1 gpus=8 cpus=80 mem=480GB time=2h after=<table2/vit_s16/300ep/seed0/pretrain>" in lines[1]
    assert total == "[dry-run] 24 job(s), at most 7,008 GPU-hours (each job's GPUs x its time limit; requeued " \
                    "jobs add their extra attempts)"
    baselines = [line for line in lines if "pretrain preset=imagenet_dino" in line or "pretrain preset=imagenet_sdmp" in line]
    assert len(baselines) == 3 and all("nodes=2 gpus=16" in line for line in baselines)
    assert '"nodes": 2' in lines[0] and '"gpus_per_node": 8' in lines[0]
    assert '"dependency": "afterok:<table2/vit_s16/300ep/seed0/pretrain>"' in lines[1]
    assert not root.exists()  # a dry run writes nothing
    # Without ImageNet here, the dry run refuses as a real launch would, naming each pretraining stage.
    for dry_run in (True, False):
        with pytest.raises(ValueError, match="cannot be read from here") as refusal:
            launch(build_plan("table2"), "slurm", root, ClusterConfig(partition="p", account="a"), dry_run=dry_run,
                   echo=_quiet)
        assert str(refusal.value).count("data.root data/imagenet does not exist") == 6
    assert not root.exists()


def test_job_parameters_cap_time_and_count_tasks():
    parameters = job_parameters("slurm", "x", 2, 8, 100.0, ClusterConfig(max_hours=48, mem_gb_per_gpu=40), ["7", "9"])
    assert parameters["time"] == 48 * 60 and parameters["ntasks_per_node"] == 8 and parameters["mem"] == "320GB"
    assert parameters["dependency"] == "afterok:7:9"
    local = job_parameters("local", "x", 1, 0, 1.0, ClusterConfig(), [])
    assert local["tasks_per_node"] == 1 and local["timeout_min"] == 60
    # Whole minutes, at least one: SLURM reads --time=0 as no limit at all.
    for max_hours, minutes in ((0.005, 1), (2 / 60, 2), (1.999 / 60, 2), (0.5, 30)):
        assert job_parameters("slurm", "x", 1, 0, 4.0, ClusterConfig(max_hours=max_hours), [])["time"] == minutes


def test_cluster_profile_file(tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: learnfair\naccount: ssl\nextra_sbatch:\n  exclusive: true\n")
    cluster = load_cluster_config(str(profile), ["qos=low"])
    assert (cluster.partition, cluster.account, cluster.qos) == ("learnfair", "ssl", "low")
    assert cluster.extra_sbatch == {"exclusive": True}


@pytest.mark.parametrize("name", ["table2", "table3", "table4", "table5", "table6", "table7", "fig4", "fig5", "demo",
                                  "smoke"])
def test_every_plan_resolves_to_valid_configs(tmp_path, name):
    from slurm.graph import resolve_plan

    plan = build_plan(name, flavour="paper")
    resolved = resolve_plan(plan, tmp_path)
    assert len(resolved) == len(plan.stages)
    runnable = [r for r in resolved if r.config is not None]
    assert all(r.run_dir is not None for r in runnable if r.stage.kind == "pretrain")
    assert len({r.run_dir for r in runnable if r.stage.kind == "pretrain"}) == len(
        [s for s in plan.stages if s.kind == "pretrain"])  # distinct configs, distinct directories
    assert not any(tmp_path.iterdir())


@contextlib.contextmanager
def plan_held_by_another_launcher(output_root: Path, plan: str = "smoke") -> Iterator[int]:
    """A process holding the plan's launch lock, as a running launcher does; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.rundir import RunDirectory; "
                               "RunDirectory(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(output_root / ".jobs" / plan)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_launcher_of_the_same_plan_is_refused(tmp_path):
    from common.errors import RunDirectoryBusy

    with plan_held_by_another_launcher(tmp_path / "runs") as pid:
        with pytest.raises(RunDirectoryBusy, match=f"pid {pid}"):
            launch(build_plan("smoke"), "inline", tmp_path / "runs", ClusterConfig(), echo=_quiet)
    assert not any(p.name.startswith("smoke") for p in (tmp_path / "runs").iterdir())  # nothing ran


SACCT = """#!/bin/sh
jobs=""
while [ $# -gt 0 ]; do [ "$1" = "-j" ] && jobs="$jobs,$2"; shift; done
echo "JobID|State|NodeList"
[ -n "$SACCT_STATE" ] && for id in $(echo "$jobs" | tr ',' ' '); do echo "$id|$SACCT_STATE|node1"; done
exit 0
"""
SQUEUE = """#!/bin/sh
[ -n "$SQUEUE_STATE" ] && echo "$SQUEUE_STATE"
exit 0
"""


def fake_slurm_queue(tmp_path: Path, monkeypatch, sacct: str, squeue: str) -> None:
    """sacct and squeue on the PATH answering with these states for every job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("sacct", SACCT), ("squeue", SQUEUE)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("SACCT_STATE", sacct)
    monkeypatch.setenv("SQUEUE_STATE", squeue)


@pytest.mark.parametrize("sacct, squeue, active", [
    ("", "", True),               # accounting disabled: sacct knows nothing, nor does squeue -> never resubmit
    ("UNKNOWN", "", True),
    ("", "PENDING", True),        # sacct lagging, squeue has it queued
    ("PENDING", "", True),
    ("COMPLETED", "", False),     # ended: a stage without result.json may be submitted again
    ("CANCELLED by 42", "", False),
])
def test_a_recorded_job_is_never_submitted_twice_while_slurm_may_run_it(tmp_path, monkeypatch, sacct, squeue, active):
    from slurm.graph import JobRegistry

    fake_slurm_queue(tmp_path, monkeypatch, sacct, squeue)
    registry = JobRegistry(tmp_path / "runs", "table6")
    registry.record("table6/cifar100/m1/seed0/pretrain", "1001", tmp_path / "logs")
    found = registry.active_job("table6/cifar100/m1/seed0/pretrain")
    assert (found is not None) == active, found
    if active:
        assert found[0] == "1001" and found[1] == ((sacct or squeue or "UNKNOWN").split()[0])


def test_slurm_launch_without_partition_or_account_queues_nothing(tmp_path):
    with pytest.raises(ValueError, match="needs a partition and an account"):
        launch(build_plan("smoke"), "slurm", tmp_path / "runs", ClusterConfig(partition="gpu"), echo=_quiet)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_report_remembers_the_launched_seeds_and_names_what_it_leaves_out(tmp_path, capsys):
    from slurm.__main__ import main as slurm_main

    root = tmp_path / "runs"
    slurm_main(["run", "smoke", "--executor", "inline", "--seeds", "0,1", "--output-root", str(root),
                "--set", "optim.epochs=1", "run.progress=false", "--eval-set", "run.progress=false"])
    (report,) = write_reports(["smoke"], root, tmp_path / "out")  # no seeds given: the launch's
    text = report.read_text()
    assert "2 of 2 rows have results" in text
    assert all("| 0,1 |" in line for line in text.splitlines() if line.startswith("| PatchMix m=2"))
    assert "leaves out" not in text

    capsys.readouterr()
    (report,) = write_reports(["smoke"], root, tmp_path / "out", seeds=(0,))
    assert "Results of 3 stage(s) exist that this report leaves out (seeds 1)" in report.read_text()
    assert "leaves out (seeds 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_shared_by_two_plans_is_reported_under_both_stage_keys(tmp_path):
    """Table 5's Baseline and Table 6's m = 1 are one config: the second plan finds the run complete
    and the reports find its result under the second plan's key too."""
    import dataclasses

    from plans.tables import Plan
    from reports.collect import collect

    first = build_plan("smoke")
    common = {"pretrain_overrides": ["optim.epochs=1", "run.progress=false"], "eval_overrides": ["run.progress=false"],
              "echo": _quiet}
    launch(first, "inline", tmp_path / "runs", ClusterConfig(), **common)
    renamed = {stage.key: stage.key.replace("smoke/", "other/") for stage in first.stages}
    second = Plan("other", "the same runs", [dataclasses.replace(stage, key=renamed[stage.key],
                                                                 after=renamed.get(stage.after, ""))
                                               for stage in first.stages])
    assert set(launch(second, "inline", tmp_path / "runs", ClusterConfig(), **common).values()) == {"complete"}
    experiments = collect(tmp_path / "runs").experiment.tolist()
    assert sorted(experiments) == sorted([*renamed, *renamed.values()])


def test_a_damaged_launch_record_refuses_the_launch_before_any_stage(tmp_path, capsys):
    """`slurm run` adds to launch.json: a damaged one is named (one error line, exit 2), left as it
    was, and nothing runs."""
    from slurm.__main__ import main as slurm_main

    record = tmp_path / "runs" / ".jobs" / "smoke" / "launch.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"official": {"seeds": [0')
    with pytest.raises(SystemExit) as exit:
        slurm_main(["run", "smoke", "--executor", "inline", "--output-root", str(tmp_path / "runs")])
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(record) in lines[0], lines
    assert record.read_text() == '{"official": {"seeds": [0'
    assert not any(path.name.startswith("smoke") for path in (tmp_path / "runs").iterdir())  # nothing ran


def test_a_damaged_job_record_is_named_not_a_traceback(tmp_path):
    from slurm.graph import JobRegistry

    registry = JobRegistry(tmp_path / "runs", "smoke")
    registry.folder.mkdir(parents=True)
    for damage in ('{"job_id": "12', '["12"]', '{"job_id": "12"}', '{"job_id": [12], "log_folder": "x"}'):
        registry.path("smoke/seed0/pretrain").write_text(damage)
        with pytest.raises(ValueError, match=str(registry.path("smoke/seed0/pretrain"))):
            registry.active_job("smoke/seed0/pretrain")


@pytest.mark.slow
def test_parallel_inline_jobs_give_the_sequential_results_and_run_a_shared_run_once(tmp_path):
    """--jobs 2: two seeds' stages two at a time in worker processes, evaluations after their run, and
    a renamed copy of seed 0's stages (the same configs) found complete instead of run again; every
    result equal to the one-at-a-time launch's."""
    import dataclasses
    import json

    from plans.tables import Plan

    smoke = build_plan("smoke", seeds=(0, 1))
    seed0 = [stage for stage in smoke.stages if "/seed0/" in stage.key]
    renamed = {stage.key: f"copy/{stage.key}" for stage in seed0}
    copies = [dataclasses.replace(stage, key=renamed[stage.key], after=renamed.get(stage.after, "")) for stage in seed0]
    assert copies, [stage.key for stage in smoke.stages]
    plan = Plan("smoke", smoke.description, [*smoke.stages, *copies])
    common = {"pretrain_overrides": ["optim.epochs=1", "run.progress=false"], "eval_overrides": ["run.progress=false"],
              "echo": _quiet}
    sequential = launch(plan, "inline", tmp_path / "one", ClusterConfig(), **common)
    parallel = launch(plan, "inline", tmp_path / "two", ClusterConfig(), jobs=2, **common)
    assert parallel == sequential
    # the copies' evaluations too: their run directories are known once the copy of the run is found complete
    assert [parallel[key] for key in renamed.values()] == ["complete"] * len(copies)
    assert set(parallel[stage.key] for stage in smoke.stages) == {"ran"}

    def metrics(root: Path) -> dict:
        results = {path.relative_to(root): json.loads(path.read_text()) for path in root.rglob("result.json")}
        return {where: result.get("metrics") or result["final_metrics"] for where, result in results.items()}

    assert metrics(tmp_path / "two") == metrics(tmp_path / "one") and len(metrics(tmp_path / "one")) == 6


def test_jobs_beyond_one_are_for_the_inline_executor_only(tmp_path):
    for executor, jobs in (("local", 2), ("inline", 0)):
        with pytest.raises(ValueError, match="--jobs"):
            launch(build_plan("smoke"), executor, tmp_path / "runs", ClusterConfig(), jobs=jobs, echo=_quiet)
    assert not (tmp_path / "runs").exists()


def _refusals_dry_and_real(capsys, arguments: list[str]) -> list[str]:
    """The error `slurm run` writes with --dry-run and without (each exit 2)."""
    from slurm.__main__ import main as slurm_main

    refusals = []
    for dry_run in (["--dry-run"], []):
        with pytest.raises(SystemExit) as exit:
            slurm_main([*arguments, *dry_run])
        assert exit.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("error: ") == 1, error
        refusals.append(error)
    return refusals


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def _damage_launch_record(root: Path) -> None:
    record = root / ".jobs" / "smoke" / "launch.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"official": {"seeds": [0')


def _damage_job_record(root: Path) -> None:
    from slurm.graph import JobRegistry

    registry = JobRegistry(root, "smoke")
    registry.folder.mkdir(parents=True)
    registry.path("smoke/m2/seed0/linear").write_text('{"job_id": "12')


@pytest.mark.parametrize("plan, options, damage, named", [
    ("smoke", ["--executor", "slurm", "--cluster", "partition=gpu"], None, "needs a partition and an account"),
    ("smoke", ["--executor", "inline"], _damage_launch_record, "launch.json is damaged"),
    ("smoke", ["--executor", "slurm", "--cluster", "partition=gpu", "account=lab"], _damage_job_record,
     "job record"),
    ("table2", ["--executor", "local"], None, "cannot be read from here"),
    ("smoke", ["--executor", "local", "--jobs", "2"], None, "--jobs 2"),
])
def test_a_dry_run_refuses_what_the_launch_refuses_with_its_message(tmp_path, capsys, plan, options, damage, named):
    """Every refusal of `slurm run`: the dry run ends as the launch does (same error, exit 2); neither
    writes anything, and the launch refuses before its first stage (no sbatch here to submit with)."""
    root = tmp_path / "runs"
    if damage is not None:
        damage(root)
    before = _files(root)
    dry, real = _refusals_dry_and_real(capsys, ["run", plan, *options, "--output-root", str(root)])
    assert dry == real and named in dry, (dry, real)
    assert _files(root) == before


def test_a_dry_run_names_every_refusal_at_once(tmp_path, capsys):
    """No account and a damaged launch record: both named, by the dry run and by the launch."""
    root = tmp_path / "runs"
    _damage_launch_record(root)
    before = _files(root)
    dry, real = _refusals_dry_and_real(capsys, ["run", "smoke", "--executor", "slurm", "--cluster", "partition=gpu",
                                                "--output-root", str(root)])
    assert dry == real and "2 reasons" in dry and "needs a partition and an account" in dry
    assert "launch.json is damaged" in dry
    assert _files(root) == before


def test_a_dry_run_of_a_plan_another_launcher_holds_is_refused_like_the_launch(tmp_path, capsys):
    with plan_held_by_another_launcher(tmp_path / "runs") as pid:
        before = _files(tmp_path / "runs")
        dry, real = _refusals_dry_and_real(capsys, ["run", "smoke", "--executor", "inline",
                                                    "--output-root", str(tmp_path / "runs")])
        assert dry == real and f"pid {pid}" in dry
        assert _files(tmp_path / "runs") == before


def test_a_dry_run_names_a_stage_queued_in_slurm_as_the_launch_would(tmp_path, monkeypatch):
    """A recorded job SLURM still runs is not submitted again: the dry run says so instead of listing it."""
    from slurm.graph import JobRegistry

    fake_slurm_queue(tmp_path, monkeypatch, "PENDING", "")
    # A job id no other test of this process uses: submitit keeps each job's last sacct answer per process.
    JobRegistry(tmp_path / "runs", "smoke").record("smoke/m2/seed0/pretrain", "1101", tmp_path / "logs")
    lines: list[str] = []
    outcome = launch(build_plan("smoke"), "slurm", tmp_path / "runs", ClusterConfig(partition="p", account="a"),
                     dry_run=True, echo=lines.append)
    assert outcome["smoke/m2/seed0/pretrain"] == "queued as 1101"
    assert all(outcome[key] == "would submit" for key in ("smoke/m2/seed0/knn", "smoke/m2/seed0/linear"))
    assert any("after=1101" in line for line in lines if "seed0/knn" in line), lines
