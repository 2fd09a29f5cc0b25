"""StepSpanSampler: one loader for a whole run yields exactly what a loader per epoch yielded."""
from __future__ import annotations

import pytest

from common.sampling import EpochSampler, StepSpanSampler


def per_epoch_samples(sampler: EpochSampler, start: int, stop: int) -> list[tuple[int, int]]:
    """The samples of steps [start, stop) as the training loop used to read them: one pass of the
    sampler per epoch, resumed mid-epoch at `start`, cut at `stop`."""
    samples, step = [], start
    while step < stop:
        epoch, batch_in_epoch = divmod(step, sampler.batches_per_epoch)
        sampler.set_epoch(epoch, batch_in_epoch)
        samples += list(sampler)
        step += sampler.batches_per_epoch - batch_in_epoch
    return samples[: (stop - start) * sampler.batch_per_rank]


@pytest.mark.parametrize("start, stop", [(0, 12), (5, 12), (3, 7), (4, 8), (9, 9)])
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_step_span_matches_one_pass_per_epoch(start, stop, rank, world_size):
    # 26 images, 3 per rank: 4 (one rank) or 4 (two ranks, 6 per global batch) batches per epoch,
    # the incomplete last global batch dropped.
    def sampler():
        return EpochSampler(26, 3, seed=7, rank=rank, world_size=world_size)

    span = StepSpanSampler(sampler(), start, stop)
    samples = list(span)
    assert samples == per_epoch_samples(sampler(), start, stop)
    assert len(samples) == len(span) == (stop - start) * 3
    assert list(span) == samples  # iterating again repeats the span


def test_step_span_refuses_a_stop_before_its_start():
    with pytest.raises(ValueError, match="start <= stop"):
        StepSpanSampler(EpochSampler(26, 3, seed=0), 5, 4)
