"""kNN on standardised features: every feature dimension centred and scaled by the training set's
mean and standard deviation, then the same DINO-weighted vote as `knn` (a common variant: a few
high-variance dimensions no longer dominate the cosine similarity). Shares the `knn` settings and
the feature cache with the plain protocol."""
from __future__ import annotations

import torch

from evaluate.knn import knn_accuracy, resolve_backend
from evaluate.session import EvalSession, Protocol, protocol_main


def standardize(train_features: torch.Tensor, test_features: torch.Tensor,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D), (M, D) -> both minus the training mean, over the training std (per dimension)."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0).clamp(min=eps)
    return (train_features - mean) / std, (test_features - mean) / std


def run(session: EvalSession) -> dict:
    config = session.config
    encoder = session.encoder.build()
    query_split = config.knn.split  # as `knn`: the test set, or the validation images of a tuning
    (train_features, train_labels), (query_features, query_labels) = (session.features(encoder, split)
                                                                      for split in ("train", query_split))
    train_features, query_features = standardize(train_features.float(), query_features.float())
    backend = resolve_backend(config.knn.backend, session.device)
    metrics = knn_accuracy(train_features.to(session.device), train_labels, query_features, query_labels,
                           session.num_classes, config.knn, backend)
    return session.result(metrics, backend=backend, feature_kind=config.features.kind, split=query_split,
                          train_size=len(train_features), **{f"{query_split}_size": len(query_features)})


PROTOCOL = Protocol("knn_standardized", section="knn", presets=("default",), run=run, hours=2.0,
                    headline={"knn_standardized": ("top1_k20", "top-1, k=20, standardised features")})
main = protocol_main(PROTOCOL)
