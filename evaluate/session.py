"""What every protocol shares: its record (`Protocol`), and the session it runs in (device, encoder,
run directory), opened by `protocol_main`.

Evaluation runs live in `<pretraining run>/eval/<protocol>-<preset>-<weights digest>-<config hash>/`
(or under `run.output_root` when given), so re-running a protocol on the same weights with the same
config finds its result.json and does nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from common import dist
from common.datasets import dataset_fingerprint, num_classes
from common.encoder import EncoderSpec, LoadedEncoder, load_source
from common.lifecycle import RunLifecycle
from common.rundir import RunDirectory, releases_run_locks
from common.runtime import NON_RESULT_FIELDS, resolve_device, seed_everything, set_cpu_threads
from evaluate.configs import EvalConfig
from evaluate.features import features_for


@dataclass
class EvalSession:
    config: EvalConfig
    device: torch.device
    encoder: LoadedEncoder
    run: RunLifecycle
    num_classes: int
    image_size: int

    @property
    def run_dir(self) -> RunDirectory:
        return self.run.run_dir

    @property
    def feature_cache(self) -> Path:
        if self.config.source.run_dir:
            return Path(self.config.source.run_dir) / "feature_cache"
        return self.run_dir.path.parent / "feature_cache"

    def features(self, encoder: torch.nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features (N, D) and labels (N,) of `split` with the evaluation transform, cached."""
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
            print(f"[evaluate {self.config.protocol}] {metrics}")
        return self.run.finish(record)


def _default_configure(config: EvalConfig, preset: str, spec: EncoderSpec) -> EvalConfig:
    return config


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol, declared once in its own module and listed in evaluate/protocols.py."""

    name: str
    section: str  # the EvalConfig section holding its settings (evaluate.configs.SECTIONS)
    presets: tuple[str, ...]  # the first is the default
    run: Callable[[EvalSession], dict]  # the protocol itself: session -> session.result(...)
    headline: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # report protocol -> (metric, meaning)
    # The preset's settings for an encoder of this architecture (config.data is already set).
    configure: Callable[[EvalConfig, str, EncoderSpec], EvalConfig] = _default_configure
    uses_features: bool = True  # reads frozen features (the `features` section is part of its identity)
    hours: float = 24.0


def eval_run_directory(config: EvalConfig, encoder: LoadedEncoder, protocol: Protocol) -> RunDirectory:
    """Named by protocol, preset and weights digest, hashed over the protocol's own settings and the
    fingerprint of the images it reads."""
    if config.run.output_root:
        root = Path(config.run.output_root)
    else:
        root = Path(config.source.run_dir) / "eval" if config.source.run_dir else Path("runs") / "eval"
    excluded = (*NON_RESULT_FIELDS, *config.unused_sections(protocol.section, protocol.uses_features),
                "source.run_dir", "source.encoder_file", "source.allow_incomplete")
    return RunDirectory.for_config(root, f"{config.run.name}-{encoder.digest[:8]}", config, excluded,
                                   dataset_fingerprint(config.data))


def protocol_main(protocol: Protocol) -> Callable[[EvalConfig], dict]:
    """`main(config)` of a protocol: open the session (or return the finished result), run it."""

    @releases_run_locks
    @functools.wraps(protocol.run)
    def main(config: EvalConfig) -> dict:
        device = resolve_device(config.run.device)
        set_cpu_threads(config.run.cpu_threads)
        dist.init_distributed(device.type)
        seed_everything(config.run.seed)
        encoder = load_source(config.source)
        run = RunLifecycle(eval_run_directory(config, encoder, protocol), f"evaluate {config.protocol}", "epoch",
                           config.run.keep_last_checkpoints)
        done = run.start(config, config.run.wait_for_lock)
        if done is not None:
            return done
        return protocol.run(EvalSession(config, device, encoder, run, num_classes(config.data),
                                        config.image_size or encoder.spec.image_size))

    return main
