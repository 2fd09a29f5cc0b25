"""Pretraining config and named presets.

Every preset is a function deriving from one base per dataset family: one per pretraining run of
the paper's Tables 2, 3, 5 (PatchMix row), 6 (m = 1..4) and 7 (loss subsets), each in a `paper`
and an `official` flavour where the paper and the published code differ (recipes.md):

| difference                | paper                    | official (published code)              |
|---------------------------|--------------------------|----------------------------------------|
| mix number m              | 3                        | 2                                      |
| ViT-S heads               | 6 (Table 8)              | 12 (MoCo v3 convention)                |
| ImageNet views            | 2 x 224, crop 0.05-1     | 2 x 224 crop 0.35-1 + 8 x 96 crop 0.05-0.35 |
| ViT-T momentum encoder    | yes (0.996 -> 1)         | none (keys from the base encoder)      |
| momentum schedule         | updated every step       | updated once per epoch (a loop bug)    |
| o2o targets               | one-hot                  | label-smoothed 0.1 (mixer default)     |
| local-crop heads          | -                        | all local crops as one head batch      |
| 96 px position embedding  | -                        | DINO-style resampling                  |
| precision                 | bf16 on GPU              | fp16 autocast + GradScaler             |
The full list, with reasons, is docs/fidelity.md.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from common.config import ConfigError, added_field
from common.datasets import DataConfig, dataset_fingerprint
from common.encoder import encoder_prefixes
from common.rundir import RunDirectory
from common.runtime import NON_RESULT_FIELDS, RunConfig
from pretrain.augment import AugmentConfig
from pretrain.loss import LossConfig
from pretrain.methods import METHODS, method_named
from pretrain.methods.dino import DinoConfig
from pretrain.methods.sdmp import SdmpConfig
from pretrain.mixers import MixConfig
from pretrain.model import ModelConfig

FLAVOURS = ("paper", "official")


@dataclass
class OptimConfig:
    RANGES: ClassVar[dict[str, str]] = {"epochs": "[1, inf)", "warmup_epochs": "[0, inf)",
        "batch_size": "[1, inf)", "base_lr": "(0, inf)", "min_lr": "[0, inf)", "weight_decay": "[0, inf)",
        "weight_decay_end": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)", "momentum": "[0, 1]",
        "momentum_end": "[0, 1]", "max_steps": "[0, inf)"}
    epochs: int = 300  # pretraining epochs (schedules span them all)
    warmup_epochs: int = 10  # linear lr warmup from 0
    batch_size: int = 1024  # global, over all ranks; the lr rule uses it, so it is the same on 1 or 64 GPUs
    base_lr: float = 5e-4  # per 256 images: lr = base_lr * batch_size / 256
    min_lr: float = 1e-6  # the cosine schedule's final lr
    weight_decay: float = 0.04  # cosine per step to weight_decay_end; never on biases and 1-D params
    weight_decay_end: float = 0.4  # final weight decay of the cosine schedule
    beta1: float = 0.9  # AdamW betas (two fields: YAML has no tuples)
    beta2: float = 0.999  # AdamW beta2
    momentum: float = 0.996  # EMA coefficient, cosine to momentum_end
    momentum_end: float = 1.0  # final EMA coefficient
    momentum_update: str = "step"  # step | epoch (reproduces the published once-per-epoch update)
    max_steps: int = 0  # stop after this many steps (0 = all); schedules still span all epochs

    def check(self) -> None:
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.momentum_update not in ("step", "epoch"):
            raise ConfigError(f"momentum_update must be 'step' or 'epoch', got {self.momentum_update!r}")
        if self.momentum > self.momentum_end:
            raise ConfigError("need 0 <= momentum <= momentum_end <= 1")

    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256


@dataclass
class PretrainConfig:
    # The pretraining method (pretrain/methods/): patchmix (mix, loss sections) | dino (dino) | sdmp (sdmp)
    method: str = added_field("patchmix")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mix: MixConfig = field(default_factory=MixConfig)  # PatchMix only
    loss: LossConfig = field(default_factory=LossConfig)  # PatchMix only
    dino: DinoConfig = added_field(default_factory=DinoConfig)  # DINO only
    sdmp: SdmpConfig = added_field(default_factory=SdmpConfig)  # SDMP only
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="patchmix"))
    preset: str = ""  # the preset this config was derived from, recorded for reports

    def check(self) -> None:
        """Checks that span sections (each section checks its own fields first): the method exists,
        no other method's field is set, local crops only where the method uses them."""
        method = method_named(self.method)
        for other in METHODS.values():
            for section in set(other.sections) - set(method.sections):
                changed = _changed_fields(getattr(self, section), section)
                if changed:
                    raise ConfigError(f"{changed[0]} is a field of method {other.name}; this run's method is "
                                      f"{self.method} (set method={other.name}, or leave {section}.* at its defaults)")
        if self.augment.num_local_crops and not method.uses_local_crops:
            raise ConfigError(f"augment.num_local_crops={self.augment.num_local_crops}: method {self.method} has no "
                              "local crops (set augment.num_local_crops=0)")
        if self.augment.num_local_crops and self.augment.local_crop_size % self.model.patch_size:
            raise ConfigError(f"augment.local_crop_size {self.augment.local_crop_size} must be a "
                              f"multiple of model.patch_size {self.model.patch_size}")
        method.check(self)


