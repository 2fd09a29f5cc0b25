"""Dataset loading and the folder preflight (messages name expected vs found)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from common.datasets import (ArrayImageDataset, DataConfig, build_dataset, fashion_mnist_arrays,
                             preflight_image_folder, synthetic_arrays)


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


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


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
