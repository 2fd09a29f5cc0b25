"""PatchMix contrastive loss: soft-target InfoNCE over keys gathered from every rank.

L = w_oo  * CE(q(view1),     k(view2);     one-hot)        origin-to-origin
  + w_mo  * CE(q(mix view2), k(view1);     mix-to-origin)
  + w_mm  * CE(q(mix view2), k(mix view1); mix-to-mix)
with published weights 1, 1/2, 1/2, not symmetrised, and no 2*tau factor (recipes.md, "Loss").
Queries and keys are L2-normalised; logits = q @ k.T / tau; keys carry no gradient.
"""
from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.config import ConfigError, added_field


@dataclass
class LossConfig:
    RANGES: ClassVar[dict[str, str]] = {"temperature": "(0, inf)", "origin_smoothing": "[0, 1)",
        "origin_weight": "[0, inf)", "mix_to_origin_weight": "[0, inf)", "mix_to_mix_weight": "[0, inf)",
        "local_origin_weight": "[0, inf)", "local_mix_to_origin_weight": "[0, inf)"}
    temperature: float = 0.2  # tau of every InfoNCE term
    # Label smoothing of the origin-to-origin targets (global and local crops): the published code
    # builds them with its mixer's default smoothing 0.1 (0.9 + 0.1/N on the positive key, 0.1/N
    # elsewhere, N = gathered keys); the paper describes one-hot targets (0). Mix targets use mix.smoothing.
    origin_smoothing: float = added_field(0.0)
    origin_weight: float = 1.0  # origin-to-origin (Table 7 "o2o")
    mix_to_origin_weight: float = 0.5  # "m2o"
    mix_to_mix_weight: float = 0.5  # "m2m"
    # Multi-crop (official ImageNet preset): each group of terms is averaged over the local crops.
    local_origin_weight: float = 1.0
    local_mix_to_origin_weight: float = 1.0  # weight of the mixed local crops' mix-to-origin terms

    def check(self) -> None:
        weights = (self.origin_weight, self.mix_to_origin_weight, self.mix_to_mix_weight)
        if max(weights) == 0:
            raise ConfigError("loss weights must be >= 0 with at least one of origin_weight, "
                              "mix_to_origin_weight, mix_to_mix_weight positive")


def soft_target_cross_entropy(queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """Cross-entropy between softmax(normalize(q) @ normalize(k).T / tau) and soft targets.

    Args:
        queries: (B, d) with gradient; keys: (N, d) gathered from all ranks, no gradient;
        targets: (B, N), rows summing to 1.
    Returns a scalar, the mean over the B queries; computed in at least fp32 whatever the autocast dtype.
    """
    dtype = torch.promote_types(queries.dtype, torch.float32)  # fp32 under autocast, fp64 stays fp64
    queries = F.normalize(queries.to(dtype), dim=1)
    keys = F.normalize(keys.to(dtype), dim=1)
    logits = queries @ keys.detach().T / temperature
    return -(targets.to(dtype) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
