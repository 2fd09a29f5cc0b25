"""PatchMix (this paper's method) as a pretraining method: MoCo v3 networks (pretrain/model.py) and
the mix-to-origin, mix-to-mix and origin-to-origin soft-target InfoNCE terms (recipes.md, "Loss").

One step: update the momentum encoder, mix both views at patch level with a permutation drawn from
the step's generator, compute queries for view 1 and mixed view 2 and keys for view 1, view 2 and
mixed view 1, and minimise the weighted terms. Any mixer of pretrain/mixers.py (Table 5) runs here;
m = 1 is the MoCo v3 baseline.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from common import dist
from common.config import ConfigError
from pretrain.loss import soft_target_cross_entropy
from pretrain.methods.base import LossContext, PretrainingMethod
from pretrain.mixers import MixResult, apply_mixer, mix_to_mix_from_compositions, place_targets
from pretrain.model import PatchMixModel
from pretrain.patchmix import origin_targets

if TYPE_CHECKING:  # pretrain.configs imports the methods: a run-time import would be a cycle
    from pretrain.configs import PretrainConfig


def patchmix_loss(model: nn.Module, keys_model: PatchMixModel, views: Sequence[torch.Tensor],
                  config: "PretrainConfig", generator: torch.Generator, rank: int = 0,
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
    sections = ("mix", "loss")
    uses_local_crops = True
    # Around the cpu scale's lr 1e-2 and MoCo v3's temperature 0.2 (also MoCo v3's space, with m = 1).
    tuning_space = {"optim.base_lr": (3e-3, 5e-3, 1e-2, 2e-2), "loss.temperature": (0.1, 0.2, 0.3)}

    def check(self, config: "PretrainConfig") -> None:
        tokens = (config.model.image_size // config.model.patch_size) ** 2
        if config.mix.num_mixed > tokens:
            raise ConfigError(f"mix.num_mixed={config.mix.num_mixed} exceeds the {tokens} tokens per image")

    def build_model(self, config: "PretrainConfig") -> PatchMixModel:
        return PatchMixModel(config.model)

    def has_momentum_encoder(self, config: "PretrainConfig") -> bool:
        return config.model.momentum_encoder

    def loss(self, query_model: nn.Module, model: nn.Module, views: Sequence[torch.Tensor],
             config: "PretrainConfig", context: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return patchmix_loss(query_model, model, views, config, context.generator, context.rank, context.world_size)

    def distributed(self, model: nn.Module, device: torch.device) -> nn.Module:
        if dist.world_size() > 1 and device.type == "cuda":
            model.synchronise_head_batchnorms()
        return super().distributed(model, device)


METHOD = PatchMix()
