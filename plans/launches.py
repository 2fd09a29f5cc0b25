"""What was launched, per plan: `<output_root>/.jobs/<plan>/launch.json` = {flavour: {"seeds": [...],
"datasets": [...]}}, the union over every launch. `python -m slurm run` adds to it; `python -m
reports` reads it, so that `make report` after `make table6 SEEDS=0,1,2` reports the three seeds
without being told again.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

from common.checkpoint import atomic_write_text
from plans.tables import PLANS


def launch_file(output_root: Path, plan_name: str) -> Path:
    return Path(output_root) / ".jobs" / plan_name / "launch.json"


def read_launches(output_root: Path, plan_name: str) -> dict[str, dict[str, list]]:
    """{flavour: {"seeds": [...], "datasets": [...]}} of the plan's launches; {} when none was recorded.
    A damaged record is refused with its path: guessing would report other seeds than were launched."""
    path = launch_file(output_root, plan_name)
    if not path.is_file():
        return {}
    try:
        launches = json.loads(path.read_text())
    except ValueError as error:
        raise _damaged(path, f"not readable JSON: {error}") from None
    if not isinstance(launches, dict):
        raise _damaged(path, "not an object {flavour: {seeds, datasets}}")
    for flavour, entry in launches.items():
        if not isinstance(entry, dict):
            raise _damaged(path, f"{flavour!r} is not an object {{seeds, datasets}}")
        for field, kind in (("seeds", int), ("datasets", str)):
            values = entry.get(field, [])
            if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise _damaged(path, f"{flavour}.{field} is not a list of {kind.__name__}s")
    return launches


def _damaged(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is damaged ({reason}): fix or delete it (it only records the seeds and datasets "
                      "launched, which the reports use when --seeds / --datasets are not given)")


def default_datasets(plan_name: str) -> tuple[str, ...]:
    """The datasets a plan runs when none are named (its function's default; () for plans without)."""
    parameter = inspect.signature(PLANS[plan_name]).parameters.get("datasets")
    return tuple(parameter.default) if parameter is not None else ()


def record_launch(output_root: Path, plan_name: str, flavour: str, seeds: tuple[int, ...],
                  datasets: tuple[str, ...]) -> None:
    datasets = datasets or default_datasets(plan_name)
    launches = read_launches(output_root, plan_name)
    entry = launches.setdefault(flavour, {"seeds": [], "datasets": []})
    entry["seeds"] = sorted(set(entry["seeds"]) | set(seeds))
    entry["datasets"] = sorted(set(entry["datasets"]) | set(datasets))
    path = launch_file(output_root, plan_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(launches, indent=2), path)


def launched(output_root: Path, plan_name: str, flavour: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(seeds, datasets) launched with `flavour`; () for what was never recorded (plan defaults)."""
    entry = read_launches(output_root, plan_name).get(flavour, {})
    return tuple(entry.get("seeds", ())), tuple(entry.get("datasets", ()))
