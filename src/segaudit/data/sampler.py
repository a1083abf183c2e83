"""An infinite, resumable batch sampler for iteration-based training."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Batches that depend only on (seed, step), so a resumed run sees the same data.

    The index stream is a concatenation of seeded permutations of the dataset, one per
    epoch; global batch `s` is positions `s*B ... s*B + B - 1` of that stream with
    B = batch_size * world_size, and rank r takes its `batch_size` slice of it. Batches
    may straddle epochs, so every batch is full even for tiny datasets.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ):
        if num_samples <= 0:
            raise ValueError("StepBatchSampler needs at least one sample")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._epoch = -1
        self._perm: list[int] = []

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_samples, generator=gen).tolist()
            self._epoch = epoch
        return self._perm[offset]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield [self._index(p) for p in range(first, first + self.batch_size)]
            step += 1

    def __len__(self) -> int:  # effectively infinite; DataLoader only needs a number
        return 2**62


def size_grouped_batches(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Evaluation batches of same-sized samples, in order of first appearance.

    Splits such as Mapillary's mix image sizes; a batch must not, and labels must not be
    resized to make it so. With one size throughout this is plain sequential batching.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [indices[i : i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)]
