"""Deterministic, resumable, rank-sharded sampling with per-sample seeded augmentation.

The randomness of every training sample is a function of (seed, epoch, sample index) only, and the
global batch at step s is the same whatever the number of ranks or loader workers. That is what
makes a killed-and-resumed run, or a run on a different number of loader workers, repeat exactly.
"""
from __future__ import annotations

import contextlib
import itertools
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from common.runtime import derive_seed


class SeededViews(Dataset):
    """Wrap a dataset of (PIL image, label) into one of ([view_1, ..., view_n], label).

    Indexed by (index, epoch) pairs, as yielded by `EpochSampler`; each view transform runs under
    the global generators seeded from (seed, epoch, index), so loader workers cannot change it.
    """

    def __init__(self, base: Dataset, view_transforms: Sequence[Callable], seed: int):
        self.base, self.view_transforms, self.seed = base, list(view_transforms), seed

    def __len__(self) -> int:
        return len(self.base)

    def draw_views(self, image, key: tuple[int, int]) -> list:
        """Each view transform applied to `image` with torch's CPU, Python's and numpy's global
        generators seeded from (seed, epoch, index) (timm's RandAugment and RandomErasing draw from
        the latter two). Leaves them seeded: callers run it inside `caller_generators_kept`."""
        index, epoch = key
        seed = derive_seed(self.seed, epoch, index)
        # The CPU generator only: the transforms run on the CPU, and torch.manual_seed would also
        # queue a seeding of every lazily initialised accelerator backend, which formats a stack
        # trace per call (half of a Fashion-MNIST sample's loading time). Same draws.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return [transform(image) for transform in self.view_transforms]

    def seeded_sample(self, key: tuple[int, int]):
        """(views, label) of `key`, drawn with the generators seeded from it (not restored)."""
        image, label = self.base[key[0]]
        return self.draw_views(image, key), label

    def __getitem__(self, key: tuple[int, int]):
        """(views, label), the caller's generators restored afterwards."""
        with caller_generators_kept():
            return self.seeded_sample(key)

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list:
        """[self[key] for key in keys], the DataLoader's batched fetch: the caller's generators are
        saved and restored once per batch instead of once per sample (copying numpy's and Python's
        generator states was a fifth of a Fashion-MNIST sample's loading time). Same samples."""
        with caller_generators_kept():
            return [self.seeded_sample(key) for key in keys]


@contextlib.contextmanager
def caller_generators_kept() -> Iterator[None]:
    """Run the body with torch's CPU, Python's and numpy's global generators restored afterwards, so
    that seeding them per sample leaves the training process's own draws unchanged."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class EpochSampler(Sampler):
    """Shuffles once per epoch from (seed, epoch); the global batch b is order[b*G:(b+1)*G] with
    G = batch_per_rank * world_size, and rank r takes its r-th slice of it. Yields (index, epoch).
    The incomplete last global batch is dropped. `set_epoch(epoch, start_batch)` resumes mid-epoch.
    """

    def __init__(self, dataset_size: int, batch_per_rank: int, seed: int, rank: int = 0,
                 world_size: int = 1, batch_field: str = "optim.batch_size"):
        global_batch = batch_per_rank * world_size
        if dataset_size < global_batch:
            raise ValueError(f"the dataset has {dataset_size} images, fewer than one global batch of "
                             f"{global_batch}; lower {batch_field} or use more data")
        self.dataset_size, self.batch_per_rank, self.seed = dataset_size, batch_per_rank, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset_size // (self.batch_per_rank * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        order = torch.randperm(self.dataset_size, generator=generator)
        global_batch = self.batch_per_rank * self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * global_batch + self.rank * self.batch_per_rank
            for index in order[start: start + self.batch_per_rank].tolist():
                yield index, self.epoch


class StepSpanSampler(Sampler):
    """The samples of global steps [start, stop) of `epochs`, epoch after epoch: what one loader
    yields for a whole training run, so its workers and their prefetched batches carry over epoch
    boundaries instead of being started again (and the pipeline drained) every epoch. Yields the
    same (index, epoch) pairs, in the same order, as `epochs` set to each epoch in turn.
    """

    def __init__(self, epochs: EpochSampler, start: int, stop: int):
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.epochs, self.start, self.stop = epochs, start, stop

    def __len__(self) -> int:
        return (self.stop - self.start) * self.epochs.batch_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_epoch, step = self.epochs.batches_per_epoch, self.start
        while step < self.stop:
            epoch, batch_in_epoch = divmod(step, per_epoch)
            self.epochs.set_epoch(epoch, batch_in_epoch)
            batches = min(per_epoch - batch_in_epoch, self.stop - step)
            yield from itertools.islice(iter(self.epochs), batches * self.epochs.batch_per_rank)
            step += batches

