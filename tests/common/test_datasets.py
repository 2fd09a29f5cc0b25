"""Dataset loading and the folder preflight (messages name expected vs found)."""
from __future__ import annotations

import errno
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets import (ArrayImageDataset, DataConfig, build_dataset, fashion_mnist_arrays,
                             preflight_image_folder, synthetic_arrays)
from common.errors import DatasetFileError, TrainingAborted


def _image(path, size=8, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color=128 if mode == "L" else (10, 20, 30)).save(path)


def _folder(root, classes=3, per_class=2):
    for c in range(classes):
        for i in range(per_class):
            _image(root / f"class{c}" / f"{i}.png")
    return root


def test_preflight_accepts_good_folder(tmp_path):
    summary = preflight_image_folder(_folder(tmp_path / "train"), expected_classes=3, expected_images=6)
    assert summary.classes == ["class0", "class1", "class2"] and summary.num_images == 6


def test_preflight_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preflight_image_folder(tmp_path / "nope")


def test_preflight_single_class_folder(tmp_path):
    _image(tmp_path / "one_class" / "a.png")
    with pytest.raises(ValueError, match="single class folder"):
        preflight_image_folder(tmp_path / "one_class")


def test_preflight_parent_folder(tmp_path):
    _folder(tmp_path / "imagenet" / "train")
    _folder(tmp_path / "imagenet" / "val")
    with pytest.raises(ValueError, match=r"parent folder; point to .*train"):
        preflight_image_folder(tmp_path / "imagenet")


def test_preflight_empty_class(tmp_path):
    root = _folder(tmp_path / "train")
    (root / "class_empty").mkdir()
    with pytest.raises(ValueError, match="hold no images: class_empty"):
        preflight_image_folder(root)


def test_preflight_counts_name_expected_and_found(tmp_path):
    with pytest.raises(ValueError, match="expected 1000 classes, found 3 classes and 6 images"):
        preflight_image_folder(_folder(tmp_path / "train"), expected_classes=1000)
    with pytest.raises(ValueError, match="expected 1,281,167 images, found 3 classes and 6 images"):
        preflight_image_folder(tmp_path / "train", expected_images=1_281_167)


def test_imagenet_dataset_is_strict_unless_partial(tmp_path):
    _folder(tmp_path / "train")
    config = DataConfig(dataset="imagenet", root=str(tmp_path))
    with pytest.raises(ValueError, match="expected 1000 classes"):
        build_dataset(config, "train", None)
    partial = DataConfig(dataset="imagenet", root=str(tmp_path), allow_partial=True)
    image, label = build_dataset(partial, "train", None)[0]
    assert image.mode == "RGB" and label == 0


