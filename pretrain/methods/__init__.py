"""Pretraining methods behind one interface (pretrain/methods/base.py), selected by `method=NAME`.

Adding a method is one file declaring `METHOD = MyMethod()` (a PretrainingMethod) plus its module
name in METHOD_MODULES below; a method with options of its own also adds its config section to
PretrainConfig (pretrain/configs.py). Tests and plug-ins may also call `register_method` at run time.
"""
from __future__ import annotations

import importlib

from common.config import ConfigError
from pretrain.methods.base import LossContext, PretrainingMethod, StepSchedule

# The registered methods, PatchMix (the default) first.
METHOD_MODULES = ("patchmix", "dino", "sdmp")

METHODS: dict[str, PretrainingMethod] = {}


def register_method(method: PretrainingMethod) -> PretrainingMethod:
    """Make `method` selectable as `method=<its name>` (a name taken already is refused)."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a pretraining method named {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def method_named(name: str) -> PretrainingMethod:
    """The registered method `name`; ConfigError naming the field and the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


for _module in METHOD_MODULES:
    register_method(importlib.import_module(f"pretrain.methods.{_module}").METHOD)

__all__ = ["LossContext", "METHODS", "PretrainingMethod", "StepSchedule", "method_named", "register_method"]
