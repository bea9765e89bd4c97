"""Which training images an epoch draws when extra labelled sets (``data.extra``) are mixed in.

Pseudo-labelled or otherwise extra images come with a ``weight``: each epoch draws every
image of the main labelled set once, and ``round(weight * n)`` of the ``n`` images of each
extra set (all of them ``floor(weight)`` times, the remainder a fresh random subset without
repeats), shuffled together. The draw depends only on the seed and the epoch, so reruns
repeat it and every DDP process (which shards the batches of one shared order) agrees::

    sampler = MixSampler([len(labelled), len(pseudo)], [1.0, 0.5], seed=42)
    loader = DataLoader(ConcatDataset([labelled, pseudo]), sampler=sampler, batch_size=4)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class MixSampler(Sampler[int]):
    """Indices into ``ConcatDataset(sets)``; ``weights[k]`` images of set k per image and epoch."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"need one weight per set, got sizes {list(sizes)} and weights {list(weights)}")
        for size, weight in zip(sizes, weights, strict=True):
            if size < 0 or weight < 0:
                raise ValueError(f"set sizes and weights must be >= 0, got {size} and {weight}")
        self.sizes, self.weights, self.seed = list(sizes), list(weights), seed
        self.epoch = 0

    def counts(self) -> list[int]:
        """Images drawn from each set per epoch."""
        return [round(w * n) for n, w in zip(self.sizes, self.weights, strict=True)]

    def __len__(self) -> int:
        return sum(self.counts())

    def set_epoch(self, epoch: int) -> None:
        """Draw as in ``epoch`` next (a resumed run continues the sequence of an uninterrupted one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        chosen, offset = [], 0
        for size, count in zip(self.sizes, self.counts(), strict=True):
            if size:
                repeats, rest = divmod(count, size)
                chosen += [torch.arange(size) + offset] * repeats
                chosen.append(torch.randperm(size, generator=generator)[:rest] + offset)
            offset += size
        indices = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        return iter(indices[torch.randperm(len(indices), generator=generator)].tolist())