def _idx_bytes(array: np.ndarray) -> bytes:
    """`array` as an IDX file of unsigned bytes (MNIST's format): magic number, sizes, data."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array):
    path.write_bytes(gzip.compress(_idx_bytes(array)))


def test_fashion_mnist_idx_files_are_read_as_rgb(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(5, 28, 28))
    labels = np.array([0, 1, 2, 3, 9])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    read_images, read_labels = fashion_mnist_arrays(tmp_path, train=False)
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)
    dataset = build_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)), "test", None)
    image, label = dataset[4]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 9
    assert np.array_equal(np.asarray(image)[..., 0], images[4])


def test_fashion_mnist_missing_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("common.datasets.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist_arrays(tmp_path, train=True)


def test_synthetic_is_deterministic_and_class_conditional():
    a_images, a_labels = synthetic_arrays(40, 4, 16, seed=1)
    b_images, b_labels = synthetic_arrays(40, 4, 16, seed=1)
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    dataset = ArrayImageDataset(a_images, a_labels)
    assert len(dataset) == 40 and dataset[0][0].size == (16, 16)
    # Same-class images are closer to each other than to other classes on average.
    flat = a_images.reshape(40, -1).astype(float)
    means = np.stack([flat[a_labels == c].mean(0) for c in range(4)])
    nearest = np.argmin(((flat[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == a_labels).mean() > 0.8


def test_subset_limits_images():
    config = DataConfig(dataset="synthetic", synthetic_train_size=50, train_subset=10)
    assert len(build_dataset(config, "train", None)) == 10


def test_grey_images_give_the_same_pretraining_views_as_their_rgb_expansion():
    """keep_gray hands Fashion-MNIST to the pretraining views as 'L' images (a quarter less loading
    work); every view, global and local, on the PIL and the batched-colour path, must be bit-identical
    to the view of the RGB expansion."""
    import torch

    from common.sampling import SeededViews
    from pretrain.augment import AugmentConfig, pretraining_views

    # Smooth shapes with dark and bright areas, so that crops, blur, contrast and solarization all act.
    rows, cols = np.mgrid[0:28, 0:28]
    rng = np.random.default_rng(0)
    images = np.stack([np.clip(255 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * s**2))
                               + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
                       for cy, cx, s in rng.uniform([6, 6, 3], [22, 22, 9], size=(24, 3))])
    labels = np.zeros(len(images), dtype=np.int64)
    grey, rgb = ArrayImageDataset(images, labels, keep_gray=True), ArrayImageDataset(images, labels)
    assert grey[0][0].mode == "L" and rgb[0][0].mode == "RGB"
    for config in (AugmentConfig(num_local_crops=2, local_crop_size=12), AugmentConfig(gpu=True)):
        views = pretraining_views(config, 28)
        from_grey, from_rgb = SeededViews(grey, views, seed=5), SeededViews(rgb, views, seed=5)
        for index in range(len(images)):
            for epoch in range(3):
                expected, _ = from_rgb[(index, epoch)]
                got, _ = from_grey[(index, epoch)]
                assert [v.shape for v in got] == [v.shape for v in expected]
                assert all(torch.equal(a, b) for a, b in zip(got, expected)), (config, index, epoch)


# Damaged dataset files: one error naming the file and what is wrong with it (exit 2), never a traceback.
FASHION_MNIST_STEMS = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
                       ("t10k", "images"): "t10k-images-idx3-ubyte", ("t10k", "labels"): "t10k-labels-idx1-ubyte"}


def _fashion_mnist_folder(root, compressed=True, sizes=(("train", 6), ("t10k", 4))):
    """The four Fashion-MNIST IDX files of tiny random splits in `root` (gzipped or not)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in sizes:
        arrays = {"images": rng.integers(0, 256, size=(count, 28, 28)), "labels": rng.integers(0, 10, size=count)}
        for kind, array in arrays.items():
            name = FASHION_MNIST_STEMS[(prefix, kind)] + (".gz" if compressed else "")
            (root / name).write_bytes(gzip.compress(_idx_bytes(array)) if compressed else _idx_bytes(array))
    return root


def _rewrite(path, change):
    """Replace the IDX content of `path` by change(content), keeping its compression."""
    compressed = path.suffix == ".gz"
    content = path.read_bytes()
    changed = change(gzip.decompress(content) if compressed else content)
    path.write_bytes(gzip.compress(changed) if compressed else changed)


def _truncate_gzip(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _corrupt_gzip_body(path):
    content = bytearray(path.read_bytes())
    content[-8] ^= 0xFF  # the stored checksum (CRC-32) no longer matches the data: a bit flipped on a disk
    path.write_bytes(bytes(content))


# (damage, the words the error must hold, whether it applies to a .gz file, to an uncompressed one)
DAMAGES = {
    "truncated gzip": (_truncate_gzip, "cut short", True, False),
    "not gzip at all": (lambda path: path.write_bytes(b"<!DOCTYPE html><html>Not Found</html>\n"),
                        "not a gzip file: it starts with b'<!DOCTYPE html>", True, False),
    "corrupted gzip": (_corrupt_gzip_body, "corrupted", True, False),
    "an error page": (lambda path: path.write_bytes(b"<!DOCTYPE html><html>Not Found</html>\n"),
                      "magic number is 0x3c21444f", False, True),
    "empty file": (lambda path: path.write_bytes(b""), "is empty", True, True),
    "wrong magic number": (lambda path: _rewrite(path, lambda data: b"\x00\x00\x0d" + data[3:]), "magic number",
                           True, True),
    "payload shorter than its header": (lambda path: _rewrite(path, lambda data: data[:-5]), "cut short", True, True),
    "payload longer than its header": (lambda path: _rewrite(path, lambda data: data + b"\x00" * 3),
                                       "3 bytes more", True, True),
    "cut inside the header": (lambda path: _rewrite(path, lambda data: data[:6]), "header", True, True),
}
# Every damage of every sibling: images and labels, train and test split, gzipped and uncompressed.
DAMAGED_SIBLINGS = [(prefix, kind, compressed, damage) for prefix in ("train", "t10k") for kind in ("images", "labels")
                    for compressed in (True, False) for damage, (_, _, gzip_damage, plain_damage) in DAMAGES.items()
                    if (gzip_damage if compressed else plain_damage)]


@pytest.mark.parametrize("prefix, kind, compressed, damage", DAMAGED_SIBLINGS)
def test_a_damaged_fashion_mnist_file_is_one_error_naming_it(tmp_path, monkeypatch, prefix, kind, compressed, damage):
    damage_file, words, _, _ = DAMAGES[damage]
    monkeypatch.setattr("common.datasets.DEBIAN_FASHION_MNIST", _fashion_mnist_folder(tmp_path / "system"))
    root = _fashion_mnist_folder(tmp_path / "root", compressed)
    damaged = root / (FASHION_MNIST_STEMS[(prefix, kind)] + (".gz" if compressed else ""))
    damage_file(damaged)
    with pytest.raises(DatasetFileError) as raised:
        fashion_mnist_arrays(root, train=prefix == "train")
    message = str(raised.value)
    assert str(damaged) in message and words in message and "\n" not in message, message
    # The other split still loads: the check is per file, not per folder.
    other_images, other_labels = fashion_mnist_arrays(root, train=prefix != "train")
    assert len(other_images) == len(other_labels) == (4 if prefix == "train" else 6)


def test_an_unreadable_fashion_mnist_file_is_named(tmp_path, monkeypatch):
    root = _fashion_mnist_folder(tmp_path)
    failing = root / "t10k-labels-idx1-ubyte.gz"
    original = Path.read_bytes

    def read_bytes(path):
        if path == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # a failing disk or network mount
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DatasetFileError, match=f"{failing} cannot be read: Input/output error"):
        fashion_mnist_arrays(root, train=False)


