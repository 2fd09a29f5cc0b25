"""The reordering tolerance holds for reordered float32 sums of any size, and fails a real difference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tolerances import reordering_tolerance


@pytest.mark.parametrize("terms", [16, 1024, 65536])
def test_reordered_sums_stay_within_the_bound(terms):
    values = torch.randn(64, terms, generator=torch.Generator().manual_seed(terms)) * 100
    reference = values.double().sum(dim=1).float()  # exact, rounded once
    orders = [values.sum(dim=1), values.flip(1).sum(dim=1), values.cumsum(dim=1)[:, -1],
              values.view(64, -1, 16).sum(dim=2).sum(dim=1)]
    for reordered in orders:
        # the worst case scales with the magnitude of the terms, not of the (cancelling) sum
        torch.testing.assert_close(reordered, reference,
                                   **reordering_tolerance(reference, terms, magnitude=values.abs().sum(1).max().item()))


def test_a_changed_computation_is_not_within_the_bound():
    """A real difference -- one of 256 terms dropped, one term's weight changed -- is far outside it."""
    values = torch.rand(8, 256, generator=torch.Generator().manual_seed(0)) + 0.5
    reference = values.sum(dim=1)
    tolerance = reordering_tolerance(reference, 256)
    for changed in (values[:, 1:].sum(dim=1), reference + 0.5 * values[:, 0]):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(changed, reference, **tolerance)


def test_a_fixed_tolerance_does_not_scale_with_the_sum():
    """Why the suite derives its tolerances: a sum of 65,536 float32 terms added one at a time differs
    from torch's blocked sum by more than a fixed atol of 1e-5, while staying within n * u of it."""
    values = torch.randn(65536, generator=torch.Generator().manual_seed(1))
    sequential = np.float32(0)
    for value in values.numpy():
        sequential = np.float32(sequential + value)
    blocked = values.sum()
    assert abs(float(sequential) - float(blocked)) > 1e-5
    torch.testing.assert_close(torch.tensor(float(sequential)), blocked,
                               **reordering_tolerance(blocked, 65536, magnitude=values.abs().sum().item()))


def test_accumulated_terms_must_be_positive():
    with pytest.raises(ValueError, match="accumulated_terms"):
        reordering_tolerance(torch.ones(2), 0)
