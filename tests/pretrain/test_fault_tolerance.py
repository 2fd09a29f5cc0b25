"""Kill-and-resume, atomic checkpoints, unreadable images and wrong dataset roots."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.checkpoint import atomic_torch_save, checkpoint_path, list_checkpoints, load_latest_checkpoint
from common.config import apply_overrides
from pretrain import train
from pretrain.methods import patchmix

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--preset", "debug_cpu", "data.num_workers=2", "optim.epochs=4", "run.log_every_steps=1",
       "run.checkpoint_every_steps=1", "run.keep_last_checkpoints=100", "run.progress=false"]


def _pretrain(output: Path) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pretrain", *RUN, f"run.output_root={output}"], cwd=ROOT,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kill_after_checkpoint(output: Path, step: int) -> int:
    """Start (or resume) the run and SIGKILL it, loader workers included, once checkpoint `step` exists."""
    process = _pretrain(output)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if any(list_checkpoints(d / "checkpoints") and list_checkpoints(d / "checkpoints")[-1][0] >= step
               for d in output.glob("*")):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    return process.returncode


def _steps(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sigkill_and_resume_repeats_every_loss_bitwise(tmp_path):
    reference = _pretrain(tmp_path / "reference")
    assert reference.wait() == 0, reference.stderr.read().decode()[-2000:]
    reference_dir = next((tmp_path / "reference").iterdir())
    expected = dict(_steps(reference_dir))
    assert len(expected) == 32  # 8 steps per epoch

    killed = tmp_path / "killed"
    for kill_step in (5, 13, 22):  # mid-epoch 0, mid-epoch 1, mid-epoch 2
        assert _kill_after_checkpoint(killed, kill_step) == -signal.SIGKILL
    final = _pretrain(killed)
    assert final.wait() == 0, final.stderr.read().decode()[-2000:]
    assert "resuming" in final.stdout.read().decode()
    killed_dir = next(killed.iterdir())
    recorded = _steps(killed_dir)  # a resume truncates what was logged after its checkpoint: once each
    assert [step for step, _ in recorded] == sorted(expected)
    curve = json.loads((killed_dir / "result.json").read_text())["loss_curve"]
    assert [step for step, _ in curve] == sorted(expected)
    for step, loss in recorded:
        assert loss == expected[step], step  # bitwise
    a = torch.load(reference_dir / "checkpoints" / "checkpoint_00000032.pt")["model"]
    b = torch.load(killed_dir / "checkpoints" / "checkpoint_00000032.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_negative_control_unseeded_resume_differs(debug_config, tmp_path, monkeypatch):
    """Resuming without restoring the randomness must break the comparison (the test can fail)."""
    config = apply_overrides(debug_config, ["optim.epochs=2", "run.log_every_steps=1",
                                            "run.checkpoint_every_steps=4", "run.keep_last_checkpoints=10"])
    full_dir = Path(train.main(config)["run_dir"])
    expected = dict(_steps(full_dir))
    resumed_root = tmp_path / "resumed"
    (resumed_root / full_dir.name / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_00000004.pt", resumed_root / full_dir.name / "checkpoints")
    import random

    salt = random.Random(0).random()
    original = train.derive_seed
    monkeypatch.setattr(train, "derive_seed", lambda *parts: original(salt, *parts))  # RNG "not restored"
    train.main(apply_overrides(config, [f"run.output_root={resumed_root}"]))
    resumed = dict(_steps(resumed_root / full_dir.name))
    assert any(resumed[s] != expected[s] for s in resumed)


def test_killed_writer_never_leaves_a_loadable_partial_checkpoint(tmp_path):
    """SIGKILL a process that saves 16 MB checkpoints back to back, at several points of a save."""
    writer = ("import sys, torch; sys.path.insert(0, sys.argv[2]);"
              "from common.checkpoint import atomic_torch_save\n"
              "step = 0\n"
              "while True:\n"
              "    step += 1\n"
              "    atomic_torch_save({'step': step, 'weights': torch.full((4_000_000,), float(step))}, sys.argv[1])\n"
              "    print(step, flush=True)\n")
    target = tmp_path / "checkpoint_00000001.pt"
    partial_files_seen = 0
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04):
        process = subprocess.Popen([sys.executable, "-c", writer, str(target), str(ROOT)], stdout=subprocess.PIPE)
        process.stdout.readline()  # one save completed: the next one is under way
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        partial_files_seen += len(list(tmp_path.glob(".*.tmp.*")))
        state = torch.load(target, weights_only=True)  # the target is always complete
        assert torch.all(state["weights"] == float(state["step"]))
        assert list_checkpoints(tmp_path) == [(1, target)]  # temporaries never look like checkpoints
    print(f"kills that interrupted a write: {partial_files_seen}")


def test_truncated_newest_checkpoint_falls_back_with_warning(tmp_path):
    for step in (4, 8):
        atomic_torch_save({"step": step}, checkpoint_path(tmp_path, step))
    newest = checkpoint_path(tmp_path, 8)
    newest.write_bytes(newest.read_bytes()[:20])
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_latest_checkpoint(tmp_path)["step"] == 4


def test_unreadable_checkpoints_never_restart_silently(debug_config):
    config = apply_overrides(debug_config, ["optim.max_steps=2"])
    run_dir = Path(train.main(config)["run_dir"])
    (run_dir / "result.json").unlink()
    for _, path in list_checkpoints(run_dir / "checkpoints"):
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="refusing to restart from scratch"):
        train.main(config)


def _odd_image_folder(root: Path) -> dict[str, Path]:
    """Two classes of good images plus every kind of odd file."""
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        for index in range(12):
            Image.new("RGB", (40, 40), (index * 20, 50, 100)).save(root / "train" / label / f"{index}.JPEG")
    odd = {}
    odd["cmyk"] = root / "train" / "a" / "cmyk.JPEG"
    Image.new("CMYK", (40, 40), (10, 20, 30, 40)).save(odd["cmyk"])
    odd["gray"] = root / "train" / "a" / "gray.JPEG"
    Image.new("L", (40, 40), 128).save(odd["gray"])
    odd["png_as_jpeg"] = root / "train" / "b" / "png.JPEG"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(odd["png_as_jpeg"], format="PNG")
    odd["zero_byte"] = root / "train" / "b" / "empty.JPEG"
    odd["zero_byte"].write_bytes(b"")
    odd["truncated"] = root / "train" / "b" / "truncated.JPEG"
    Image.effect_noise((64, 64), 50).convert("RGB").save(odd["truncated"], quality=95)
    odd["truncated"].write_bytes(odd["truncated"].read_bytes()[:300])
    return odd


@pytest.mark.parametrize("decoding", [[], ["augment.gpu=true", "augment.gpu_decode=true"]],
                         ids=["pil", "device_decode"])
def test_odd_images_load_and_unreadable_ones_are_skipped_and_reported(debug_config, tmp_path, decoding):
    odd = _odd_image_folder(tmp_path / "data")
    config = apply_overrides(debug_config, ["data.dataset=imagefolder", f"data.root={tmp_path / 'data'}",
                                            "optim.batch_size=8", "optim.epochs=1", "run.log_every_steps=1",
                                            "data.max_bad_images=2", *decoding])
    result = train.main(config)
    assert result["steps"] == 3 and result["bad_images"] == 2
    report = json.loads((Path(result["run_dir"]) / "bad_images.json").read_text())
    assert set(report) == {str(odd["zero_byte"]), str(odd["truncated"])}  # CMYK, gray, PNG-as-JPEG load


def test_too_many_unreadable_images_abort(debug_config, tmp_path):
    _odd_image_folder(tmp_path / "data")
    config = apply_overrides(debug_config, ["data.dataset=imagefolder", f"data.root={tmp_path / 'data'}",
                                            "optim.batch_size=8", "optim.epochs=1", "data.max_bad_images=1"])
    with pytest.raises(train.TrainingAborted, match="more than 1 unreadable images"):
        train.main(config)


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("parent", "looks like the parent folder"),
    ("split_folder", "looks like a split folder itself"),
    ("one_class", "single class folder"),
    ("empty_class", "hold no images: empty"),
    ("imagenet_counts", "expected 1000 classes, found 2 classes and 2 images"),
])
def test_wrong_dataset_root_fails_before_training(debug_config, tmp_path, layout, message):
    data = tmp_path / "collection" / "data"
    for split in ("train", "val"):
        for label in ("a", "b"):
            (data / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data / split / label / "0.png")
    dataset, root = "imagefolder", data
    if layout == "missing":
        root = tmp_path / "nowhere"
    elif layout == "parent":
        root = data.parent
    elif layout == "split_folder":
        root = data / "train"
    elif layout == "one_class":
        shutil.rmtree(data / "train")
        (data / "train").mkdir()
        Image.new("RGB", (8, 8)).save(data / "train" / "0.png")
    elif layout == "empty_class":
        (data / "train" / "empty").mkdir()
    else:
        dataset = "imagenet"
    config = apply_overrides(debug_config, [f"data.dataset={dataset}", f"data.root={root}"])
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        train.main(config)
    assert not Path(config.run.output_root).exists()  # nothing was written


@pytest.mark.slow
@pytest.mark.parametrize("with_launcher_handler", [False, True])
def test_preemption_saves_at_the_next_step_boundary_then_hands_over(debug_config, with_launcher_handler):
    """A signal mid-run: checkpoint at the next check (every 4 steps), then the launcher's handler
    (submitit's requeue) or exit 128 + signal; the requeued run finishes with the same losses."""
    import signal as signals


    config = apply_overrides(debug_config, ["optim.epochs=2", "run.log_every_steps=4",
                                            "run.checkpoint_every_steps=100"])
    uninterrupted = train.main(apply_overrides(config, ["run.name=reference"]))
    launcher_calls = []
    if with_launcher_handler:
        signals.signal(signals.SIGUSR1, lambda signum, frame: launcher_calls.append(signum))
    original, calls = patchmix.patchmix_loss, {"n": 0}

    def signal_at_step_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signals.SIGUSR1)  # delivered to the recorder, mid-step
        return original(*args, **kwargs)

    patchmix.patchmix_loss = signal_at_step_6
    try:
        with pytest.raises(SystemExit) as exit_info:
            train.main(config)
    finally:
        patchmix.patchmix_loss = original
    assert exit_info.value.code == 128 + signals.SIGUSR1
    assert launcher_calls == ([signals.SIGUSR1] if with_launcher_handler else [])
    run_dir = Path(config.run.output_root) / f"debug-{Path(uninterrupted['run_dir']).name.split('-')[-1]}"
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [8]  # the next check after step 6
    finished = train.main(config)  # the requeued job
    assert finished["steps"] == 16
    reference = dict(_steps(Path(uninterrupted["run_dir"])))
    assert all(loss == reference[step] for step, loss in _steps(run_dir))