def _changed_fields(section, name: str) -> list[str]:
    """Dotted names of the fields of a section that differ from the section's defaults."""
    default = type(section)()
    return [f"{name}.{spec.name}" for spec in dataclasses.fields(section)
            if getattr(section, spec.name) != getattr(default, spec.name)]


def _with(config: PretrainConfig, **sections) -> PretrainConfig:
    """Copy of `config` with fields of sections replaced: _with(c, mix={"num_mixed": 3})."""
    changes = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return dataclasses.replace(config, **changes)


ARCHES = {"vit_t": "vit_tiny", "vit_s": "vit_small", "vit_b": "vit_base"}


def imagenet(arch: str, epochs: int, flavour: str) -> PretrainConfig:
    """Table 2: ImageNet-1K, 224 px, patch 16, global batch 1024, warmup 10 epochs.

    Speed: compiled encoders, and JPEG decoding plus all of Table 10 on the device (the PIL pipeline
    delivers ~840 img/s on 16 cores, a third of one H200's step speed); `augment.gpu=false
    augment.gpu_decode=false` restores the PIL path."""
    official = flavour == "official"
    config = PretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224,
                          num_heads=6 if arch == "vit_s" and not official else 0, compile=True,
                          pos_embed_interpolation="dino" if official else "timm",
                          batch_local_heads=official),
        data=DataConfig(dataset="imagenet", root="data/imagenet", num_workers=10),
        augment=AugmentConfig(crop_scale_min=0.35 if official else 0.05,
                              num_local_crops=8 if official else 0,
                              gpu=True, gpu_decode=True, gpu_compile=True),
        mix=MixConfig(num_mixed=2 if official else 3),
        optim=OptimConfig(epochs=epochs, warmup_epochs=10, batch_size=1024,
                          base_lr=7.5e-4 if arch == "vit_b" else 5e-4,
                          momentum_update="epoch" if official else "step"),
    )
    return _published(config) if official else config


def cifar(dataset: str, arch: str, epochs: int, flavour: str) -> PretrainConfig:
    """Table 3: CIFAR-10/100, 32 px, patch 2, global batch 512, warmup 100 epochs (compiled encoders;
    the PIL pipeline, fast enough at 32 px)."""
    official = flavour == "official"
    tiny = arch == "vit_t"
    config = PretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=2, image_size=32,
                          num_heads=6 if arch == "vit_s" and not official else 0,
                          momentum_encoder=not (tiny and official), compile=True),
        data=DataConfig(dataset=dataset, root="data/cifar", num_workers=8),
        augment=AugmentConfig(crop_scale_min=0.1),
        mix=MixConfig(num_mixed=2 if official else 3),
        optim=OptimConfig(epochs=epochs, warmup_epochs=100, batch_size=512,
                          base_lr={"vit_t": 2e-3, "vit_s": 5e-4, "vit_b": 7.5e-4}[arch],
                          weight_decay=0.02 if tiny else 0.04, weight_decay_end=0.2 if tiny else 0.4,
                          momentum_update="epoch" if official else "step"),
    )
    return _published(config) if official else config


def _published(config: PretrainConfig) -> PretrainConfig:
    """What every official preset shares with the published code whatever the table: smoothed o2o
    targets (its mixer's default 0.1) and fp16 autocast with a GradScaler (whatever its flag says)."""
    return _with(config, loss={"origin_smoothing": 0.1}, run={"precision": "fp16"})


