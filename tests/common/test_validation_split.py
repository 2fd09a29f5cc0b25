"""The validation split: training images held out by `data.validation_size`, which pretraining never
reads and a tuning ranks its trials on; configs without it keep their identity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pretrain.train
from common.config import ConfigError, apply_overrides, config_hash
from common.datasets import ArrayImageDataset, DataConfig, build_dataset, validation_indices
from common.encoder import SourceConfig, record_spec
from common.runtime import NON_RESULT_FIELDS
from evaluate.configs import FeatureConfig
from evaluate.features import cache_key
from evaluate.protocols import build_eval_config
from pretrain.configs import encoder_record, preset


def _synthetic(**fields) -> DataConfig:
    return apply_overrides(DataConfig(synthetic_train_size=64, synthetic_test_size=16),
                           [f"{key}={value}" for key, value in fields.items()])


def test_the_validation_split_is_a_fixed_draw_held_out_of_the_first_training_images():
    config = _synthetic(train_subset=48, validation_size=12)
    train, validation = build_dataset(config, "train", None), build_dataset(config, "validation", None)
    assert (len(train), len(validation)) == (36, 12)
    held_out = set(validation.indices)
    assert held_out.isdisjoint(train.indices) and held_out | set(train.indices) == set(range(48))
    assert list(validation.indices) == validation_indices(48, 12).tolist()
    assert held_out != set(range(36, 48))  # spread over the training images, not their tail
    # The same images every time, whatever else the run sets (the draw has its own fixed seed).
    again = build_dataset(apply_overrides(config, ["num_workers=0"]), "validation", None)
    assert list(again.indices) == list(validation.indices)
    # Labels and images are those of the training images at those indices.
    whole = build_dataset(_synthetic(train_subset=48), "train", None)
    index = validation.indices[3]
    assert validation[3][1] == whole[index][1]
    assert np.array_equal(np.asarray(validation[3][0]), np.asarray(whole[index][0]))


def test_without_a_validation_split_the_training_set_is_unchanged_and_there_is_no_validation_split():
    config = _synthetic(train_subset=48)
    assert len(build_dataset(config, "train", None)) == 48
    with pytest.raises(ConfigError, match="data.validation_size"):
        build_dataset(config, "validation", None)
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        build_dataset(config, "val", None)


def test_holding_out_every_training_image_is_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="validation_size 48 leaves no training image"):
        _synthetic(train_subset=48, validation_size=48)
    with pytest.raises(ConfigError, match="data.validation_size=64 holds out every one of the 64"):
        build_dataset(_synthetic(validation_size=64), "train", None)  # all 64 generated images


def test_pretraining_reads_every_training_image_but_exactly_the_validation_ones(tmp_path, monkeypatch):
    """One epoch reads each training image once: the images read are the training images without the
    held-out ones, all of them, and none of the held-out ones."""
    read = []
    original = ArrayImageDataset.__getitem__

    def recording(self, index):
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(ArrayImageDataset, "__getitem__", recording)
    config = apply_overrides(preset("debug_cpu"), [f"run.output_root={tmp_path}", "run.progress=false",
                                                   "data.validation_size=64", "optim.epochs=1",
                                                   "optim.warmup_epochs=1"])
    result = pretrain.train.main(config)
    held_out = set(validation_indices(256, 64).tolist())
    assert result["steps"] == 6  # (256 - 64) / 32
    assert set(read) == set(range(256)) - held_out and len(read) == 192


def _evaluation(protocol: str, data_overrides: tuple[str, ...] = ()):
    record = encoder_record(apply_overrides(preset("fashion_mnist_cpu_m2_official"), list(data_overrides)), "x")
    return build_eval_config(protocol, "", record_spec(record), DataConfig(**record["data"]),
                             SourceConfig(run_dir="/nowhere"))


def test_evaluations_and_feature_caches_without_a_validation_split_keep_their_identity():
    """Hashes and cache keys computed before data.validation_size and knn.split existed."""
    assert {protocol: config_hash(_evaluation(protocol), NON_RESULT_FIELDS)
            for protocol in ("knn", "linear", "knn_standardized")} == {
        "knn": "fc234512e3", "linear": "b25aa6efa0", "knn_standardized": "d30c78158e"}
    data = _evaluation("knn").data
    assert cache_key("d", FeatureConfig(), data, "train", 28) == "b8f8d37e7562764a"
    assert cache_key("d", FeatureConfig(), data, "test", 28) == "195a7ade9e570b6f"


def test_a_validation_split_is_another_run_and_other_training_features():
    study = preset("fashion_mnist_cpu_m1_official")
    trial = apply_overrides(study, ["data.train_subset=6096", "data.validation_size=2000"])
    assert config_hash(trial, NON_RESULT_FIELDS) != config_hash(apply_overrides(study, ["data.train_subset=6096"]),
                                                                NON_RESULT_FIELDS)
    with_split, without = _evaluation("knn", ("data.validation_size=2000",)).data, _evaluation("knn").data

    def key(data, split):
        return cache_key("d", FeatureConfig(), data, split, 28)

    assert key(with_split, "train") != key(without, "train")
    assert len({key(with_split, split) for split in ("train", "validation", "test")}) == 3
    assert key(with_split, "test") == key(without, "test")  # the same test images: one cache entry
