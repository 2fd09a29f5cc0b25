"""`python -m evaluate {knn,linear,finetune,similarity} --from RUN_DIR [--preset NAME] key=value ...`

Also `python -m evaluate convert ...` (import published checkpoints) and
`python -m evaluate export --from RUN_DIR OUT.safetensors` (our encoder as a timm-loadable file).
"""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from common.cli import EXIT_BAD_INPUT, add_run_flags, run_flag_overrides, run_stage
from common.config import ConfigError
from evaluate import convert
from evaluate.protocols import PROTOCOLS, resolve_eval_config
from evaluate.session import protocol_main


def run_protocol(protocol: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m evaluate {protocol}")
    parser.add_argument("--from", dest="run_dir", help="pretraining run directory")
    parser.add_argument("--encoder-file", help="encoder file written by `python -m evaluate convert/export`")
    parser.add_argument("--preset", default="", help=f"one of {', '.join(PROTOCOLS[protocol].presets)}")
    parser.add_argument("--print-config", action="store_true")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="evaluate an unfinished pretraining run's newest checkpoint without the warning")
    add_run_flags(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    arguments = parser.parse_args(argv)
    overrides = [*arguments.overrides, *run_flag_overrides(arguments)]
    if arguments.allow_incomplete:
        overrides.append("source.allow_incomplete=true")
    try:
        config = resolve_eval_config(protocol, arguments.preset, arguments.run_dir, arguments.encoder_file,
                                     overrides)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    if arguments.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return
    run_stage(protocol_main(PROTOCOLS[protocol]), config)


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (*PROTOCOLS, "convert", "export")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m evaluate {{{','.join(commands)}}} ... (see --help of each)", file=sys.stderr)
        raise SystemExit(2)
    command, rest = argv[0], argv[1:]
    if command in ("convert", "export"):
        convert.cli(command, rest)
    else:
        run_protocol(command, rest)


if __name__ == "__main__":
    cli()
