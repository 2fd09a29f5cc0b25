"""Pretraining methods behind one interface (pretrain/methods/base.py), selected by `method=NAME`.

Adding a method is one file -- its code, its config section (a subclass of
pretrain.shared_config.PretrainConfig) and its presets, ending in `METHOD = MyMethod()` -- plus its
module name in METHOD_MODULES below. Tests and plug-ins may also call `register_method` at run time.
"""
from __future__ import annotations

import importlib

from pretrain.methods.base import LossContext, PretrainingMethod, StepSchedule
from pretrain.registry import METHODS, method_named, register_method

# The registered methods, PatchMix (the default) first.
METHOD_MODULES = ("patchmix", "dino", "sdmp")

for _module in METHOD_MODULES:
    register_method(importlib.import_module(f"pretrain.methods.{_module}").METHOD)

__all__ = ["LossContext", "METHODS", "PretrainingMethod", "StepSchedule", "method_named", "register_method"]
