"""The registry of pretraining methods: `method=NAME` selects one.

It imports no method: pretrain/methods/__init__.py registers the built-in ones (one line each), and
tests or plug-ins call `register_method` at run time. The shared config (pretrain/shared_config.py)
reads it to give a run its method's config class, so that no module of the shared config imports a
method, and no method imports the module that collects them.
"""
from __future__ import annotations

from typing import Any, Protocol

from common.config import ConfigError


class RegisteredMethod(Protocol):
    """What the registry and the shared config read of a method (pretrain/methods/base.py has the rest)."""

    name: str
    config_class: type  # its run config: the shared sections plus its own (pretrain/shared_config.py)
    uses_local_crops: bool

    def check(self, config: Any) -> None: ...


METHODS: dict[str, Any] = {}


def register_method(method: RegisteredMethod) -> RegisteredMethod:
    """Make `method` selectable as `method=<its name>` (a name taken already is refused)."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a pretraining method named {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def method_named(name: str) -> Any:
    """The registered method `name`; ConfigError naming the field and the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]