def dino_imagenet(arch: str, epochs: int) -> PretrainConfig:
    """DINO's published ImageNet recipes (facebookresearch/dino README): ViT-S/16 as its "full command"
    (teacher temperature 0.04 -> 0.07 over 30 epochs, norm_last_layer off), ViT-B/16 as its ViT-B command
    (main_dino.py's defaults); 16 GPUs x 64 = batch 1024, 2 x 224 px + 8 x 96 px crops, fp16. Its ViT-S
    has 6 heads. The device augmentation path of the PatchMix ImageNet presets (same transforms)."""
    small = arch == "vit_s"
    return PretrainConfig(
        method="dino",
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224, num_heads=6 if small else 0,
                          initialisation="dino", pos_embed_interpolation="dino", compile=True),
        data=DataConfig(dataset="imagenet", root="data/imagenet", num_workers=10),
        augment=AugmentConfig(crop_scale_min=0.4, num_local_crops=8, local_crop_scale_min=0.05,
                              local_crop_scale_max=0.4, gpu=True, gpu_decode=True, gpu_compile=True),
        dino=DinoConfig(norm_last_layer=not small, teacher_temp=0.07 if small else 0.04,
                        warmup_teacher_temp_epochs=30 if small else 0),
        optim=OptimConfig(epochs=epochs, warmup_epochs=10, batch_size=1024, base_lr=5e-4),
        run=RunConfig(name="dino", precision="fp16"),
    )


def dino_cifar(dataset: str, arch: str, epochs: int) -> PretrainConfig:
    """DINO's recipe at the CIFAR presets' size: 32 px, patch 2, batch 512 and the CIFAR schedule
    (warm-up 100 of 800 epochs) of the PatchMix rows; two 32 px global crops and no local crops (the
    paper's Table 3 "2x32"), at main_dino.py's recommended scale 0.14-1 without multi-crop; the
    ViT-S/16 README recipe's head and teacher settings (docs/fidelity.md)."""
    return PretrainConfig(
        method="dino",
        model=ModelConfig(arch=ARCHES[arch], patch_size=2, image_size=32, num_heads=6 if arch == "vit_s" else 0,
                          initialisation="dino", pos_embed_interpolation="dino", compile=True),
        data=DataConfig(dataset=dataset, root="data/cifar", num_workers=8),
        augment=AugmentConfig(crop_scale_min=0.14),
        dino=DinoConfig(norm_last_layer=False, teacher_temp=0.07, warmup_teacher_temp_epochs=30),
        optim=OptimConfig(epochs=epochs, warmup_epochs=100, batch_size=512, base_lr=5e-4),
        run=RunConfig(name="dino", precision="fp16"),
    )


def sdmp_imagenet(arch: str, epochs: int, flavour: str) -> PretrainConfig:
    """SDMP's published ImageNet command (OliverRensu/SDMP README, moco/): MoCo v3's ViT (12 heads,
    fixed sin-cos positions, frozen patch projection: --stop-grad-conv1, no drop path), AdamW lr 1.5e-4
    x batch / 256 with 40 warm-up epochs and a cosine to 0, weight decay 0.1 on every parameter,
    momentum 0.99 -> 1 (--moco-m-cos), tau 0.2, two 224 px views (crop 0.08-1, bilinear), fp16."""
    return PretrainConfig(
        method="sdmp",
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224, drop_path_rate=0.0,
                          position_embedding="sincos", freeze_patch_embedding=True, compile=True),
        data=DataConfig(dataset="imagenet", root="data/imagenet", num_workers=10),
        augment=AugmentConfig(crop_scale_min=0.08, crop_interpolation="bilinear", gpu=True, gpu_compile=True),
        sdmp=_sdmp_flavour(flavour),
        optim=OptimConfig(epochs=epochs, warmup_epochs=40, batch_size=1024, base_lr=1.5e-4, min_lr=0.0,
                          weight_decay=0.1, weight_decay_end=0.1, momentum=0.99),
        run=RunConfig(name="sdmp", precision="fp16"),
    )


def sdmp_cifar(dataset: str, arch: str, epochs: int, flavour: str) -> PretrainConfig:
    """SDMP's recipe at the CIFAR presets' size: 32 px, patch 2, batch 512 and the CIFAR schedule
    (warm-up 100 of 800 epochs); everything else as its ImageNet command."""
    return _with(sdmp_imagenet(arch, epochs, flavour),
                 model={"patch_size": 2, "image_size": 32},
                 data={"dataset": dataset, "root": "data/cifar", "num_workers": 8},
                 augment={"gpu": False, "gpu_compile": False},
                 optim={"warmup_epochs": 100, "batch_size": 512})


