"""The random-initialisation reference (source.encoder=random) is the weights a run starts from: its
architecture drawn with its seed by its method's initialisation scheme, not one scheme for all."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from common.encoder import ENCODER_RECORD, encoder_state_from_run, write_encoder_record
from common.runtime import seed_everything
from pretrain.configs import encoder_record, preset
from pretrain.methods import method_named

# PatchMix and MoCo v3: MoCo v3's scheme; DINO: its own ViT initialisation; SDMP: MoCo v3's with the fixed
# sin-cos position embedding.
PRESETS = ("fashion_mnist_cpu_m2_official", "fashion_mnist_cpu_mocov3_official", "fashion_mnist_cpu_dino_official",
           "fashion_mnist_cpu_sdmp_official")


def initial_encoder(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The evaluated encoder of `name`'s model as pretraining builds it (pretrain/train.py: seeded, then built)."""
    config = preset(name)
    config.run.seed = seed
    seed_everything(seed)
    state = method_named(config.method).build_model(config).state_dict()
    prefix = "momentum_encoder."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def run_directory_of(name: str, seed: int, path, with_initialisation: bool = True):
    """A pretraining run directory of `name` at `seed` as far as evaluations read it (its encoder record)."""
    config = preset(name)
    config.run.seed = seed
    record = encoder_record(config, experiment_digest="e")
    path.mkdir()
    if not with_initialisation:  # a record written before the field: the config says it
        del record["initialisation"]
        (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    write_encoder_record(path, record)
    return path


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("with_initialisation", [True, False])
def test_the_random_initialisation_is_the_weights_the_run_starts_from(name, with_initialisation, tmp_path):
    seed = 3
    run_dir = run_directory_of(name, seed, tmp_path / "run", with_initialisation)
    random = encoder_state_from_run(run_dir, "random").state_dict
    initial = initial_encoder(name, seed)
    assert random.keys() == initial.keys()
    assert all(torch.equal(random[key], initial[key]) for key in initial), name


def test_schemes_differ_so_one_reference_for_all_would_be_wrong(tmp_path):
    states = {}
    for name in ("fashion_mnist_cpu_mocov3_official", "fashion_mnist_cpu_dino_official",
                 "fashion_mnist_cpu_sdmp_official"):
        states[name] = encoder_state_from_run(run_directory_of(name, 0, tmp_path / name), "random").state_dict
    mocov3, dino, sdmp = states.values()
    assert not torch.equal(mocov3["blocks.0.attn.qkv.weight"], dino["blocks.0.attn.qkv.weight"])
    assert not torch.equal(mocov3["pos_embed"], sdmp["pos_embed"])


def test_without_record_field_or_config_it_says_which_scheme_it_assumes(tmp_path):
    config = preset("fashion_mnist_cpu_dino_official")
    record = encoder_record(config, experiment_digest="e")
    del record["initialisation"]
    (tmp_path / ENCODER_RECORD).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="MoCo v3's scheme"):
        encoder_state_from_run(tmp_path, "random")
