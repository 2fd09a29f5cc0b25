"""The tuning plan: the same number of short trials for every method, each pretraining with the
validation split held out and evaluated by kNN on it, never on the test set; each method's space as
its own file declares it; and the committed presets equal the committed choice."""
from __future__ import annotations

import csv
import itertools
from collections import Counter
from pathlib import Path

import pytest

from common.config import apply_overrides
from plans.registry import stage_record
from plans.tables import build_plan
from plans.tuning import (TRIALS_PER_METHOD, TUNED_METHODS, VALIDATION_IMAGES, balanced_sample, config_point,
                          tuning_trials, value_text)
from pretrain.configs import FASHION_MNIST_SCALES, preset
from pretrain.methods import dino, patchmix, sdmp
from reports.tuning import read_chosen_points
from slurm.__main__ import main as slurm_main
from slurm.graph import resolve_plan

TUNING_CSV = Path(__file__).resolve().parents[2] / "docs" / "results" / "fashion-mnist" / "tuning.csv"


def _value(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("dataset, scale", [("fashion_mnist", "cpu"), ("fashion_mnist_gpu", "gpu")])
def test_every_method_gets_the_same_trials_on_the_validation_split_and_none_reads_the_test_set(tmp_path, dataset,
                                                                                               scale):
    plan = build_plan("tune", datasets=(dataset,))
    assert Counter(stage.kind for stage in plan.stages) == {"pretrain": 4 * TRIALS_PER_METHOD,
                                                            "knn": 4 * TRIALS_PER_METHOD}
    trained = Counter(stage.key.split("/")[2] for stage in plan.stages if stage.kind == "pretrain")
    assert trained == {name: TRIALS_PER_METHOD for name in ("patchmix", "mocov3", "dino", "sdmp")}
    scaled = FASHION_MNIST_SCALES[scale]
    epochs = scaled["epochs"] // 2
    for item in resolve_plan(plan, tmp_path):  # every stage's config as the launcher runs it
        config = item.config
        assert config.data.validation_size == VALIDATION_IMAGES, item.stage.key
        if item.stage.kind == "pretrain":
            # As many training images as the preset trains on, for the same (shorter) schedule everywhere.
            subset = scaled["train_subset"] and scaled["train_subset"] + VALIDATION_IMAGES
            assert (config.data.train_subset, config.optim.epochs, config.run.seed) == (subset, epochs, 0)
        else:
            assert config.protocol == "knn" and config.knn.split == "validation", item.stage.key
            assert item.stage.after.endswith("/pretrain") and item.stage.rows[0].protocol == "knn"


def test_each_methods_points_come_from_its_own_space_balanced_with_its_recipes_point():
    trials = tuning_trials("fashion_mnist")
    points = {name: [dict(trial.point) for trial in trials if trial.method == name] for name in TUNED_METHODS}
    assert points["patchmix"] == points["mocov3"]  # one space, one draw: PatchMix and MoCo v3 try the same points
    for name, entry in TUNED_METHODS.items():
        space, chosen = entry.space(), points[name]
        assert len({tuple(point.items()) for point in chosen}) == TRIALS_PER_METHOD
        for key, values in space.items():
            counts = Counter(point[key] for point in chosen)
            assert set(counts) == {value_text(value) for value in values}  # every candidate value is tried
            assert max(counts.values()) - min(counts.values()) <= 1, (name, key, counts)
        # The scaled published recipe (before the tuning set its point) is one of the trials.
        assert config_point(entry.recipe("cpu", "official"), space) in chosen, name
    configs = {trial.method: stage_record("pretrain").resolve(trial.preset, trial.overrides, None) for trial in trials}
    assert (configs["patchmix"].mix.num_mixed, configs["mocov3"].mix.num_mixed) == (2, 1)
    assert {name: config.method for name, config in configs.items()} == {
        "patchmix": "patchmix", "mocov3": "patchmix", "dino": "dino", "sdmp": "sdmp"}


@pytest.mark.parametrize("name", sorted(TUNED_METHODS))
def test_every_candidate_value_is_accepted_by_the_methods_preset(name):
    entry = TUNED_METHODS[name]
    space = entry.space()
    assert space and len(list(itertools.product(*space.values()))) >= TRIALS_PER_METHOD
    base = preset(entry.preset_name("cpu", "official"))
    for key, values in space.items():
        for value in values:
            assert _value(apply_overrides(base, [f"{key}={value_text(value)}"]), key) == value, (key, value)


def test_a_balanced_sample_deals_every_value_evenly_and_is_seeded():
    space = {"a": (1, 2, 3), "b": (0.1, 0.2), "c": (True, False)}
    sample = balanced_sample(space, 5)
    assert sample == balanced_sample(space, 5) and len({tuple(p.items()) for p in sample}) == 5
    assert sample != balanced_sample(space, 5, seed=1)
    for key in space:
        counts = Counter(point[key] for point in sample)
        assert max(counts.values()) - min(counts.values()) <= 1
    corner = {"a": "3", "b": "0.2", "c": "false"}
    assert corner in balanced_sample(space, 2, include=corner)
    assert len(balanced_sample(space, 12)) == 12  # the whole grid
    with pytest.raises(ValueError, match="a grid of 12 points cannot give 13 distinct trials"):
        balanced_sample(space, 13)
    with pytest.raises(ValueError, match="not a point of the grid"):
        balanced_sample(space, 2, include={"a": "4", "b": "0.2", "c": "false"})


def test_the_dry_run_lists_every_trial_and_runs_nothing(tmp_path, capsys):
    slurm_main(["run", "tune", "--executor", "inline", "--dry-run", "--output-root", str(tmp_path / "runs")])
    printed = capsys.readouterr().out
    assert "[tune] 64 would submit" in printed
    for trial in tuning_trials("fashion_mnist"):
        assert f"[dry-run] {trial.pretrain_key}: pretrain preset={trial.preset} " in printed
        assert f"[dry-run] {trial.knn_key}: knn preset=default " in printed
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not TUNING_CSV.is_file(), reason="docs/results/fashion-mnist/tuning.csv does not exist yet: "
                                                      "`make tune` has not been run and its result committed")
