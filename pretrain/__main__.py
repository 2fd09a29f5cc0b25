"""`python -m pretrain --preset NAME key=value ...` (under torchrun for several GPUs)."""
from __future__ import annotations

from common.cli import preset_parser, resolve_config, run_stage


def cli() -> None:
    parser = preset_parser("python -m pretrain", "PatchMix contrastive pretraining: one run of a preset, "
                           "resumed from its run directory when it exists.")
    arguments = parser.parse_args()
    # The stage (and torch) is imported once the arguments are parsed: `--help` answers at once.
    from pretrain.configs import PRESETS, preset, preset_summary
    from pretrain.train import main

    config = resolve_config(arguments, PRESETS, preset, default_preset="debug_cpu", summary=preset_summary)
    if config is not None:
        run_stage(main, config)


if __name__ == "__main__":
    cli()
