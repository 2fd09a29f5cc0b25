"""`python -m pretrain --preset NAME key=value ...` (under torchrun for several GPUs)."""
from __future__ import annotations

import sys

from common.cli import preset_parser, resolve_config
from pretrain.configs import PRESETS, preset
from pretrain.train import NonFiniteLossError, TrainingAborted, main


def cli() -> None:
    parser = preset_parser("python -m pretrain", "PatchMix contrastive pretraining.")
    config = resolve_config(parser.parse_args(), PRESETS, preset, default_preset="debug_cpu")
    if config is None:
        return
    try:
        main(config)
    except (NonFiniteLossError, TrainingAborted, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    cli()
