"""Experiment trackers: TensorBoard events written and continued after a resume, W&B's run id and
offline mode, and a missing tracker package named once while the run goes on."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from common.config import ConfigError, apply_overrides
from common.runtime import RunConfig
from common.tracking import Trackers
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