def test_each_methods_cpu_preset_is_its_chosen_point():
    chosen = read_chosen_points(TUNING_CSV)
    assert set(chosen) == set(TUNED_METHODS)
    for name, point in chosen.items():
        for flavour in ("official", "paper"):
            config = preset(TUNED_METHODS[name].tuned_preset_name("cpu", flavour))
            assert {key: value_text(_value(config, key)) for key in point} == point, (name, flavour)
    # The ablations of Tables 5-7 vary one factor from PatchMix's tuned point.
    for row in ("m1", "m3", "mix-resizemix", "loss-o2o+m2o"):
        config = preset(f"fashion_mnist_cpu_{row}_official")
        assert {key: value_text(_value(config, key)) for key in chosen["patchmix"]} == chosen["patchmix"], row


@pytest.mark.skipif(not TUNING_CSV.is_file(), reason="docs/results/fashion-mnist/tuning.csv does not exist yet")
def test_the_committed_trials_are_the_ones_the_plan_runs_now():
    """Setting the chosen points in the presets leaves the tuning as it was: `make tune` again runs the
    trials of the committed table."""
    with open(TUNING_CSV, newline="") as handle:
        committed = {(row["method"], *(row[key] for key in TUNED_METHODS[row["method"]].space()))
                     for row in csv.DictReader(handle)}
    planned = {(trial.method, *dict(trial.point).values()) for trial in tuning_trials("fashion_mnist")}
    assert committed == planned


def test_a_chosen_point_changes_the_presets_and_not_the_trials(monkeypatch):
    """A TUNED_POINTS entry sets the study's presets (and the ablations built on PatchMix's); the trials,
    which start from the scaled recipe's point, stay the same, and MoCo v3's point is its own."""
    before = tuning_trials("fashion_mnist")
    configs = [stage_record("pretrain").resolve(trial.preset, trial.overrides, None) for trial in before]
    monkeypatch.setattr(patchmix, "TUNED_POINTS", {"cpu": {"optim.base_lr": 3e-3, "loss.temperature": 0.1}})
    monkeypatch.setattr(patchmix, "MOCOV3_TUNED_POINTS", {"cpu": {"optim.base_lr": 2e-2, "loss.temperature": 0.3}})
    monkeypatch.setattr(dino, "TUNED_POINTS", {"cpu": {"optim.base_lr": 1e-3, "dino.out_dim": 256}})
    monkeypatch.setattr(sdmp, "TUNED_POINTS", {"cpu": {"sdmp.temperature": 0.1}})
    after = tuning_trials("fashion_mnist")
    assert after == before
    assert [stage_record("pretrain").resolve(trial.preset, trial.overrides, None) for trial in after] == configs
    m2, m1, mocov3 = (preset(f"fashion_mnist_cpu_{row}_official") for row in ("m2", "m1", "mocov3"))
    assert (m2.optim.base_lr, m2.loss.temperature, m1.optim.base_lr, m1.mix.num_mixed) == (3e-3, 0.1, 3e-3, 1)
    assert (mocov3.optim.base_lr, mocov3.loss.temperature, mocov3.mix.num_mixed) == (2e-2, 0.3, 1)
    assert preset("fashion_mnist_cpu_mix-resizemix_paper").loss.temperature == 0.1  # both flavours, every ablation
    assert (preset("fashion_mnist_cpu_dino_official").dino.out_dim,
            preset("fashion_mnist_cpu_sdmp_paper").sdmp.temperature) == (256, 0.1)
    assert preset("fashion_mnist_gpu_official").optim.base_lr == 3e-3  # the gpu scale keeps the scaled recipe
    presets = {stage.key.split("/")[2]: stage.preset for stage in build_plan("table3", datasets=("fashion_mnist",)).stages
               if stage.kind == "pretrain"}
    assert presets == {"patchmix": "fashion_mnist_cpu_m2_official", "mocov3": "fashion_mnist_cpu_mocov3_official",
                       "dino": "fashion_mnist_cpu_dino_official", "sdmp": "fashion_mnist_cpu_sdmp_official"}
    monkeypatch.setattr(patchmix, "MOCOV3_TUNED_POINTS", {"cpu": {"optim.base_lr": 3e-3, "loss.temperature": 0.1}})
    fig4 = {stage.key.split("/")[2]: stage.preset for stage in build_plan("fig4", datasets=("fashion_mnist",)).stages
            if stage.kind == "pretrain"}
    assert fig4["mocov3"] == "fashion_mnist_cpu_m1_official"  # the same point as Table 6's m = 1: one run for both
