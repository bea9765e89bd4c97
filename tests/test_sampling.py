"""The balanced training draw: shares by defect and class, seeded per epoch, wired into the loader."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from steel_defect.config import ConfigError
from steel_defect.data.loaders import build_loaders
from steel_defect.data.sampling import BalancedSampler, HardNegativeSampler
from tests.conftest import tiny_cfg


def test_balanced_draw_follows_defect_fraction_and_class_weights():
    labels = np.zeros((10, 4), bool)
    labels[0, 0] = True  # a class-1 image
    labels[1, 1] = True  # a class-2 image, weighted 3x
    sampler = BalancedSampler(labels, defect_fraction=0.5, class_weights=[1, 3, 1, 1], seed=3)
    counts = Counter(i for _ in range(400) for i in sampler)
    draws = 400 * len(labels)
    assert len(sampler) == 10
    assert counts[0] + counts[1] == pytest.approx(draws / 2, rel=0.05)  # half defect images ...
    assert counts[1] / counts[0] == pytest.approx(3, rel=0.15)  # ... the class-2 one 3x as often
    assert all(counts[i] == pytest.approx(draws / 2 / 8, rel=0.15) for i in range(2, 10))
    first = list(BalancedSampler(labels, seed=3))
    assert list(BalancedSampler(labels, seed=3)) == first != list(BalancedSampler(labels, seed=4))
    with pytest.raises(ValueError, match="defect_fraction"):
        BalancedSampler(labels, defect_fraction=1.5)


def test_the_loader_draws_balanced_when_asked(tiny_synth):
    cfg = tiny_cfg(tiny_synth, "data.sampler=balanced", "data.sampler_params={defect_fraction: 1.0}")
    from steel_defect.data.folds import split_folds

    split_folds(cfg)
    loader = build_loaders(cfg, valid_fold=0)["train"]
    assert isinstance(loader.sampler, BalancedSampler)
    labels = loader.dataset.annotations.labels(loader.dataset.image_ids)
    drawn = [i for batch in loader for i in batch["image_id"]]
    defect = {i for i, row in zip(loader.dataset.image_ids, labels, strict=True) if row.any()}
    assert drawn and set(drawn) <= defect  # defect_fraction 1: defect images only


def test_hard_negatives_keep_every_defect_image_and_the_hardest_free_ones():
    labels = np.zeros((6, 4), bool)
    labels[[0, 3], 2] = True
    scores = [0.9, 0.1, 0.8, 0.0, 0.3, 0.7]  # free images 1, 2, 4, 5: hardest 2 (0.8), 5 (0.7)
    sampler = HardNegativeSampler(labels, scores, keep=0.5, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == [0, 2, 3, 5]  # a new order each epoch, the same images
    assert list(HardNegativeSampler(labels, scores, keep=0.5, seed=1)) == first
    assert sorted(HardNegativeSampler(labels, scores, keep=0.0)) == [0, 3]


def test_the_loader_draws_hard_negatives_from_the_oof_scores(tiny_synth, tmp_path):
    from steel_defect.data.folds import split_folds

    cfg = tiny_cfg(tiny_synth)
    split_folds(cfg)
    ids = build_loaders(cfg, valid_fold=0)["train"].dataset
    labels = ids.annotations.labels(ids.image_ids)
    free = [i for i, row in zip(ids.image_ids, labels, strict=True) if not row.any()]
    scores = tmp_path / "oof.csv"
    rows = [f"{image_id},{0.1 * k:.1f},0,0,0,,,," for k, image_id in enumerate(ids.image_ids)]
    scores.write_text(
        "ImageId,peak_1,peak_2,peak_3,peak_4,cls_1,cls_2,cls_3,cls_4\n" + "\n".join(rows) + "\n"
    )
    keep = f"data.sampler_params={{scores: {scores}, keep: 0.5}}"
    loader = build_loaders(tiny_cfg(tiny_synth, "data.sampler=hard_negatives", keep), valid_fold=0)["train"]
    drawn = {i for batch in loader for i in batch["image_id"]}
    ranked = sorted(free, key=lambda i: -ids.image_ids.index(i))  # later ids scored higher
    assert drawn >= set(ranked[: round(len(free) / 2)]) and not drawn & set(ranked[round(len(free) / 2) :])
    with pytest.raises(ConfigError, match="does not exist"):
        build_loaders(
            tiny_cfg(
                tiny_synth,
                "data.sampler=hard_negatives",
                f"data.sampler_params={{scores: {tmp_path / 'x.csv'}}}",
            ),
            valid_fold=0,
        )


@pytest.mark.parametrize("make", ["balanced", "mix"])
def test_under_ddp_the_ranks_share_one_epoch_draw_and_follow_the_epoch(make):
    """Two DDP ranks (accelerate's prepared loaders, as the ddp engine builds them): each epoch
    they split one seeded draw between them, and the epoch callback still reaches the sampler."""
    import torch
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader, TensorDataset

    from steel_defect.data.sampling import MixSampler
    from steel_defect.training.callbacks import EpochCallback

    labels = np.zeros((16, 4), bool)
    labels[:5, 2] = True

    def sampler():
        return (
            BalancedSampler(labels, seed=3) if make == "balanced" else MixSampler([10, 6], [1.0, 0.5], seed=3)
        )

    dataset = TensorDataset(torch.arange(16))
    reference = sampler()
    for epoch in (0, 4):  # e.g. the first epoch, and a resumed run's fifth
        reference.set_epoch(epoch)
        expected = list(reference)
        ranks = []
        for rank in (0, 1):  # every process builds its own sampler from the same seed
            loader = prepare_data_loader(
                DataLoader(dataset, sampler=sampler(), batch_size=2, drop_last=True),  # as build_loaders
                num_processes=2,
                process_index=rank,
                put_on_device=False,
            )
            # the runner's epoch counter starts at 1; the callback must find the sampler inside
            EpochCallback().on_epoch_start(
                SimpleNamespace(loaders={"train": loader}, epoch_step=epoch + 1, criterion=None)
            )
            ranks.append([batch[0].tolist() for batch in loader])
        # batches 0, 2, 4, ... go to rank 0 and 1, 3, 5, ... to rank 1: one epoch's draw, split
        merged = [i for pair in zip(*ranks, strict=True) for batch in pair for i in batch]
        assert merged == expected[: len(expected) // 2 * 2]  # the last odd draw is dropped
