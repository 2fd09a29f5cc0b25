"""PatchMix (this paper's method) as a pretraining method: MoCo v3 networks (pretrain/model.py) and
the mix-to-origin, mix-to-mix and origin-to-origin soft-target InfoNCE terms (recipes.md, "Loss").

One step: update the momentum encoder, mix both views at patch level with a permutation drawn from
the step's generator, compute queries for view 1 and mixed view 2 and keys for view 1, view 2 and
mixed view 1, and minimise the weighted terms. Any mixer of pretrain/mixers.py (Table 5) runs here;
m = 1 is the MoCo v3 baseline.

Its config sections are `mix` (pretrain/mixers.py) and `loss` (pretrain/loss.py); its presets, one per
pretraining run of the paper's Tables 2, 3, 5 (PatchMix row), 6 (m = 1..4) and 7 (loss subsets), each
in a `paper` and an `official` flavour where the paper and the published code differ (recipes.md):

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

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from common import dist
from common.config import ConfigError, added_field
from common.datasets import DataConfig
from common.runtime import RunConfig
from pretrain.augment import AugmentConfig
from pretrain.loss import LossConfig, soft_target_cross_entropy
from pretrain.methods.base import LossContext, PretrainingMethod
from pretrain.mixers import MixConfig, MixResult, apply_mixer, mix_to_mix_from_compositions, place_targets
from pretrain.model import ModelConfig, PatchMixModel
from pretrain.patchmix import origin_targets
from pretrain.recipes import (ARCHES, FASHION_MNIST_SCALES, FLAVOURS, cifar_data, imagenet_data, scaled_to_fashion_mnist,
                              at_tuned_point, with_sections)
from pretrain.shared_config import OptimConfig, PretrainConfig


@dataclass
class PatchMixPretrainConfig(PretrainConfig):
    """A PatchMix (or MoCo v3: mix.num_mixed=1) run: the shared sections, the mixing and the loss."""

    # Runs made before the field existed were PatchMix's: at its default it stays out of the hash.
    method: str = added_field("patchmix")
    mix: MixConfig = field(default_factory=MixConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="patchmix"))


def patchmix_loss(model: nn.Module, keys_model: PatchMixModel, views: Sequence[torch.Tensor],
                  config: PatchMixPretrainConfig, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PatchMix objective for one per-device batch (any mixer of pretrain/mixers.py).

    Args:
        model: the query network (maybe DDP-wrapped); `model(list of batches)` -> list of queries.
        keys_model: the unwrapped PatchMixModel, for the gradient-free key path.
        views: [view1, view2, local crops...], each (B, 3, H, W) on the training device.
        generator: draws the mixing randomness (view 1, view 2, then each local crop).
    Returns:
        (scalar loss, {term name: detached scalar}) -- no host synchronisation.
    """
    weights, mix = config.loss, config.mix
    view1, view2, local_views = views[0], views[1], list(views[2:])
    batch, device = view1.shape[0], view1.device

    def mixed(images: torch.Tensor) -> MixResult:
        return apply_mixer(mix.method, images, generator, mix.num_mixed, config.model.patch_size)

    mixed1, mixed2 = mixed(view1), mixed(view2)
    gather = dist.all_gather_no_grad
    tau = weights.temperature
    to_origin_self = origin_targets(batch, rank, world_size, device, weights.origin_smoothing)

    need_mixed_query = weights.mix_to_origin_weight > 0 or weights.mix_to_mix_weight > 0
    # m = 1 (the MoCo v3 baseline) leaves the views unmixed: reuse the view-1 keys instead of recomputing them.
    need_mixed_key = need_mixed_query and weights.mix_to_mix_weight > 0 and mixed1.images is not view1
    key1, key2, *key_mixed = (gather(k) for k in keys_model.keys([view1, view2] + ([mixed1.images] if need_mixed_key else [])))
    query_inputs = ([view1] if weights.origin_weight > 0 else []) + ([mixed2.images] if need_mixed_query else [])
    local_mixed = [mixed(v) for v in local_views]
    count = len(local_views)
    # Published multi-crop: the local crops pass the heads as one batch, the mixed local crops as another.
    local_groups = [count, count] if count and config.model.batch_local_heads else [1] * (2 * count)
    queries = model(query_inputs + local_views + [m.images for m in local_mixed],
                    [1] * len(query_inputs) + local_groups)
    terms: dict[str, torch.Tensor] = {}
    if weights.origin_weight > 0:
        terms["origin"] = soft_target_cross_entropy(queries.pop(0), key2, to_origin_self, tau)
    if need_mixed_query:
        query_mixed2 = queries.pop(0)
        if weights.mix_to_origin_weight > 0:
            to_origin = place_targets(mixed2.composition, rank, world_size, mix.smoothing)
            terms["mix_to_origin"] = soft_target_cross_entropy(query_mixed2, key1, to_origin, tau)
        if weights.mix_to_mix_weight > 0:
            key_mixed1 = key_mixed[0] if key_mixed else key1
            to_mix = place_targets(mix_to_mix_from_compositions(mixed2.composition, mixed1.composition),
                                   rank, world_size, mix.smoothing)
            terms["mix_to_mix"] = soft_target_cross_entropy(query_mixed2, key_mixed1, to_mix, tau)
    if local_views:
        local_queries, local_mixed_queries = queries[:count], queries[count:]
        terms["local_origin"] = sum(soft_target_cross_entropy(q, key1, to_origin_self, tau)
                                    + soft_target_cross_entropy(q, key2, to_origin_self, tau)
                                    for q in local_queries) / count
        local_to_origin = [place_targets(m.composition, rank, world_size, mix.smoothing) for m in local_mixed]
        terms["local_mix_to_origin"] = sum(soft_target_cross_entropy(q, key1, t, tau)
                                           + soft_target_cross_entropy(q, key2, t, tau)
                                           for q, t in zip(local_mixed_queries, local_to_origin)) / count
    weight_of = {"origin": weights.origin_weight, "mix_to_origin": weights.mix_to_origin_weight,
                 "mix_to_mix": weights.mix_to_mix_weight, "local_origin": weights.local_origin_weight,
                 "local_mix_to_origin": weights.local_mix_to_origin_weight}
    loss = sum(weight_of[name] * value for name, value in terms.items())
    metrics = {name: value.detach() for name, value in terms.items()}
    # Collapse monitor: std of the normalised keys x sqrt(dim) is ~1 for spread embeddings, -> 0 at collapse.
    metrics["key_std"] = torch.nn.functional.normalize(key1.float(), dim=1).std(dim=0).mean() * math.sqrt(key1.shape[1])
    return loss, metrics


