"""Which results belong to the stages of a plan. A result names its stage only by its experiment key
(`run.experiment`), which a user may set by hand: a run of another dataset, pretraining method or
pretraining preset can then carry a row's key, and its config hash is no help when the row has no
other result to disagree with. A row holds results of one dataset, one method and one preset, those
of its stage's pretraining (the plan's preset and overrides); a result that differs from them is
left out of every row and figure and named with what differs, before the newest result of each stage
is chosen (reports/collect.split_superseded), so an older result that belongs still counts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pandas as pd

from plans.registry import stage_record
from plans.tables import PRETRAIN, Plan, Stage


@dataclass(frozen=True)
class Pretraining:
    """What a row's results must share: its pretraining's dataset (as the data config names it),
    method and preset."""

    dataset: str
    method: str
    preset: str


@functools.cache  # a plan's evaluations share their pretraining stage; resolving takes milliseconds
def _resolved(kind: str, preset: str, overrides: tuple[str, ...]) -> Pretraining | None:
    try:
        config = stage_record(kind).resolve(preset, overrides, None)
    except ValueError:  # a preset this code does not know (a test's plan): nothing to compare with
        return None
    return Pretraining(str(config.data.dataset), str(config.method), preset)


def expected_pretraining(plan: Plan, stage: Stage) -> Pretraining | None:
    """The pretraining of `stage`: its own config for a stage that trains an encoder, else that of the
    stage it reads (`after`); None where there is none (an evaluation of an imported encoder file)."""
    source = plan.stage(stage.after) if stage.after else stage
    if stage_record(source.kind).encoder_record is None:
        return None
    return _resolved(source.kind, source.preset, tuple(source.overrides))


def _text(record: pd.Series | dict, field: str) -> str | None:
    """A field's value as text; None where the record has none (written before the field existed)."""
    value = record.get(field)
    if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
        return None
    return str(value)


def pretraining_records(results: pd.DataFrame) -> dict[str, pd.Series]:
    """{seedless config hash: a pretraining result}: what an evaluation's `pretrain_experiment_hash`
    names (its method is recorded there only)."""
    if results.empty or not {"stage", "experiment_hash"} <= set(results.columns):
        return {}
    return {str(record.experiment_hash): record for _, record in results[results.stage == PRETRAIN].iterrows()}


def differences(record: pd.Series, expected: Pretraining, trains: bool,
                pretrainings: dict[str, pd.Series]) -> list[str]:
    """What `record` has other than its stage's pretraining, e.g. ["dataset cifar10, not cifar100"].
    `trains`: the record is the pretraining result itself (its own preset and method), else an
    evaluation or transfer result (the origin it records, and its pretraining's result where that
    is among the results). A field the record does not have is not compared."""
    if trains:
        observed = [("dataset", _text(record, "dataset")), ("pretraining method", _text(record, "method")),
                    ("pretraining preset", _text(record, "preset"))]
    else:
        upstream = pretrainings.get(str(record.get("pretrain_experiment_hash")), {})
        own, pretrained_on = _text(record, "dataset"), _text(upstream, "dataset")
        observed = [("dataset", own or pretrained_on),  # a transfer result names no dataset of its own
                    ("pretraining dataset", pretrained_on if own and pretrained_on != own else None),
                    ("pretraining method", _text(upstream, "method")),
                    ("pretraining preset", _text(record, "pretrain_preset"))]
    wanted = {"dataset": expected.dataset, "pretraining dataset": expected.dataset,
              "pretraining method": expected.method, "pretraining preset": expected.preset}
    return [f"{name} {value}, not {wanted[name]}" for name, value in observed
            if value is not None and value != wanted[name]]


def split_foreign(plan: Plan, results: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """(results that belong, [(result path, "stage KEY: what differs")]): a result whose experiment
    key is one of the plan's stages is left out when its dataset, pretraining method or pretraining
    preset is not its stage's. Results of other plans' stages are kept as they are."""
    if results.empty or "experiment" not in results:
        return results, []
    stages = {stage.key: stage for stage in plan.stages}
    pretrainings = pretraining_records(results)
    foreign, named = [], []
    for index, record in results.iterrows():
        stage = stages.get(record.experiment)
        expected = expected_pretraining(plan, stage) if stage is not None else None
        if expected is None:
            continue
        differing = differences(record, expected, not stage.after, pretrainings)
        if differing:
            foreign.append(index)
            named.append((str(record.result_path), f"stage {stage.key}: {'; '.join(differing)}"))
    return results.drop(index=foreign), named


def foreign_lines(foreign: list[tuple[str, str]]) -> list[str]:
    """The report's paragraph naming the results left out by split_foreign ([] where none)."""
    if not foreign:
        return []
    return ["", f"Left out: {len(foreign)} result(s) that carry a stage's key (`run.experiment`) but not its "
                "dataset, pretraining method or pretraining preset, averaged nowhere:", "",
            *[f"- {path}: {what}" for path, what in foreign]]
