"""Sweeps: the product of a grid of pretraining overrides, over seeds, each point with its evaluations.

    python -m slurm sweep --preset cifar10_vit_s2_800ep_official \\
        --grid loss.temperature=0.1,0.2 mix.num_mixed=2,3 --seeds 0,1,2 --evals knn,linear

A sweep is a plan (plans/tables.Plan) whose stage keys name the point, so every point's runs
coexist (`sweep/<name>/loss.temperature=0.1,mix.num_mixed=2/seed0/pretrain`); its definition is
kept in `<output_root>/.sweeps/<name>.json`, from which `python -m reports sweep <name>` rebuilds
the plan and writes the table grouped by the swept keys.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.checkpoint import atomic_write_text
from common.cli import parse_items
from common.config import ConfigError, apply_overrides
from plans.registry import stage_record
from plans.tables import PRETRAIN, Plan, Row, Stage

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


@dataclass(frozen=True)
class Sweep:
    name: str
    preset: str  # the pretraining preset every point starts from
    grid: tuple[tuple[str, tuple[str, ...]], ...]  # ((key, values), ...) in the order given
    seeds: tuple[int, ...] = (0,)
    evals: tuple[str, ...] = ("knn",)  # protocol, or protocol:preset (linear:fast)
    nodes: int = 1
    gpus_per_node: int = 1
    hours: float = 24.0

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.grid)

    def points(self) -> list[dict[str, str]]:
        """Every combination of the grid's values, {key: value}, first key slowest."""
        return [dict(zip(self.keys, values)) for values in itertools.product(*(values for _, values in self.grid))]

    def protocols(self) -> list[tuple[str, str]]:
        """(protocol, preset) of each evaluation; the protocol's default preset where none is named."""
        pairs = []
        for item in self.evals:
            protocol, _, chosen = item.partition(":")
            pairs.append((protocol, chosen or stage_record(protocol).presets[0]))
        return pairs


def point_label(point: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in point.items())


