"""kNN on the validation split (`knn.split=validation`): the queries are the training images held out
by `data.validation_size`, the bank the training images pretraining read; the test set is never read."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import evaluate.features
from common.config import ConfigError, apply_overrides
from evaluate import knn
from evaluate.protocols import resolve_eval_config
from pretrain.configs import encoder_record, preset
from pretrain.train import main as pretrain


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (the MNIST format), gzipped."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _training_images_only(root: Path, count: int) -> Path:
    """A Fashion-MNIST folder with the training split and no test files at all."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=count)
    images = np.clip(labels[:, None, None] * 25 + rng.normal(0, 20, size=(count, 28, 28)), 0, 255)
    _write_idx(root / "train-images-idx3-ubyte.gz", images)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


@pytest.mark.slow
def test_a_validation_knn_never_reads_the_test_set(tmp_path, monkeypatch):
    """Pretraining and a validation kNN run on a folder that has no test files; the same kNN on the test
    set needs them. The splits built are the training images and the held-out ones only."""
    root = _training_images_only(tmp_path / "fashion-mnist", 96)
    run = pretrain(apply_overrides(preset("debug_cpu"), [
        "data.dataset=fashion_mnist", f"data.root={root}", "model.image_size=28", "data.validation_size=32",
        "optim.epochs=1", "optim.warmup_epochs=1", f"run.output_root={tmp_path / 'runs'}", "run.progress=false"]))
    assert run["steps"] == 2  # (96 - 32) / 32: the held-out images are not trained on
    built = []
    original = evaluate.features.build_dataset

    def recording(data, split, *arguments, **keywords):
        built.append(split)
        return original(data, split, *arguments, **keywords)

    monkeypatch.setattr(evaluate.features, "build_dataset", recording)
    result = knn.main(resolve_eval_config("knn", "", run["run_dir"], "", ["knn.split=validation",
                                                                          "run.progress=false"]))
    assert built == ["train", "validation"]
    assert (result["split"], result["train_size"], result["validation_size"]) == ("validation", 64, 32)
    assert "test_size" not in result and 0 <= result["metrics"]["top1_k20"] <= 100
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):  # the test set would have been read
        knn.main(resolve_eval_config("knn", "", run["run_dir"], "", ["run.progress=false"]))


@pytest.mark.slow
def test_the_validation_bank_never_reuses_training_features_cached_with_the_held_out_images(pretrained_run):
    """A test-set kNN caches the features of all 256 training images; the validation kNN of the same
    weights with 64 of them held out must not take that cache as its bank (each held-out query would
    find itself there)."""
    first = knn.main(resolve_eval_config("knn", "", str(pretrained_run), "", ["run.progress=false"]))
    assert first["train_size"] == 256
    held_out = knn.main(resolve_eval_config("knn", "", str(pretrained_run), "", [
        "data.validation_size=64", "knn.split=validation", "run.progress=false"]))
    assert (held_out["train_size"], held_out["validation_size"]) == (192, 64)
    assert held_out["run_dir"] != first["run_dir"]


def test_a_validation_knn_without_a_validation_split_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="knn.split=validation needs a validation split"):
        resolve_eval_config("knn", "", "/nowhere", "", ["knn.split=validation"],
                            encoder_record=_record_without_validation())
    with pytest.raises(ConfigError, match="split must be one of test, validation"):
        resolve_eval_config("knn", "", "/nowhere", "", ["knn.split=train"], encoder_record=_record_without_validation())


def _record_without_validation() -> dict:
    return encoder_record(preset("debug_cpu"), "x")
