"""`python -m evaluate {knn,linear,finetune} --from RUN_DIR [--preset NAME] key=value ...`

Also `python -m evaluate convert ...` (import published checkpoints) and
`python -m evaluate export --from RUN_DIR OUT.safetensors` (our encoder as a timm-loadable file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from common.config import ConfigError, apply_overrides, load_yaml
from common.datasets import DataConfig
from evaluate.configs import PRESETS, build_eval_config
from evaluate.encoder import EncoderSpec, SourceConfig, load_encoder_file


def resolve(protocol: str, run_dir: str, encoder_file: str, preset_name: str, overrides: list[str]):
    """Eval config for an encoder: data and input size from the pretraining run when there is one."""
    from pretrain.configs import PretrainConfig

    source = SourceConfig(run_dir=run_dir or "", encoder_file=encoder_file or "")
    source.check()
    if run_dir:
        pretrain_config = load_yaml(Path(run_dir) / "config.yaml", PretrainConfig)
        model = pretrain_config.model
        spec = EncoderSpec(model.arch, model.patch_size, model.image_size, model.num_heads)
        data = pretrain_config.data
    else:
        spec = load_encoder_file(Path(encoder_file)).spec
        data = DataConfig()
    return apply_overrides(build_eval_config(protocol, preset_name, spec, data, source), overrides)


def run_protocol(protocol: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m evaluate {protocol}")
    parser.add_argument("--from", dest="run_dir", help="pretraining run directory")
    parser.add_argument("--encoder-file", help="encoder file written by `python -m evaluate convert/export`")
    parser.add_argument("--preset", default="", help=f"one of {', '.join(PRESETS[protocol])}")
    parser.add_argument("--print-config", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    arguments = parser.parse_args(argv)
    try:
        config = resolve(protocol, arguments.run_dir, arguments.encoder_file, arguments.preset, arguments.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if arguments.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return
    from evaluate import finetune, knn, linear

    {"knn": knn.main, "linear": linear.main, "finetune": finetune.main}[protocol](config)


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("knn", "linear", "finetune", "convert", "export")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m evaluate {{{','.join(commands)}}} ... (see --help of each)", file=sys.stderr)
        raise SystemExit(2)
    command, rest = argv[0], argv[1:]
    if command in ("convert", "export"):
        from evaluate import convert

        convert.cli(command, rest)
    else:
        run_protocol(command, rest)


if __name__ == "__main__":
    cli()