def parse_grid(items: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """["loss.temperature=0.1,0.2", "mix.num_mixed=2,3"] -> (("loss.temperature", ("0.1", "0.2")), ...)."""
    grid = []
    for item in items:
        key, separator, values = item.partition("=")
        listed = tuple(value for value in values.split(",") if value)
        if not separator or not key or not listed:
            raise ValueError(f"grid entries are key=value1,value2,...; got {item!r}")
        if len(listed) != len(values.split(",")):  # a stray comma: a value left out, not a point dropped
            raise ValueError(f"--grid {item}: an empty value between commas; write {key}={','.join(listed)}")
        if "/" in values:
            raise ValueError(f"grid values may not contain '/' (they name stages): {item!r}")
        grid.append((key, listed))
    if not grid:
        raise ValueError("a sweep needs at least one --grid key=value1,value2")
    if len({key for key, _ in grid}) != len(grid):
        raise ValueError("each key may appear once in --grid")
    return tuple(grid)


def parse_evals(text: str) -> tuple[str, ...]:
    """--evals "knn,linear:fast" -> ("knn", "linear:fast"). Each protocol once: a point has one stage per
    protocol (`<point>/seed0/knn`), so "knn,knn:fast" would name one stage twice."""
    evals = parse_items(text, "--evals", "evaluation")
    protocols = [item.partition(":")[0] for item in evals]
    repeated = next((protocol for index, protocol in enumerate(protocols) if protocol in protocols[:index]), None)
    if repeated is not None:
        raise ValueError(f"--evals {text.strip()}: protocol {repeated} is given twice (a point has one {repeated} "
                         "stage); name each protocol once")
    return evals


def check_grid(preset: str, grid: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The grid with each key checked against `preset`'s config and each value parsed by its field's
    type and written in one form (0.3, 0.30 and 3e-1 -> 0.3), so that values equal as numbers make one
    point, not two points that share one run. Raises ConfigError naming the key or value."""
    config = stage_record(PRETRAIN).resolve(preset, [], None)
    checked = []
    for key, values in grid:
        _check_key(config, key)
        checked.append((key, tuple(dict.fromkeys(_canonical(config, key, value) for value in values))))
    return tuple(checked)


def _check_key(config: Any, key: str) -> None:
    """Refuse a key the config does not have, listing the valid keys where it goes astray."""
    node, path = config, []
    for part in key.split("."):
        if isinstance(node, dict):  # a free-form mapping: any key may be set
            return
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"--grid {key}: '{'.'.join(path)}' is a value, not a section")
        names = [field.name for field in dataclasses.fields(node)]
        if part not in names:
            where = f"section '{'.'.join(path)}'" if path else "the top level"
            raise ConfigError(f"--grid {key}: unknown key '{part}' in {where}; valid keys there: {', '.join(names)}")
        node, path = getattr(node, part), [*path, part]


def _canonical(config: Any, key: str, value: str) -> str:
    """`value` as the config parses it for `key`, written back as text (refused values name the key)."""
    parsed: Any = apply_overrides(config, [f"{key}={value}"])
    for part in key.split("."):
        parsed = parsed[part] if isinstance(parsed, dict) else getattr(parsed, part)
    if isinstance(parsed, bool):
        return "true" if parsed else "false"
    if isinstance(parsed, (int, float)):
        return repr(parsed)
    return parsed if isinstance(parsed, str) else value


def default_name(preset: str, grid: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return f"{preset}-" + "+".join(key.split(".")[-1] for key, _ in grid)


def sweep_plan(sweep: Sweep) -> Plan:
    """Per point and seed: the pretraining stage (the preset + the point's overrides + the seed) and
    its evaluations, each evaluation filling the report row of its point."""
    if not NAME.fullmatch(sweep.name):
        raise ValueError(f"sweep name {sweep.name!r} must be a plain folder name (letters, digits, ._+=-)")
    stage_record(PRETRAIN).resolve(sweep.preset, [], None)  # an unknown preset fails here, before any job
    grid = ", ".join(f"{key} in {{{', '.join(values)}}}" for key, values in sweep.grid)
    plan = Plan(f"sweep-{sweep.name}", f"Sweep of {sweep.preset}: {grid}; seeds {', '.join(map(str, sweep.seeds))}")
    resources = {"nodes": sweep.nodes, "gpus_per_node": sweep.gpus_per_node}
    for point in sweep.points():
        label = point_label(point)
        overrides = tuple(f"{key}={value}" for key, value in point.items())
        for seed in sweep.seeds:
            prefix = f"sweep/{sweep.name}/{label}/seed{seed}"
            plan.stages.append(Stage(f"{prefix}/pretrain", PRETRAIN, sweep.preset, (*overrides, f"run.seed={seed}"),
                                     seed=seed, hours=sweep.hours, **resources))
            for protocol, preset in sweep.protocols():
                plan.stages.append(Stage(f"{prefix}/{protocol}", protocol, preset, after=f"{prefix}/pretrain",
                                         seed=seed, hours=stage_record(protocol).hours, **resources,
                                         rows=(Row("sweep", label, sweep.preset, 0, "", protocol),)))
    return plan


def sweep_file(output_root: Path, name: str) -> Path:
    return Path(output_root) / ".sweeps" / f"{name}.json"


def merged_sweep(output_root: Path, sweep: Sweep) -> Sweep:
    """The definition `save_sweep` would keep, writing nothing (a launch checks it before any stage, a dry
    run too). Relaunching a name with more seeds or values is allowed (their runs coexist): the union of
    the grids and seeds. A name kept with another preset or other keys, or a damaged file, is refused."""
    path = sweep_file(output_root, sweep.name)
    if not path.is_file():
        return sweep
    old = load_sweep(output_root, sweep.name)
    if old.preset != sweep.preset or old.keys != sweep.keys:
        raise ValueError(f"sweep {sweep.name!r} exists with preset {old.preset} and keys {', '.join(old.keys)} "
                         f"({path}); choose another --name")
    grid = tuple((key, tuple(dict.fromkeys((*dict(old.grid)[key], *values)))) for key, values in sweep.grid)
    evals = tuple(dict.fromkeys((*old.evals, *sweep.evals)))
    return Sweep(**{**asdict(sweep), "grid": grid, "seeds": tuple(sorted({*old.seeds, *sweep.seeds})),
                    "evals": evals})


def save_sweep(output_root: Path, sweep: Sweep) -> Path:
    """Keep the definition for the report: `merged_sweep` with what was kept of the name before."""
    merged = merged_sweep(output_root, sweep)
    path = sweep_file(output_root, sweep.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(asdict(merged), indent=2), path)
    return path


def load_sweep(output_root: Path, name: str) -> Sweep:
    """The definition `python -m slurm sweep` kept for `name`. A name that is no plain folder name or
    names no sweep is refused with the known names; a damaged file is refused with its path and field."""
    path = sweep_file(output_root, name)
    if not NAME.fullmatch(name) or not path.is_file():
        folder = Path(output_root) / ".sweeps"
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        what = "is not a plain sweep name (letters, digits, ._+=-)" if not NAME.fullmatch(name) else \
            f"names no sweep under {output_root}"
        raise FileNotFoundError(f"{name!r} {what} (known: {', '.join(known) or 'none'})")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise _damaged(path, f"not readable JSON: {error}") from None
    return _sweep_from_record(data, path)


# The fields of a saved sweep: (is the value well-formed, what it should be).
SWEEP_FIELDS = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "preset": (lambda v: isinstance(v, str), "a string"),
    "grid": (lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and _is_list_of(entry[1], str)
        and bool(entry[1]) for entry in v), "a list of [key, [values]]"),
    "seeds": (lambda v: _is_list_of(v, int), "a list of integers"),
    "evals": (lambda v: _is_list_of(v, str), "a list of strings"),
    "nodes": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "gpus_per_node": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "hours": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
}
REQUIRED_SWEEP_FIELDS = ("name", "preset", "grid", "seeds", "evals")


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) and not isinstance(item, bool) for item in value)


def _sweep_from_record(data: Any, path: Path) -> Sweep:
    """A Sweep from the saved record, every field checked (the error names the file and the field)."""
    if not isinstance(data, dict):
        raise _damaged(path, "not an object of sweep fields")
    missing = [field for field in REQUIRED_SWEEP_FIELDS if field not in data]
    unknown = sorted(set(data) - set(SWEEP_FIELDS))
    if missing or unknown:
        raise _damaged(path, ", ".join([*(f"{field} is missing" for field in missing),
                                        *(f"{field} is not a sweep field" for field in unknown)]))
    for field, value in data.items():
        is_valid, expected = SWEEP_FIELDS[field]
        if not is_valid(value):
            raise _damaged(path, f"{field} is not {expected}")
    return Sweep(**{**data, "grid": tuple((key, tuple(values)) for key, values in data["grid"]),
                    "seeds": tuple(data["seeds"]), "evals": tuple(data["evals"])})


def _damaged(path: Path, reason: str) -> ValueError:
    return ValueError(f"sweep file {path} is damaged ({reason}): fix it, or delete it and launch the sweep again")


if __name__ == "__main__":  # `python -m plans.sweeps PRESET KEY=V1,V2 ...`: the default name (for make sweep)
    import sys

    print(default_name(sys.argv[1], parse_grid(sys.argv[2:])))

