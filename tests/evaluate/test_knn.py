"""kNN backends against each other and a brute-force reference; voting by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluate.knn import KnnConfig, faiss_available, knn_accuracy, search, weighted_vote
from tests.tolerances import reordering_tolerance

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def brute_force(train, train_labels, test, test_labels, ks, num_classes, temperature=0.07):
    """numpy: full similarity matrix, argsort, weighted vote per query."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    similarity = b @ a.T
    order = np.argsort(-similarity, axis=1, kind="stable")
    out = {}
    for k in ks:
        top1 = top5 = 0
        for q in range(len(b)):
            scores = np.zeros(num_classes)
            for j in order[q, :k]:
                scores[train_labels[j]] += np.exp(similarity[q, j] / temperature)
            ranked = np.argsort(-scores, kind="stable")
            top1 += ranked[0] == test_labels[q]
            top5 += test_labels[q] in ranked[:5] and scores[test_labels[q]] > 0
        out[f"top1_k{k}"], out[f"top5_k{k}"] = 100 * top1 / len(b), 100 * top5 / len(b)
    return out, order


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 16))
    train_labels = rng.integers(0, 7, 500)
    test_labels = rng.integers(0, 7, 120)
    train = centres[train_labels] + rng.normal(scale=1.2, size=(500, 16))
    test = centres[test_labels] + rng.normal(scale=1.2, size=(120, 16))
    return train.astype(np.float32), train_labels, test.astype(np.float32), test_labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_brute_force(features, backend):
    train, train_labels, test, test_labels = features
    config = KnnConfig(ks=[1, 10, 20, 100], query_chunk=37, bank_chunk=64)  # odd chunks exercise merging
    expected, order = brute_force(train, train_labels, test, test_labels, config.ks, 7)
    got = knn_accuracy(torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(test),
                       torch.from_numpy(test_labels), 7, config, backend)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key  # one query is 0.83 %
    bank = torch.nn.functional.normalize(torch.from_numpy(train), dim=1)
    queries = torch.nn.functional.normalize(torch.from_numpy(test), dim=1)
    similarities, indices = search(bank, queries, 20, config, backend)
    assert np.array_equal(indices.numpy(), order[:, :20])  # no ties in continuous random data
    assert torch.all(similarities[:, :-1] >= similarities[:, 1:])


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_agree(features):
    train, _, test, _ = features
    bank = torch.nn.functional.normalize(torch.from_numpy(train), dim=1)
    queries = torch.nn.functional.normalize(torch.from_numpy(test), dim=1)
    config = KnnConfig(bank_chunk=100)
    faiss_result = search(bank, queries, 50, config, "faiss")
    torch_result = search(bank, queries, 50, config, "torch")
    assert torch.equal(faiss_result[1], torch_result[1])
    # Each similarity is one dot product of unit vectors: a sum of `dim` terms in another order (BLAS blocks).
    torch.testing.assert_close(faiss_result[0], torch_result[0],
                               **reordering_tolerance(torch_result[0], accumulated_terms=bank.shape[1]))


def test_vote_by_hand():
    """Two queries, three neighbours each, T = 0.5."""
    similarities = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]])
    labels = torch.tensor([[0, 1, 1], [2, 0, 0]])
    scores = weighted_vote(similarities, labels, 3, 0.5)
    e = np.exp
    expected = [[e(1.8), e(1.0) + e(0.2), 0], [e(1.4) + e(1.2), 0, e(1.6)]]
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float32))
    # Query 1: label 1 has two neighbours but label 0's single close one wins.
    assert scores.argmax(1).tolist() == [0, 0]


def test_all_k_come_from_one_search(features, monkeypatch):
    import evaluate.knn as knn_module

    calls = []
    original = knn_module.search

    def counting(bank, queries, k, config, backend=None):
        calls.append(k)
        return original(bank, queries, k, config, backend)

    monkeypatch.setattr(knn_module, "search", counting)
    train, train_labels, test, test_labels = features
    knn_accuracy(torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(test),
                 torch.from_numpy(test_labels), 7, KnnConfig(), "torch")
    assert calls == [200]


def test_backend_choice(monkeypatch):
    """auto: torch on a GPU (the measured backend; FAISS-GPU is opt-in), FAISS on a CPU when installed;
    asking for FAISS without it is one clear config error."""
    from common.config import ConfigError
    from evaluate import knn

    assert knn.resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    monkeypatch.setattr(knn, "faiss_available", lambda: False)
    assert knn.resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="knn.backend=faiss but FAISS is not installed"):
        knn.resolve_backend("faiss", torch.device("cpu"))