def _sdmp_flavour(flavour: str) -> SdmpConfig:
    """official: the newest release (no pasting, the mixture-likelihood loss); paper: pasting and the
    weighted cross-entropy of the paper and the first release."""
    if flavour == "official":
        return SdmpConfig(paste_partner=False, mix_loss="mixture_likelihood")
    return SdmpConfig(paste_partner=True, mix_loss="weighted_cross_entropy")


# Table 7 rows: which loss terms are on (published weights 1, 1/2, 1/2).
LOSS_SUBSETS = {
    "o2o": (1.0, 0.0, 0.0),
    "m2o": (0.0, 0.5, 0.0),
    "m2m": (0.0, 0.0, 0.5),
    "o2o+m2o": (1.0, 0.5, 0.0),
    "o2o+m2o+m2m": (1.0, 0.5, 0.5),
}


# Table 5 rows besides PatchMix and the Baseline (m = 1): other mixes in the same framework and loss.
TABLE5_MIXERS = {"cutmix_mixup": "CutMix+Mixup", "regionswap": "RegionSwap", "resizemix": "ResizeMix"}


def debug_cpu() -> PretrainConfig:
    """A tiny ViT on generated 32 px images: seconds per epoch on a laptop CPU (tests, smoke runs)."""
    return PretrainConfig(
        model=ModelConfig(arch="vit_debug", patch_size=4, image_size=32, drop_path_rate=0.1,
                          projector_hidden_dim=128, predictor_hidden_dim=128, output_dim=32),
        data=DataConfig(dataset="synthetic", num_workers=0, synthetic_train_size=256,
                        synthetic_test_size=64, synthetic_image_size=32),
        augment=AugmentConfig(crop_scale_min=0.2),
        mix=MixConfig(num_mixed=2),
        optim=OptimConfig(epochs=4, warmup_epochs=1, batch_size=32, base_lr=2e-3,
                          weight_decay=0.02, weight_decay_end=0.2),
        run=RunConfig(name="debug", device="cpu", checkpoint_every_steps=8, log_every_steps=2),
    )


def demo_fashion_mnist(num_mixed: int = 2) -> PretrainConfig:
    """A short CPU pretraining on real images (Fashion-MNIST, 28 px, patch 4): the `make demo` run."""
    return PretrainConfig(
        model=ModelConfig(arch="vit_debug", patch_size=4, image_size=28, drop_path_rate=0.0,
                          projector_hidden_dim=256, predictor_hidden_dim=256, output_dim=64),
        data=DataConfig(dataset="fashion_mnist", root="data/fashion-mnist", num_workers=1,
                        train_subset=6144, test_subset=2000),
        augment=AugmentConfig(crop_scale_min=0.3),
        mix=MixConfig(num_mixed=num_mixed),
        optim=OptimConfig(epochs=8, warmup_epochs=1, batch_size=128, base_lr=3e-3,
                          weight_decay=0.02, weight_decay_end=0.1, momentum=0.99),
        run=RunConfig(name=f"demo-m{num_mixed}", device="cpu", checkpoint_every_steps=64,
                      log_every_steps=8),
    )


# The two Fashion-MNIST scales of the ablation study (issue: evidence on real data). The cpu scale is
# where MoCo v3 (m = 1) learns clearly: kNN +10.3 over its random initialisation, three seeds
# (docs/results/fashion-mnist/STUDY.md has the probes that chose it).
FASHION_MNIST_SCALES = {
    # Tables 3, 5-7 and Figure 4 with 3 seeds on 2 CPU cores, three runs at a time (make study), one
    # intra-op thread each. Batch 32: four times the updates of batch 128 for the same images, at about
    # the same cost per image on the CPU.
    "cpu": {"arch": "vit_debug", "train_subset": 4096, "test_subset": 2000, "epochs": 20, "batch_size": 32,
            "base_lr": 1e-2, "hidden": 256, "output": 64, "device": "cpu", "precision": "fp32", "compile": False,
            "workers": 1, "cpu_threads": 1, "checkpoint_every_steps": 256, "log_every_steps": 32},
    # all 60,000 images; a few minutes per run on one GPU
    "gpu": {"arch": "vit_mini", "train_subset": 0, "test_subset": 0, "epochs": 100, "batch_size": 512,
            "base_lr": 3e-3, "hidden": 1024, "output": 128, "device": "auto", "precision": None, "compile": True,
            "workers": 8, "cpu_threads": 0, "checkpoint_every_steps": 64, "log_every_steps": 8},
}


