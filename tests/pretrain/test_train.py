"""Short real CPU runs of the training loop, presets, checkpoints and resume."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from common.checkpoint import list_checkpoints, load_torch
from common.config import apply_overrides
from pretrain.configs import PRESETS, preset
from pretrain.model import PatchMixModel
from pretrain.train import main


def _losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.mark.slow
def test_debug_run_lowers_loss_and_writes_loadable_checkpoint(debug_config):
    config = apply_overrides(debug_config, ["optim.epochs=8", "run.log_every_steps=1"])
    result = main(config)
    run_dir = __import__("pathlib").Path(result["run_dir"])
    losses = list(_losses(run_dir).values())
    assert len(losses) == 64
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.3, (first, last)
    assert (run_dir / "result.json").is_file() and (run_dir / "config.yaml").is_file()
    state = load_torch(list_checkpoints(run_dir / "checkpoints")[-1][1])
    assert state["step"] == 64
    model = PatchMixModel(config.model)
    model.load_state_dict(state["model"])  # strict: every key matches
    # Running again finds result.json and does nothing.
    assert main(config)["steps"] == 64


@pytest.mark.slow
def test_resume_from_checkpoint_repeats_uninterrupted_run(debug_config, tmp_path):
    config = apply_overrides(debug_config, ["optim.epochs=2", "run.log_every_steps=1",
                                            "run.checkpoint_every_steps=5", "run.keep_last_checkpoints=10"])
    uninterrupted = main(config)
    full_dir = __import__("pathlib").Path(uninterrupted["run_dir"])
    # A run that died after its step-10 checkpoint (mid-epoch 1 of 8 steps per epoch).
    resumed_config = dataclasses.replace(config, run=dataclasses.replace(config.run, output_root=str(tmp_path / "b")))
    resumed_dir = tmp_path / "b" / full_dir.name
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_00000010.pt", resumed_dir / "checkpoints")
    resumed = main(resumed_config)
    full_losses, resumed_losses = _losses(full_dir), _losses(resumed_dir)
    assert sorted(resumed_losses) == list(range(11, 17))
    for step, loss in resumed_losses.items():
        assert loss == full_losses[step], step  # bitwise
    final_full = load_torch(full_dir / "checkpoints" / "checkpoint_00000016.pt")["model"]
    final_resumed = load_torch(resumed_dir / "checkpoints" / "checkpoint_00000016.pt")["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert resumed["steps"] == 16


def test_every_preset_validates_and_builds_its_model():
    seen = {}
    for name in sorted(PRESETS):
        config = apply_overrides(preset(name), [])  # runs every section's check()
        assert config.preset == name
        key = json.dumps(dataclasses.asdict(config.model), sort_keys=True)
        if key not in seen:
            with torch.device("meta"):  # shapes only: no memory, no init cost
                seen[key] = sum(p.numel() for p in PatchMixModel(config.model).base_encoder.parameters())
    assert len(seen) >= 8


def test_batch_logs_get_lines_not_bar_redraws(debug_config, capsys):
    """Output that is not a terminal (a SLURM log): one line per log step with step/total, loss, lr,
    img/s and ETA, and no carriage-return bar."""
    import dataclasses
    import re

    from pretrain.train import main

    config = dataclasses.replace(debug_config, run=dataclasses.replace(debug_config.run, progress=True,
                                                                        log_every_steps=4),
                                 optim=dataclasses.replace(debug_config.optim, max_steps=8))
    main(config)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("[pretrain debug] step")]
    assert len(lines) == 2, captured.out
    assert re.fullmatch(r"\[pretrain debug\] step 4/8 \(50%\) loss=\d+\.\d{4} lr=\S+ \d+\.\d img/s ETA \d+:\d\d:\d\d",
                        lines[0]), lines[0]
    assert "\r" not in captured.err and "\r" not in captured.out
