"""What every method's presets share: flavours, architecture names, the datasets' data sections and
the Fashion-MNIST scale-down rules. Each method's presets (in its own file) derive from these; no
method is named here.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from common.datasets import DataConfig
from pretrain.shared_config import PretrainConfig

# `paper`: the paper's description; `official`: the published code (recipes.md, docs/fidelity.md).
FLAVOURS = ("paper", "official")

ARCHES = {"vit_t": "vit_tiny", "vit_s": "vit_small", "vit_b": "vit_base"}


def with_sections(config: PretrainConfig, **sections) -> PretrainConfig:
    """Copy of `config` with fields of sections replaced: with_sections(c, mix={"num_mixed": 3})."""
    changes = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return dataclasses.replace(config, **changes)


def with_point(config: PretrainConfig, point: Mapping[str, object]) -> PretrainConfig:
    """Copy of `config` with dotted keys set: with_point(c, {"optim.base_lr": 5e-3}) (a tuning's point)."""
    sections: dict[str, dict[str, object]] = {}
    for key, value in point.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return with_sections(config, **sections)


def at_tuned_point(config: PretrainConfig, points: Mapping[str, Mapping[str, object]], scale: str,
                   tuned: bool = True) -> PretrainConfig:
    """`config` at the point `make tune` chose for `scale` (a method file's TUNED_POINTS; a scale not
    listed, or `tuned` False, keeps `config`)."""
    return with_point(config, points.get(scale, {})) if tuned else config


def imagenet_data() -> DataConfig:
    return DataConfig(dataset="imagenet", root="data/imagenet", num_workers=10)


def cifar_data(dataset: str) -> DataConfig:
    return DataConfig(dataset=dataset, root="data/cifar", num_workers=8)


# The two Fashion-MNIST scales of the ablation study (docs/results/fashion-mnist/STUDY.md has the
# probes that chose the cpu one). Every method's preset of a scale is its CIFAR ViT-S/2 800-epoch
# recipe scaled down by `scaled_to_fashion_mnist`; its learning rate is the recipe's times `lr_factor`
# (the cpu scale's 1e-2 over the CIFAR ViT-S recipe's 5e-4).
FASHION_MNIST_SCALES = {
    # Tables 3, 5-7 and Figure 4 with 3 seeds on 2 CPU cores, three runs at a time (make study), one
    # intra-op thread each. Batch 32: four times the updates of batch 128 for the same images, at about
    # the same cost per image on the CPU.
    "cpu": {"arch": "vit_debug", "train_subset": 4096, "test_subset": 2000, "epochs": 20, "batch_size": 32,
            "lr_factor": 20, "hidden": 256, "output": 64, "device": "cpu", "precision": "fp32", "compile": False,
            "workers": 1, "cpu_threads": 1, "checkpoint_every_steps": 256, "log_every_steps": 32},
    # all 60,000 images; a few minutes per run on one GPU (lr 3e-3 for the 5e-4 recipes)
    "gpu": {"arch": "vit_mini", "train_subset": 0, "test_subset": 0, "epochs": 100, "batch_size": 512,
            "lr_factor": 6, "hidden": 1024, "output": 128, "device": "auto", "precision": None, "compile": True,
            "workers": 8, "cpu_threads": 0, "checkpoint_every_steps": 64, "log_every_steps": 8},
}


def scaled_learning_rate(recipe_lr: float, scale: str) -> float:
    """A recipe's base learning rate at a Fashion-MNIST scale (10 significant digits: 5e-4 x 20 = 1e-2)."""
    return float(f"{recipe_lr * FASHION_MNIST_SCALES[scale]['lr_factor']:.10g}")


def scaled_to_fashion_mnist(config: PretrainConfig, scale: str, run_name: str) -> PretrainConfig:
    """A method's CIFAR ViT-S/2 800-epoch recipe at a Fashion-MNIST scale.

    Changed: images 32 -> 28 px (grey, repeated to 3 channels) with patch 2 -> 4 (7 x 7 tokens);
    ViT-S -> vit_debug (cpu scale) or vit_mini (gpu scale) with narrower projector and predictor;
    800 -> 20 or 100 epochs, warmup kept at 1/8 of them (CIFAR: 100 of 800); batch 512 -> 32 (cpu;
    4,096 training images) or 512 (gpu; all 60,000); the learning rate times the scale's factor and EMA
    momentum at most 0.99, which the short schedules need; no drop path; cpu: fp32 on the CPU with one
    intra-op thread, no compile. Kept: everything of the method's own (its section, loss terms and
    weights, crop scale, weight-decay schedule, momentum-update granularity) and (gpu scale) the
    recipe's precision.
    """
    scaled = FASHION_MNIST_SCALES[scale]
    run = {"name": run_name, "device": scaled["device"], "checkpoint_every_steps": scaled["checkpoint_every_steps"],
           "log_every_steps": scaled["log_every_steps"], "cpu_threads": scaled["cpu_threads"]}
    if scaled["precision"]:
        run["precision"] = scaled["precision"]
    return with_sections(
        config,
        model={"arch": scaled["arch"], "patch_size": 4, "image_size": 28, "num_heads": 0, "drop_path_rate": 0.0,
               "projector_hidden_dim": scaled["hidden"], "predictor_hidden_dim": scaled["hidden"],
               "output_dim": scaled["output"], "compile": scaled["compile"]},
        data={"dataset": "fashion_mnist", "root": "data/fashion-mnist", "num_workers": scaled["workers"],
              "train_subset": scaled["train_subset"], "test_subset": scaled["test_subset"]},
        optim={"epochs": scaled["epochs"], "warmup_epochs": max(1, scaled["epochs"] // 8),
               "batch_size": scaled["batch_size"], "base_lr": scaled_learning_rate(config.optim.base_lr, scale),
               "momentum": min(config.optim.momentum, 0.99)},
        run=run,
    )
