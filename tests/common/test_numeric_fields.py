"""Every numeric field of every stage's config, every method's section included, refuses NaN,
infinities and values outside its declared range before anything runs: one `error:` line naming the
field, exit 2, no run folder."""
from __future__ import annotations

import dataclasses
import math
import sys

import pytest

from common.config import ConfigError, Interval, apply_overrides, field_ranges
from evaluate.configs import EvalConfig
from pretrain.configs import preset
from pretrain.methods import METHODS
from transfer.train import TransferConfig

# Each stage's config with the overrides that make everything but the field under test valid.
STAGE_CONFIGS = {
    **{f"pretrain method={name}": (lambda name=name: preset("debug_cpu"), (f"method={name}",)) for name in METHODS},
    "evaluate": (EvalConfig, ("source.run_dir=/nowhere",)),
    "transfer": (TransferConfig, ("source.run_dir=/nowhere",)),
}


NUMERIC_TYPES = {"int", "float", "list[int]", "list[float]", "<class 'int'>", "<class 'float'>"}


def numeric_fields(config, prefix: str = ""):
    """(dotted name, section class, value) of every int/float (or list of them) field, recursively."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            yield from numeric_fields(value, f"{prefix}{spec.name}.")
        elif str(spec.type).replace("typing.", "") in NUMERIC_TYPES:
            yield f"{prefix}{spec.name}", type(config), value


def all_numeric_fields():
    for stage, (build, base) in STAGE_CONFIGS.items():
        config = apply_overrides(build(), base)
        for name, section, value in numeric_fields(config):
            yield pytest.param(build, base, name, section, value, id=f"{stage}:{name}")


CASES = list(all_numeric_fields())


def test_the_methods_sections_are_walked():
    names = {case.values[2] for case in CASES}
    assert {"loss.temperature", "mix.num_mixed", "dino.teacher_temp", "sdmp.mix_to_source_weight", "optim.base_lr",
            "augment.local_crop_size", "knn.temperature", "finetune.layer_decay", "num_heads"} <= names


@pytest.mark.parametrize("build, base, name, section, value", CASES)
def test_every_numeric_field_declares_its_range(build, base, name, section, value):
    assert name.rsplit(".", 1)[-1] in field_ranges(section), f"{section.__name__} declares no range for {name}"


def _text(value) -> str:
    return f"[{value}]" if value is not None and isinstance(value, list) else str(value)


def _out_of_range(interval: Interval) -> list[float]:
    """Values just outside each finite end of the interval."""
    values = []
    if math.isfinite(interval.low):
        values.append(interval.low if not interval.low_closed else interval.low - 1)
    if math.isfinite(interval.high):
        values.append(interval.high if not interval.high_closed else interval.high + 1)
    return values


@pytest.mark.parametrize("build, base, name, section, value", CASES)
def test_non_finite_and_out_of_range_values_are_refused(build, base, name, section, value):
    interval = field_ranges(section)[name.rsplit(".", 1)[-1]]
    bad = ["nan", "inf", "-inf", *(repr(v) if isinstance(v, float) else str(int(v)) for v in _out_of_range(interval))]
    for text in bad:
        if isinstance(value, list):
            text = f"[{text}]"
        with pytest.raises(ConfigError, match=rf"'?{name}'?"):
            apply_overrides(build(), [*base, f"{name}={text}"])
    assert apply_overrides(build(), base) is not None  # the base itself is valid


def test_interval_notation():
    assert 0.5 in Interval.parse("(0, 1]") and 1 in Interval.parse("(0, 1]") and 0 not in Interval.parse("(0, 1]")
    assert math.inf not in Interval.parse("[0, inf)") and math.nan not in Interval.parse("[0, inf)")
    assert str(Interval.parse("[1, inf]")) == "[1, inf)"  # an infinite end is never included
    with pytest.raises(ValueError):
        Interval.parse("{0, 1}")


@pytest.mark.parametrize("overrides, field", [
    (["loss.mix_to_origin_weight=nan"], "loss.mix_to_origin_weight"),
    (["loss.temperature=inf"], "loss.temperature"),
    (["method=dino", "dino.teacher_temp=nan"], "dino.teacher_temp"),
    (["method=sdmp", "sdmp.mix_to_source_weight=nan"], "sdmp.mix_to_source_weight"),
    (["optim.base_lr=nan"], "optim.base_lr"),
    (["method=dino", "augment.num_local_crops=2", "augment.local_crop_size=0"], "augment.local_crop_size"),
])
def test_the_command_line_refuses_before_any_run_folder(overrides, field, tmp_path, monkeypatch, capsys):
    from pretrain.__main__ import cli

    monkeypatch.setattr(sys, "argv", ["pretrain", "--preset", "debug_cpu", f"run.output_root={tmp_path / 'runs'}",
                                      *overrides])
    with pytest.raises(SystemExit) as stopped:
        cli()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines
    assert not (tmp_path / "runs").exists()
