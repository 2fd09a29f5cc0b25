"""The Figure 4 similarity distribution on features with a known class structure."""
from __future__ import annotations

import pytest
import torch

from evaluate.similarity import SimilarityConfig, similarity_distribution


def class_centres(generator: torch.Generator) -> torch.Tensor:
    """Classes 2k and 2k+1 share a super-class direction: related classes exist by construction."""
    super_centres = torch.randn(3, 32, generator=generator) * 3
    return torch.stack([super_centres[c // 2] + torch.randn(32, generator=generator) for c in range(6)])


def clustered(centres: torch.Tensor, num_per_class: int, spread: float, generator: torch.Generator):
    labels = torch.arange(6).repeat_interleave(num_per_class)
    return centres[labels] + spread * torch.randn(len(labels), 32, generator=generator), labels


def test_profile_finds_the_related_class():
    generator = torch.Generator().manual_seed(0)
    centres = class_centres(generator)
    train, train_labels = clustered(centres, 100, 0.5, generator)
    test, test_labels = clustered(centres, 20, 0.5, generator)
    out = similarity_distribution(train, train_labels, test, test_labels, 6,
                                  SimilarityConfig(num_queries=100, profile_length=5, keys_per_query=200))
    profile = out["similarity_profile"]
    assert len(profile) == 6 and profile[0] > profile[1] > profile[2]  # own > related > the rest
    assert profile[1] - profile[2] > 0.2  # the sibling class stands out from unrelated ones
    metrics = out["metrics"]
    assert metrics["same_class_pair_similarity"] > metrics["other_class_pair_similarity"]
    width = 2.0 / (len(out["similarity_histogram_edges"]) - 1)
    assert sum(out["similarity_histogram_same"]) * width == pytest.approx(1.0, abs=1e-4)
