"""The COCO transfer stage's record (common/stage.py). Importing it needs no detectron2: the stage
imports detectron2 when it runs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.config import apply_overrides
from common.encoder import SourceConfig, planned_source
from common.stage import StageRecord, Upstream
from transfer.configs import CONFIGS
from transfer.train import TransferConfig, main, transfer_run_directory


def resolve(preset: str, overrides: Sequence[str], upstream: Upstream | None) -> TransferConfig:
    return apply_overrides(TransferConfig(config=preset, source=SourceConfig(run_dir=str(upstream.run_dir))),
                           overrides)


def run_directory(config: TransferConfig) -> Path:
    source = config.source
    return transfer_run_directory(config, planned_source(source.run_dir, source.encoder_file, source.encoder)).path


STAGE = StageRecord("transfer", main, resolve, run_directory,
                    headline={"ap_box": ("ap_box", "box AP"), "ap_mask": ("ap_mask", "mask AP")},
                    upstream=("pretrain",), presets=tuple(CONFIGS), hours=48.0)