def test_fashion_mnist_files_are_read_by_their_content_not_their_name(tmp_path):
    """An uncompressed file still named .gz, or gzip without the .gz, is whole: it is read as it is."""
    expected = fashion_mnist_arrays(_fashion_mnist_folder(tmp_path / "whole"), train=True)
    root = _fashion_mnist_folder(tmp_path / "renamed")
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.decompress(images.read_bytes()))
    labels = root / "train-labels-idx1-ubyte.gz"
    labels.rename(root / "train-labels-idx1-ubyte")
    assert all(np.array_equal(a, b) for a, b in zip(fashion_mnist_arrays(root, train=True), expected))


@pytest.mark.parametrize("prefix", ["train", "t10k"])
@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_images_and_labels_must_agree(tmp_path, prefix, compressed):
    root = _fashion_mnist_folder(tmp_path, compressed)
    suffix = ".gz" if compressed else ""
    images_file = root / (FASHION_MNIST_STEMS[(prefix, "images")] + suffix)
    labels_file = root / (FASHION_MNIST_STEMS[(prefix, "labels")] + suffix)
    train = prefix == "train"
    count = 6 if train else 4

    _rewrite(labels_file, lambda data: _idx_bytes(np.zeros(count - 1)))  # a consistent file, one label short
    with pytest.raises(DatasetFileError, match=f"{count} images but .*{count - 1} labels") as raised:
        fashion_mnist_arrays(root, train)
    assert str(images_file) in str(raised.value) and str(labels_file) in str(raised.value)

    _fashion_mnist_folder(tmp_path, compressed)
    _rewrite(images_file, lambda data: _idx_bytes(np.zeros((count, 32, 32))))
    with pytest.raises(DatasetFileError, match="32x32 images; Fashion-MNIST's are 28x28") as raised:
        fashion_mnist_arrays(root, train)
    assert str(images_file) in str(raised.value)

    _fashion_mnist_folder(tmp_path, compressed)
    _rewrite(labels_file, lambda data: _idx_bytes(np.array([0, 3, 10, 9, 1, 2][:count])))
    with pytest.raises(DatasetFileError, match="holds label 10; Fashion-MNIST.s labels are 0 to 9") as raised:
        fashion_mnist_arrays(root, train)
    assert str(labels_file) in str(raised.value)


