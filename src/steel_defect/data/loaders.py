"""Datasets for one fold of a config: the bridge from ``cfg.paths`` to torch DataLoaders.

Training uses the split written by ``split_folds.py``: the images of ``folds.valid_fold``
validate, the rest train. The same function serves the classifier and the segmenter.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, get_worker_info

from steel_defect.data.annotations import read_annotations
from steel_defect.data.datasets import ClassificationDataset, SegmentationDataset
from steel_defect.data.folds import read_folds, split_ids
from steel_defect.data.transforms import build_transforms

DATASETS = {"cls": ClassificationDataset, "seg": SegmentationDataset}


def build_datasets(cfg, valid_fold: int | None = None) -> dict[str, Dataset]:
    """``{"train": ..., "valid": ...}`` datasets of ``cfg.task`` for one fold."""
    fold = cfg.folds.valid_fold if valid_fold is None else valid_fold
    annotations = read_annotations(cfg.paths.train_csv)
    folds = read_folds(cfg.paths.folds_csv)
    train_ids, valid_ids = split_ids(folds, fold)
    dataset_cls = DATASETS[cfg.task]
    return {
        name: dataset_cls(
            ids,
            cfg.paths.train_images,
            annotations,
            transforms=build_transforms(cfg.transforms[name], f"transforms.{name}", seed=cfg.seed),
            channels=cfg.data.channels,
        )
        for name, ids in (("train", train_ids), ("valid", valid_ids))
    }


def seed_worker_transforms(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation sequence.

    Workers start from a copy of the dataset, so seeded transforms would repeat the same draws
    in every worker and every epoch; torch's per-worker seed differs by worker and by epoch and
    follows the global torch seed, so runs stay reproducible.
    """
    info = get_worker_info()
    transforms = getattr(info.dataset, "transforms", None)
    if hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(info.seed % 2**32)


def build_loaders(cfg, valid_fold: int | None = None) -> dict[str, DataLoader]:
    """Shuffled train loader (last partial batch dropped) and an ordered valid loader.

    Augmentations draw from ``cfg.seed`` (per worker when ``data.num_workers`` > 0), so the
    same config trains the same model.
    """
    datasets = build_datasets(cfg, valid_fold)
    common = {"num_workers": cfg.data.num_workers, "pin_memory": False}
    if cfg.data.num_workers > 0:
        common["worker_init_fn"] = seed_worker_transforms
    valid_batch = cfg.data.valid_batch_size or cfg.data.batch_size
    train_drop_last = len(datasets["train"]) > cfg.data.batch_size
    return {
        "train": DataLoader(
            datasets["train"],
            batch_size=cfg.data.batch_size,
            shuffle=True,
            drop_last=train_drop_last,
            **common,
        ),
        "valid": DataLoader(datasets["valid"], batch_size=valid_batch, shuffle=False, **common),
    }