class PatchMix(PretrainingMethod):
    name = "patchmix"
    config_class = PatchMixPretrainConfig
    uses_local_crops = True
    sections_in_every_hash = True
    # Around the cpu scale's lr 1e-2 and MoCo v3's temperature 0.2 (also MoCo v3's space, with m = 1).
    tuning_space = {"optim.base_lr": (3e-3, 5e-3, 1e-2, 2e-2), "loss.temperature": (0.1, 0.2, 0.3)}

    def presets(self) -> dict[str, Callable[[], PretrainConfig]]:
        return patchmix_presets()

    def result_fields(self, config: PatchMixPretrainConfig) -> dict[str, Any]:
        return {"num_mixed": config.mix.num_mixed}

    def summary(self, config: PatchMixPretrainConfig) -> str:
        return f"m={config.mix.num_mixed} {config.mix.method:12}"

    def check(self, config: PatchMixPretrainConfig) -> None:
        tokens = (config.model.image_size // config.model.patch_size) ** 2
        if config.mix.num_mixed > tokens:
            raise ConfigError(f"mix.num_mixed={config.mix.num_mixed} exceeds the {tokens} tokens per image")

    def build_model(self, config: PatchMixPretrainConfig) -> PatchMixModel:
        return PatchMixModel(config.model)

    def has_momentum_encoder(self, config: PatchMixPretrainConfig) -> bool:
        return config.model.momentum_encoder

    def loss(self, query_model: nn.Module, model: nn.Module, views: Sequence[torch.Tensor],
             config: PatchMixPretrainConfig, context: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return patchmix_loss(query_model, model, views, config, context.generator, context.rank, context.world_size)

    def distributed(self, model: nn.Module, device: torch.device) -> nn.Module:
        if dist.world_size() > 1 and device.type == "cuda":
            model.synchronise_head_batchnorms()
        return super().distributed(model, device)



# ----------------------------------------------------------------------------------------- presets

def imagenet(arch: str, epochs: int, flavour: str) -> PatchMixPretrainConfig:
    """Table 2: ImageNet-1K, 224 px, patch 16, global batch 1024, warmup 10 epochs.

    Speed: compiled encoders, and JPEG decoding plus all of Table 10 on the device (the PIL pipeline
    delivers ~840 img/s on 16 cores, a third of one H200's step speed); `augment.gpu=false
    augment.gpu_decode=false` restores the PIL path."""
    official = flavour == "official"
    config = PatchMixPretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=16, image_size=224,
                          num_heads=6 if arch == "vit_s" and not official else 0, compile=True,
                          pos_embed_interpolation="dino" if official else "timm",
                          batch_local_heads=official),
        data=imagenet_data(),
        augment=AugmentConfig(crop_scale_min=0.35 if official else 0.05,
                              num_local_crops=8 if official else 0,
                              gpu=True, gpu_decode=True, gpu_compile=True),
        mix=MixConfig(num_mixed=2 if official else 3),
        optim=OptimConfig(epochs=epochs, warmup_epochs=10, batch_size=1024,
                          base_lr=7.5e-4 if arch == "vit_b" else 5e-4,
                          momentum_update="epoch" if official else "step"),
    )
    return _published(config) if official else config


