"""Multilabel-stratified k-fold split over images.

Each image is described by five flags: defect-free, and the presence of classes 1..4.
``MultilabelStratifiedKFold`` keeps each flag's share close to the whole in every fold,
so a rare class (2, 4) is present in every validation fold. Run as
``python split_folds.py --config configs/seg/unet_resnet18_bcedice.yml``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from steel_defect.atomic import atomic_write
from steel_defect.config import save_config
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import read_annotations, resolve_image_ids
from steel_defect.errors import UserError

FLAG_COLUMNS = ["defect_free", *(f"class_{c}" for c in CLASS_IDS)]


def assign_folds(labels: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold index (0..n_splits-1) per image, stratified on ``labels``.

    ``labels``: bool (N, 4) class presence. Returns int (N,). Requires N >= n_splits.
    """
    labels = np.asarray(labels, dtype=bool)
    n = labels.shape[0]
    if n_splits < 2:
        raise UserError(f"folds.n_splits must be at least 2, got {n_splits}")
    if n < n_splits:
        raise UserError(f"cannot split {n} images into {n_splits} folds; lower folds.n_splits")
    flags = np.column_stack([~labels.any(axis=1), labels]).astype(int)
    folds = np.full(n, -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, valid_idx) in enumerate(splitter.split(np.zeros((n, 1)), flags)):
        folds[valid_idx] = fold
    return folds


def make_folds_table(image_ids: list[str], labels: np.ndarray, n_splits: int, seed: int) -> pd.DataFrame:
    """Table ``ImageId, fold, defect_free, class_1..class_4`` sorted by ImageId."""
    labels = np.asarray(labels, dtype=bool)
    table = pd.DataFrame({"ImageId": image_ids, "fold": assign_folds(labels, n_splits, seed)})
    table["defect_free"] = (~labels.any(axis=1)).astype(int)
    for i, class_id in enumerate(CLASS_IDS):
        table[f"class_{class_id}"] = labels[:, i].astype(int)
    return table.sort_values("ImageId").reset_index(drop=True)


def write_folds(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the fold table atomically."""
    with atomic_write(path, newline="") as handle:
        table.to_csv(handle, index=False, lineterminator="\n")
    return Path(path)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read ``folds.csv``; a missing file or column is an error saying how to make one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fold split {path} does not exist; run: python split_folds.py --config CFG")
    table = pd.read_csv(path, dtype={"ImageId": str})
    missing = {"ImageId", "fold"} - set(table.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {sorted(missing)}; expected ImageId,fold,...")
    return table


def split_digest(table: pd.DataFrame) -> str:
    """SHA-256 of the assignment alone (``ImageId,fold`` lines sorted by id): two files that put
    every image in the same fold have the same digest, whatever their other columns or order.

    Checkpoints record it (``trained_on.split``), so the threshold search can refuse a model
    that was trained on another split than the one whose folds it predicts out of fold.
    """
    pairs = sorted(zip(table.ImageId.astype(str), table.fold.astype(int), strict=True))
    text = "".join(f"{image_id},{fold}\n" for image_id, fold in pairs)
    return hashlib.sha256(text.encode()).hexdigest()


def split_ids(table: pd.DataFrame, valid_fold: int) -> tuple[list[str], list[str]]:
    """(train ids, valid ids): validate on ``valid_fold``, train on the other folds."""
    folds = sorted(int(f) for f in table.fold.unique())
    if valid_fold not in folds:
        raise UserError(f"fold {valid_fold} is not in the split; folds are {folds}")
    is_valid = table.fold == valid_fold
    return table.ImageId[~is_valid].tolist(), table.ImageId[is_valid].tolist()


def make_split(cfg) -> pd.DataFrame:
    """The fold table of the labels named by ``cfg.paths`` (nothing is written)."""
    annotations = read_annotations(cfg.paths.train_csv)
    image_ids = resolve_image_ids(annotations, cfg.paths.train_images)
    return make_folds_table(image_ids, annotations.labels(image_ids), cfg.folds.n_splits, cfg.seed)


def write_split(cfg, table: pd.DataFrame) -> None:
    """Write ``paths.folds_csv`` and the config that made it."""
    write_folds(table, cfg.paths.folds_csv)
    save_config(cfg, Path(cfg.paths.work_dir) / "split_config.yml")


def split_folds(cfg) -> pd.DataFrame:
    """Split the labels named by ``cfg.paths``, write ``paths.folds_csv`` and the config."""
    table = make_split(cfg)
    write_split(cfg, table)
    return table
