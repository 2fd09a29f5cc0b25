"""DINO-weighted kNN classification from ONE nearest-neighbour search.

Features are L2-normalised, neighbours ranked by cosine similarity, and each of the k nearest
training images votes for its label with weight exp(similarity / T), T = 0.07. All k in
{10, 20, 100, 200} are read from a single search with the largest k (neighbours come back sorted).

Backends behind `search`: `faiss` (exact inner-product index; on the GPU when FAISS was built
with GPU support and the features live on a GPU) and `torch` (chunked matmul + running top-k on any
device, memory bounded by the chunk sizes). `auto` picks torch on a GPU (the measured one; FAISS-GPU
is opt-in with knn.backend=faiss), FAISS-CPU on a CPU when installed, else torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.config import ConfigError
from evaluate.configs import KnnConfig
from evaluate.session import EvalSession, Protocol, protocol_main

def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401  # optional dependency: faiss-cpu or faiss-gpu
    except ImportError:
        return False
    return True


def faiss_has_gpu() -> bool:
    if not faiss_available():
        return False
    import faiss  # optional dependency: faiss-cpu or faiss-gpu

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(name: str, device: torch.device) -> str:
    """'auto' -> the fastest available backend for features on `device` (see module docstring)."""
    if name == "faiss" and not faiss_available():
        raise ConfigError("knn.backend=faiss but FAISS is not installed (pip install faiss-cpu, or "
                          "faiss-gpu on CUDA clusters); knn.backend=torch needs nothing extra")
    if name != "auto":
        return name
    # On a GPU the torch backend is the one measured (ImageNet size: 0.64 s in fp16 on one H200,
    # docs/measurements); FAISS-GPU is opt-in (knn.backend=faiss) until it is measured too.
    if device.type == "cuda":
        return "torch"
    return "faiss" if faiss_available() else "torch"


@torch.no_grad()
def _torch_search(bank: torch.Tensor, queries: torch.Tensor, k: int, config: KnnConfig):
    dtype = torch.float16 if (config.half_precision and bank.device.type == "cuda") else torch.float32
    bank = bank.to(dtype)
    all_similarities, all_indices = [], []
    for start in range(0, len(queries), config.query_chunk):
        query = queries[start: start + config.query_chunk].to(bank.device, dtype)
        best_similarities = best_indices = None
        for bank_start in range(0, len(bank), config.bank_chunk):
            scores = query @ bank[bank_start: bank_start + config.bank_chunk].T  # (q, chunk)
            similarities, indices = scores.topk(min(k, scores.shape[1]), dim=1)
            indices = indices + bank_start
            if best_similarities is not None:  # merge with the running top-k of earlier chunks
                similarities = torch.cat([best_similarities, similarities], dim=1)
                indices = torch.cat([best_indices, indices], dim=1)
                similarities, order = similarities.topk(min(k, similarities.shape[1]), dim=1)
                indices = indices.gather(1, order)
            best_similarities, best_indices = similarities, indices
        all_similarities.append(best_similarities.float())
        all_indices.append(best_indices)
    return torch.cat(all_similarities), torch.cat(all_indices)


def _faiss_search(bank: torch.Tensor, queries: torch.Tensor, k: int, config: KnnConfig):
    import faiss  # optional dependency: faiss-cpu or faiss-gpu

    bank_array = bank.float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(bank_array.shape[1])
    on_gpu = bank.device.type == "cuda" and faiss_has_gpu()
    if on_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, bank.device.index or 0, index)
    index.add(bank_array)
    similarities, indices = [], []
    for start in range(0, len(queries), config.query_chunk):
        chunk = queries[start: start + config.query_chunk].float().cpu().contiguous().numpy()
        scores, ids = index.search(chunk, k)
        similarities.append(torch.from_numpy(scores))
        indices.append(torch.from_numpy(ids).long())
    return torch.cat(similarities).to(queries.device), torch.cat(indices).to(queries.device)


def search(bank: torch.Tensor, queries: torch.Tensor, k: int, config: KnnConfig,
           backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours by inner product.

    Args:
        bank: (N, D) and queries: (Q, D), already L2-normalised, on the same device.
    Returns:
        similarities (Q, k) float32 sorted descending, indices (Q, k) long into the bank.
    """
    k = min(k, len(bank))
    backend = resolve_backend(backend or config.backend, bank.device)
    if backend == "faiss":
        return _faiss_search(bank, queries, k, config)
    return _torch_search(bank, queries, k, config)


def weighted_vote(similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                  temperature: float) -> torch.Tensor:
    """similarities, neighbour_labels: (Q, k) -> class scores (Q, C) = sum of exp(sim / T) per label."""
    weights = (similarities / temperature).exp()
    scores = torch.zeros(len(similarities), num_classes, device=similarities.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, config: KnnConfig,
                 backend: str | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) for every k in config.ks, from one search with max(ks).

    Returns {"top1_k10": ..., "top5_k10": ..., ...}.
    """
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1).to(bank.device)
    similarities, indices = search(bank, queries, max(config.ks), config, backend)
    neighbour_labels = train_labels.to(indices.device)[indices]
    test_labels = test_labels.to(indices.device)
    results = {}
    for k in sorted(config.ks):
        scores = weighted_vote(similarities[:, :k], neighbour_labels[:, :k], num_classes, config.temperature)
        top_scores, top = scores.topk(min(5, num_classes), dim=1)
        # A class with no vote is never a hit (with k < 5 the zero-score ties would be arbitrary).
        correct = (top == test_labels.unsqueeze(1)) & (top_scores > 0)
        results[f"top1_k{k}"] = 100.0 * correct[:, 0].float().mean().item()
        results[f"top5_k{k}"] = 100.0 * correct.any(dim=1).float().mean().item()
    return results


def run(session: EvalSession) -> dict:
    """The kNN protocol: features of the training images (the bank) and of the query split (`knn.split`:
    the test set, or the validation images held out of the training set, the only split a tuning
    reads), then one search. The split it does not query is never built."""
    config = session.config
    encoder = session.encoder.build()
    query_split = config.knn.split
    (train_features, train_labels), (query_features, query_labels) = (session.features(encoder, split)
                                                                      for split in ("train", query_split))
    backend = resolve_backend(config.knn.backend, session.device)
    metrics = knn_accuracy(train_features.to(session.device), train_labels, query_features, query_labels,
                           session.num_classes, config.knn, backend)
    return session.result(metrics, backend=backend, feature_kind=config.features.kind, split=query_split,
                          train_size=len(train_features), **{f"{query_split}_size": len(query_features)})


PROTOCOL = Protocol("knn", section="knn", presets=("default",), run=run,
                    headline={"knn": ("top1_k20", "top-1, k=20")}, hours=2.0)
main = protocol_main(PROTOCOL)
