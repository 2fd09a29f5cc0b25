"""Every stage record of the suite, collected from the stage packages that declare them."""
from __future__ import annotations

from common.stage import StageRecord
from evaluate.protocols import STAGES as EVALUATION_STAGES
from pretrain.stage import STAGE as PRETRAIN_STAGE
from transfer.stage import STAGE as TRANSFER_STAGE

STAGES: dict[str, StageRecord] = {record.name: record for record in (PRETRAIN_STAGE, *EVALUATION_STAGES,
                                                                      TRANSFER_STAGE)}


def stage_record(name: str) -> StageRecord:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the suite has {', '.join(STAGES)}")
    return STAGES[name]


def headline(protocol: str) -> tuple[str, str]:
    """(result metric, what it is) that a report row of `protocol` shows, from the stage records."""
    for record in STAGES.values():
        if protocol in record.headline:
            return record.headline[protocol]
    raise ValueError(f"no stage reports {protocol!r}")


def baseline_preset(name: str, flavour: str) -> str:
    """`<name>_<flavour>` where that preset exists, else the baseline's only (official) recipe: DINO's
    published recipe is the same in both flavours (the paper trains no DINO)."""
    presets = stage_record("pretrain").presets
    return f"{name}_{flavour}" if f"{name}_{flavour}" in presets else f"{name}_official"