@pytest.mark.parametrize("missing", list(FASHION_MNIST_STEMS.values()))
def test_a_missing_fashion_mnist_file_is_named_not_taken_from_the_system_copy(tmp_path, monkeypatch, missing):
    """A root holding part of the set is the dataset folder: its missing file is named rather than
    silently read from the system's copy (another source for one file of a split)."""
    monkeypatch.setattr("common.datasets.DEBIAN_FASHION_MNIST", _fashion_mnist_folder(tmp_path / "system"))
    root = _fashion_mnist_folder(tmp_path / "root")
    (root / f"{missing}.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"{root} holds .* but no {missing}"):
        fashion_mnist_arrays(root, train=missing.startswith("train"))


def test_fashion_mnist_from_the_system_copy_says_so(tmp_path, monkeypatch, capsys):
    system = _fashion_mnist_folder(tmp_path / "system")
    monkeypatch.setattr("common.datasets.DEBIAN_FASHION_MNIST", system)
    (tmp_path / "empty").mkdir()
    images, labels = fashion_mnist_arrays(tmp_path / "empty", train=True)
    assert len(images) == len(labels) == 6
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(tmp_path / "empty") in lines[0] and str(system) in lines[0], lines
    fashion_mnist_arrays(system, train=True)  # read from data.root itself: nothing to say
    assert capsys.readouterr().err == ""


def test_download_does_not_hand_damaged_files_to_torchvision(tmp_path):
    """With data.download=true torchvision parsed the files it found with assertions (a traceback);
    files that are there are not downloaded again, so our reader names the damage."""
    raw = _fashion_mnist_folder(tmp_path / "FashionMNIST" / "raw", compressed=False)
    _rewrite(raw / "train-images-idx3-ubyte", lambda data: data[:-5])
    config = DataConfig(dataset="fashion_mnist", root=str(tmp_path), download=True)
    with pytest.raises(DatasetFileError, match="train-images-idx3-ubyte .*cut short"):
        build_dataset(config, "train", None)
    assert len(build_dataset(config, "test", None)) == 4


def test_pretraining_on_a_cut_fashion_mnist_file_is_one_error_line_and_writes_nothing(tmp_path):
    """What a user sees: a truncated download ended in gzip's EOFError traceback (exit 1)."""
    root = _fashion_mnist_folder(tmp_path / "fashion-mnist")
    _truncate_gzip(root / "train-images-idx3-ubyte.gz")
    process = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "demo_fashion_mnist_m2",
                              f"data.root={root}", f"run.output_root={tmp_path / 'runs'}"],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cut short" in lines[0], process.stderr
    assert str(root / "train-images-idx3-ubyte.gz") in lines[0]
    assert not (tmp_path / "runs").exists()


def _cifar10_folder(root, monkeypatch):
    """A tiny CIFAR-10 folder in torchvision's layout, whose checksums torchvision is told (it knows
    the published files' only)."""
    import hashlib
    import pickle

    from torchvision import datasets

    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))

    def listed(name):
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    monkeypatch.setattr(datasets.CIFAR10, "train_list", [listed(name) for name in names[:5]])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [listed("test_batch")])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                                   "md5": listed("batches.meta")[1]})
    return folder


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch", "batches.meta"])
def test_a_damaged_or_missing_cifar_file_is_named(tmp_path, monkeypatch, name):
    """torchvision says only 'Dataset not found or corrupted'; the error names the file and which."""
    folder = _cifar10_folder(tmp_path, monkeypatch)
    config = DataConfig(dataset="cifar10", root=str(tmp_path))
    assert len(build_dataset(config, "train", None)) == 10
    whole = (folder / name).read_bytes()
    (folder / name).write_bytes(whole[: len(whole) // 2])
    for split in ("train", "test"):  # torchvision checks every file whatever the split
        with pytest.raises(DatasetFileError, match=f"{folder / name} .*checksum") as raised:
            build_dataset(config, split, None)
        assert "\n" not in str(raised.value)
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder} lacks {name}"):
        build_dataset(config, "train", None)


def test_cifar_not_there_at_all_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar100 not found under .*data.download=true"):
        build_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)), "train", None)


def _unreadable_image_folder(root, count=40):
    """root/{train,val}/{a,b}/<i>.png, every file empty (an interrupted copy)."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for index in range(count // 2):
                (root / split / name / f"{index}.png").write_bytes(b"")
    return root


def test_a_folder_of_unreadable_images_stops_with_a_message_naming_them(tmp_path):
    """More unreadable images in a row than the dataset skips ended in a bare RuntimeError."""
    root = _unreadable_image_folder(tmp_path / "images")
    dataset = build_dataset(DataConfig(dataset="imagefolder", root=str(root)), "train", None)
    with pytest.raises(TrainingAborted) as raised:
        dataset[3]
    message = str(raised.value)
    first, last = dataset.samples[3][0], dataset.samples[3 + 31][0]
    assert f"32 unreadable images in a row in {root / 'train'}, from {first} to {last}" in message
    assert "cannot identify image file" in message and "\n" not in message, message


def test_pretraining_on_unreadable_images_is_one_error_line_from_a_loader_worker(tmp_path):
    """torch re-raises a loader worker's error with the worker's whole traceback as its message."""
    root = _unreadable_image_folder(tmp_path / "images")
    process = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "debug_cpu", "data.dataset=imagefolder",
                              f"data.root={root}", "data.num_workers=1", f"run.output_root={tmp_path / 'runs'}"],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert process.returncode == 4, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unreadable images in a row" in errors[0] and str(root / "train") in errors[0]
    assert "Traceback" not in process.stderr, process.stderr
