"""Command-line plumbing shared by the stages: `--preset NAME key=value ...`."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from omegaconf import OmegaConf

from common.config import ConfigError, apply_overrides


def preset_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", help="named preset to start from (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without running")
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
        config = apply_overrides(build_preset(arguments.preset or default_preset), arguments.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if arguments.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return None
    return config
