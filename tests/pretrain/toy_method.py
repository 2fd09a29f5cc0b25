"""A fourth pretraining method in one file, as a plug-in would write it: its code, its config section
and its preset. Registering it is one line (`register_method(METHOD)`, or its module name in
METHOD_MODULES of pretrain/methods/__init__.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch.nn.functional as F

from pretrain.methods.base import PretrainingMethod
from pretrain.model import PatchMixModel
from pretrain.shared_config import PretrainConfig


@dataclass
class ToyConfig:
    RANGES: ClassVar[dict[str, str]] = {"scale": "(0, inf)"}
    scale: float = 2.0  # the loss is scale * (1 - cos(query of view 1, key of view 2))


@dataclass
class ToyPretrainConfig(PretrainConfig):
    method: str = "toy_alignment"
    toy: ToyConfig = field(default_factory=ToyConfig)


class ToyAlignment(PretrainingMethod):
    """Pull the query of view 1 towards the key of view 2 (BYOL-like)."""

    name = "toy_alignment"
    config_class = ToyPretrainConfig

    def presets(self) -> dict[str, Callable[[], ToyPretrainConfig]]:
        return {"debug_cpu_toy": toy_debug}

    def build_model(self, config: ToyPretrainConfig) -> PatchMixModel:
        return PatchMixModel(config.model)

    def loss(self, query_model, model, views, config: ToyPretrainConfig, context):
        (query,) = query_model([views[0]])
        (key,) = model.keys([views[1]])
        loss = config.toy.scale * (1 - F.cosine_similarity(query, key.detach(), dim=-1).mean())
        return loss, {"alignment": loss.detach()}


def toy_debug() -> ToyPretrainConfig:
    """The tests' tiny ViT and generated images (debug_cpu's shared sections), at scale 3."""
    from pretrain.configs import preset

    return dataclasses.replace(preset("debug_cpu").with_variant("toy_alignment"), toy=ToyConfig(scale=3.0))


METHOD = ToyAlignment()
