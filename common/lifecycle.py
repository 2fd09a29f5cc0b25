"""A training stage's run directory from start to result, shared by pretraining, linear probe and
finetune: take the directory (lock), prepare it, resume from the newest readable checkpoint (or a
parent run's), save and prune checkpoints, log metrics, write result.json.

Every method is called on every rank; file work happens on the main process only and the ranks
meet at a barrier after it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import dist, preemption
from common.checkpoint import (atomic_torch_save, checkpoint_path, latest_readable_checkpoint, list_checkpoints,
                               prune_checkpoints)
from common.rundir import RunDirectory
from common.tracking import Trackers


class RunLifecycle:
    """`progress_key`: the field of checkpoints and metrics that says how far the run got ("step" for
    pretraining, "epoch" for the evaluation protocols)."""

    def __init__(self, run_dir: RunDirectory, stage: str, progress_key: str, keep_last: int = 2,
                 milestone_every: int = 0):
        self.run_dir, self.stage, self.progress_key = run_dir, stage, progress_key
        self.keep_last, self.milestone_every = keep_last, milestone_every
        self.total = 0  # steps (or epochs) the run will take, logged with every record for `status`
        self.trackers: Trackers | None = None  # TensorBoard / W&B views of the metrics (main process)

    @property
    def path(self) -> Path:
        return self.run_dir.path

    def finished(self) -> dict | None:
        """The result record when the run is complete (then there is nothing to do), else None."""
        if not self.run_dir.is_complete():
            return None
        return {**self.run_dir.read_result(), "run_dir": str(self.path)}

    def start(self, config: Any, wait: bool = False) -> dict | None:
        """Own and prepare the directory. Returns the result instead when the run is complete, also
        when it was completed by the process this one waited for (`wait`)."""
        done = self.finished()
        if done is not None:
            if dist.is_main_process():
                print(f"[{self.stage}] {self.path} is complete; nothing to do")
            return done
        if dist.is_main_process():
            self.run_dir.acquire(wait)
        dist.barrier()
        done = self.finished()
        if done is not None:
            return done
        if dist.is_main_process():
            self.run_dir.prepare(config, dist.world_size(), self.stage)
            self.trackers = Trackers(self.path, self.stage, getattr(config, "run", None), config)
        dist.barrier()
        if preemption.can_install():
            preemption.install()
        return None

    def resume(self, parent: Path | None = None) -> tuple[dict | None, dict | None]:
        """(state, parent) of the newest readable checkpoint: this run's, else (for a new run that
        starts from another, `parent`) the parent run's. Refuses a folder of only unreadable
        checkpoints. Metrics logged after the checkpoint (by a killed run) are dropped, so every
        step or epoch is logged once."""
        found, origin = latest_readable_checkpoint(self.run_dir.checkpoint_dir), None
        if found is None and list_checkpoints(self.run_dir.checkpoint_dir):
            raise ValueError(f"{self.run_dir.checkpoint_dir} holds checkpoints but none is readable; refusing "
                             "to restart from scratch silently. Move them away to start over.")
        if found is None and parent is not None:
            found = latest_readable_checkpoint(Path(parent) / "checkpoints")
            if found is None:
                raise FileNotFoundError(f"{parent} holds no readable checkpoint to start from")
            origin = {"run_dir": str(parent), self.progress_key: found[1][self.progress_key]}
        state = None if found is None else found[1]
        if dist.is_main_process():
            self.run_dir.truncate_metrics(self.progress_key, state[self.progress_key] if state else 0)
            if self.trackers is not None and state is not None and origin is None:
                self.trackers.resume_at(state[self.progress_key])
        return state, origin

    def save(self, state: dict) -> None:
        """Write `state` (holding the progress key) atomically, then prune older checkpoints."""
        if dist.is_main_process():
            atomic_torch_save(state, checkpoint_path(self.run_dir.checkpoint_dir, state[self.progress_key]))
            prune_checkpoints(self.run_dir.checkpoint_dir, self.keep_last, self.milestone_every)
        dist.barrier()

    def log(self, record: dict) -> None:
        """Append a metrics record, stamped with the time and the run's total (what `status` reads)."""
        if dist.is_main_process():
            self.run_dir.append_metrics({**record, "time": round(time.time(), 3), "total": self.total})
            if self.trackers is not None:
                self.trackers.log(record, int(record.get(self.progress_key, 0)))

    def finish(self, result: dict) -> dict:
        """Write result.json (main process) and return the record with its run directory."""
        if dist.is_main_process():
            self.run_dir.write_result(result)
            if self.trackers is not None:
                self.trackers.close()
            print(f"[{self.stage}] done: {self.path}")
        dist.barrier()
        return {**result, "run_dir": str(self.path)}
