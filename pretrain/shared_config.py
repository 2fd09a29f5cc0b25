"""The sections every pretraining run's config has, whatever its method.

A method's run config is a subclass of `PretrainConfig` adding the method's own section(s), declared
in the method's file (pretrain/methods/); `method=NAME` gives a run that method's class. So a run's
config.yaml and `--print-config` hold the shared sections and its own method's section only, and a
field of another method is refused by name (`explain_unknown_key`). This module knows no particular
method: it reads the registry (pretrain/registry.py), which the methods fill.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.config import ConfigError
from common.datasets import DataConfig
from common.runtime import RunConfig
from pretrain.augment import AugmentConfig
from pretrain.model import ModelConfig
from pretrain.registry import METHODS, method_named


@dataclass
class OptimConfig:
    RANGES: ClassVar[dict[str, str]] = {"epochs": "[1, inf)", "warmup_epochs": "[0, inf)", "batch_size": "[1, inf)",
        "base_lr": "(0, inf)", "min_lr": "[0, inf)", "weight_decay": "[0, inf)", "weight_decay_end": "[0, inf)",
        "beta1": "[0, 1)", "beta2": "[0, 1)", "momentum": "[0, 1]", "momentum_end": "[0, 1]", "max_steps": "[0, inf)"}
    epochs: int = 300  # pretraining epochs (schedules span them all)
    warmup_epochs: int = 10  # linear lr warmup from 0
    batch_size: int = 1024  # global, over all ranks; the lr rule uses it, so it is the same on 1 or 64 GPUs
    base_lr: float = 5e-4  # per 256 images: lr = base_lr * batch_size / 256
    min_lr: float = 1e-6  # the cosine schedule's final lr
    weight_decay: float = 0.04  # cosine per step to weight_decay_end; never on biases and 1-D params
    weight_decay_end: float = 0.4  # final weight decay of the cosine schedule
    beta1: float = 0.9  # AdamW betas (two fields: YAML has no tuples)
    beta2: float = 0.999  # AdamW beta2
    momentum: float = 0.996  # EMA coefficient, cosine to momentum_end
    momentum_end: float = 1.0  # final EMA coefficient
    momentum_update: str = "step"  # step | epoch (reproduces the published once-per-epoch update)
    max_steps: int = 0  # stop after this many steps (0 = all); schedules still span all epochs

    def check(self) -> None:
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.momentum_update not in ("step", "epoch"):
            raise ConfigError(f"momentum_update must be 'step' or 'epoch', got {self.momentum_update!r}")
        if self.momentum > self.momentum_end:
            raise ConfigError("need 0 <= momentum <= momentum_end <= 1")

    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256


@dataclass
class PretrainConfig:
    """The shared sections. A method without options of its own runs with this class as it is."""

    # common.config.apply_overrides gives `method=NAME` the class of that method before other overrides.
    VARIANT_FIELD: ClassVar[str] = "method"

    method: str = ""  # the pretraining method (pretrain/registry.py); each method's class sets its own
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="pretrain"))
    preset: str = ""  # the preset this config was derived from, recorded for reports

    def check(self) -> None:
        """Checks that span sections (each section checks its own fields first): the method exists
        and this is its config class, local crops only where the method uses them, then the method's own."""
        method = method_named(self.method)
        if type(self) is not method.config_class:
            raise ConfigError(f"method={self.method} needs its own config ({method.config_class.__name__}), not "
                              f"{type(self).__name__}: change the method with method={self.method} as an override")
        if self.augment.num_local_crops and not method.uses_local_crops:
            raise ConfigError(f"augment.num_local_crops={self.augment.num_local_crops}: method {self.method} has no "
                              "local crops (set augment.num_local_crops=0)")
        if self.augment.num_local_crops and self.augment.local_crop_size % self.model.patch_size:
            raise ConfigError(f"augment.local_crop_size {self.augment.local_crop_size} must be a "
                              f"multiple of model.patch_size {self.model.patch_size}")
        method.check(self)

    def with_variant(self, name: str) -> "PretrainConfig":
        """This config's shared sections under method `name`, whose own sections start at their defaults."""
        target = method_named(name).config_class
        shared = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(PretrainConfig)}
        return target(**{**shared, "method": name})

    def explain_unknown_key(self, key: str) -> str | None:
        """A key of another method's section: say whose it is and how to select that method."""
        section = key.split(".")[0]
        own = [spec.name for spec in dataclasses.fields(self)]
        if section in own:
            return None  # a typo inside one of this run's sections: the generic message names its fields
        owners = {name: other.name for other in METHODS.values() for name in method_sections(other.config_class)
                  if name not in own}
        if section in owners:
            return (f"{key} is a field of method {owners[section]}; this run's method is {self.method} "
                    f"(set method={owners[section]}, or leave {section}.* out)")
        close = difflib.get_close_matches(section, [*own, *owners], n=1)
        if close and close[0] in owners:  # a mistyped section of another method
            return (f"unknown config key '{key}'; did you mean {close[0]}? (a section of method {owners[close[0]]}: "
                    f"set method={owners[close[0]]}) Valid keys in the top level: {', '.join(own)}")
        return None

    def hash_extras(self) -> dict[str, Any]:
        """Sections hashed beside this config's own fields, so that no run made before methods owned
        their sections moves: PatchMix's `mix` and `loss` were fields of every run's config, so every
        run of another method keeps them in its hash at their defaults (a method marks this with
        `sections_in_every_hash`)."""
        own = {spec.name for spec in dataclasses.fields(self)}
        extras = {}
        for other in METHODS.values():
            if getattr(other, "sections_in_every_hash", False):
                defaults = other.config_class()
                extras.update({name: getattr(defaults, name) for name in method_sections(other.config_class)
                               if name not in own})
        return extras

    @classmethod
    def loadable(cls, raw: dict) -> tuple[type, dict]:
        """The class of a config.yaml's method, and its contents without the sections of other methods
        that configs written before each method owned its sections carried at their defaults."""
        # A config written before runs named their method is of the first registered (the default) method.
        target = method_named(raw.get("method") or next(iter(METHODS))).config_class
        own = {spec.name for spec in dataclasses.fields(target)}
        kept = {key: value for key, value in raw.items() if key in own}
        for section in set(raw) - own:
            owners = [m.config_class for m in METHODS.values() if section in method_sections(m.config_class)]
            if not owners:
                continue  # an unknown key: the structured merge names it
            default = dataclasses.asdict(getattr(owners[0](), section))
            if raw[section] != default:
                raise ConfigError(f"section {section} is not at its defaults in a config of method "
                                  f"{raw.get('method')}: it belongs to another method")
        return target, kept


def method_sections(config_class: type) -> tuple[str, ...]:
    """The sections a method's config class adds to the shared ones."""
    shared = {spec.name for spec in dataclasses.fields(PretrainConfig)}
    return tuple(spec.name for spec in dataclasses.fields(config_class) if spec.name not in shared)
