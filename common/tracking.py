"""Experiment trackers next to metrics.jsonl: TensorBoard (default) and Weights & Biases.

metrics.jsonl stays the record the reports and `make status` read; the trackers are views of it
for people who want live curves. Both are optional packages: a missing one is named once and the
run goes on with the others; so does a tracker whose folder cannot be written (it is switched off).
A resumed or requeued run continues the same curve:

- TensorBoard writes to `<run dir>/tensorboard/`; on resume, the points logged after the restored
  checkpoint by the killed process are purged (`purge_step`), as metrics.jsonl drops them.
- W&B's run id is the run directory's name (preset name + config hash), with `resume="allow"`;
  `run.wandb_mode=offline` writes under `<run dir>/wandb/` for nodes without internet
  (`wandb sync` uploads it later).
"""
from __future__ import annotations

import dataclasses
import numbers
import sys
import tempfile
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb")
NOT_PLOTTED = ("time", "total")  # bookkeeping fields of every record
_reported_missing: set[str] = set()  # a missing package is named once per process


def check_loggers(loggers: list[str]) -> None:
    unknown = [name for name in loggers if name not in TRACKERS]
    if unknown:
        raise ValueError(f"run.loggers: unknown {unknown}; choose among {', '.join(TRACKERS)} (or [] for none)")


def _missing(name: str, install: str) -> None:
    if name not in _reported_missing:
        _reported_missing.add(name)
        print(f"[tracking] {name} is not installed ({install}); metrics go to metrics.jsonl and the other "
              "trackers", file=sys.stderr)


def _write_problem(folder: Path) -> str:
    """Why `folder` cannot be written (created if needed, a probe file written), or "" when it can.
    Checked before a writer opens: TensorBoard's would fail in its own thread, with a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return ""


def _switched_off(name: str, folder: Path, problem: str) -> None:
    print(f"[tracking] {name} cannot write to {folder} ({problem}): switched off for this run; metrics go to "
          "metrics.jsonl and the other trackers", file=sys.stderr)


class Trackers:
    """Fan-out of one run's metric records. Writers open at the first record (after `resume_at`),
    on the main process only (the caller guards)."""

    def __init__(self, run_dir: Path, stage: str, run: Any, config: Any = None):
        self.run_dir, self.stage, self.config = Path(run_dir), stage, config
        self.names = list(getattr(run, "loggers", []) or [])  # validated by RunConfig.check
        self.wandb_project = getattr(run, "wandb_project", "patchmix")
        self.wandb_mode = getattr(run, "wandb_mode", "online")
        self.resume_step = 0
        self._writers: dict[str, Any] | None = None

    def resume_at(self, step: int) -> None:
        """The run continues after `step`: later points of the killed process are dropped."""
        self.resume_step = step

    def _open(self) -> dict[str, Any]:
        """The writers that can be opened: a missing package or a folder that cannot be written is
        named and that tracker left out."""
        writers: dict[str, Any] = {}
        if "tensorboard" in self.names:
            writer = self._open_tensorboard()
            if writer is not None:
                writers["tensorboard"] = writer
        if "wandb" in self.names:
            run = self._open_wandb()
            if run is not None:
                writers["wandb"] = run
        return writers

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _missing("tensorboard", "pip install tensorboard")
            return None
        folder = self.run_dir / "tensorboard"
        problem = _write_problem(folder)
        if problem:
            _switched_off("tensorboard", folder, problem)
            return None
        return SummaryWriter(str(folder), flush_secs=30, purge_step=self.resume_step + 1 if self.resume_step else None)

    def _open_wandb(self) -> Any:
        try:
            import wandb
        except ImportError:
            _missing("wandb", "pip install wandb")
            return None
        problem = _write_problem(self.run_dir)  # W&B keeps its files under <run dir>/wandb/
        if problem:
            _switched_off("wandb", self.run_dir, problem)
            return None
        config = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else None
        return wandb.init(project=self.wandb_project, id=self.run_dir.name, name=self.run_dir.name, resume="allow",
                          dir=str(self.run_dir), mode=self.wandb_mode, config=config, job_type=self.stage, reinit=True)

    def log(self, record: dict[str, Any], step: int) -> None:
        if not self.names:
            return
        if self._writers is None:
            self._writers = self._open()
        values = {key: float(value) for key, value in record.items()
                  if isinstance(value, numbers.Real) and not isinstance(value, bool) and key not in NOT_PLOTTED}
        if "tensorboard" in self._writers:
            for key, value in values.items():
                self._writers["tensorboard"].add_scalar(f"{self.stage}/{key}", value, step)
        if "wandb" in self._writers:
            self._writers["wandb"].log({f"{self.stage}/{key}": value for key, value in values.items()}, step=step)

    def close(self) -> None:
        for writer in (self._writers or {}).values():
            (writer.finish if hasattr(writer, "finish") else writer.close)()
        self._writers = None
