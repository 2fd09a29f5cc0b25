"""PatchMix networks: base encoder + projector + predictor, and the momentum (EMA) copy.

Heads follow Table 9 / MoCo v3: projector 3 linear layers (4096, 4096, 256), predictor 2 (4096,
256); linear layers without bias, each followed by BatchNorm (+ReLU except the last, whose BN has
no affine parameters). The published ViT-T preset has no momentum encoder: keys then come from the
base encoder and projector under no_grad.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from common.config import ConfigError, added_field
from common.vit import INITIALISATIONS, POS_EMBED_INTERPOLATIONS, POSITION_EMBEDDINGS, VIT_SIZES, build_vit


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    RANGES: ClassVar[dict[str, str]] = {"patch_size": "[1, inf)", "image_size": "[1, inf)",
        "num_heads": "[0, inf)", "drop_path_rate": "[0, 1)", "projector_hidden_dim": "[1, inf)",
        "predictor_hidden_dim": "[1, inf)", "output_dim": "[1, inf)"}
    arch: str = "vit_small"  # vit_tiny | vit_small | vit_base (vit_debug, vit_mini: tests and the CPU demo)
    patch_size: int = 16  # ViT patch side in pixels; also PatchMix's mix patch (16 ImageNet, 2 CIFAR)
    image_size: int = 224  # training input side in pixels (global crops)
    num_heads: int = 0  # 0 = the arch's default (ViT-S: 12 as published; the paper's Table 8 says 6)
    drop_path_rate: float = 0.1  # base encoder only
    projector_hidden_dim: int = 4096  # projector: Linear+BN+ReLU x2 of this width, then output_dim
    predictor_hidden_dim: int = 4096  # predictor: Linear+BN+ReLU of this width, then output_dim
    output_dim: int = 256  # embedding size of queries and keys (256 in Table 9)
    momentum_encoder: bool = True  # keys from an EMA copy; false = from the base encoder (published ViT-T)
    # Position embeddings for inputs of another size (96 px local crops): timm (exact size,
    # antialiased) or dino (bicubic, scale (size + 0.1) / grid, no antialias: the published ViT).
    pos_embed_interpolation: str = added_field("timm")
    # Multi-crop: all local crops pass the projector/predictor as one batch (BatchNorm statistics over
    # n x B samples), and all mixed local crops as another, as published; off = each view alone.
    batch_local_heads: bool = added_field(False)
    # The encoders' starting values and which stem parameters learn (common/vit.py build_vit); the
    # evaluated ViT is the same whatever they are.
    initialisation: str = added_field("moco")  # moco (MoCo v3's, PatchMix, SDMP) | dino (DINO's ViT)
    position_embedding: str = added_field("learned")  # learned | sincos (MoCo v3's fixed 2-D table)
    freeze_patch_embedding: bool = added_field(False)  # MoCo v3's stop-grad-conv1 (SDMP's published runs)
    # Speed switches (make bench measures them). batch_views: one encoder call per group of
    # same-size views (the heads still see each view alone: BatchNorm keeps per-view statistics).
    # compile: torch.compile the encoders (on in the ImageNet and CIFAR presets; same loss and
    # gradients within bf16 rounding, tests/gpu). grad_checkpointing: recompute block activations in the
    # backward pass (less memory, ~30 % more compute), for large batches of ViT-B/2.
    batch_views: bool = True
    compile: bool = False  # torch.compile the encoders (falls back to eager on failure)
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune...
    grad_checkpointing: bool = False  # recompute block activations in the backward pass (less memory)

    def check(self) -> None:
        if self.arch not in VIT_SIZES:
            raise ConfigError(f"arch {self.arch!r} is not one of {', '.join(VIT_SIZES)}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ConfigError(f"pos_embed_interpolation {self.pos_embed_interpolation!r} is not one of "
                              f"{', '.join(POS_EMBED_INTERPOLATIONS)}")
        if self.initialisation not in INITIALISATIONS:
            raise ConfigError(f"initialisation {self.initialisation!r} is not one of {', '.join(INITIALISATIONS)}")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(f"position_embedding {self.position_embedding!r} is not one of "
                              f"{', '.join(POSITION_EMBEDDINGS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")


def build_encoder(config: ModelConfig, drop_path_rate: float) -> nn.Module:
    """The ViT of `config` (student / base encoder with drop path, teacher / momentum encoder without)."""
    return build_vit(config.arch, config.patch_size, config.image_size, config.num_heads, drop_path_rate,
                     config.pos_embed_interpolation, config.initialisation, config.position_embedding,
                     config.freeze_patch_embedding)


def encode_views(encoder: nn.Module, views: Sequence[torch.Tensor], batch_views: bool = True) -> list[torch.Tensor]:
    """CLS features of each view; same-size views share one encoder call when `batch_views` is on
    (DINO's multi-crop wrapper does the same).

    The ViT has no batch statistics (LayerNorm is per token), so this equals encoding each view
    alone; only drop path's random draws are laid out differently."""
    if not batch_views or len(views) == 1:
        return [encoder(view) for view in views]
    groups: dict[tuple, list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(tuple(view.shape[1:]), []).append(index)
    features: list[torch.Tensor | None] = [None] * len(views)
    for indices in groups.values():
        outputs = encoder(torch.cat([views[i] for i in indices])) if len(indices) > 1 else encoder(views[indices[0]])
        for index, output in zip(indices, outputs.split([views[i].shape[0] for i in indices])):
            features[index] = output
    return features


def compile_encoders(encoders: Sequence[nn.Module | None], mode: str) -> None:
    """torch.compile each encoder in place (parameter names and checkpoints stay as they are).

    Where compilation fails (no Triton or C compiler, an unsupported op), dynamo runs the encoder
    eagerly and logs why, instead of stopping the run."""
    torch._dynamo.config.suppress_errors = True
    for encoder in encoders:
        if encoder is not None:
            encoder.compile(mode=None if mode == "default" else mode)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """Linear(no bias)+BN+ReLU repeated, last layer Linear(no bias)+BN(affine=False)."""
    layers: list[nn.Module] = []
    for layer in range(num_layers):
        last = layer == num_layers - 1
        width = out_dim if last else hidden_dim
        layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width, affine=not last)]
        if not last:
            layers.append(nn.ReLU(inplace=True))
        in_dim = width
    return nn.Sequential(*layers)


