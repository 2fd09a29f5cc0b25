"""Experiment trackers: TensorBoard events written and continued after a resume, W&B's run id and
offline mode, a missing tracker package named once while the run goes on, and a tracker or run
folder that cannot be written."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from common.cli import run_stage
from common.config import ConfigError, apply_overrides
from common.lifecycle import RunLifecycle
from common.runtime import RunConfig
from common.tracking import Trackers
from pretrain.configs import run_directory
from pretrain.train import main

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def tensorboard_curve(run_dir: Path, tag: str = "pretrain/loss") -> dict[int, float]:
    """{step: value} as TensorBoard shows it (purged points dropped); steps must be unique."""
    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    events = accumulator.Scalars(tag)
    steps = [event.step for event in events]
    assert len(steps) == len(set(steps)), steps
    return {event.step: event.value for event in events}


@pytest.mark.slow
def test_tensorboard_curve_is_written_and_continued_after_a_resume(debug_config, tmp_path):
    config = apply_overrides(debug_config, ["optim.epochs=2", "run.log_every_steps=1", "run.checkpoint_every_steps=5",
                                            "run.keep_last_checkpoints=10"])
    full_dir = Path(main(config)["run_dir"])
    full = tensorboard_curve(full_dir)
    assert sorted(full) == list(range(1, 17))

    # The same run killed after logging step 16 but with step 10 as its last checkpoint: its
    # events hold points 11-16 that the resumed run computes again.
    resumed_root = tmp_path / "resumed"
    shutil.copytree(full_dir, resumed_root / full_dir.name)
    resumed_dir = resumed_root / full_dir.name
    (resumed_dir / "result.json").unlink()
    for step in (15, 16):
        (resumed_dir / "checkpoints" / f"checkpoint_{step:08d}.pt").unlink()
    main(dataclasses.replace(config, run=dataclasses.replace(config.run, output_root=str(resumed_root))))
    curve = tensorboard_curve(resumed_dir)
    assert sorted(curve) == list(range(1, 17))  # one point per step: 11-16 replaced, not doubled
    logged = {r["step"]: r["loss"] for r in map(json.loads, (resumed_dir / "metrics.jsonl").read_text().splitlines())}
    assert curve == pytest.approx(logged, rel=1e-6)  # the same curve as metrics.jsonl


def test_wandb_gets_the_run_directory_as_id_and_offline_mode(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def log(self, values, step):
            calls.setdefault("log", []).append((values, step))

        def finish(self):
            calls["finished"] = True

    def init(**arguments):
        calls["init"] = arguments
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = RunConfig(loggers=["wandb"], wandb_mode="offline", wandb_project="ablations")
    trackers = Trackers(tmp_path / "debug-0123456789", "pretrain", run, run)
    trackers.resume_at(40)
    trackers.log({"step": 41, "loss": 2.5, "lr": 0.1, "time": 1.0, "total": 80, "note": "text"}, 41)
    trackers.close()
    assert calls["init"]["id"] == "debug-0123456789" and calls["init"]["resume"] == "allow"
    assert calls["init"]["mode"] == "offline" and calls["init"]["project"] == "ablations"
    assert calls["init"]["dir"] == str(tmp_path / "debug-0123456789")
    assert calls["log"] == [({"pretrain/step": 41.0, "pretrain/loss": 2.5, "pretrain/lr": 0.1}, 41)]
    assert calls["finished"]


def test_a_missing_tracker_is_named_once_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    import common.tracking as tracking

    monkeypatch.setattr(tracking, "_reported_missing", set())
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    run = RunConfig(loggers=["tensorboard", "wandb"])
    for index in range(2):  # two runs in one process
        trackers = Trackers(tmp_path / f"run{index}", "pretrain", run)
        trackers.log({"step": 1, "loss": 1.0}, 1)
        trackers.log({"step": 2, "loss": 0.5}, 2)
        trackers.close()
    assert capsys.readouterr().err.count("wandb is not installed") == 1
    assert tensorboard_curve(tmp_path / "run1") == {1: 1.0, 2: 0.5}


def test_unknown_loggers_and_modes_are_refused():
    with pytest.raises(ConfigError, match="unknown \\['mlflow'\\]"):
        RunConfig(loggers=["mlflow"]).check()
    with pytest.raises(ConfigError, match="wandb_mode"):
        RunConfig(wandb_mode="sometimes").check()


@contextlib.contextmanager
def unwritable(folder: Path):
    """`folder` refuses new entries while inside, to root too (the immutable attribute: the mode bits
    do not bind root)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_a_tracker_that_cannot_write_is_named_once_and_switched_off(tmp_path, capsys):
    """A resumed run whose tensorboard/ folder cannot be written goes on with metrics.jsonl."""
    run_dir = tmp_path / "debug-0123456789"
    (run_dir / "tensorboard").mkdir(parents=True)
    trackers = Trackers(run_dir, "pretrain", RunConfig(loggers=["tensorboard"]))
    with unwritable(run_dir / "tensorboard"):
        for step in (1, 2, 3):
            trackers.log({"step": step, "loss": 1.0}, step)
        trackers.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "tensorboard" in lines[0] and str(run_dir / "tensorboard") in lines[0], lines
    assert "switched off" in lines[0]
    assert not list((run_dir / "tensorboard").iterdir())


@pytest.mark.parametrize("folder", ["run", "checkpoints", "output_root"])
def test_a_run_folder_that_cannot_be_written_is_one_error_line(debug_config, tmp_path, capsys, folder):
    """Before a resume (the run folder, or its checkpoints/, exists but cannot be written) or before a
    new run (the output root cannot be written): one `error:` line naming the folder, exit status 2."""
    run_dir = run_directory(debug_config, data_fingerprint="f")
    if folder != "output_root":  # an earlier start left the folder, its lock and its checkpoints
        run_dir.checkpoint_dir.mkdir(parents=True)
        (run_dir.path / ".lock").write_text("")
        (run_dir.path / "config.yaml").write_text("")
    else:
        run_dir.path.parent.mkdir(parents=True)
    lifecycle = RunLifecycle(run_dir, "pretrain", "step")
    refused = {"run": run_dir.path, "checkpoints": run_dir.checkpoint_dir, "output_root": run_dir.path.parent}[folder]
    with unwritable(refused), pytest.raises(SystemExit) as exit:
        run_stage(lifecycle.start, debug_config)
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(refused) in lines[0], lines