def cifar(dataset: str, arch: str, epochs: int, flavour: str) -> PatchMixPretrainConfig:
    """Table 3: CIFAR-10/100, 32 px, patch 2, global batch 512, warmup 100 epochs (compiled encoders;
    the PIL pipeline, fast enough at 32 px)."""
    official = flavour == "official"
    tiny = arch == "vit_t"
    config = PatchMixPretrainConfig(
        model=ModelConfig(arch=ARCHES[arch], patch_size=2, image_size=32,
                          num_heads=6 if arch == "vit_s" and not official else 0,
                          momentum_encoder=not (tiny and official), compile=True),
        data=cifar_data(dataset),
        augment=AugmentConfig(crop_scale_min=0.1),
        mix=MixConfig(num_mixed=2 if official else 3),
        optim=OptimConfig(epochs=epochs, warmup_epochs=100, batch_size=512,
                          base_lr={"vit_t": 2e-3, "vit_s": 5e-4, "vit_b": 7.5e-4}[arch],
                          weight_decay=0.02 if tiny else 0.04, weight_decay_end=0.2 if tiny else 0.4,
                          momentum_update="epoch" if official else "step"),
    )
    return _published(config) if official else config


def _published(config: PatchMixPretrainConfig) -> PatchMixPretrainConfig:
    """What every official preset shares with the published code whatever the table: smoothed o2o
    targets (its mixer's default 0.1) and fp16 autocast with a GradScaler (whatever its flag says)."""
    return with_sections(config, loss={"origin_smoothing": 0.1}, run={"precision": "fp16"})


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


