"""What every protocol does first: resolve the device, load the encoder, open the run directory.

Evaluation runs live in `<pretraining run>/eval/<protocol>-<preset>-<weights digest>-<config hash>/`
(or under `run.output_root` when given), so re-running a protocol on the same weights with the same
config finds its result.json and does nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common import dist
from common.datasets import dataset_fingerprint, num_classes
from common.rundir import RunDirectory
from common.runtime import NON_RESULT_FIELDS, resolve_device, seed_everything
from evaluate.configs import EvalConfig
from evaluate.encoder import LoadedEncoder, load_source


@dataclass
class EvalSession:
    config: EvalConfig
    device: torch.device
    encoder: LoadedEncoder
    run_dir: RunDirectory
    num_classes: int
    image_size: int

    @property
    def feature_cache(self) -> Path:
        if self.config.source.run_dir:
            return Path(self.config.source.run_dir) / "feature_cache"
        return self.run_dir.path.parent / "feature_cache"

    def features(self, encoder: torch.nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features (N, D) and labels (N,) of `split` with the evaluation transform, cached."""
        from evaluate.features import features_for

        return features_for(encoder, self.encoder.digest, self.config.data, split, self.image_size,
                            self.config.features, self.device, self.feature_cache)

    def result(self, metrics: dict, **extra) -> dict:
        """Write result.json (main process) and return the record."""
        record = {"stage": "evaluate", "protocol": self.config.protocol, "preset": self.config.preset,
                  "dataset": self.config.data.dataset, "metrics": metrics,
                  "source": self.encoder.description, "source_digest": self.encoder.digest,
                  "arch": self.encoder.spec.arch, "patch_size": self.encoder.spec.patch_size,
                  **self.encoder.origin, "experiment": self.config.run.experiment or self.encoder.origin.get("experiment", ""),
                  **extra}
        if dist.is_main_process():
            self.run_dir.write_result(record)
            print(f"[evaluate {self.config.protocol}] {metrics}\n[evaluate {self.config.protocol}] "
                  f"done: {self.run_dir.path}")
        dist.barrier()
        return {**record, "run_dir": str(self.run_dir.path)}


def output_root(config: EvalConfig) -> Path:
    if config.run.output_root:
        return Path(config.run.output_root)
    if config.source.run_dir:
        return Path(config.source.run_dir) / "eval"
    return Path("runs") / "eval"


def eval_run_directory(config: EvalConfig, encoder: LoadedEncoder) -> RunDirectory:
    """Named by protocol, preset and weights digest, hashed over the protocol's own settings."""
    return RunDirectory.for_config(output_root(config), f"{config.run.name}-{encoder.digest[:8]}", config,
                                   NON_RESULT_FIELDS + config.unused_sections() + ("source.run_dir",
                                                                                   "source.encoder_file",
                                                                                   "source.allow_incomplete"),
                                   dataset_fingerprint(config.data))


def open_session(config: EvalConfig) -> EvalSession | dict:
    """The session for `config`, or the existing result record when this run already finished."""
    device = resolve_device(config.run.device)
    dist.init_distributed(device.type)
    seed_everything(config.run.seed)
    encoder = load_source(config.source)
    run_dir = eval_run_directory(config, encoder)
    if run_dir.is_complete():
        if dist.is_main_process():
            print(f"[evaluate {config.protocol}] {run_dir.path} is complete; nothing to do")
        return {**run_dir.read_result(), "run_dir": str(run_dir.path)}
    if dist.is_main_process():
        run_dir.acquire(config.run.wait_for_lock)
    dist.barrier()
    if run_dir.is_complete():  # finished by the process we waited for
        return {**run_dir.read_result(), "run_dir": str(run_dir.path)}
    if dist.is_main_process():
        run_dir.prepare(config, dist.world_size())
    dist.barrier()
    return EvalSession(config, device, encoder, run_dir, num_classes(config.data),
                       config.image_size or encoder.spec.image_size)
