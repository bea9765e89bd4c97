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

from steel_defect.errors import UserError


class EpochSampler(Sampler[int]):
    """A sampler whose draw depends only on ``seed`` and the epoch (see the module docstring)."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw as in ``epoch`` next (a resumed run continues the sequence of an uninterrupted one)."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        """This epoch's random generator; the next call gives the next epoch's."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        return generator


class MixSampler(EpochSampler):
    """Indices into ``ConcatDataset(sets)``; ``weights[k]`` images of set k per image and epoch."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise UserError(f"need one weight per set, got sizes {list(sizes)} and weights {list(weights)}")
        for size, weight in zip(sizes, weights, strict=True):
            if size < 0 or weight < 0:
                raise UserError(f"set sizes and weights must be >= 0, got {size} and {weight}")
        self.sizes, self.weights, self.seed = list(sizes), list(weights), seed
        self.epoch = 0

    def counts(self) -> list[int]:
        """Images drawn from each set per epoch."""
        return [round(w * n) for n, w in zip(self.sizes, self.weights, strict=True)]

    def __len__(self) -> int:
        return sum(self.counts())

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        chosen, offset = [], 0
        for size, count in zip(self.sizes, self.counts(), strict=True):
            if size:
                repeats, rest = divmod(count, size)
                chosen += [torch.arange(size) + offset] * repeats
                chosen.append(torch.randperm(size, generator=generator)[:rest] + offset)
            offset += size
        indices = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        return iter(indices[torch.randperm(len(indices), generator=generator)].tolist())


class BalancedSampler(EpochSampler):
    """Draws ``len(labels)`` images per epoch, with replacement, so that defect images make up
    ``defect_fraction`` of the draw on average, and an image's share among the defect images
    grows with ``class_weights`` (its largest weight over the classes it shows).

    labels: bool (N, 4) class presence per image. Seeded by ``seed`` and the epoch like
    :class:`MixSampler`. The 2019 winners balanced defect and defect-free frames this way,
    because about half of Severstal's frames are defect-free and classes 2 and 4 are rare.
    """

    def __init__(
        self, labels, defect_fraction: float = 0.5, class_weights=(1.0, 1.0, 1.0, 1.0), seed: int = 0
    ):
        labels = torch.as_tensor(labels, dtype=torch.bool)
        class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
        if labels.dim() != 2 or labels.shape[1] != len(class_weights):
            raise ValueError(
                f"labels must be (N, {len(class_weights)}) class presence, got {tuple(labels.shape)}"
            )
        if not 0.0 <= defect_fraction <= 1.0 or (class_weights <= 0).any():
            raise UserError(
                f"need defect_fraction in [0, 1] and class_weights > 0, got {defect_fraction} and "
                f"{class_weights.tolist()}"
            )
        defect = labels.any(dim=1)
        weight = torch.where(labels, class_weights, torch.zeros_like(class_weights)).max(dim=1).values
        if defect.any():
            weight[defect] *= defect_fraction / weight[defect].sum()
        if (~defect).any():
            weight[~defect] = (1.0 - defect_fraction) / int((~defect).sum())
        if weight.sum() <= 0:
            raise UserError("no image can be drawn: all defect-free with defect_fraction 1, or the reverse")
        self.weights, self.seed, self.epoch = weight, seed, 0

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        return iter(torch.multinomial(self.weights, len(self.weights), True, generator=generator).tolist())


class HardNegativeSampler(EpochSampler):
    """Every defect image, plus the defect-free images a model finds hardest, once per epoch.

    The 2019 winners trained the segmenter on defect images and on the defect-free images the
    classifier gets wrong. ``scores`` (N,) ranks the defect-free images (higher: more
    defect-like, e.g. the classifier's out-of-fold maximum class probability); the top ``keep``
    share of them joins each epoch, shuffled with the defect images (seeded by the epoch).
    """

    def __init__(self, labels, scores, keep: float = 0.5, seed: int = 0):
        labels = torch.as_tensor(labels, dtype=torch.bool)
        scores = torch.as_tensor(scores, dtype=torch.float64)
        if labels.dim() != 2 or scores.shape != labels.shape[:1]:
            raise ValueError(
                f"need labels (N, 4) and scores (N,), got {tuple(labels.shape)} and {tuple(scores.shape)}"
            )
        if not 0.0 <= keep <= 1.0:
            raise UserError(f"keep must be a share in [0, 1], got {keep}")
        defect = labels.any(dim=1)
        free = torch.nonzero(~defect).flatten()
        hardest = free[torch.argsort(scores[free], descending=True, stable=True)][: round(keep * len(free))]
        self.indices = torch.cat([torch.nonzero(defect).flatten(), hardest])
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        return iter(self.indices[torch.randperm(len(self.indices), generator=generator)].tolist())