@pytest.mark.slow
def test_resume_from_starts_a_new_run_at_the_parents_last_good_checkpoint(debug_config):
    """After a NaN stop the advice is a real path: a new run (its own identity: another lr) that starts
    from the old run's newest readable checkpoint and records its parent."""
    parent = Path(train.main(apply_overrides(debug_config, ["optim.max_steps=8"]))["run_dir"])
    child_config = apply_overrides(debug_config, [f"run.resume_from={parent}", "optim.base_lr=1e-3",
                                                  "run.log_every_steps=1"])
    child = train.main(child_config)
    assert Path(child["run_dir"]) != parent and child["steps"] == 32
    assert child["resumed_from"] == {"run_dir": str(parent), "step": 8}
    assert [r["step"] for r in map(json.loads, (Path(child["run_dir"]) / "metrics.jsonl").read_text().splitlines())
            ][0] == 9  # continues at the parent's step


def test_cli_refuses_a_busy_run_directory_in_one_line(tmp_path):
    """Two copies of the same command: the second says who holds the run and exits non-zero."""
    from pretrain.configs import preset, run_directory

    root = tmp_path / "runs"
    run_dir = run_directory(apply_overrides(preset("debug_cpu"), [f"run.output_root={root}"])).path
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.rundir import RunDirectory; "
                               "RunDirectory(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "debug_cpu",
                                 f"run.output_root={root}"], capture_output=True, text=True, cwd=ROOT,
                                timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2  # refused before any work
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir} is in use by pid {holder.pid}")
