"""Command-line plumbing shared by the stages: `--preset NAME key=value ...`."""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Callable

from omegaconf import OmegaConf

from common.config import ConfigError, apply_overrides
from common.config_help import describe
from common.errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_STOPPED, DiskWriteError, NonFiniteLossError,
                           RunDirectoryBusy, TrainingAborted)

# What each failure reaches the user as (common/errors.py): one `error:` line and an exit status.
EXIT_STATUS = ((ConfigError, EXIT_BAD_INPUT), (RunDirectoryBusy, EXIT_BAD_INPUT),
               (FileNotFoundError, EXIT_BAD_INPUT), (NonFiniteLossError, EXIT_DIVERGED),
               (FloatingPointError, EXIT_DIVERGED), (TrainingAborted, EXIT_STOPPED), (DiskWriteError, EXIT_STOPPED),
               (ValueError, EXIT_BAD_INPUT))
RUN_FAILURES = tuple(kind for kind, _ in EXIT_STATUS)


def exit_status(error: BaseException) -> int:
    return next(status for kind, status in EXIT_STATUS if isinstance(error, kind))


# How torch's DataLoader re-raises a worker's error: same type, the worker's whole traceback as message.
LOADER_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def error_message(error: BaseException) -> str:
    """The failure's message; for one raised in a loader worker, the worker's own message (the last line
    of the traceback torch puts in its place, after the exception's name)."""
    message = str(error)
    if LOADER_WORKER_ERROR.match(message):
        last_line = message.rstrip().splitlines()[-1]
        return last_line.split(": ", 1)[-1]
    return message


# A whole number as people write it: digits only, no sign, point, exponent, separator or leading zero.
PLAIN_WHOLE_NUMBER = re.compile(r"0|[1-9][0-9]*")
# numpy seeds its generator with 32 bits (common/runtime.py takes the seed modulo 2**32): a larger seed
# would repeat the draws of a smaller one.
MAX_SEED = 2**32 - 1


def parse_items(text: str, option: str, what: str) -> tuple[str, ...]:
    """The items of a comma-separated option value ("a, b" -> ("a", "b"); whitespace also separates).
    An empty value, an empty item (a stray comma) or an item given twice is refused: ConfigError naming
    the option (each would otherwise be dropped or run twice without a word)."""
    written = text.strip()
    if not written:
        raise ConfigError(f"{option} is empty: name at least one {what} (comma-separated), or leave {option} out")
    items = tuple(re.split(r"\s*,\s*|\s+", written))
    if "" in items:
        raise ConfigError(f"{option} {written}: an empty {what} between commas (a stray comma?); "
                          f"write {','.join(item for item in items if item)}")
    repeated = next((item for index, item in enumerate(items) if item in items[:index]), None)
    if repeated is not None:
        raise ConfigError(f"{option} {written}: {what} {repeated} is given twice; name each {what} once")
    return items


def parse_whole_number(text: str, option: str, what: str = "value", minimum: int = 0) -> int:
    """`text` as a whole number >= `minimum`, written plainly. A leading zero is refused, not
    dropped: 012 would silently be 12 here while a shell or C reads it as octal 10, and a reader may
    have meant 0,12. Raises ConfigError naming `option`."""
    written = text.strip()
    if not PLAIN_WHOLE_NUMBER.fullmatch(written):
        if re.fullmatch(r"0[0-9]+", written):
            number = int(written)
            octal = f", a shell or C reads it as octal {int(written, 8)}" if set(written) <= set("01234567") else ""
            raise ConfigError(f"{option}: {what} {written} has a leading zero, which is ambiguous (here it would "
                              f"silently be {number}{octal}); write {number}")
        if re.fullmatch(r"-[0-9]+", written):
            raise ConfigError(f"{option}: {what} {written} is negative; it must be a whole number >= {minimum}")
        raise ConfigError(f"{option}: {what} {written!r} is not a whole number (digits only, e.g. {minimum})")
    number = int(written)
    if number < minimum:
        raise ConfigError(f"{option}: {what} {written} is too small; it must be >= {minimum}")
    return number


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """Comma-separated seeds, "0,1,2" -> (0, 1, 2), in the order given. A seed names runs (their stage
    keys and directories), so what would silently become another seed, or the same seed twice, is
    refused (`parse_items`, `parse_whole_number`): ConfigError naming the option."""
    items = parse_items(text, option, "seed")
    where = f"{option} {text.strip()}"
    seeds = tuple(parse_whole_number(item, where, "seed") for item in items)
    too_large = [seed for seed in seeds if seed > MAX_SEED]
    if too_large:
        raise ConfigError(f"{where}: seed {too_large[0]} is above {MAX_SEED}: numpy takes 32 bits of a seed, so "
                          f"it would repeat the draws of seed {too_large[0] % 2**32}")
    return seeds


def parse_positive_number(text: str, option: str) -> float:
    """A finite number > 0 (a time limit in hours): ConfigError naming the option otherwise."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{option}: {text.strip()!r} must be a number > 0, e.g. 24")
    return number


def run_stage(main: Callable[[Any], Any], config: Any) -> Any:
    """Run a stage's main; a known failure reaches the user as one `error:` line and its exit status."""
    try:
        return main(config)
    except RUN_FAILURES as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        raise SystemExit(exit_status(error)) from None


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


def preset_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or EXIT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="named preset to start from (see --list-presets)")
    parser.add_argument("--list-presets", nargs="*", metavar="WORD",
                        help="list the presets (table, model, epochs, flavour); WORDs filter, e.g. cifar10 s2")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML) and exit without running")
    parser.add_argument("--help-config", action="store_true",
                        help="every field with its type, value and meaning; * marks what the preset changes")
    add_run_flags(parser, resume=True)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.epochs=100 data.root=/datasets/imagenet")
    return parser


EXIT_HELP = (f"exit status: 0 done, {EXIT_BAD_INPUT} input refused before any work (config, preset, paths, "
             f"data, a run directory in use), {EXIT_DIVERGED} training diverged (non-finite loss), "
             f"{EXIT_STOPPED} run stopped otherwise (bad-image or fp16 budget, full disk)")


def list_presets(presets: dict[str, Any], words: list[str], summary: Callable[[str], str]) -> None:
    """Each preset whose name contains every word, with its one-line summary."""
    chosen = [name for name in sorted(presets) if all(word in name for word in words)]
    if not chosen:
        print(f"no preset contains {' and '.join(words)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    width = max(len(name) for name in chosen)
    for name in chosen:
        print(f"{name:{width}}  {summary(name)}")


def resolve_config(arguments: argparse.Namespace, presets: dict[str, Any], build_preset: Callable[[str], Any],
                   default_preset: str, summary: Callable[[str], str] = lambda name: "") -> Any | None:
    """Handle --list-presets / --print-config / --help-config; otherwise return the preset with
    overrides applied. Exits with status 2 and the error's message (naming the field) on a bad
    preset or override."""
    if arguments.list_presets is not None:
        list_presets(presets, arguments.list_presets, summary)
        return None
    try:
        config = apply_overrides(build_preset(arguments.preset or default_preset),
                                 [*arguments.overrides, *run_flag_overrides(arguments)])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    if arguments.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)))
        return None
    if arguments.help_config:
        print("\n".join(describe(config)))
        return None
    return config
