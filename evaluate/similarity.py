"""Inter-instance similarity distribution (the paper's Figure 4): how much similarity a query image
has with images of its own class and of related classes, measured on frozen CLS features.

For sampled test queries q and L2-normalised training features x:
- class similarity s(q, c) = mean over training images of class c of cos(q, x) (= q . mean_c);
- profile: s(q, own class), then the other classes' s(q, c) sorted, averaged over queries;
- histograms of query-to-image cosine similarities for same-class and other-class pairs.
The paper's claim is that PatchMix spreads similarity to related classes (a flatter profile) where
DINO and SDMP concentrate it on the query's own class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluate.configs import SimilarityConfig
from evaluate.session import EvalSession, Protocol, protocol_main

HISTOGRAM_BINS = 40


@torch.no_grad()
def similarity_distribution(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                            test_labels: torch.Tensor, num_classes: int, config: SimilarityConfig,
                            seed: int = 0) -> dict:
    """train_features: (N, D), test_features: (M, D), labels (N,), (M,). Returns metrics and arrays."""
    generator = torch.Generator().manual_seed(seed)
    bank = F.normalize(train_features.float(), dim=1)
    chosen = torch.randperm(len(test_features), generator=generator)[: config.num_queries]
    queries = F.normalize(test_features[chosen].float(), dim=1)
    labels = test_labels[chosen]
    class_sums = torch.zeros(num_classes, bank.shape[1]).index_add_(0, train_labels, bank)
    class_counts = torch.bincount(train_labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    class_similarity = queries @ (class_sums / class_counts).T  # (Q, C)
    own = class_similarity.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = class_similarity.scatter(1, labels.unsqueeze(1), float("-inf")).sort(dim=1, descending=True).values
    length = min(config.profile_length, num_classes - 1)
    profile = others[:, :length].mean(dim=0)

    keys = torch.randint(0, len(bank), (len(queries), config.keys_per_query), generator=generator)
    pair_similarity = torch.einsum("qd,qkd->qk", queries, bank[keys])
    same = train_labels[keys] == labels.unsqueeze(1)
    edges = torch.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)
    histogram_same = torch.histogram(pair_similarity[same], bins=edges, density=True).hist
    histogram_other = torch.histogram(pair_similarity[~same], bins=edges, density=True).hist
    return {
        "metrics": {"own_class_similarity": own.mean().item(),
                    "related_class_similarity": others[:, : min(5, length)].mean().item(),
                    "related_to_own_ratio": (others[:, : min(5, length)].mean(dim=1) / own.clamp(min=1e-6)).mean().item(),
                    "same_class_pair_similarity": pair_similarity[same].mean().item(),
                    "other_class_pair_similarity": pair_similarity[~same].mean().item()},
        "similarity_profile": [own.mean().item(), *profile.tolist()],
        "similarity_histogram_edges": edges.tolist(),
        "similarity_histogram_same": histogram_same.tolist(),
        "similarity_histogram_other": histogram_other.tolist(),
    }


def run(session: EvalSession) -> dict:
    """The similarity protocol (features shared with kNN through the cache)."""
    config = session.config
    encoder = session.encoder.build()
    (train_features, train_labels), (test_features, test_labels) = (session.features(encoder, split)
                                                                    for split in ("train", "test"))
    output = similarity_distribution(train_features, train_labels, test_features, test_labels, session.num_classes,
                                     config.similarity, config.run.seed)
    metrics = output.pop("metrics")
    return session.result(metrics, **output)


PROTOCOL = Protocol("similarity", section="similarity", presets=("default",), run=run,
                    headline={"similarity": ("related_class_similarity",
                                             "mean cosine to the 5 most similar other classes")})
main = protocol_main(PROTOCOL)