def debug_cpu() -> PatchMixPretrainConfig:
    """A tiny ViT on generated 32 px images: seconds per epoch on a laptop CPU (tests, smoke runs)."""
    return PatchMixPretrainConfig(
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


def demo_fashion_mnist(num_mixed: int = 2) -> PatchMixPretrainConfig:
    """A short CPU pretraining on real images (Fashion-MNIST, 28 px, patch 4): the `make demo` run."""
    return PatchMixPretrainConfig(
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


# The points `make tune` chose at a Fashion-MNIST scale (docs/results/fashion-mnist/tuning.md: the best of
# PatchMix's `tuning_space` by validation kNN, with the official flavour), set over the scaled recipe for
# both flavours; MoCo v3 (m = 1) was tuned as a method of its own. A scale not listed keeps the scaled recipe.
TUNED_POINTS: dict[str, dict[str, object]] = {"cpu": {"optim.base_lr": 2e-2, "loss.temperature": 0.1}}
MOCOV3_TUNED_POINTS: dict[str, dict[str, object]] = {"cpu": {"optim.base_lr": 1e-2, "loss.temperature": 0.2}}


def fashion_mnist(scale: str, flavour: str, tuned: bool = True) -> PatchMixPretrainConfig:
    """The CIFAR ViT-S/2 800-epoch preset of `flavour`, scaled down to Fashion-MNIST for the ablations
    (pretrain.recipes.scaled_to_fashion_mnist: lr 5e-4 -> 1e-2 at the cpu scale, 3e-3 at the gpu
    scale), then (`tuned`) at the scale's TUNED_POINTS. Kept: the mixing (method, m, patch-level mixing
    at the model's patch), every loss term and weight, target smoothing, crop scale, weight-decay
    schedule and momentum-update granularity. The ablations of Tables 5-7 vary one factor from it."""
    config = scaled_to_fashion_mnist(cifar("cifar10", "vit_s", 800, flavour), scale, f"fashion_mnist_{scale}_{flavour}")
    return at_tuned_point(config, TUNED_POINTS, scale, tuned)


def mocov3_fashion_mnist(scale: str, flavour: str, tuned: bool = True) -> PatchMixPretrainConfig:
    """MoCo v3 at a Fashion-MNIST scale: the scaled recipe with m = 1 (no mixing), then (`tuned`) at the
    scale's MOCOV3_TUNED_POINTS, its own tuning (Table 3 and Figure 4; Table 6's m = 1 row is PatchMix's
    tuned point with m = 1, one factor changed)."""
    config = with_sections(fashion_mnist(scale, flavour, tuned=False), mix={"num_mixed": 1})
    return at_tuned_point(config, MOCOV3_TUNED_POINTS, scale, tuned)


def _ablation_variants(presets: dict, base: str, build: Callable[[str], PatchMixPretrainConfig], flavour: str) -> None:
    """The rows of Tables 5-7 as presets `<base>_<row>_<flavour>` of one base config (CIFAR ViT-S/2
    800 epochs, or its Fashion-MNIST scale-downs)."""
    for m in (1, 2, 3, 4):  # Table 6
        presets[f"{base}_m{m}_{flavour}"] = lambda m=m: with_sections(build(flavour), mix={"num_mixed": m})
    for method in TABLE5_MIXERS:  # Table 5
        presets[f"{base}_mix-{method}_{flavour}"] = lambda method=method: with_sections(build(flavour),
                                                                                        mix={"method": method})
    for subset, (w_oo, w_mo, w_mm) in LOSS_SUBSETS.items():  # Table 7
        presets[f"{base}_loss-{subset}_{flavour}"] = lambda a=w_oo, b=w_mo, c=w_mm: with_sections(
            build(flavour), loss={"origin_weight": a, "mix_to_origin_weight": b, "mix_to_mix_weight": c})


def patchmix_presets() -> dict[str, Callable[[], PatchMixPretrainConfig]]:
    """debug_cpu (tests), the demo, Table 2 (ImageNet), Table 3 (CIFAR), the ablations of Tables 5-7 on
    CIFAR-10/100 and both Fashion-MNIST scales."""
    presets: dict[str, Callable[[], PatchMixPretrainConfig]] = {"debug_cpu": debug_cpu}
    for method in ("mixup", "cutmix", *TABLE5_MIXERS):
        presets[f"debug_cpu_mix-{method}"] = lambda method=method: with_sections(debug_cpu(), mix={"method": method})
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
            presets[f"fashion_mnist_{scale}_mocov3_{flavour}"] = lambda s=scale, f=flavour: mocov3_fashion_mnist(s, f)
            _ablation_variants(presets, f"fashion_mnist_{scale}", lambda f, s=scale: fashion_mnist(s, f), flavour)
    return presets


METHOD = PatchMix()
