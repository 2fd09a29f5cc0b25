"""Reliability round 2: identities, damaged files, locks, names, provenance, temporaries, images."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import atomic_torch_save, remove_stale_temporaries
from common.config import ConfigError, apply_overrides
from common.datasets import DataConfig, RobustImageFolder, build_dataset, dataset_fingerprint, preflight_image_folder
from common.encoded_images import read_encoded
from common.errors import DiskWriteError, RunDirectoryBusy
from common.rundir import RunDirectory, releases_run_locks
from common.sampling import SeededViews
from common.encoder import EncoderSpec, encoder_digest, state_digest
from evaluate.features import cache_key, FeatureConfig
from pretrain.configs import preset, run_directory


def _image_folder(root: Path, colours: dict[str, list[int]], size: int = 8) -> Path:
    """root/{train,val}/<class>/<i>.png, one flat-colour PNG per listed value."""
    for split in ("train", "val"):
        for name, values in colours.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, value in enumerate(values):
                Image.new("RGB", (size, size), (value, value, value)).save(root / split / name / f"{i}.png")
    return root


def _folder_config(root: Path, **changes) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), num_workers=0, **changes)


# 1. data.root: what a stage reads is part of its identity; the mount path is not.
def test_dataset_root_is_in_the_identity_but_its_path_is_not(tmp_path):
    first = _image_folder(tmp_path / "a", {"cat": [10, 20], "dog": [30, 40]})
    other = _image_folder(tmp_path / "b", {"cat": [10, 20, 50], "dog": [30, 40]})
    moved = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(first, moved)
    fingerprints = [dataset_fingerprint(_folder_config(root)) for root in (first, other, moved)]
    assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2]

    base = apply_overrides(preset("debug_cpu"), ["data.dataset=imagefolder", "data.allow_partial=true",
                                                 f"run.output_root={tmp_path / 'runs'}"])
    directories = [run_directory(apply_overrides(base, [f"data.root={root}"])).path for root in (first, other, moved)]
    assert directories[0] != directories[1] and directories[0] == directories[2]
    keys = [cache_key("w", FeatureConfig(), _folder_config(root), "test", 32) for root in (first, other, moved)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    # Datasets fixed by their name keep the identity they always had.
    assert dataset_fingerprint(DataConfig(dataset="cifar10", root="/anywhere")) == ""


# 2. An encoder is its weights and its architecture.
def test_encoder_digest_covers_the_head_count():
    spec12, spec6 = EncoderSpec("vit_small", 16, 224, 12), EncoderSpec("vit_small", 16, 224, 6)
    state = {"w": torch.ones(3)}
    assert encoder_digest(state, spec12) != encoder_digest(state, spec6)
    assert encoder_digest(state, EncoderSpec("vit_small", 16, 224, 0)) == encoder_digest(state, spec12) == state_digest(state)


# 5. 16-bit PNGs are scaled, not clipped.
def test_sixteen_bit_png_is_scaled(tmp_path):
    values = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in steps of 257
    folder = tmp_path / "train" / "only"
    folder.mkdir(parents=True)
    Image.fromarray(values).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")
    expected = np.round(values / 257).astype(np.uint8)
    image, _ = RobustImageFolder(str(tmp_path / "train"), None)[0]
    assert np.array_equal(np.array(image)[..., 0], expected)
    pixels = read_encoded((folder / "deep.png").read_bytes()).data  # the device-decode path
    assert np.array_equal(pixels[0].numpy(), expected)


# 6. Symbolic links: loops refused at once, and the preflight counts what the dataset reads.
def test_symlink_loops_are_refused_and_counts_agree(tmp_path):
    root = _image_folder(tmp_path / "data", {"cat": [1, 2], "dog": [3]})
    shared = _image_folder(tmp_path / "shared", {"more": [4, 5, 6]})
    os.symlink(shared / "train" / "more", root / "train" / "cat" / "linked")  # a legitimate link
    summary = preflight_image_folder(root / "train")
    dataset = build_dataset(_folder_config(root), "train", None)
    assert summary.num_images == len(dataset) == 6

    os.symlink(root / "train" / "cat", root / "train" / "cat" / "self")  # a self loop
    with pytest.raises(ValueError, match="symbolic link loop"):
        preflight_image_folder(root / "train")
    os.unlink(root / "train" / "cat" / "self")
    os.symlink(root / "train" / "dog", root / "train" / "cat" / "to_dog")  # two mutual loops
    os.symlink(root / "train" / "cat", root / "train" / "dog" / "to_cat")
    started = time.time()
    with pytest.raises(ValueError, match="symbolic link loop"):
        build_dataset(_folder_config(root), "train", None)
    assert time.time() - started < 10


# 9. metrics.jsonl: a cut line stays one damaged line; readers skip and report it.
def test_cut_metrics_line_is_confined_and_reported(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.append_metrics({"step": 1, "loss": 1.0})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 2, "lo')  # a kill or a full disk mid-append
    run.append_metrics({"step": 3, "loss": 0.5})
    with pytest.warns(UserWarning, match="skipped 1 damaged line"):
        assert [r["step"] for r in run.read_metrics()] == [1, 3]
    run.truncate_metrics("step", 1)
    assert [r["step"] for r in run.read_metrics()] == [1]


# 10. One process per run directory.
HOLDER = """
import sys, time
from common.rundir import RunDirectory
RunDirectory(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parents[2])
    assert process.stdout.readline().strip() == "held"
    return process


