"""Vision Transformer builder on timm, with the MoCo v3 initialisation used by PatchMix.

The encoder's output is the CLS token after the final LayerNorm: `encoder(x)` with
x: (B, 3, H, W) returns (B, D). Position embeddings are learnable and resampled on the fly when
the input size differs from the build size (local crops, detection inputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
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


POS_EMBED_INTERPOLATIONS = ("timm", "dino")
# How a pretraining method initialises and trains the ViT's stem (the evaluated architecture is the
# same whatever the choice: these change starting values and which parameters learn).
INITIALISATIONS = ("moco", "dino")  # MoCo v3's (PatchMix, SDMP) or DINO's (timm's default + cls N(0, .02))
POSITION_EMBEDDINGS = ("learned", "sincos")  # sincos: MoCo v3's fixed 2-D sin-cos table, not trained


def dino_resample_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """DINO-style position-embedding resampling, as in the published PatchMix ViT.

    pos_embed: (1, 1 + N, D) with the CLS entry first and a square grid of N entries; returns
    (1, 1 + rows * cols, D). Bicubic with scale factor (size + 0.1) / sqrt(N) and no antialias: the
    +0.1 makes the output size round down to exactly (rows, cols) while the sampling positions follow
    the scale factor, not the output size (timm's resampling differs: exact size, antialiased).
    """
    grid = int(math.sqrt(pos_embed.shape[1] - 1))
    if rows == grid and cols == grid:
        return pos_embed
    cls_entry, patch_entries = pos_embed[:, :1], pos_embed[:, 1:]
    width = pos_embed.shape[-1]
    patch_entries = patch_entries.float().reshape(1, grid, grid, width).permute(0, 3, 1, 2)
    patch_entries = F.interpolate(patch_entries, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
                                  mode="bicubic", align_corners=False)
    patch_entries = patch_entries.permute(0, 2, 3, 1).reshape(1, rows * cols, width).to(pos_embed.dtype)
    return torch.cat([cls_entry, patch_entries], dim=1)


class PatchMixVisionTransformer(VisionTransformer):
    """timm's ViT with a choice of position-embedding resampling for inputs of another size:
    `timm` (timm's dynamic size: exact size, antialiased) or `dino` (the published code's)."""

    def __init__(self, *args, pos_embed_interpolation: str = "timm", **kwargs):
        super().__init__(*args, **kwargs)
        if pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ConfigError(f"pos_embed_interpolation must be one of {', '.join(POS_EMBED_INTERPOLATIONS)}, "
                              f"got {pos_embed_interpolation!r}")
        self.pos_embed_interpolation = pos_embed_interpolation

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, rows, cols, D) patch tokens -> (B, 1 + rows * cols, D) with CLS and positions."""
        if self.pos_embed_interpolation == "timm":
            return super()._pos_embed(x)
        batch, rows, cols, width = x.shape
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, rows * cols, width)], dim=1)
        return self.pos_drop(x + dino_resample_pos_embed(self.pos_embed, rows, cols))


def build_vit(
    arch: str,
    patch_size: int,
    image_size: int,
    num_heads: int = 0,
    drop_path_rate: float = 0.0,
    pos_embed_interpolation: str = "timm",
    initialisation: str = "moco",
    position_embedding: str = "learned",
    freeze_patch_embedding: bool = False,
) -> VisionTransformer:
    """A timm ViT without classifier head, initialised as in MoCo v3.

    Args:
        arch: one of VIT_SIZES.
        patch_size: 2 (CIFAR-size input) or 16 (ImageNet-size), anything dividing image_size.
        image_size: the training input size; other sizes work through position-embedding resampling.
        num_heads: 0 for the architecture's default.
        drop_path_rate: stochastic depth (0.1 on the pretraining base encoder, 0 on the momentum one).
        pos_embed_interpolation: how position embeddings are resampled for other input sizes
            (`timm` or `dino`, see PatchMixVisionTransformer); the build size is never resampled.
        initialisation: `moco` (MoCo v3: xavier linears with the qkv fan split in three, cls N(0, 1e-6),
            patch projection as a linear layer) or `dino` (DINO's ViT: truncated N(0, .02) linears and
            position embedding, cls token truncated N(0, .02), the patch convolution at torch's default).
        position_embedding: `learned`, or `sincos` (MoCo v3's fixed 2-D sin-cos table, frozen).
        freeze_patch_embedding: MoCo v3's stop-grad-conv1: the patch projection keeps its random init.
    """
    if initialisation not in INITIALISATIONS:
        raise ConfigError(f"initialisation must be one of {', '.join(INITIALISATIONS)}, got {initialisation!r}")
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ConfigError(f"position_embedding must be one of {', '.join(POSITION_EMBEDDINGS)}, "
                          f"got {position_embedding!r}")
    if arch not in VIT_SIZES:
        raise ConfigError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_SIZES)}")
    if image_size % patch_size:
        raise ConfigError(f"patch_size {patch_size} must divide image_size {image_size}")
    size = VIT_SIZES[arch]
    heads = num_heads or size.default_heads
    if size.embed_dim % heads:
        raise ConfigError(f"num_heads {heads} must divide the embedding width {size.embed_dim} of {arch}")
    model = PatchMixVisionTransformer(
        pos_embed_interpolation=pos_embed_interpolation,
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
        weight_init="moco" if initialisation == "moco" else "",
    )
    if initialisation == "moco":
        _init_patch_projection(model)
    else:  # DINO's ViT draws its cls token like its position embedding (timm: N(0, 1e-6))
        nn.init.trunc_normal_(model.cls_token, std=0.02)
    if position_embedding == "sincos":
        with torch.no_grad():
            model.pos_embed.copy_(sincos_position_embedding(model.patch_embed.grid_size, model.embed_dim))
        model.pos_embed.requires_grad_(False)
    if freeze_patch_embedding:
        model.patch_embed.proj.weight.requires_grad_(False)
        model.patch_embed.proj.bias.requires_grad_(False)
    return model


def sincos_position_embedding(grid_size: tuple[int, int], width: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos position embedding: (1, 1 + rows * cols, width), zeros for the cls token.

    As published, the first half of the channels encodes `token index // rows` and the second half
    `token index % rows` (its meshgrid's axis order), sin then cos in each half.
    """
    rows, cols = grid_size
    if width % 4:
        raise ConfigError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {width}")
    first_axis, second_axis = torch.meshgrid(torch.arange(cols, dtype=torch.float32),
                                             torch.arange(rows, dtype=torch.float32), indexing="ij")
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_first = first_axis.flatten()[:, None] * omega[None, :]
    out_second = second_axis.flatten()[:, None] * omega[None, :]
    table = torch.cat([out_first.sin(), out_first.cos(), out_second.sin(), out_second.cos()], dim=1)
    return torch.cat([torch.zeros(1, width), table], dim=0)[None]


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

