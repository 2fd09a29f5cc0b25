"""A method is one file: its code, its config section and its presets. A run's config holds the shared
sections and its own method's section only; every preset keeps the run directory it had before the
sections moved (except those changed on purpose); configs written before still load."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, apply_overrides, config_hash, save_yaml
from common.rundir import experiment_hash
from common.runtime import NON_RESULT_FIELDS
from plans.tuning import TUNED_METHODS
from pretrain.configs import PRESETS, load_config, preset
from pretrain.methods import METHODS, register_method
from pretrain.recipes import with_point
from pretrain.shared_config import PretrainConfig, method_sections
from tests.pretrain import toy_method as toy_method_file

HERE = Path(__file__).parent
SHARED = {spec.name for spec in dataclasses.fields(PretrainConfig)}
# Presets whose values changed on purpose when the sections moved (their runs get new directories).
CHANGED_ON_PURPOSE = {
    # DINO's own position-embedding resampling, as its CIFAR and ImageNet presets (no numeric effect:
    # no local crops at these scales, so no resampling happens).
    "fashion_mnist_cpu_dino_official": "model.pos_embed_interpolation timm -> dino",
    "fashion_mnist_gpu_dino_official": "model.pos_embed_interpolation timm -> dino",
}


@pytest.fixture
def toy_method():
    method = register_method(toy_method_file.METHOD)  # the one line that adds a method
    yield method
    METHODS.pop(method.name)


# Presets added since: MoCo v3 at the Fashion-MNIST scales, the preset its own tuning sets (plans/tuning.py).
ADDED = {f"fashion_mnist_{scale}_mocov3_{flavour}" for scale in ("cpu", "gpu") for flavour in ("paper", "official")}


def at_recipe_point(name: str, config: PretrainConfig) -> PretrainConfig:
    """A cpu-scale Fashion-MNIST preset with the keys `make tune` sets back at its scaled recipe's values:
    the tuning changed those keys of those presets on purpose, and nothing else."""
    if not name.startswith("fashion_mnist_cpu_"):
        return config
    entry = TUNED_METHODS[config.method]  # PatchMix's entry for every PatchMix row (MoCo v3's starts alike)
    recipe = entry.recipe("cpu", name.rpartition("_")[2])
    return with_point(config, {key: attribute(recipe, key) for key in entry.space()})


def attribute(config: PretrainConfig, key: str) -> object:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def test_every_preset_keeps_its_config_hash():
    """Hashes of every preset before the sections moved into the method files (tests/pretrain/preset_hashes.json),
    where the tuned keys of the cpu-scale Fashion-MNIST presets are at their scaled recipe's values."""
    before = json.loads((HERE / "preset_hashes.json").read_text())
    assert set(PRESETS) == set(before) | ADDED
    for name, (digest, experiment) in before.items():
        config = at_recipe_point(name, preset(name))
        now = [config_hash(config, NON_RESULT_FIELDS), experiment_hash(config, NON_RESULT_FIELDS)]
        if name in CHANGED_ON_PURPOSE:
            assert now != [digest, experiment], name
        else:
            assert now == [digest, experiment], name


@pytest.mark.parametrize("name", ["fashion_mnist_cpu_dino_official", "imagenet_dino_vit_s16_300ep_official",
                                  "cifar10_sdmp_vit_s2_800ep_paper", "fashion_mnist_cpu_official"])
def test_print_config_shows_the_shared_sections_and_its_methods_only(name, monkeypatch, capsys):
    from pretrain.__main__ import cli

    monkeypatch.setattr(sys, "argv", ["pretrain", "--preset", name, "--print-config"])
    cli()
    text = capsys.readouterr().out
    config = preset(name)
    own = set(method_sections(type(config)))
    assert set(yaml.safe_load(text)) == SHARED | own
    assert own == {"patchmix": {"mix", "loss"}, "dino": {"dino"}, "sdmp": {"sdmp"}}[config.method]


