"""Command-line plumbing shared by the stages: `--preset NAME key=value ...`."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from omegaconf import OmegaConf

from common.checkpoint import DiskWriteError
from common.config import ConfigError, apply_overrides
from common.health import NonFiniteLossError, TrainingAborted
from common.rundir import RunDirectoryBusy

# Exit statuses: 2 = the input was refused before any work (config, preset, paths); 3 = the run failed
# or stopped (diverged, over a budget, disk full, run directory busy, unreadable data or weights).
EXIT_BAD_INPUT, EXIT_RUN_FAILED = 2, 3
RUN_FAILURES = (NonFiniteLossError, TrainingAborted, FloatingPointError, RunDirectoryBusy, DiskWriteError,
                FileNotFoundError, ValueError)


def run_stage(main: Callable[[Any], Any], config: Any) -> Any:
    """Run a stage's main; a known failure reaches the user as one `error:` line and an exit status."""
    try:
        return main(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except RUN_FAILURES as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_RUN_FAILED) from None


def add_run_flags(parser: argparse.ArgumentParser, resume: bool = False) -> None:
    """Flags every stage's command line shares (turned into run.* overrides by `run_flag_overrides`)."""
    parser.add_argument("--wait", action="store_true",
                        help="if another process owns the run directory, wait for it instead of exiting")
    if resume:
        parser.add_argument("--resume-from", metavar="RUN_DIR", default="",
                            help="start a new run from another run's newest checkpoint (e.g. after a NaN "
                                 "stop, with a lower optim.base_lr)")


def run_flag_overrides(arguments: argparse.Namespace) -> list[str]:
    overrides = ["run.wait_for_lock=true"] if getattr(arguments, "wait", False) else []
    if getattr(arguments, "resume_from", ""):
        overrides.append(f"run.resume_from={arguments.resume_from}")
    return overrides


def preset_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", help="named preset to start from (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without running")
    add_run_flags(parser, resume=True)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.epochs=100 data.root=/datasets/imagenet")
    return parser


def resolve_config(arguments: argparse.Namespace, presets: dict[str, Any],
                   build_preset: Callable[[str], Any], default_preset: str) -> Any | None:
    """Handle --list-presets / --print-config; otherwise return the preset with overrides applied.

    Exits with status 2 and the error's message (naming the field) on a bad preset or override.
    """
    if arguments.list_presets:
        print("\n".join(sorted(presets)))
        return None
    try:
        config = apply_overrides(build_preset(arguments.preset or default_preset),
                                 [*arguments.overrides, *run_flag_overrides(arguments)])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if arguments.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return None
    return config
