"""Entry point for multi-process tests, launched as `python -m torch.distributed.run ... this file`.

    --mode train   run pretrain.train.main on the debug preset with the given overrides
                   (--nan-at-step S --nan-rank R injects a NaN loss on one rank)
    --mode step    one PatchMix loss + backward under DDP on fixed inputs; saves loss and gradients
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

from common import dist  # noqa: E402
from common.config import apply_overrides  # noqa: E402
from pretrain import train  # noqa: E402
from pretrain.configs import preset  # noqa: E402
from pretrain.methods import patchmix  # noqa: E402


def fixed_views(global_batch: int, size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(global_batch, 3, size, size, generator=generator) for _ in range(2)]


def one_step(config, output: Path) -> None:
    from pretrain.model import PatchMixModel

    dist.init_distributed("cpu")
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()  # float64: the comparison is about semantics, not rounding
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = config.optim.batch_size // world
    views = [v[rank * batch:(rank + 1) * batch].double()
             for v in fixed_views(config.optim.batch_size, config.model.image_size)]
    loss, _ = patchmix.patchmix_loss(ddp, model, views, config, torch.Generator().manual_seed(100 + rank), rank, world)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads}, output / f"rank{rank}.pt")
    dist.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("train", "step"), default="train")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--nan-at-step", type=int, default=-1)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    config = apply_overrides(preset("debug_cpu"), [f"run.output_root={arguments.output}", "run.progress=false",
                                                   *arguments.overrides])
    if arguments.mode == "step":
        one_step(config, arguments.output)
        return
    if arguments.nan_at_step >= 0:
        original = patchmix.patchmix_loss
        calls = {"count": 0}

        def poisoned(*args, **kwargs):
            loss, metrics = original(*args, **kwargs)
            calls["count"] += 1
            if calls["count"] == arguments.nan_at_step and int(os.environ.get("RANK", 0)) == arguments.nan_rank:
                loss = loss * float("nan")
            return loss, metrics
        patchmix.patchmix_loss = poisoned
    try:
        train.main(config)
    except train.NonFiniteLossError as error:
        # A file, not stdout: torchrun stops relaying output once the first worker exits.
        (arguments.output / f"rank{dist.rank()}.stopped").write_text(str(error))
        raise SystemExit(3)
    finally:
        dist.destroy()


if __name__ == "__main__":
    main()
