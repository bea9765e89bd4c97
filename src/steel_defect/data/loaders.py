"""Datasets for one fold of a config: the bridge from ``cfg.paths`` to torch DataLoaders.

Training uses the split written by ``split_folds.py``: the images of ``folds.valid_fold``
validate, the rest train. The same function serves the classifier and the segmenter.
Extra labelled sets (``data.extra``, e.g. pseudo labels from ``steel-defect pseudo-label``)
only ever join the training side: an extra image whose name is in the fold split is left
out, so a pseudo label never stands in for a real one or reaches a validation fold.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, get_worker_info

from steel_defect.config import ConfigError, model_classes
from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params, lookup
from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.annotations import read_annotations, resolve_image_ids
from steel_defect.data.copy_paste import DefectBank, copy_pastes
from steel_defect.data.datasets import ClassificationDataset, SegmentationDataset
from steel_defect.data.fast_transforms import Normalize
from steel_defect.data.folds import read_folds, split_ids
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.sampling import BalancedSampler, HardNegativeSampler, MixSampler
from steel_defect.data.transforms import build_transforms, split_normalize

DATASETS = {"cls": ClassificationDataset, "seg": SegmentationDataset}
log = logging.getLogger(__name__)


def extra_image_ids(cfg) -> list[list[str]]:
    """Per ``data.extra`` entry, its images that are not in the fold split."""
    in_split = set(read_folds(cfg.paths.folds_csv).ImageId)
    found = []
    for k, extra in enumerate(cfg.data.extra):
        ids = resolve_image_ids(read_annotations(extra.train_csv), extra.train_images)
        kept = [i for i in ids if i not in in_split]
        if len(kept) < len(ids):
            log.warning(
                "data.extra[%d] (%s): %d of its %d images are in the fold split; their real labels win",
                k,
                extra.train_csv,
                len(ids) - len(kept),
                len(ids),
            )
        found.append(kept)
    return found


def build_datasets(cfg, valid_fold: int | None = None) -> dict[str, Dataset]:
    """``{"train": ..., "valid": ...}`` datasets of ``cfg.task`` for one fold.

    With ``data.extra`` the train dataset is a ConcatDataset: the fold's training images
    first, then each extra set (see :class:`~steel_defect.data.sampling.MixSampler`).
    """
    fold = cfg.folds.valid_fold if valid_fold is None else valid_fold
    folds = read_folds(cfg.paths.folds_csv)
    train_ids, valid_ids = split_ids(folds, fold)
    dataset_cls = DATASETS[cfg.task]

    # a segmenter learns the masks of model.classes; the classifier always sees all four
    classes = {"classes": model_classes(cfg)} if cfg.task == "seg" else {}

    uint8 = bool(cfg.data.normalize_on_device)

    def dataset(name, ids, train_csv, images):
        return dataset_cls(
            ids,
            images,
            read_annotations(train_csv),
            transforms=transforms[name],
            channels=cfg.data.channels,
            uint8=uint8,
            **classes,
        )

    # one pipeline per side, so extra sets draw from the same seeded augmentation sequence
    transforms = {
        name: build_transforms(loader_transforms(cfg, name), f"transforms.{name}", seed=cfg.seed)
        for name in ("train", "valid")
    }
    train = dataset("train", train_ids, cfg.paths.train_csv, cfg.paths.train_images)
    valid = dataset("valid", valid_ids, cfg.paths.train_csv, cfg.paths.train_images)
    attach_banks(transforms["train"], train, seed=cfg.seed)
    if cfg.data.extra:
        extras = [
            dataset("train", ids, extra.train_csv, extra.train_images)
            for extra, ids in zip(cfg.data.extra, extra_image_ids(cfg), strict=True)
        ]
        train = ConcatDataset([train, *extras])
    return {"train": train, "valid": valid}


def loader_transforms(cfg, side: str) -> list:
    """The transform specs one side's loader runs: ``transforms.<side>``, less its last step,
    Normalize, with ``data.normalize_on_device`` (:func:`device_normalizers` holds it)."""
    specs = list(cfg.transforms[side] or [])
    return split_normalize(specs, f"transforms.{side}")[0] if cfg.data.normalize_on_device else specs


def device_normalizers(cfg) -> dict[str, Normalize] | None:
    """Per side, the Normalize the device runs on uint8 batches (``data.normalize_on_device``)."""
    if not cfg.data.normalize_on_device:
        return None
    return {
        side: split_normalize(cfg.transforms[side], f"transforms.{side}")[1] for side in ("train", "valid")
    }


def normalize_batch(image: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    """uint8 (N, C, H, W) on any device -> float32 as ``normalize`` gives on the CPU: the same
    float32 constants and operations, so the values equal the loader's bit for bit."""
    channels = image.shape[1]
    mean, scale = (torch.from_numpy(c).to(image.device) for c in normalize.constants(channels))
    return (image.float() - mean[:, None, None]) * scale[:, None, None]


