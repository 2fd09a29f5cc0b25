"""Evaluation configs: one section per protocol setting (recipes.md, "Evaluation protocols").

An EvalConfig starts from the encoder it evaluates: data and input size come from the encoder's
record (or must be given for an encoder file). Each protocol's presets live with the protocol
(evaluate/knn.py, linear.py, finetune.py, similarity.py); evaluate/protocols.py lists them.
"""
from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass, field

from common.config import ConfigError, added_field
from common.datasets import DataConfig
from common.encoder import SourceConfig
from common.runtime import RunConfig

# The protocol sections of EvalConfig: a run's hash leaves out the sections its protocol does not use.
SECTIONS = ("knn", "linear", "finetune", "similarity")
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "synthetic")


FEATURE_KINDS = ("cls", "mean_patch", "cls_last_n")


@dataclass
class FeatureConfig:
    RANGES: ClassVar[dict[str, str]] = {"last_n": "[1, inf)", "batch_size": "[1, inf)"}
    kind: str = "cls"  # cls (after the final norm) | mean_patch | cls_last_n (concatenated)
    last_n: int = 4  # blocks for cls_last_n
    batch_size: int = 256  # per process
    cache: bool = True  # cache extracted features in <run>/feature_cache

    def check(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}")


BACKENDS = ("auto", "faiss", "torch")
QUERY_SPLITS = ("test", "validation")


@dataclass
class KnnConfig:
    RANGES: ClassVar[dict[str, str]] = {"ks": "[1, inf)", "temperature": "(0, inf)",
        "query_chunk": "[1, inf)", "bank_chunk": "[1, inf)"}
    # neighbour counts, all read from one search
    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07  # vote weight exp(similarity / T)
    backend: str = "auto"  # auto | faiss | torch
    query_chunk: int = 4096  # queries per search call
    bank_chunk: int = 262144  # training features per matmul (torch backend)
    half_precision: bool = True  # torch backend on GPU: fp16 similarities (ranking-level accuracy)
    # the queries: test | validation (the training images held out by data.validation_size; what a
    # tuning ranks its trials by, so that no choice is made on the test set)
    split: str = added_field("test")

    def check(self) -> None:
        if not self.ks:
            raise ConfigError("ks must be a non-empty list of positive integers")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.split not in QUERY_SPLITS:
            raise ConfigError(f"split must be one of {', '.join(QUERY_SPLITS)}, got {self.split!r}")


@dataclass
class SimilarityConfig:
    RANGES: ClassVar[dict[str, str]] = {"num_queries": "[1, inf)", "profile_length": "[1, inf)",
        "keys_per_query": "[1, inf)"}
    num_queries: int = 1000  # test queries sampled for the profile and histograms
    profile_length: int = 10  # other classes kept in the profile
    keys_per_query: int = 2000  # training images sampled per query for the histograms


@dataclass
class LinearConfig:
    RANGES: ClassVar[dict[str, str]] = {"epochs": "[1, inf)", "batch_size": "[1, inf)",
        "base_lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)", "head_init_std": "[0, inf)",
        "crop_scale_min": "(0, 1]", "warmup_epochs": "[0, inf)"}
    epochs: int = 100  # training epochs
    batch_size: int = 256  # global
    base_lr: float = 0.02  # x batch_size / 256
    momentum: float = 0.9  # SGD / LARS momentum
    nesterov: bool = True  # Nesterov momentum (SGD)
    weight_decay: float = 0.0  # weight decay (0 in the published probe)
    head_init_std: float = 0.0  # 0 = PyTorch's default init; MoCo v3: 0.01 (and zero bias)
    augment: bool = True  # RandomResizedCrop + flip each epoch; False = cached centre-crop features
    crop_scale_min: float = 0.08  # RandomResizedCrop scale of the training views
    warmup_epochs: int = added_field(0)  # linear warmup from 0, then cosine to 0 (MAE: 10)
    batchnorm: bool = added_field(False)  # MAE: BatchNorm1d(affine=False, eps 1e-6) on the features before the head
    optimizer: str = added_field("sgd")  # sgd | lars (MAE: LARS, trust ratio on weight matrices only)

    def check(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.optimizer not in ("sgd", "lars"):
            raise ConfigError(f"optimizer must be sgd or lars, got {self.optimizer!r}")


@dataclass
class FinetuneConfig:
    RANGES: ClassVar[dict[str, str]] = {"epochs": "[1, inf)", "batch_size": "[1, inf)",
        "base_lr": "(0, inf)", "weight_decay": "[0, inf)", "layer_decay": "(0, 1]",
        "warmup_epochs": "[0, inf)", "warmup_lr": "[0, inf)", "min_lr": "[0, inf)",
        "drop_path_rate": "[0, 1)", "label_smoothing": "[0, 1)", "mixup": "[0, inf)", "cutmix": "[0, inf)",
        "random_erasing": "[0, 1]", "head_init_std": "[0, inf)", "model_ema_decay": "[0, 1)"}
    epochs: int = 100  # training epochs
    batch_size: int = 1024  # global
    base_lr: float = 5e-4  # x batch_size / 256
    weight_decay: float = 0.05  # weight decay (0 in the published probe)
    layer_decay: float = 0.75  # layer-wise lr decay: block i gets decay^(depth + 1 - i)
    warmup_epochs: int = 10  # linear warmup from warmup_lr
    warmup_lr: float = 1e-6  # lr at the start of the warmup
    min_lr: float = 1e-5  # final lr of the cosine schedule
    drop_path_rate: float = 0.1  # stochastic depth while finetuning
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec
    label_smoothing: float = 0.1  # label smoothing of the Mixup/CutMix targets
    mixup: float = 0.8  # Mixup alpha (0 = off)
    cutmix: float = 1.0  # CutMix alpha (0 = off)
    random_erasing: float = 0.25  # random erasing probability
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
    model_ema: bool = False  # also train and report an EMA of the model
    model_ema_decay: float = 0.9999  # decay of that EMA

    def check(self) -> None:
        if self.global_pool not in ("token", "avg"):
            raise ConfigError(f"global_pool must be token or avg, got {self.global_pool!r}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError("need epochs >= 1 and warmup_epochs <= epochs")
        if self.test_transform not in ("resize_crop", "raw"):
            raise ConfigError(f"test_transform must be resize_crop or raw, got {self.test_transform!r}")


@dataclass
class EvalConfig:
    """One protocol's run. Only the protocol's own section (and `features` where it reads frozen
    features) is used."""
    RANGES: ClassVar[dict[str, str]] = {"image_size": "[0, inf)"}

    protocol: str = "knn"  # knn | linear | finetune | similarity | knn_standardized (evaluate/protocols.py)
    source: SourceConfig = field(default_factory=SourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int = 0  # 0 = the encoder's pretraining input size
    features: FeatureConfig = field(default_factory=FeatureConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="eval", output_root="", log_every_steps=50))
    preset: str = "default"  # the protocol preset it was built from

    def check(self) -> None:
        if self.knn.split == "validation" and not self.data.validation_size:
            raise ConfigError("knn.split=validation needs a validation split: data.validation_size is 0 (the "
                              "encoder's pretraining held out no training images; set data.validation_size=N)")

    def unused_sections(self, section: str, uses_features: bool = True) -> tuple[str, ...]:
        """Dotted keys left out of this run's config hash: the sections its protocol does not read
        (`section` is the protocol's own; protocols that fine-tune do not read `features`)."""
        return tuple(s for s in SECTIONS if s != section) + (() if uses_features else ("features",))