class PatchMixModel(nn.Module):
    """`forward(views, head_groups)` returns the queries of a list of image batches (each
    (B, 3, H, W) -> (B, d)). Each group of consecutive views in `head_groups` passes the heads as one
    batch (BatchNorm statistics over the group); by default every view is its own group. One forward
    call per step keeps DistributedDataParallel's gradient hooks simple. `keys(views)` is the
    gradient-free key path.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.base_encoder = build_encoder(config, config.drop_path_rate)
        width = self.base_encoder.embed_dim
        self.projector = mlp_head(width, config.projector_hidden_dim, config.output_dim, 3)
        self.predictor = mlp_head(config.output_dim, config.predictor_hidden_dim, config.output_dim, 2)
        self.momentum_encoder: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None
        if config.momentum_encoder:
            # Same weights, no drop path: stochastic depth regularises the base encoder only.
            self.momentum_encoder = build_encoder(config, 0.0)
            self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())
            self.momentum_projector = copy.deepcopy(self.projector)
            for parameter in self.momentum_parameters():
                parameter.requires_grad_(False)
        if config.grad_checkpointing:
            self.base_encoder.set_grad_checkpointing(True)
        if config.compile:
            compile_encoders((self.base_encoder, self.momentum_encoder), config.compile_mode)

    def momentum_parameters(self) -> list[nn.Parameter]:
        if self.momentum_encoder is None:
            return []
        return [*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()]

    def online_parameters_for_momentum(self) -> list[nn.Parameter]:
        return [*self.base_encoder.parameters(), *self.projector.parameters()]

    def encode(self, encoder: nn.Module, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """CLS features of each view (encode_views with this model's batch_views switch)."""
        return encode_views(encoder, views, self.config.batch_views)

    def forward(self, views: Sequence[torch.Tensor], head_groups: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Queries of each view. head_groups: sizes of consecutive groups of views that share one
        head call (sum = len(views)); None = one group per view."""
        features = self.encode(self.base_encoder, views)
        queries: list[torch.Tensor] = []
        start = 0
        for size in head_groups or [1] * len(views):
            group = features[start: start + size]
            start += size
            outputs = self.predictor(self.projector(torch.cat(group) if size > 1 else group[0]))
            queries.extend(outputs.split([f.shape[0] for f in group]) if size > 1 else [outputs])
        if start != len(views):
            raise ValueError(f"head_groups {list(head_groups)} do not cover the {len(views)} views")
        return queries

    def synchronise_head_batchnorms(self) -> None:
        """Head BatchNorm statistics over the global batch under DDP, as MoCo v3's code does
        (SyncBatchNorm exists on GPUs only; on CPU each process normalises its own batch)."""
        for name in ("projector", "predictor", "momentum_projector"):
            head = getattr(self, name)
            if head is not None:
                setattr(self, name, nn.SyncBatchNorm.convert_sync_batchnorm(head))

    @torch.no_grad()
    def keys(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.momentum_encoder is None:
            return [self.projector(f) for f in self.encode(self.base_encoder, views)]
        return [self.momentum_projector(f) for f in self.encode(self.momentum_encoder, views)]

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """EMA: key_param <- momentum * key_param + (1 - momentum) * query_param (one foreach call)."""
        if self.momentum_encoder is None:
            return
        key_params = self.momentum_parameters()
        query_params = [p.detach() for p in self.online_parameters_for_momentum()]
        torch._foreach_lerp_(key_params, query_params, 1.0 - momentum)
        # BatchNorm running statistics are buffers, not parameters: the published code does not
        # average them (the key path runs in train mode and uses batch statistics anyway).

    def evaluation_encoder(self) -> nn.Module:
        """The encoder used by all evaluation protocols: momentum encoder when present, else base."""
        return self.momentum_encoder if self.momentum_encoder is not None else self.base_encoder