def attach_banks(pipeline, train, seed: int = 0) -> DefectBank | None:
    """Cut the defect bank of the pipeline's :class:`CopyPaste` steps from ``train`` (the fold's
    training frames, never its validation ones) and attach it; None when there is no such step."""
    steps = copy_pastes(pipeline)
    if not steps:
        return None
    classes = sorted({c for step in steps for c in step.classes})
    annotations = train.annotations
    with_defects = set(annotations.defects.ImageId[annotations.defects.ClassId.isin(classes)])

    def frames():
        for image_id in train.image_ids:
            if image_id in with_defects:
                image = read_image(train.images_dir / image_id, train.channels, IMAGE_SHAPE)
                yield image_id, image, rles_to_masks(annotations.rles(image_id), IMAGE_SHAPE)

    bank = DefectBank.from_frames(frames(), classes, min_area=min(s.min_area for s in steps), seed=seed)
    for step in steps:
        step.attach(bank, train.classes)
    return bank


SAMPLERS = {"balanced": BalancedSampler, "hard_negatives": HardNegativeSampler}


def check_sampler(cfg) -> dict:
    """The checked ``data.sampler_params`` of ``cfg.data.sampler`` ({} without a sampler); the
    config loader calls it. ``labels`` and ``seed`` come from the data and ``seed``."""
    if cfg.data.sampler is None:
        return {}
    cls = lookup("sampler", cfg.data.sampler, SAMPLERS, "data.sampler")
    params = cfg.data.sampler_params
    if cfg.data.sampler == "hard_negatives" and "scores" not in (params or {}):
        raise ComponentError(
            "data.sampler_params",
            "hard_negatives needs scores: the CSV of out-of-fold scores that `steel-defect thresholds` "
            "writes beside its YAML (<out>.oof.csv)",
        )
    return check_params(cls, params, "data.sampler_params", skip=("labels", "seed"))


def _sampler(cfg, train):
    """The ``data.sampler`` over every training image (extra sets included)."""
    parts = train.datasets if isinstance(train, ConcatDataset) else [train]
    ids = [image_id for part in parts for image_id in part.image_ids]
    labels = np.concatenate([part.annotations.labels(part.image_ids) for part in parts])
    params = check_sampler(cfg)
    if cfg.data.sampler == "balanced":
        return BalancedSampler(labels, seed=cfg.seed, **params)
    scores = read_image_scores(params["scores"])
    missing = [i for i, row in zip(ids, labels, strict=True) if not row.any() and i not in scores]
    if missing:
        log.warning(
            "%d defect-free images have no score in %s; they rank last", len(missing), params["scores"]
        )
    ranked = [scores.get(image_id, -1.0) for image_id in ids]
    return HardNegativeSampler(labels, ranked, keep=params.get("keep", 0.5), seed=cfg.seed)


def read_image_scores(path) -> dict[str, float]:
    """``{image_id: score}`` from an OOF scores CSV: the classifier's highest class probability,
    or the segmenter's highest peak when the file has no classifier columns."""
    if not Path(path).is_file():
        raise ConfigError(
            f"data.sampler_params.scores: {path} does not exist; `steel-defect thresholds` writes it "
            "beside its YAML (<out>.oof.csv)"
        )
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "ImageId" not in rows[0]:
        raise ConfigError(
            f"data.sampler_params.scores: {path} has no ImageId column (write it with thresholds)"
        )
    prefix = "cls_" if rows[0].get("cls_1") else "peak_"
    try:
        return {r["ImageId"]: max(float(r[f"{prefix}{c}"]) for c in range(1, 5)) for r in rows}
    except (KeyError, ValueError) as err:
        raise ConfigError(f"data.sampler_params.scores: {path}: bad score column ({err})") from None


def seed_worker_transforms(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation sequence.

    Workers start from a copy of the dataset, so seeded transforms would repeat the same draws
    in every worker and every epoch; torch's per-worker seed differs by worker and by epoch and
    follows the global torch seed, so runs stay reproducible.
    """
    info = get_worker_info()
    for dataset in getattr(info.dataset, "datasets", [info.dataset]):  # a ConcatDataset's parts
        transforms = getattr(dataset, "transforms", None)
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
    train = datasets["train"]
    order = {"shuffle": True}
    if cfg.data.sampler is not None:
        order = {"sampler": _sampler(cfg, train)}
    elif isinstance(train, ConcatDataset):
        sizes = [len(d) for d in train.datasets]
        weights = [1.0] + [float(extra.weight) for extra in cfg.data.extra]
        order = {"sampler": MixSampler(sizes, weights, cfg.seed)}
    per_epoch = len(order["sampler"]) if "sampler" in order else len(train)
    return {
        "train": DataLoader(
            train,
            batch_size=cfg.data.batch_size,
            drop_last=per_epoch > cfg.data.batch_size,
            **order,
            **common,
        ),
        "valid": DataLoader(datasets["valid"], batch_size=valid_batch, shuffle=False, **common),
    }
