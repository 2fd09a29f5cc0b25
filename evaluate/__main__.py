"""`python -m evaluate PROTOCOL --from RUN_DIR [--preset NAME] key=value ...` for every protocol of
evaluate/__init__.PROTOCOL_MODULES; also `python -m evaluate convert ...` (import published
checkpoints) and `python -m evaluate export --from RUN_DIR OUT` (our encoder as an encoder file or a
timm folder). The protocols (and torch) are imported once the command is known: `--help` answers at once.
"""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from common.cli import EXIT_BAD_INPUT, EXIT_HELP, add_run_flags, run_flag_overrides, run_stage
from common.config import ConfigError
from evaluate import PROTOCOL_MODULES

COMMANDS = {**{name: "evaluation protocol (--help for its presets and flags)" for name in PROTOCOL_MODULES},
            "convert": "import a published PatchMix / MoCo v3 / DINO / timm checkpoint as an encoder file",
            "export": "write a run's encoder as an encoder file or a folder timm.create_model loads"}
USAGE = ("usage: python -m evaluate COMMAND ...\n\ncommands:\n"
         + "".join(f"  {name:18} {what}\n" for name, what in COMMANDS.items())
         + f"\ne.g. python -m evaluate knn --from runs/<run>   ({EXIT_HELP})")


def run_protocol(protocol: str, argv: list[str]) -> None:
    from evaluate.protocols import MAINS, PROTOCOLS, resolve_eval_config  # imports torch: after the command is known

    parser = argparse.ArgumentParser(prog=f"python -m evaluate {protocol}", epilog=EXIT_HELP)
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
    run_stage(MAINS[protocol], config)


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    command, rest = argv[0], argv[1:]
    if command in ("convert", "export"):
        from evaluate import convert  # imports torch: after the command is known

        convert.cli(command, rest)
    else:
        run_protocol(command, rest)


if __name__ == "__main__":
    cli()
