"""`--help-config`: every field of a config with its type, value and one line of meaning, read from
the comment kept next to the field in its dataclass (the one source of truth); for a preset, the
fields where it departs from the dataclass defaults are marked."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from functools import lru_cache
from typing import Any

FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*[^=]+?(?:=.*?)?(?:#\s*(?P<comment>.*))?$")


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment}: the comment at the end of the field's line, else the comment lines
    right above it; a field declared in a base class (the shared sections of a method's config) has
    the comment written there, unless the class declares the field again with one of its own."""
    comments, above = {}, []
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        for line in inspect.getsource(base).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            match = FIELD_LINE.match(line)
            if match and match.group(1) in {f.name for f in dataclasses.fields(base)}:
                comment = match.group("comment") or " ".join(above)
                if comment or match.group(1) not in comments:
                    comments[match.group(1)] = comment
            above = []
    return comments


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def describe(config: Any, prefix: str = "") -> list[str]:
    """One line per leaf field: `section.field: type = value  (default: d)  meaning`; `*` marks a
    value that differs from the dataclass default."""
    lines = []
    comments = field_comments(type(config))
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        name = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            lines.extend(describe(value, name + "."))
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else (
            spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None)
        changed = value != default
        line = f"{'*' if changed else ' '} {name}: {_type_name(hints.get(spec.name, spec.type))} = {value!r}"
        if changed:
            line += f"  (default {default!r})"
        meaning = comments.get(spec.name, "")
        lines.append(f"{line}  {('- ' + meaning) if meaning else ''}".rstrip())
    return lines
