"""The pretraining preset registry: every registered method's named presets (each method declares its
own in its file, pretrain/methods/), the run directory and encoder record of a pretraining config,
and the shared config's names for the rest of the suite.

Presets are functions deriving from one base per dataset family (never copied files): one per
pretraining run of the paper's tables, in `paper` and `official` flavours where the paper and the
published code differ (recipes.md; pretrain/methods/patchmix.py lists PatchMix's differences), plus
`debug_cpu` (tests) and the Fashion-MNIST scales of the study. The full list, with reasons, is
docs/fidelity.md.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from common.config import ConfigError, load_yaml
from common.datasets import dataset_fingerprint
from common.encoder import encoder_prefixes
from common.rundir import RunDirectory
from common.runtime import NON_RESULT_FIELDS
from pretrain.methods import METHODS, method_named
from pretrain.recipes import FASHION_MNIST_SCALES, FLAVOURS
from pretrain.shared_config import OptimConfig, PretrainConfig

__all__ = ["FASHION_MNIST_SCALES", "FLAVOURS", "OptimConfig", "PRESETS", "PretrainConfig", "encoder_record", "load_config",
           "preset", "preset_summary", "run_directory"]


class PresetRegistry(Mapping[str, Callable[[], PretrainConfig]]):
    """Every registered method's presets, read from the method registry when it changes: a method
    registered after this module was imported (a plug-in's, a test's) has its presets here too."""

    def __init__(self) -> None:
        self._methods: tuple = ()
        self._presets: dict[str, Callable[[], PretrainConfig]] = {}

    def _current(self) -> dict[str, Callable[[], PretrainConfig]]:
        methods = tuple(METHODS.values())
        if methods != self._methods:
            presets: dict[str, Callable[[], PretrainConfig]] = {}
            for method in methods:
                for name, build in method.presets().items():
                    if name in presets:
                        raise ValueError(f"preset {name!r} of method {method.name} is declared by another method already")
                    presets[name] = build
            self._methods, self._presets = methods, presets
        return self._presets

    def __getitem__(self, name: str) -> Callable[[], PretrainConfig]:
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


class PresetNames(Sequence[str]):
    """The preset names as a sequence that follows the registry (the stage record's `presets`)."""

    def __getitem__(self, index):
        return list(PRESETS)[index]

    def __len__(self) -> int:
        return len(PRESETS)

    def __contains__(self, name: object) -> bool:
        return name in PRESETS


PRESETS = PresetRegistry()


def run_directory(config: PretrainConfig, data_fingerprint: str | None = None) -> RunDirectory:
    """The run directory of a pretraining config: its name, its config hash (fields that do not change
    the result left out) and the fingerprint of the images it reads (computed unless given)."""
    fingerprint = dataset_fingerprint(config.data) if data_fingerprint is None else data_fingerprint
    return RunDirectory.for_config(config.run.output_root, config.run.name, config, NON_RESULT_FIELDS, fingerprint)


def encoder_record(config: PretrainConfig, experiment_digest: str | None = None) -> dict:
    """The encoder record a pretraining run writes (common.encoder.write_encoder_record): what
    evaluation and transfer read instead of this config schema. `experiment_digest`: the run
    directory's seedless hash (computed here when not given, as when a launcher plans ahead)."""
    if experiment_digest is None:
        try:
            experiment_digest = run_directory(config).experiment_digest
        except (FileNotFoundError, ValueError):  # the data cannot be read from here: a plan's guess
            experiment_digest = run_directory(config, data_fingerprint="unread").experiment_digest
    encoders = encoder_prefixes(method_named(config.method).has_momentum_encoder(config))
    return {"arch": config.model.arch, "patch_size": config.model.patch_size, "image_size": config.model.image_size,
            "num_heads": config.model.num_heads, "checkpoints": "checkpoints", "encoders": encoders,
            "default": next(iter(encoders)), "data": dataclasses.asdict(config.data),
            # How the encoder's weights were drawn (with origin.seed): a random initialisation for reference
            # (source.encoder=random) is then the weights this run started from, not another scheme's.
            "initialisation": {"scheme": config.model.initialisation,
                               "position_embedding": config.model.position_embedding},
            "origin": {"pretrain_preset": config.preset, "seed": config.run.seed, "experiment": config.run.experiment,
                       "pretrain_experiment_hash": experiment_digest}}


def preset_summary(name: str) -> str:
    """One line for --list-presets: the paper table it makes, the model, epochs, dataset and flavour."""
    config = PRESETS[name]()
    table = ("Table 2" if name.startswith("imagenet") else "Table 6" if re.search(r"ep_m\d_", name)
             else "Table 7" if "_loss-" in name else "Table 5" if "_mix-" in name
             else "Table 3" if name.startswith("cifar") and config.method != "patchmix"
             else "Table 3 (and 5)" if name.startswith("cifar") else "demo" if name.startswith("demo")
             else "study" if name.startswith("fashion") else "tests")
    flavour = next((f for f in FLAVOURS if name.endswith(f"_{f}")), "-")
    model = f"{config.model.arch}/{config.model.patch_size} ({config.model.num_heads or 'default'} heads)"
    mixing = method_named(config.method).summary(config) or f"{'':15}"
    return (f"{table:16} {config.method:9} {model:28} {config.optim.epochs:5} ep  {config.data.dataset:13} "
            f"{mixing} {flavour}")


def preset(name: str) -> PretrainConfig:
    """The named preset, with its name recorded in `config.preset` and `config.run.name`."""
    if name not in PRESETS:
        # Every flavour of what was meant: a name without its flavour, or mistyped.
        close = [n for n in PRESETS if n.startswith(name)][:4] or difflib.get_close_matches(name, PRESETS, n=4)
        close = sorted({*close, *(n.rsplit("_", 1)[0] + f"_{f}" for n in close if n.endswith(FLAVOURS)
                                 for f in FLAVOURS)} & set(PRESETS))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} List them with `python -m pretrain --list-presets`.")
    config = PRESETS[name]()
    run_name = config.run.name if name.startswith(("debug", "demo")) else name
    return dataclasses.replace(config, preset=name, run=dataclasses.replace(config.run, name=run_name))


def load_config(path: Path) -> PretrainConfig:
    """A pretraining run's config.yaml, as the config class of its method (files written before each
    method owned its sections carry the other methods' sections at their defaults: left out)."""
    return load_yaml(path, PretrainConfig)
