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


@pytest.mark.parametrize("grey", [False, True])
def test_loader_views_equal_totensor_and_normalize_per_image(debug_config, grey):
    """The PIL path's transforms end at uint8 tensors and the loop scales and normalises whole batches
    (a fifth less loading work, a quarter of the bytes to the device): every view, global and local,
    bit-identical to ToTensor + NORMALIZE applied to each image, from grey and from colour images."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from common.sampling import SeededViews, StepSpanSampler
    from common.transforms import NORMALIZE, to_three_channels
    from pretrain.augment import pretraining_views
    from pretrain.train import TrainingData

    config = apply_overrides(debug_config, ["augment.num_local_crops=2", "augment.local_crop_size=12"])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 32, 32) if grey else (16, 32, 32, 3), dtype=np.uint8)
    images = [(Image.fromarray(array), index % 3) for index, array in enumerate(pixels)]
    data = TrainingData(config, images, 4, torch.device("cpu"))
    per_image = [transforms.Compose([*view.transforms[:-2], transforms.ToTensor(), to_three_channels, NORMALIZE])
                 for view in pretraining_views(config.augment, config.model.image_size)]
    assert [type(step) for step in pretraining_views(config.augment, 32)[0].transforms[-2:]] == [
        transforms.PILToTensor, type(to_three_channels)]
    reference = SeededViews(images, per_image, config.run.seed)
    keys = list(StepSpanSampler(data.sampler, 0, 3))
    for step, views in enumerate(data.batches(0, 3)):
        expected = [reference[key][0] for key in keys[4 * step:4 * step + 4]]
        assert [v.shape[1:] for v in views] == [(3, 32, 32)] * 2 + [(3, 12, 12)] * 2
        for index, view in enumerate(views):
            assert view.dtype == torch.float32
            assert torch.equal(view, torch.stack([sample[index] for sample in expected])), (step, index)
