"""The pretraining stage's record (common/stage.py): what the launcher, the plans and the reports
know of it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.config import apply_overrides
from common.stage import StageRecord, UnreadableData, Upstream
from pretrain.configs import PresetNames, PretrainConfig, encoder_record, preset, run_directory
from pretrain.train import main


def resolve(preset_name: str, overrides: Sequence[str], upstream: Upstream | None = None) -> PretrainConfig:
    return apply_overrides(preset(preset_name), overrides)


def planned_run_directory(config: PretrainConfig) -> Path:
    """The run directory, computed from here before the run exists; UnreadableData (with the
    directory it would have if its data were unchanged) when the dataset cannot be read from here."""
    try:
        return run_directory(config).path
    except (FileNotFoundError, ValueError) as error:
        raise UnreadableData(str(error), run_directory(config, data_fingerprint="unread").path) from None


STAGE = StageRecord("pretrain", main, resolve, planned_run_directory, presets=PresetNames(), hours=24.0,
                    encoder_record=encoder_record)
