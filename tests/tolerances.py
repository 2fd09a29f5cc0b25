"""Tolerances for comparing two computations that differ only in the order of their floating-point
operations: a compiled graph against the eager one, FAISS against torch, timm's ViT against ours, one
process against two, a GPU against the CPU.

Why not a fixed `atol`: the difference such reorderings make depends on the dtype and on how many
terms each reduction adds, not on what one machine happened to produce (a fixed 1e-5 failed on a
2-core machine whose BLAS blocks its sums differently). Reordering a sum of n terms in a type with
unit roundoff u changes it by at most about n * u times the sum of the terms' magnitudes (the bound of
recursive summation; Higham, "Accuracy and Stability of Numerical Algorithms", section 4.2). Along a
chain of reductions -- the layers of a network, forward and backward -- these relative errors add, so
the bound uses the total number of terms summed along the chain. The magnitude that the terms pass
through is taken as the reference tensor's largest magnitude: an element much smaller than that is a
cancellation of larger terms and carries their rounding, not its own. The bound is a worst case (the
typical error grows like the square root of the terms), so it holds on any machine; it still fails a
difference of the computation itself (a dropped loss term, a wrong weight), which moves values by a good
fraction of their own size (tests/test_tolerances.py).
"""
from __future__ import annotations

import torch

from common.vit import VIT_SIZES


def reordering_tolerance(reference: torch.Tensor, accumulated_terms: int, dtype: torch.dtype | None = None,
                         magnitude: float | None = None) -> dict[str, float]:
    """`atol`/`rtol` for `torch.testing.assert_close` of a recomputation of `reference`.

    reference: the tensor of the reference computation (any shape); accumulated_terms: the number of
    terms summed along the longest chain of reductions that produced it (at least 1: an elementwise
    expression of k operations counts k); dtype: the type the computation rounds in (default the
    reference's; float32 where a float64 path passes through a float32 step); magnitude: the largest
    magnitude the terms pass through, where the reference's own is smaller (default its largest
    element): a gradient that cancels to nearly 0 was summed from the network's gradients, so
    gradients take the largest of all of them (`largest_magnitude`).
    """
    if accumulated_terms < 1:
        raise ValueError(f"accumulated_terms must be >= 1, got {accumulated_terms}")
    unit_roundoff = torch.finfo(dtype or reference.dtype).eps / 2
    relative = accumulated_terms * unit_roundoff
    if magnitude is None:
        magnitude = largest_magnitude([reference])
    return {"atol": relative * magnitude, "rtol": relative}


def largest_magnitude(tensors) -> float:
    """The largest absolute value of any element of `tensors` (an iterable of tensors)."""
    return max(tensor.detach().abs().max().item() for tensor in tensors)


def vit_accumulated_terms(arch: str, image_size: int, patch_size: int, batch: int,
                          head_widths: tuple[int, ...] = (), backward: bool = True) -> int:
    """Terms summed along the longest chain of reductions of a ViT's forward (and backward) pass.

    Per block: attention sums over the tokens and over the embedding (q.k, the projection), the MLP
    over 4 x the embedding and the embedding; each head layer over its input width. The backward pass
    repeats the forward's reductions (transposed), and a weight gradient sums over the batch's tokens.
    """
    size = VIT_SIZES[arch]
    tokens = (image_size // patch_size) ** 2 + 1
    per_block = tokens + 2 * size.embed_dim + 4 * size.embed_dim + size.embed_dim
    forward = size.depth * per_block + sum(head_widths)
    return 2 * forward + batch * tokens if backward else forward
