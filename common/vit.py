"""Vision Transformer builder on timm, with the MoCo v3 initialisation used by PatchMix.

The encoder's output is the CLS token after the final LayerNorm: `encoder(x)` with
x: (B, 3, H, W) returns (B, D). Position embeddings are learnable and resampled on the fly when
the input size differs from the build size (local crops, detection inputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from common.config import ConfigError


@dataclass(frozen=True)
class VitSize:
    embed_dim: int
    depth: int
    default_heads: int


# ViT-T has half the width and heads of ViT-S (paper, Table 8). ViT-S defaults to 12 heads as in the
# published code and MoCo v3 (its checkpoints have 12); the paper's Table 8 says 6: set num_heads=6.
VIT_SIZES: dict[str, VitSize] = {
    "vit_tiny": VitSize(embed_dim=192, depth=12, default_heads=3),
    "vit_small": VitSize(embed_dim=384, depth=12, default_heads=12),
    "vit_base": VitSize(embed_dim=768, depth=12, default_heads=12),
    # For tests and the CPU demo only: the same code path, hundreds to thousands of times cheaper.
    "vit_debug": VitSize(embed_dim=48, depth=2, default_heads=3),
    "vit_mini": VitSize(embed_dim=96, depth=4, default_heads=3),
}


def build_vit(
    arch: str,
    patch_size: int,
    image_size: int,
    num_heads: int = 0,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """A timm ViT without classifier head, initialised as in MoCo v3.

    Args:
        arch: one of VIT_SIZES.
        patch_size: 2 (CIFAR-size input) or 16 (ImageNet-size), anything dividing image_size.
        image_size: the training input size; other sizes work through position-embedding resampling.
        num_heads: 0 for the architecture's default.
        drop_path_rate: stochastic depth (0.1 on the pretraining base encoder, 0 on the momentum one).
    """
    if arch not in VIT_SIZES:
        raise ConfigError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_SIZES)}")
    if image_size % patch_size:
        raise ConfigError(f"patch_size {patch_size} must divide image_size {image_size}")
    size = VIT_SIZES[arch]
    heads = num_heads or size.default_heads
    if size.embed_dim % heads:
        raise ConfigError(f"num_heads {heads} must divide the embedding width {size.embed_dim} of {arch}")
    model = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
        global_pool="token",
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        weight_init="moco",
    )
    _init_patch_projection(model)
    return model


def _init_patch_projection(model: VisionTransformer) -> None:
    """MoCo v3 initialises the patch projection like a linear layer of fan-in 3*p*p and fan-out D
    (timm's 'moco' mode leaves the conv at its default init)."""
    projection = model.patch_embed.proj
    fan_in = projection.weight.shape[1] * projection.weight.shape[2] * projection.weight.shape[3]
    bound = math.sqrt(6.0 / float(fan_in + projection.weight.shape[0]))
    nn.init.uniform_(projection.weight, -bound, bound)
    nn.init.zeros_(projection.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

