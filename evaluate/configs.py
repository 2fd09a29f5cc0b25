"""Evaluation configs and their presets (recipes.md, "Evaluation protocols").

A protocol's config starts from the encoder it evaluates: data and input size come from the
pretraining run (or must be given for an encoder file), and the arch sets the recipe's base lr.
Presets:
- knn: `default` (DINO weighted kNN, T = 0.07, k in {10, 20, 100, 200}).
- similarity: `default` (Figure 4: class-similarity profile and pair histograms of 1000 queries).
- linear: `official` (published: SGD Nesterov 0.9, wd 0, 100 epochs cosine, base lr per size
  x batch/256: ViT-T 0.05, ViT-S 0.02, ViT-B 0.01; batch 1024 ImageNet / 256 CIFAR) and
  `mocov3` (SGD lr 3 x batch/256, no Nesterov, 90 epochs, head init N(0, 0.01)), `mae` (MAE's:
  BatchNorm1d without affine before the head, LARS, batch 16384, base lr 0.1, 90 epochs, warmup 10),
  plus `fast`
  (same optimiser on cached centre-crop features, no augmentation: for demos and smoke runs).
- finetune: `official` (layer decay 0.75 with the final norm in the last block's group, AdamW wd
  0.05, warmup 10 from 1e-6, min lr 1e-5, drop path 0.1, RandAugment rand-m9-mstd0.5-inc1 (bicubic),
  label smoothing 0.1, mixup 0.8 / cutmix 1.0, random erasing 0.25; base lr 1e-3 ViT-T, 5e-4 ViT-S/B;
  CIFAR-size data tested on the raw image) and `mae_vit_b` (MAE's: layer decay 0.65, 5 warmup epochs
  from 0 then a half-cosine to 1e-6, average-pooled un-normalised tokens + a fresh LayerNorm, head
  init truncated normal std 2e-5).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.config import ConfigError, added_field
from common.datasets import DataConfig
from common.runtime import RunConfig
from evaluate.encoder import EncoderSpec, SourceConfig
from evaluate.features import FeatureConfig
from evaluate.knn import KnnConfig
from evaluate.similarity import SimilarityConfig

PROTOCOLS = ("knn", "linear", "finetune", "similarity")
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "synthetic")


@dataclass
class LinearConfig:
    epochs: int = 100
    batch_size: int = 256  # global
    base_lr: float = 0.02  # x batch_size / 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    head_init_std: float = 0.0  # 0 = PyTorch's default init; MoCo v3: 0.01 (and zero bias)
    augment: bool = True  # RandomResizedCrop + flip each epoch; False = cached centre-crop features
    crop_scale_min: float = 0.08
    warmup_epochs: int = added_field(0)  # linear warmup from 0, then cosine to 0 (MAE: 10)
    batchnorm: bool = added_field(False)  # MAE: BatchNorm1d(affine=False, eps 1e-6) on the features before the head
    optimizer: str = added_field("sgd")  # sgd | lars (MAE: LARS, trust ratio on weight matrices only)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.base_lr <= 0:
            raise ConfigError("need epochs >= 1, batch_size >= 1 and base_lr > 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.optimizer not in ("sgd", "lars"):
            raise ConfigError(f"optimizer must be sgd or lars, got {self.optimizer!r}")


@dataclass
class FinetuneConfig:
    epochs: int = 100
    batch_size: int = 1024  # global
    base_lr: float = 5e-4  # x batch_size / 256
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    drop_path_rate: float = 0.1
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    random_erasing: float = 0.25
    # token: the CLS token after the final norm; avg (MAE): the mean of the patch tokens before the final
    # norm, then a fresh LayerNorm (the pretrained final norm is dropped).
    global_pool: str = "token"
    small_image_crop: bool = False  # CIFAR recipe: RandomCrop(size, padding 4) instead of RandomResizedCrop
    test_transform: str = added_field("resize_crop")  # resize_crop: Resize(size * 256/224) + CenterCrop | raw: the image as is
    # Layer decay: the final norm at the last block's lr scale (published timm version) or at the
    # head's, scale 1 (MAE/BEiT rule).
    final_norm_with_last_block: bool = added_field(False)
    lr_cosine_after_warmup: bool = added_field(False)  # MAE: the cosine starts at the peak after warmup (half-cosine)
    head_init_std: float = added_field(0.0)  # 0 = timm's default head init; MAE: truncated normal, std 2e-5, zero bias
    model_ema: bool = False
    model_ema_decay: float = 0.9999

    def check(self) -> None:
        if self.global_pool not in ("token", "avg"):
            raise ConfigError(f"global_pool must be token or avg, got {self.global_pool!r}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay must be in (0, 1]")
        if self.epochs < 1 or self.warmup_epochs > self.epochs:
            raise ConfigError("need epochs >= 1 and warmup_epochs <= epochs")
        if self.test_transform not in ("resize_crop", "raw"):
            raise ConfigError(f"test_transform must be resize_crop or raw, got {self.test_transform!r}")


@dataclass
class EvalConfig:
    """One protocol's run. Only the section of `protocol` (and features for knn) is used."""

    protocol: str = "knn"
    source: SourceConfig = field(default_factory=SourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int = 0  # 0 = the encoder's pretraining input size
    features: FeatureConfig = field(default_factory=FeatureConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="eval", output_root="", log_every_steps=50))
    preset: str = "default"

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}")

    def unused_sections(self) -> tuple[str, ...]:
        """Dotted keys left out of this run's config hash: the other protocols' sections."""
        unused = [p for p in PROTOCOLS if p != self.protocol]
        if self.protocol == "finetune":
            unused.append("features")
        return tuple(unused)


