"""`python -m pretrain --preset NAME key=value ...` (under torchrun for several GPUs)."""
from __future__ import annotations

from common.cli import preset_parser, resolve_config, run_stage
from pretrain.configs import PRESETS, preset
from pretrain.train import main


def cli() -> None:
    parser = preset_parser("python -m pretrain", "PatchMix contrastive pretraining.")
    config = resolve_config(parser.parse_args(), PRESETS, preset, default_preset="debug_cpu")
    if config is None:
        return
    run_stage(main, config)


if __name__ == "__main__":
    cli()
