"""Stage records: what the launcher, the plans, `status` and the reports know of a stage.

Each stage package declares its record(s) once (pretrain/stage.py, evaluate/protocols.py,
transfer/stage.py); plans/registry.py collects them. Code outside a stage never names the stage: it
looks the record up by the name a plan or a result carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


class UnreadableData(ValueError):
    """The data a config reads cannot be read from here, so its run directory is only a guess
    (`placeholder`, so that the plan still resolves); a launch refuses it, and so does its dry run."""

    def __init__(self, message: str, placeholder: Path):
        super().__init__(message)
        self.placeholder = placeholder


@dataclass(frozen=True)
class Upstream:
    """The run a stage reads from: its directory and its encoder record (common.encoder)."""

    run_dir: Path
    encoder: dict


@dataclass(frozen=True)
class StageRecord:
    name: str
    # main(config) -> the result record (also written to <run dir>/result.json)
    main: Callable[[Any], dict]
    # resolve(preset, overrides, upstream or None) -> the stage's checked config
    resolve: Callable[[str, Sequence[str], Upstream | None], Any]
    # run_directory(config) -> where its run lives; None while it cannot be known (weights not written yet)
    run_directory: Callable[[Any], Path | None]
    # report protocol -> (result metric, what the number is), e.g. "knn": ("top1_k20", "top-1, k=20")
    headline: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()  # stages whose run it reads
    presets: tuple[str, ...] = ()  # the first is the default
    hours: float = 4.0  # a job's default length (requeued until done)
    # Stages that train encoders: the encoder record a config's run will write (plans need it before
    # the run exists, to resolve the evaluations that read it).
    encoder_record: Callable[[Any], dict] | None = None
