"""`python -m transfer --config vitdet_100ep --from RUN_DIR [key=value ...]`

key=value sets TransferConfig fields (coco_root=/data/coco, num_heads=12, run.output_root=...);
keys under train., model., dataloader., optimizer. or lr_multiplier. go to detectron2's LazyConfig
(train.max_iter=1000 dataloader.train.total_batch_size=16).
"""
from __future__ import annotations

import argparse
import sys

from common.config import ConfigError, apply_overrides
from common.encoder import SourceConfig
from transfer import require_detectron2
from transfer.configs import CONFIGS
from transfer.train import TransferConfig, main as train

DETECTRON2_SECTIONS = ("train.", "model.", "dataloader.", "optimizer.", "lr_multiplier.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transfer", description="COCO Mask R-CNN with a pretrained ViT.")
    parser.add_argument("--config", default="vitdet_100ep", choices=sorted(CONFIGS))
    parser.add_argument("--from", dest="run_dir", default="", help="pretraining run directory")
    parser.add_argument("--encoder-file", default="", help="encoder file from `python -m evaluate convert/export`")
    parser.add_argument("--encoder", default="auto", choices=("auto", "momentum", "base"))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    arguments = parser.parse_args(argv)
    require_detectron2()

    detectron2_overrides = [o for o in arguments.overrides if o.startswith(DETECTRON2_SECTIONS)]
    ours = [o for o in arguments.overrides if not o.startswith(DETECTRON2_SECTIONS)]
    try:
        config = TransferConfig(config=arguments.config, overrides=detectron2_overrides,
                                source=SourceConfig(run_dir=arguments.run_dir, encoder_file=arguments.encoder_file,
                                                    encoder=arguments.encoder))
        config = apply_overrides(config, ours)
        train(config)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
