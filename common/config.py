"""Typed configs: dataclasses checked and merged with OmegaConf.

Every stage describes its settings as nested dataclasses. This module turns `key=value` overrides
into a validated instance, hashes the parts that change results, and reads/writes YAML. Errors name
the offending field and say how to fix it, because a typo in a 300-epoch job should fail at launch.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, OmegaConfBaseException,
                              ValidationError)

ConfigT = TypeVar("ConfigT")


class ConfigError(ValueError):
    """A config value or override that cannot be used; the message names the field and the fix."""


# Numbers that YAML 1.1, the reader of override values, takes in another base or as minutes:seconds
# (012 is octal 10, 0x10 is 16, 0b11 is 3, 1:30 is 90), and decimals with a leading zero (08): each
# would silently be another number than the one it looks like (run.seed=012 ran seed 10).
NOT_PLAIN_DECIMAL = re.compile(r"[-+]?(0[0-9_]+|0x[0-9a-fA-F_]+|0b[01_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)")


def _field_names(config: Any, dotted_prefix: str) -> list[str]:
    """Valid keys of the section `dotted_prefix` of a dataclass instance (for did-you-mean messages)."""
    node = config
    for part in [p for p in dotted_prefix.split(".") if p]:
        node = getattr(node, part, None)
    if not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]


def _parse_override(item: str) -> tuple[str, str]:
    if item.startswith(("+", "~")):  # Hydra's add / delete syntax
        bare = item.lstrip("+~")
        raise ConfigError(f"override {item!r}: '+key=value' and '~key' are Hydra's syntax to add or delete a key; "
                          f"every field here exists already and none can be deleted: write {bare.split('=')[0]}=VALUE")
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.epochs=100)")
    key, value = item.split("=", 1)
    if NOT_PLAIN_DECIMAL.fullmatch(value.strip()):
        raise ConfigError(f"bad value for '{key.strip()}': {value.strip()} is ambiguous (overrides are read as YAML, "
                          "where a leading zero means octal, 0x and 0b hex and binary, and a:b minutes:seconds: 012 "
                          "would be 10, 1:30 would be 90); write the number in decimal, or quote it "
                          f"('{value.strip()}') to keep it as text")
    return key.strip(), value


def _leaf_above(config: Any, key: str) -> str:
    """The longest proper prefix of `key` that names a value (not a section), or ""."""
    node, path = config, []
    for part in key.split(".")[:-1]:
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return ""
        node, path = getattr(node, part), [*path, part]
        if not dataclasses.is_dataclass(node):
            return ".".join(path)
    return ""


def _with_variant(config: Any, overrides: list[tuple[str, str, str]]) -> Any:
    """A config class may come in variants named by one field (`VARIANT_FIELD`, e.g. a pretraining
    run's `method`), each variant a class of its own sections (`with_variant(name)`). The last override
    of that field picks the variant first, so the other overrides are checked against its sections
    whatever their order."""
    variant_field = getattr(type(config), "VARIANT_FIELD", None)
    chosen = [value for key, value, _ in overrides if key == variant_field]
    if not chosen:
        return config
    name = OmegaConf.from_dotlist([f"x={chosen[-1]}"]).x
    if name == getattr(config, variant_field):
        return config
    return config.with_variant(str(name))


def apply_overrides(config: ConfigT, overrides: Iterable[str] = ()) -> ConfigT:
    """Return a copy of `config` with `key=value` overrides applied, type-checked and validated.

    Raises ConfigError naming the field for unknown keys (with close matches, or the config's own
    explanation: `explain_unknown_key`), values of the wrong type, and values rejected by a
    section's `check()` method.
    """
    parsed = [(*_parse_override(item), item) for item in overrides]
    config = _with_variant(config, parsed)
    variant_field = getattr(type(config), "VARIANT_FIELD", None)
    structured = OmegaConf.structured(config)
    for key, value, item in parsed:
        if key == variant_field:
            continue
        leaf_above = _leaf_above(config, key)
        if leaf_above:  # Hydra habit: a key under a leaf
            raise ConfigError(f"'{leaf_above}' is a value, not a section: '{key}' goes nowhere; write "
                              f"{leaf_above}=VALUE")
        try:
            OmegaConf.update(structured, key, OmegaConf.from_dotlist([f"x={value}"]).x, merge=False,
                             force_add=False)
        except (ConfigKeyError, ConfigAttributeError):
            explanation = getattr(config, "explain_unknown_key", lambda key: None)(key)
            if explanation:
                raise ConfigError(explanation) from None
            prefix, _, leaf = key.rpartition(".")
            valid = _field_names(config, prefix)
            while prefix and not valid:  # an unknown section: name the valid ones of the nearest known level
                prefix, _, leaf = prefix.rpartition(".")
                valid = _field_names(config, prefix)
            hint = difflib.get_close_matches(leaf, valid, n=3)
            where = f"section '{prefix}'" if prefix else "the top level"
            suggestion = f"; did you mean {', '.join(prefix + '.' + h if prefix else h for h in hint)}?" if hint else ""
            raise ConfigError(
                f"unknown config key '{key}'{suggestion} Valid keys in {where}: {', '.join(valid)}"
            ) from None
        except ValidationError as error:
            raise ConfigError(f"bad value for '{key}': {value!r} ({error.msg.splitlines()[0]})") from None
        except OmegaConfBaseException as error:
            raise ConfigError(f"cannot apply override '{item}': {error}") from None
    result = OmegaConf.to_object(structured)
    validate(result)
    return result


@dataclasses.dataclass(frozen=True)
class Interval:
    """The values a numeric field accepts, written as in mathematics: "(0, inf)", "[0, 1)", "[1, inf)".
    Infinite ends are always open: no field takes an infinite (or NaN) value."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Interval":
        opening, closing = text.strip()[0], text.strip()[-1]
        low, high = (float(part) for part in text.strip()[1:-1].split(","))
        if opening not in "[(" or closing not in ")]" or not low <= high:
            raise ValueError(f"not an interval: {text!r} (write e.g. '(0, inf)' or '[0, 1]')")
        return cls(low, high, opening == "[" and math.isfinite(low), closing == "]" and math.isfinite(high))

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        def end(value: float) -> str:
            return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:g}"
        return f"{'[' if self.low_closed else '('}{end(self.low)}, {end(self.high)}{']' if self.high_closed else ')'}"


