"""The challenge metric: mean Dice over every (image, class) pair.

Dice of an empty prediction against an empty truth is 1, so predicting nothing on a
defect-free image is rewarded and a single false-positive pixel there costs a full point.
``steel-defect evaluate --pred SUB.csv --truth train.csv [--json]`` scores a submission.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.annotations import read_annotations
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.submission import read_submission
from steel_defect.errors import UserError


def dice_pairs(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice per (image, class).

    ``pred``, ``truth``: binary arrays (N, C, H, W) (non-zero is foreground).
    Returns float64 (N, C); 1.0 where both masks are empty.
    """
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    inter = np.logical_and(pred, truth).sum(axis=(-2, -1), dtype=np.int64)
    total = pred.sum(axis=(-2, -1), dtype=np.int64) + truth.sum(axis=(-2, -1), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return dice


def summarize(dice: np.ndarray) -> dict:
    """``{"mean_dice", "per_class": {"1": ..}, "images"}`` from a (N, 4) Dice table."""
    dice = np.asarray(dice, dtype=np.float64)
    if dice.ndim != 2 or dice.shape[1] != len(CLASS_IDS):
        raise ValueError(f"expected a (N, {len(CLASS_IDS)}) Dice table, got shape {dice.shape}")
    if dice.shape[0] == 0:
        raise UserError("no images to score")
    return {
        "mean_dice": float(dice.mean()),
        "per_class": {str(c): float(dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)},
        "images": int(dice.shape[0]),
    }


def read_pair(pred_path: str | Path, truth_path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE):
    """``(submission rows, truth Annotations)``, checked to cover the same images.

    With a wide truth the submission must cover exactly the truth's images. A long truth
    lists defective images only, so the submission defines the image set and must
    contain every image the truth lists.
    """
    truth = read_annotations(truth_path, shape)
    expected = truth.image_ids if truth.layout == "wide" else None
    pred = read_submission(pred_path, expected_ids=expected, shape=shape)
    if truth.layout == "long":
        missing = [i for i in truth.image_ids if i not in pred]
        if missing:
            raise UserError(
                f"{pred_path}: {len(missing)} image(s) with defects in {truth_path} are missing, "
                f"e.g. {missing[0]}"
            )
    return pred, truth


def evaluate_files(
    pred_path: str | Path, truth_path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE
) -> dict:
    """Validate a submission, then score it against a truth file (wide or long layout, see
    :func:`read_pair`)."""
    pred, truth = read_pair(pred_path, truth_path, shape)
    dice = np.empty((len(pred), len(CLASS_IDS)))
    for row, (image_id, rles) in enumerate(pred.items()):
        # one image at a time keeps memory flat for any number of images
        dice[row] = dice_pairs(
            rles_to_masks(rles, shape)[None], rles_to_masks(truth.rles(image_id), shape)[None]
        )
    return summarize(dice)


def format_report(result: dict) -> str:
    """Human-readable table of a :func:`summarize` result."""
    lines = [f"images: {result['images']}", f"mean Dice: {result['mean_dice']:.4f}"]
    lines += [f"  class {c}: {d:.4f}" for c, d in result["per_class"].items()]
    return "\n".join(lines)
