"""Overrides are typed, unknown keys and bad values fail naming the field and the fix."""
from __future__ import annotations

import pytest

from common.config import ConfigError, apply_overrides, config_hash, load_yaml, save_yaml, validate
from common.runtime import NON_RESULT_FIELDS
from pretrain.configs import PRESETS, PretrainConfig, preset


def test_overrides_are_typed_and_applied():
    config = apply_overrides(preset("debug_cpu"), ["optim.epochs=7", "mix.num_mixed=3", "loss.temperature=0.1",
                                                   "optim.beta2=0.95"])
    assert config.optim.epochs == 7 and config.mix.num_mixed == 3 and config.loss.temperature == 0.1
    assert (config.optim.beta1, config.optim.beta2) == (0.9, 0.95)
    assert isinstance(config, PretrainConfig)


def test_unknown_key_names_field_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.epoch'.*optim\.epochs"):
        apply_overrides(preset("debug_cpu"), ["optim.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        apply_overrides(preset("debug_cpu"), ["nonsense=1"])
    # An unknown section names the sections there are (it listed nothing before).
    with pytest.raises(ConfigError, match=r"'dinoo\.out_dim'; did you mean dino\? \(a section of method dino: set "
                                          r"method=dino\) Valid keys in the top level: method, model, .*mix, loss"):
        apply_overrides(preset("debug_cpu"), ["dinoo.out_dim=8"])


def test_bad_type_names_field():
    with pytest.raises(ConfigError, match=r"bad value for 'optim\.epochs'"):
        apply_overrides(preset("debug_cpu"), ["optim.epochs=many"])


def test_bad_value_names_section():
    with pytest.raises(ConfigError, match=r"mix\.num_mixed=0 is out of range: must be in \[1, inf\)"):
        apply_overrides(preset("debug_cpu"), ["mix.num_mixed=0"])
    with pytest.raises(ConfigError, match=r"model: patch_size 5 must divide image_size 32"):
        apply_overrides(preset("debug_cpu"), ["model.patch_size=5"])
    with pytest.raises(ConfigError, match=r"run: device must be"):
        apply_overrides(preset("debug_cpu"), ["run.device=tpu"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(preset("debug_cpu"), ["optim.epochs"])


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="Did you mean debug_cpu"):
        preset("debug_cpux")


def test_hash_ignores_where_and_how_verbosely(tmp_path):
    base = preset("debug_cpu")
    moved = apply_overrides(base, ["data.root=/elsewhere", "run.log_every_steps=1", "run.output_root=/x"])
    changed = apply_overrides(base, ["optim.base_lr=0.1"])
    assert config_hash(base, NON_RESULT_FIELDS) == config_hash(moved, NON_RESULT_FIELDS)
    assert config_hash(base, NON_RESULT_FIELDS) != config_hash(changed, NON_RESULT_FIELDS)


def test_cpu_threads_set_torch_threads_and_leave_the_hash():
    """run.cpu_threads: how many intra-op threads a stage uses (like the device, not part of the hash);
    0 is torch's default; negative counts refused naming the field."""
    import torch

    from common.runtime import DEFAULT_CPU_THREADS, RunConfig, set_cpu_threads

    base = preset("debug_cpu")
    threaded = apply_overrides(base, ["run.cpu_threads=1"])
    assert config_hash(base, NON_RESULT_FIELDS) == config_hash(threaded, NON_RESULT_FIELDS)
    before = torch.get_num_threads()
    try:
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        # A later stage of the same process (the inline executor) at the default gets torch's default back.
        set_cpu_threads(0)
        assert torch.get_num_threads() == DEFAULT_CPU_THREADS
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="cpu_threads"):
        validate(RunConfig(cpu_threads=-1))


def test_yaml_round_trip(tmp_path):
    config = preset("cifar100_vit_s2_800ep_loss-o2o+m2o_paper")
    save_yaml(config, tmp_path / "config.yaml")
    assert load_yaml(tmp_path / "config.yaml", PretrainConfig) == config


def test_paper_and_official_flavours_differ_as_documented():
    paper, official = preset("imagenet_vit_s16_300ep_paper"), preset("imagenet_vit_s16_300ep_official")
    assert (paper.mix.num_mixed, official.mix.num_mixed) == (3, 2)
    assert (paper.model.num_heads, official.model.num_heads) == (6, 0)  # 0 = 12, the default
    assert (paper.augment.num_local_crops, official.augment.num_local_crops) == (0, 8)
    assert (paper.optim.momentum_update, official.optim.momentum_update) == ("step", "epoch")
    tiny_paper, tiny_official = preset("cifar10_vit_t2_800ep_paper"), preset("cifar10_vit_t2_800ep_official")
    assert tiny_paper.model.momentum_encoder and not tiny_official.model.momentum_encoder
    assert tiny_official.optim.base_lr == 2e-3 and tiny_official.optim.batch_size == 512


def test_presets_cover_tables():
    for dataset in ("cifar10", "cifar100"):
        for m in (1, 2, 3, 4):
            assert preset(f"{dataset}_vit_s2_800ep_m{m}_official").mix.num_mixed == m
        only_m2m = preset(f"{dataset}_vit_s2_800ep_loss-m2m_paper").loss
        assert (only_m2m.origin_weight, only_m2m.mix_to_origin_weight, only_m2m.mix_to_mix_weight) == (0, 0, 0.5)
    patchmix_imagenet = [p for p in PRESETS if p.startswith("imagenet") and preset(p).method == "patchmix"]
    assert len(patchmix_imagenet) == 6
    assert {preset(p).method for p in PRESETS if p.startswith("imagenet")} == {"patchmix", "dino", "sdmp"}


@pytest.mark.parametrize("value", ["012", "-012", "08", "00", "0_12", "0x10", "0b11", "1:30", "1:30.5"])
def test_a_number_yaml_reads_in_another_base_is_refused_not_converted(value):
    """Override values are read as YAML 1.1, where 012 is octal 10 and 1:30 is 90 (minutes:seconds): a seed
    or an epoch count written so would silently be another number (a text field got "10"). Refused,
    naming the field, with the decimal to write or the quotes that keep it as text."""
    for key in ("run.seed", "optim.epochs", "run.experiment"):
        with pytest.raises(ConfigError, match=rf"'{key}'.*{value}.*decimal.*quote"):
            apply_overrides(preset("debug_cpu"), [f"{key}={value}"])
    assert apply_overrides(preset("debug_cpu"), [f"run.experiment='{value}'"]).run.experiment == value
    assert apply_overrides(preset("debug_cpu"), ["run.seed=0", "run.seed=12", "optim.epochs=1_000"]).run.seed == 12
    assert apply_overrides(preset("debug_cpu"), ["loss.temperature=0.05"]).loss.temperature == 0.05