def field_ranges(section_class: type) -> dict[str, Interval]:
    """The declared ranges of a section's numeric fields: its class attribute
    `RANGES: ClassVar[dict[str, str]] = {"temperature": "(0, inf)", ...}`, parsed."""
    return {name: Interval.parse(text) for name, text in getattr(section_class, "RANGES", {}).items()}


def _numbers(value: Any) -> list[float]:
    """The numbers a field holds: itself, or the elements of a list of numbers (booleans are not numbers)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_numbers(section: Any, path: str = "") -> None:
    """Refuse a non-finite number in any numeric field of `section` (NaN or infinity never means
    anything a run could use: a NaN weight silently drops its loss term, an infinite temperature trains
    to nothing) and a number outside the field's declared range. One place for every field of every
    section: a section declares its ranges (`RANGES`), this checks them, before any run starts."""
    ranges = field_ranges(type(section))
    for spec in dataclasses.fields(section):
        name = f"{path}{spec.name}"
        interval = ranges.get(spec.name)
        within = f" in {interval}" if interval else ""
        for number in _numbers(getattr(section, spec.name)):
            if not math.isfinite(number):
                raise ConfigError(f"{name}={number}: must be a finite number{within} (set {name}=VALUE)")
            if interval is not None and number not in interval:
                raise ConfigError(f"{name}={number} is out of range: must be{within} (set {name}=VALUE)")


def validate(config: Any, path: str = "") -> None:
    """Check every nested dataclass section: its numbers (`check_numbers`), then its `check()`;
    sections raise ConfigError on bad values."""
    if not dataclasses.is_dataclass(config):
        return
    for field in dataclasses.fields(config):
        validate(getattr(config, field.name), f"{path}{field.name}.")
    check_numbers(config, path)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as error:
            raise ConfigError(f"{path.rstrip('.') or 'config'}: {error}") from None


def to_dict(config: Any) -> dict:
    """Plain nested dict of a dataclass config."""
    return dataclasses.asdict(config)


def added_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field added after runs were made: at its default it is left out of the config
    hash, so that every run made before it existed keeps its identity (its directory is still found
    complete); any other value changes the hash as usual. The default must be what the code computed
    before the field existed. A section (a dataclass) takes `default_factory=` instead of a default."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"hash_neutral_at_default": True}, **kwargs)


def _field_default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _hashed_dict(config: Any) -> Any:
    """Like `to_dict`, without the `added_field`s that are at their default, and with the sections a
    config hashes beside its fields (`hash_extras()`: what older versions of its class held)."""
    if not dataclasses.is_dataclass(config):
        return config
    data = {name: _hashed_dict(section) for name, section in getattr(config, "hash_extras", dict)().items()}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if spec.metadata.get("hash_neutral_at_default") and value == _field_default(spec):
            continue
        data[spec.name] = _hashed_dict(value)
    return data


def config_hash(config: Any, exclude: Iterable[str] = ()) -> str:
    """Short stable hash of the result-changing part of a config (dotted keys in `exclude` dropped;
    `added_field`s at their default left out)."""
    data = copy.deepcopy(_hashed_dict(config))  # a plain dict config is the caller's: never edit it
    for dotted in exclude:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def save_yaml(config: Any, path: Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))


def load_yaml(path: Path, config_class: type[ConfigT]) -> ConfigT:
    """Read a resolved config written by `save_yaml` back into its dataclass (unknown keys fail). A class
    with variants (`loadable(raw) -> (class, contents)`) reads the file as the variant it names."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
        if hasattr(config_class, "loadable") and isinstance(raw, dict):
            config_class, raw = config_class.loadable(raw)
        merged = OmegaConf.merge(OmegaConf.structured(config_class), OmegaConf.create(raw))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: does not match {config_class.__name__}: {error}") from None
    return OmegaConf.to_object(merged)