def test_run_directory_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = _hold(tmp_path / "run", 60)
    try:
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid} on {socket.gethostname()}.*--wait"):
            RunDirectory(tmp_path / "run").acquire()
    finally:
        holder.kill()
        holder.wait()
    releases_run_locks(lambda: RunDirectory(tmp_path / "run").acquire())()  # a killed owner never blocks


def test_run_directory_lock_can_wait(tmp_path):
    holder = _hold(tmp_path / "run", 1.5)
    started = time.time()
    releases_run_locks(lambda: RunDirectory(tmp_path / "run").acquire(wait=True))()
    assert time.time() - started > 0.5
    holder.wait()


# 13. Run names stay inside the output root.
@pytest.mark.parametrize("name", ["../escape", "a/b", "", "..", "/abs"])
def test_run_names_that_escape_are_refused(name):
    with pytest.raises(ConfigError, match="run.name"):
        apply_overrides(preset("debug_cpu"), [f"run.name={name}"])


# 15. Provenance: the first start is kept, each restart appended.
def test_provenance_keeps_the_first_start(tmp_path):
    run = RunDirectory(tmp_path / "run")
    config = preset("debug_cpu")
    run.prepare(config, world_size=2)
    run.prepare(config, world_size=1)
    record = json.loads((run.path / "provenance.json").read_text())
    assert record["world_size"] == 2 and [r["world_size"] for r in record["restarts"]] == [1]


# 16. Temporaries of failed writes are removed, never a live process's.
def test_stale_temporaries_are_removed_at_start_up(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".features.pt.tmp-{dead.pid}@{host}"
    legacy = tmp_path / f".checkpoint_00000008.pt.tmp.{dead.pid}"
    live = tmp_path / f".features.pt.tmp-{os.getppid()}@{host}"
    elsewhere = tmp_path / f".features.pt.tmp-{dead.pid}@another-host"
    for path in (stale, legacy, live, elsewhere):
        path.write_bytes(b"partial")
    assert set(remove_stale_temporaries(tmp_path)) == {stale, legacy}
    assert live.exists() and elsewhere.exists()
    run = RunDirectory(tmp_path / "run")
    (run.checkpoint_dir).mkdir(parents=True)
    left = run.checkpoint_dir / f".checkpoint_00000016.pt.tmp-{dead.pid}@{host}"
    left.write_bytes(b"partial")
    run.prepare(preset("debug_cpu"))
    assert not left.exists()


# 12. A full disk while saving: one clear error, no temporary left behind.
def test_disk_full_checkpoint_write_is_one_clear_error(tmp_path, monkeypatch):
    def full_disk(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskWriteError, match="no space left on the device writing .*checkpoint_00000008.pt"):
        atomic_torch_save({"a": 1}, tmp_path / "checkpoint_00000008.pt")
    assert list(tmp_path.iterdir()) == []


# 11. Augmentations drawing from Python's and numpy's generators repeat per sample.
def test_seeded_views_fix_python_and_numpy_draws():
    import random

    def draws(_):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))

    views = SeededViews([(None, 0)] * 4, [draws], seed=3)
    first = views[(2, 1)]
    random.seed(99)
    np.random.seed(99)
    assert views[(2, 1)] == first and views[(1, 1)] != first
    assert random.random() == random.Random(99).random()  # the caller's generators are left as they were


def test_seeded_views_seed_the_cpu_generator_only(monkeypatch):
    """The views' torch draws are those of torch.manual_seed(seed) on the CPU, without asking every
    accelerator backend to seed itself per sample (a stack trace formatted per call: half of a small
    image's loading time)."""
    from common.runtime import derive_seed

    views = SeededViews([(None, 0)] * 4, [lambda _: torch.rand(3)], seed=3)
    torch.manual_seed(derive_seed(3, 1, 2))
    expected = torch.rand(3)
    accelerator_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: accelerator_seeds.append(seed))
    assert torch.equal(views[(2, 1)][0][0], expected)
    assert accelerator_seeds == []


def test_a_batched_fetch_gives_the_samples_of_single_fetches_and_keeps_the_callers_generators():
    """The DataLoader's `__getitems__` saves and restores the caller's generators once per batch (their
    copying was a fifth of a small image's loading time); every sample must still be its own key's."""
    import random

    def draws(_):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))

    views = SeededViews([(None, label) for label in range(6)], [draws, draws], seed=3)
    keys = [(4, 0), (1, 2), (4, 1), (0, 0)]
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert views.__getitems__(keys) == [views[key] for key in keys]
    callers_next = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert callers_next == (random.Random(7).random(), float(np.random.RandomState(7).rand()),
                            float(torch.rand((), generator=torch.Generator().manual_seed(7))))