def fashion_mnist(scale: str, flavour: str) -> PretrainConfig:
    """The CIFAR ViT-S/2 800-epoch preset of `flavour`, scaled down to Fashion-MNIST for the ablations.

    Changed: images 32 -> 28 px (grey, repeated to 3 channels) with patch 2 -> 4 (7 x 7 tokens);
    ViT-S -> vit_debug (cpu scale) or vit_mini (gpu scale) with narrower projector and predictor;
    800 -> 20 or 100 epochs, warmup kept at 1/8 of them (CIFAR: 100 of 800); batch 512 -> 32 (cpu;
    4,096 training images) or 512 (gpu; all 60,000); lr 1e-2 (cpu) or 3e-3 (gpu) and EMA momentum 0.99,
    which the short schedules need; no drop path; cpu: fp32 on the CPU with one intra-op thread, no
    compile. Kept: the mixing (method,
    m, patch-level mixing at the model's patch), every loss term and weight, target smoothing, crop
    scale, weight-decay schedule, momentum-update granularity, and (gpu scale) the flavour's precision.
    """
    scaled = FASHION_MNIST_SCALES[scale]
    base = cifar("cifar10", "vit_s", 800, flavour)
    run = {"name": f"fashion_mnist_{scale}_{flavour}", "device": scaled["device"],
           "checkpoint_every_steps": scaled["checkpoint_every_steps"], "log_every_steps": scaled["log_every_steps"],
           "cpu_threads": scaled["cpu_threads"]}
    if scaled["precision"]:
        run["precision"] = scaled["precision"]
    return _with(
        base,
        model={"arch": scaled["arch"], "patch_size": 4, "image_size": 28, "num_heads": 0, "drop_path_rate": 0.0,
               "projector_hidden_dim": scaled["hidden"], "predictor_hidden_dim": scaled["hidden"],
               "output_dim": scaled["output"], "compile": scaled["compile"]},
        data={"dataset": "fashion_mnist", "root": "data/fashion-mnist", "num_workers": scaled["workers"],
              "train_subset": scaled["train_subset"], "test_subset": scaled["test_subset"]},
        optim={"epochs": scaled["epochs"], "warmup_epochs": max(1, scaled["epochs"] // 8),
               "batch_size": scaled["batch_size"], "base_lr": scaled["base_lr"], "momentum": 0.99},
        run=run,
    )


def fashion_mnist_baseline(method: str, scale: str, flavour: str) -> PretrainConfig:
    """DINO or SDMP at a Fashion-MNIST scale: the data, model, epochs, batch and precision of the PatchMix
    preset of that scale, and each method's own recipe scaled down by the same rules (docs/fidelity.md):
    its learning rate times PatchMix's factor (5e-4 -> 1e-2 at the cpu scale: x 20; -> 3e-3 at the gpu
    scale: x 6), EMA momentum at most 0.99, its crop
    scale, initialisation and stem; DINO's head narrowed like the PatchMix heads (hidden and bottleneck
    to the projector's width and output, 4,096 prototypes) and its teacher-temperature warm-up scaled
    with the epochs (30 of 800)."""
    patchmix_scaled = fashion_mnist(scale, "official")
    epochs = patchmix_scaled.optim.epochs
    lr_factor = patchmix_scaled.optim.base_lr / cifar("cifar10", "vit_s", 800, "official").optim.base_lr
    published = dino_cifar("cifar10", "vit_s", 800) if method == "dino" else sdmp_cifar("cifar10", "vit_s", 800, flavour)
    head = patchmix_scaled.model
    method_sections = {"dino": {"dino": dataclasses.replace(
        published.dino, hidden_dim=head.projector_hidden_dim, bottleneck_dim=head.output_dim, out_dim=4096,
        warmup_teacher_temp_epochs=round(epochs * 30 / 800))}, "sdmp": {"sdmp": published.sdmp}}[method]
    config = dataclasses.replace(patchmix_scaled, method=method, mix=MixConfig(), loss=LossConfig(), **method_sections)
    return _with(
        config,
        model={"initialisation": published.model.initialisation,
               "position_embedding": published.model.position_embedding,
               "freeze_patch_embedding": published.model.freeze_patch_embedding},
        augment={"crop_scale_min": published.augment.crop_scale_min,
                 "crop_interpolation": published.augment.crop_interpolation},
        optim={"base_lr": float(f"{published.optim.base_lr * lr_factor:.10g}"), "min_lr": published.optim.min_lr,
               "weight_decay": published.optim.weight_decay, "weight_decay_end": published.optim.weight_decay_end,
               "momentum": min(published.optim.momentum, 0.99), "momentum_update": "step"},
        run={"name": f"fashion_mnist_{scale}_{method}_{flavour}"},
    )


def _ablation_variants(presets: dict, base: str, build: Callable[[str], PretrainConfig], flavour: str) -> None:
    """The rows of Tables 5-7 as presets `<base>_<row>_<flavour>` of one base config (CIFAR ViT-S/2
    800 epochs, or its Fashion-MNIST scale-downs)."""
    for m in (1, 2, 3, 4):  # Table 6
        presets[f"{base}_m{m}_{flavour}"] = lambda m=m: _with(build(flavour), mix={"num_mixed": m})
    for method in TABLE5_MIXERS:  # Table 5
        presets[f"{base}_mix-{method}_{flavour}"] = lambda method=method: _with(build(flavour), mix={"method": method})
    for subset, (w_oo, w_mo, w_mm) in LOSS_SUBSETS.items():  # Table 7
        presets[f"{base}_loss-{subset}_{flavour}"] = lambda a=w_oo, b=w_mo, c=w_mm: _with(
            build(flavour), loss={"origin_weight": a, "mix_to_origin_weight": b, "mix_to_mix_weight": c})


def _build_registry() -> dict[str, Callable[[], PretrainConfig]]:
    presets: dict[str, Callable[[], PretrainConfig]] = {"debug_cpu": debug_cpu}
    for method in ("mixup", "cutmix", *TABLE5_MIXERS):
        presets[f"debug_cpu_mix-{method}"] = lambda method=method: _with(debug_cpu(), mix={"method": method})
    for m in (1, 2, 3):
        presets[f"demo_fashion_mnist_m{m}"] = lambda m=m: demo_fashion_mnist(m)
    for flavour in FLAVOURS:
        for arch, epochs in (("vit_s", 300), ("vit_s", 800), ("vit_b", 300)):
            presets[f"imagenet_{arch}16_{epochs}ep_{flavour}"] = (
                lambda a=arch, e=epochs, f=flavour: imagenet(a, e, f))
        for dataset in ("cifar10", "cifar100"):
            for arch, epochs in (("vit_t", 800), ("vit_t", 1600), ("vit_s", 800), ("vit_s", 1600),
                                 ("vit_b", 800)):
                presets[f"{dataset}_{arch}2_{epochs}ep_{flavour}"] = (
                    lambda d=dataset, a=arch, e=epochs, f=flavour: cifar(d, a, e, f))
            _ablation_variants(presets, f"{dataset}_vit_s2_800ep", lambda f, d=dataset: cifar(d, "vit_s", 800, f),
                               flavour)
        for scale in FASHION_MNIST_SCALES:
            presets[f"fashion_mnist_{scale}_{flavour}"] = lambda s=scale, f=flavour: fashion_mnist(s, f)
            _ablation_variants(presets, f"fashion_mnist_{scale}", lambda f, s=scale: fashion_mnist(s, f), flavour)
    _baseline_presets(presets)
    return presets


# Which flavours each baseline has: DINO's recipe is its published one (the paper trains no DINO);
# SDMP's newest release differs from its paper (pretrain/methods/sdmp.py).
BASELINE_FLAVOURS = {"dino": ("official",), "sdmp": FLAVOURS}


def _baseline_presets(presets: dict) -> None:
    """DINO and SDMP: Table 2 (ImageNet, 300 epochs), Table 3 (CIFAR, 800 epochs) and the Fashion-MNIST
    scales, named `<dataset>_<method>_<arch><patch>_<epochs>ep_<flavour>` (`fashion_mnist_<scale>_<method>_<flavour>`)."""
    for method, flavours in BASELINE_FLAVOURS.items():
        for flavour in flavours:
            for arch in ("vit_s", "vit_b"):
                if method == "dino" or arch == "vit_s":
                    presets[f"imagenet_{method}_{arch}16_300ep_{flavour}"] = (
                        lambda a=arch, m=method, f=flavour: dino_imagenet(a, 300) if m == "dino" else sdmp_imagenet(a, 300, f))
            for dataset in ("cifar10", "cifar100"):
                for arch in ("vit_t", "vit_s", "vit_b"):
                    presets[f"{dataset}_{method}_{arch}2_800ep_{flavour}"] = (
                        lambda d=dataset, a=arch, m=method, f=flavour:
                        dino_cifar(d, a, 800) if m == "dino" else sdmp_cifar(d, a, 800, f))
            for scale in FASHION_MNIST_SCALES:
                presets[f"fashion_mnist_{scale}_{method}_{flavour}"] = (
                    lambda m=method, s=scale, f=flavour: fashion_mnist_baseline(m, s, f))


PRESETS = _build_registry()


def run_directory(config: PretrainConfig, data_fingerprint: str | None = None) -> RunDirectory:
    """The run directory of a pretraining config: its name, its config hash (fields that do not change
    the result left out) and the fingerprint of the images it reads (computed unless given)."""
    fingerprint = dataset_fingerprint(config.data) if data_fingerprint is None else data_fingerprint
    return RunDirectory.for_config(config.run.output_root, config.run.name, config, NON_RESULT_FIELDS, fingerprint)


def encoder_record(config: PretrainConfig, experiment_digest: str | None = None) -> dict:
    """The encoder record a pretraining run writes (common.encoder.write_encoder_record): what
    evaluation and transfer read instead of this config schema. `experiment_digest`: the run
    directory's seedless hash (computed here when not given, as when a launcher plans ahead)."""
    if experiment_digest is None:
        try:
            experiment_digest = run_directory(config).experiment_digest
        except (FileNotFoundError, ValueError):  # the data cannot be read from here: a plan's guess
            experiment_digest = run_directory(config, data_fingerprint="unread").experiment_digest
    encoders = encoder_prefixes(method_named(config.method).has_momentum_encoder(config))
    return {"arch": config.model.arch, "patch_size": config.model.patch_size, "image_size": config.model.image_size,
            "num_heads": config.model.num_heads, "checkpoints": "checkpoints", "encoders": encoders,
            "default": next(iter(encoders)), "data": dataclasses.asdict(config.data),
            "origin": {"pretrain_preset": config.preset, "seed": config.run.seed, "experiment": config.run.experiment,
                       "pretrain_experiment_hash": experiment_digest}}


def preset_summary(name: str) -> str:
    """One line for --list-presets: the paper table it makes, the model, epochs, dataset and flavour."""
    config = PRESETS[name]()
    table = ("Table 2" if name.startswith("imagenet") else "Table 6" if re.search(r"ep_m\d_", name)
             else "Table 7" if "_loss-" in name else "Table 5" if "_mix-" in name
             else "Table 3" if name.startswith("cifar") and config.method != "patchmix"
             else "Table 3 (and 5)" if name.startswith("cifar") else "demo" if name.startswith("demo")
             else "study" if name.startswith("fashion") else "tests")
    flavour = next((f for f in FLAVOURS if name.endswith(f"_{f}")), "-")
    model = f"{config.model.arch}/{config.model.patch_size} ({config.model.num_heads or 'default'} heads)"
    mixing = f"m={config.mix.num_mixed} {config.mix.method:12}" if config.method == "patchmix" else f"{'':15}"
    return (f"{table:16} {config.method:9} {model:28} {config.optim.epochs:5} ep  {config.data.dataset:13} "
            f"{mixing} {flavour}")


def preset(name: str) -> PretrainConfig:
    """The named preset, with its name recorded in `config.preset` and `config.run.name`."""
    if name not in PRESETS:
        # Every flavour of what was meant: a name without its flavour, or mistyped.
        close = [n for n in PRESETS if n.startswith(name)][:4] or difflib.get_close_matches(name, PRESETS, n=4)
        close = sorted({*close, *(n.rsplit("_", 1)[0] + f"_{f}" for n in close if n.endswith(FLAVOURS)
                                 for f in FLAVOURS)} & set(PRESETS))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} List them with `python -m pretrain --list-presets`.")
    config = PRESETS[name]()
    run_name = config.run.name if name.startswith(("debug", "demo")) else name
    return dataclasses.replace(config, preset=name, run=dataclasses.replace(config.run, name=run_name))