LINEAR_BASE_LR = {"vit_tiny": 0.05, "vit_small": 0.02, "vit_base": 0.01, "vit_debug": 0.05, "vit_mini": 0.05}
FINETUNE_BASE_LR = {"vit_tiny": 1e-3, "vit_small": 5e-4, "vit_base": 5e-4, "vit_debug": 1e-3, "vit_mini": 1e-3}
PRESETS = {"knn": ("default",), "linear": ("official", "mocov3", "mae", "fast"),
           "finetune": ("official", "mae_vit_b"), "similarity": ("default",)}


def build_eval_config(protocol: str, preset_name: str, spec: EncoderSpec, data: DataConfig,
                      source: SourceConfig) -> EvalConfig:
    """The preset of `protocol` for an encoder of architecture `spec` evaluated on `data`."""
    if protocol not in PRESETS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PRESETS)}")
    preset_name = preset_name or PRESETS[protocol][0]
    if preset_name not in PRESETS[protocol]:
        raise ConfigError(f"unknown {protocol} preset {preset_name!r}; choose one of {', '.join(PRESETS[protocol])}")
    small = data.dataset in SMALL_IMAGE_DATASETS
    linear = LinearConfig(batch_size=256 if small else 1024, base_lr=LINEAR_BASE_LR[spec.arch])
    if preset_name == "mocov3":
        linear = dataclasses.replace(linear, epochs=90, base_lr=3.0, nesterov=False, head_init_std=0.01)
    elif preset_name == "mae":  # MAE's main_linprobe.py
        linear = dataclasses.replace(linear, epochs=90, warmup_epochs=10, batch_size=16384, base_lr=0.1,
                                     nesterov=False, head_init_std=0.01, batchnorm=True, optimizer="lars")
    elif preset_name == "fast":
        linear = dataclasses.replace(linear, augment=False)
    # Published finetune: CIFAR tests on the raw 32 x 32 image; final norm grouped with the last block.
    finetune = FinetuneConfig(base_lr=FINETUNE_BASE_LR[spec.arch], small_image_crop=small,
                              batch_size=256 if small else 1024, final_norm_with_last_block=True,
                              test_transform="raw" if small else "resize_crop")
    if preset_name == "mae_vit_b":  # MAE's main_finetune.py for ViT-B
        finetune = dataclasses.replace(finetune, layer_decay=0.65, warmup_epochs=5, global_pool="avg",
                                       warmup_lr=0.0, min_lr=1e-6, lr_cosine_after_warmup=True,
                                       head_init_std=2e-5, final_norm_with_last_block=False,
                                       test_transform="resize_crop")
    return EvalConfig(protocol=protocol, source=source, data=data, image_size=spec.image_size, linear=linear,
                      finetune=finetune, preset=preset_name,
                      run=RunConfig(name=f"{protocol}-{preset_name}", output_root="", log_every_steps=50))


def resolve_eval_config(protocol: str, preset_name: str = "", run_dir: str = "", encoder_file: str = "",
                        overrides: tuple[str, ...] | list[str] = (), pretrain_config=None) -> EvalConfig:
    """The config of `protocol` for an encoder: data and input size from its pretraining run.

    `pretrain_config` (a PretrainConfig) stands in for `<run_dir>/config.yaml` when the run has not
    been written yet, as when a launcher plans a whole graph before the pretraining job starts.
    """
    from pathlib import Path

    from common.config import apply_overrides, load_yaml
    from evaluate.encoder import load_encoder_file
    from pretrain.configs import PretrainConfig

    source = SourceConfig(run_dir=str(run_dir or ""), encoder_file=str(encoder_file or ""))
    source.check()
    if run_dir:
        if pretrain_config is None:
            config_path = Path(run_dir) / "config.yaml"
            if not config_path.is_file():
                raise FileNotFoundError(f"{run_dir} is not a pretraining run directory (no config.yaml)")
            pretrain_config = load_yaml(config_path, PretrainConfig)
        model = pretrain_config.model
        spec = EncoderSpec(model.arch, model.patch_size, model.image_size, model.num_heads)
        data = pretrain_config.data
    else:
        spec = load_encoder_file(Path(encoder_file)).spec
        data = DataConfig()
    return apply_overrides(build_eval_config(protocol, preset_name, spec, data, source), overrides)