@pytest.mark.parametrize("overrides, message", [
    (["method=dino", "mix.num_mixed=3"], "mix.num_mixed is a field of method patchmix"),
    (["mix.num_mixed=3", "method=dino"], "mix.num_mixed is a field of method patchmix"),  # whatever the order
    (["loss.temperature=0.1", "method=sdmp"], "loss.temperature is a field of method patchmix"),
    (["dino.teacher_temp=0.05"], "dino.teacher_temp is a field of method dino; this run's method is patchmix"),
    (["method=dino", "sdmp.temperature=0.1"], "sdmp.temperature is a field of method sdmp"),
    (["method=sdmp", "dino.out_dim=64"], "dino.out_dim is a field of method dino"),
])
def test_another_methods_field_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("debug_cpu"), overrides)


def test_method_switch_keeps_the_shared_sections_whatever_the_order():
    first = apply_overrides(preset("debug_cpu"), ["dino.out_dim=64", "method=dino", "optim.epochs=2"])
    second = apply_overrides(preset("debug_cpu"), ["method=dino", "optim.epochs=2", "dino.out_dim=64"])
    assert first == second and type(first).__name__ == "DinoPretrainConfig" and first.dino.out_dim == 64
    assert first.model == preset("debug_cpu").model and first.optim.epochs == 2
    back = apply_overrides(first, ["method=patchmix"])
    assert back.mix == type(preset("debug_cpu").mix)()  # the other method's section starts at its defaults


@pytest.mark.parametrize("method, preset_name", [("patchmix", "fashion_mnist_cpu_official"),
                                                 ("dino", "fashion_mnist_cpu_dino_official"),
                                                 ("sdmp", "fashion_mnist_cpu_sdmp_paper")])
def test_config_files_written_before_load_as_their_method(method, preset_name, tmp_path):
    """config.yaml files written before the sections moved (with every method's sections) still load."""
    loaded = load_config(HERE / "legacy_configs" / f"{method}.yaml")
    expected = at_recipe_point(preset_name, preset(preset_name))  # written before the tuning set its point
    if preset_name in CHANGED_ON_PURPOSE:
        expected = dataclasses.replace(expected, model=dataclasses.replace(expected.model, pos_embed_interpolation="timm"))
    assert type(loaded) is type(expected) and loaded == expected
    assert config_hash(loaded, NON_RESULT_FIELDS) == config_hash(expected, NON_RESULT_FIELDS)
    save_yaml(loaded, tmp_path / "config.yaml")  # and today's files load back as they were written
    assert load_config(tmp_path / "config.yaml") == loaded


def test_a_legacy_file_with_another_methods_setting_is_refused(tmp_path):
    raw = yaml.safe_load((HERE / "legacy_configs" / "dino.yaml").read_text())
    raw["mix"]["num_mixed"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="section mix is not at its defaults"):
        load_config(tmp_path / "config.yaml")


def test_a_fourth_method_with_its_own_section_is_one_file_and_one_line(toy_method):
    """tests/pretrain/toy_method.py: its section and preset come with it; nothing else changes."""
    assert "debug_cpu_toy" in PRESETS
    config = preset("debug_cpu_toy")
    assert config.method == "toy_alignment" and config.toy.scale == 3.0
    assert set(dataclasses.asdict(config)) == SHARED | {"toy"}
    assert apply_overrides(config, ["toy.scale=1.5"]).toy.scale == 1.5
    with pytest.raises(ConfigError, match="toy.scale=nan"):
        apply_overrides(config, ["toy.scale=nan"])
    with pytest.raises(ConfigError, match="toy.scale is a field of method toy_alignment"):
        apply_overrides(preset("debug_cpu"), ["toy.scale=2"])
    with pytest.raises(ConfigError, match="mix.num_mixed is a field of method patchmix"):
        apply_overrides(config, ["mix.num_mixed=2"])
    assert "debug_cpu_toy" not in {n for n in PRESETS if not n.startswith("debug_cpu_toy")}


def test_the_presets_go_when_their_method_does():
    method = register_method(toy_method_file.METHOD)
    METHODS.pop(method.name)
    assert "debug_cpu_toy" not in PRESETS
