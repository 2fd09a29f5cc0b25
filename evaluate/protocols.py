"""The evaluation protocols, their configs, and their stage records.

Adding a protocol is one module that declares its `PROTOCOL` (evaluate/session.Protocol) and its name
in evaluate/__init__.PROTOCOL_MODULES; the launcher, the plans, `status` and the reports find it through the stage records.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from common.config import ConfigError, apply_overrides
from common.datasets import DataConfig
from common.encoder import (EncoderSpec, SourceConfig, load_encoder_file, planned_source, read_encoder_record,
                            record_spec)
from common.runtime import RunConfig
from common.stage import StageRecord, Upstream
from evaluate import PROTOCOL_MODULES
from evaluate.configs import EvalConfig
from evaluate.session import Protocol, eval_run_directory

_MODULES = [importlib.import_module(f"evaluate.{name}") for name in PROTOCOL_MODULES]
PROTOCOLS: dict[str, Protocol] = {module.PROTOCOL.name: module.PROTOCOL for module in _MODULES}
MAINS: dict[str, Callable[[EvalConfig], dict]] = {module.PROTOCOL.name: module.main for module in _MODULES}


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def build_eval_config(protocol_name: str, preset_name: str, spec: EncoderSpec, data: DataConfig,
                      source: SourceConfig) -> EvalConfig:
    """The preset of a protocol for an encoder of architecture `spec` evaluated on `data`."""
    chosen = protocol(protocol_name)
    preset_name = preset_name or chosen.presets[0]
    if preset_name not in chosen.presets:
        raise ConfigError(f"unknown {protocol_name} preset {preset_name!r}; choose one of {', '.join(chosen.presets)}")
    config = EvalConfig(protocol=protocol_name, source=source, data=data, image_size=spec.image_size,
                        preset=preset_name,
                        run=RunConfig(name=f"{protocol_name}-{preset_name}", output_root="", log_every_steps=50))
    return chosen.configure(config, preset_name, spec)


def resolve_eval_config(protocol_name: str, preset_name: str = "", run_dir: str = "", encoder_file: str = "",
                        overrides: Sequence[str] = (), encoder_record: dict | None = None) -> EvalConfig:
    """The config of a protocol for an encoder: data and input size from its run's encoder record.

    `encoder_record` stands in for `<run_dir>/encoder.json` when the run has not been written yet, as
    when a launcher plans a whole graph before the pretraining job starts.
    """
    source = SourceConfig(run_dir=str(run_dir or ""), encoder_file=str(encoder_file or ""))
    source.check()
    if run_dir:
        record = encoder_record or read_encoder_record(Path(run_dir))
        spec, data = record_spec(record), DataConfig(**record["data"])
    else:
        spec, data = load_encoder_file(Path(encoder_file)).spec, DataConfig()
    return apply_overrides(build_eval_config(protocol_name, preset_name, spec, data, source), overrides)


def _stage(chosen: Protocol) -> StageRecord:
    def resolve(preset: str, overrides: Sequence[str], upstream: Upstream | None) -> EvalConfig:
        return resolve_eval_config(chosen.name, preset, str(upstream.run_dir), overrides=overrides,
                                   encoder_record=upstream.encoder)

    def run_directory(config: EvalConfig) -> Path:
        source = config.source
        return eval_run_directory(config, planned_source(source.run_dir, source.encoder_file, source.encoder), chosen).path

    return StageRecord(chosen.name, MAINS[chosen.name], resolve, run_directory, chosen.headline,
                       upstream=("pretrain",), presets=chosen.presets, hours=chosen.hours)


STAGES = tuple(_stage(chosen) for chosen in PROTOCOLS.values())
