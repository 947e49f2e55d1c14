"""Training order and augmentation randomness as pure functions of (seed, epoch, position).

PyTorch's default shuffling draws its seed from the global RNG when an epoch's iterator
is made, and each DataLoader worker keeps its own RNG that persists across epochs. A run
resumed from a checkpoint starts fresh workers, so its augmentations differ from those of
an uninterrupted run unless ``num_workers=0``. Here the sampler yields ``(index, seed)``
pairs computed from the run's seed, the epoch and the position in the epoch, and
:class:`SeededDataset` applies each sample's transform under its own seed: the batches of
epoch ``e`` are the same whatever the number of workers and whether the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's SeedSequence: well spread, stable)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or weighted, with replacement) order per epoch; yields ``(index, sample_seed)``.

    Lightning calls :meth:`set_epoch` before every training epoch.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=gen)
        yield from zip(order.tolist(), seeds.tolist(), strict=True)


class SeededDataset(Dataset):
    """Wraps a dataset: item ``(i, seed)`` is ``base[i]`` computed with the RNGs seeded by ``seed``.

    The RNG states are forked, so the caller's (the training loop's) random streams are left
    untouched; plain integer indices pass straight through (evaluation).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.base[key]
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what CPU-side transforms draw from): torch.manual_seed
            # would also queue a lazy CUDA/XPU/MTIA seeding with a captured stack trace on a
            # GPU build without a GPU, ~1 ms per sample and a queue that grows all training.
            torch.default_generator.manual_seed(seed)
            return self.base[i]


def seeded_loader(
    dataset: Dataset,
    *,
    seed: int,
    batch_size: int,
    num_workers: int,
    start_epoch: int = 0,
    weights: Sequence[float] | None = None,
    collate_fn: Any = None,
) -> DataLoader:
    """The training DataLoader of every task: :class:`EpochSampler` order, per-sample seeds.

    ``start_epoch`` is the epoch a resumed run starts at: Lightning builds the first
    iterator before it calls ``set_epoch``.
    """
    sampler = EpochSampler(len(dataset), seed, weights=weights)  # type: ignore[arg-type]
    sampler.set_epoch(start_epoch)
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=len(dataset) > batch_size,  # type: ignore[arg-type]
        collate_fn=collate_fn,
    )
