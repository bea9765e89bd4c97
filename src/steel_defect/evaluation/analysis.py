"""Error analysis of a submission: per-image scores, presence confusion and where Dice is lost.

Pure numpy on small per-image tables; the HTML around it is :mod:`steel_defect.evaluation.report`
(``steel-defect report --pred SUB.csv --truth TRUTH.csv --images DIR --out report.html``).

:func:`score_images` streams the images one at a time and keeps four integers per (image,
class) computed from the run-length runs without decoding a mask, so the full Kaggle set
(12,568 frames) costs a few hundred kilobytes and seconds.
Every figure of the report is computed from that :class:`ImageScores` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.rle import parse_rle, rle_overlap
from steel_defect.evaluation.metric import read_pair, summarize

# Bin edges of the defect-area axis, in full-resolution pixels (a frame has 409,600).
AREA_BINS = (0, 512, 2048, 8192, 32768, 131072, 409600)


@dataclass(frozen=True)
class ImageScores:
    """Per (image, class) scalars, arrays of shape (N, 4) in submission order.

    ``dice``: float64, 1 where both masks are empty. ``pred_area`` / ``truth_area`` /
    ``inter``: int64 pixel counts of the prediction, the truth and their overlap.
    """

    ids: list[str]
    dice: np.ndarray
    pred_area: np.ndarray
    truth_area: np.ndarray
    inter: np.ndarray

    @classmethod
    def from_masks(cls, ids: list[str], pred: np.ndarray, truth: np.ndarray) -> ImageScores:
        """From binary (N, 4, H, W) stacks (tests and small sets)."""
        pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
        inter = (pred & truth).sum(axis=(-2, -1), dtype=np.int64)
        pred_area = pred.sum(axis=(-2, -1), dtype=np.int64)
        truth_area = truth.sum(axis=(-2, -1), dtype=np.int64)
        total = pred_area + truth_area
        dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
        return cls(list(ids), dice, pred_area, truth_area, inter)


def score_images(pred_path: str | Path, truth_path: str | Path, shape=IMAGE_SHAPE):
    """Read and check a submission and its truth, score every image once.

    Works on the run-length runs (:func:`~steel_defect.data.rle.rle_overlap`), so no mask is
    ever decoded here: the full Kaggle set scores in seconds. Returns ``(scores, pred_rles,
    truth)``: the :class:`ImageScores`, the submission's ``{ImageId: [rle x 4]}`` and the truth
    :class:`~steel_defect.data.annotations.Annotations` (the second pass decodes their RLEs
    again for the few images it draws).
    """
    pred, truth = read_pair(pred_path, truth_path, shape)
    num_pixels = shape[0] * shape[1]
    areas = np.zeros((3, len(pred), len(CLASS_IDS)), dtype=np.int64)  # pred, truth, intersection
    for row, (image_id, rles) in enumerate(pred.items()):
        for col, (pred_rle, truth_rle) in enumerate(zip(rles, truth.rles(image_id), strict=True)):
            a, b = parse_rle(pred_rle, num_pixels), parse_rle(truth_rle, num_pixels)
            areas[:, row, col] = (a[1] - a[0]).sum(), (b[1] - b[0]).sum(), rle_overlap(a, b)
    pred_area, truth_area, inter = areas
    total = pred_area + truth_area
    # the formula of evaluation.metric.dice_pairs, on the same integers: identical floats
    dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return ImageScores(list(pred), dice, pred_area, truth_area, inter), pred, truth


def overall(scores: ImageScores) -> dict:
    """Mean and per-class Dice (:func:`~steel_defect.evaluation.metric.summarize`) beside all-empty
    masks on the same images: ``{"model": {...}, "empty": {...}}``."""
    empty = (scores.truth_area == 0).astype(np.float64)
    return {"model": summarize(scores.dice), "empty": summarize(empty)}


def confusion(scores: ImageScores, class_index: int) -> dict:
    """Image-level presence confusion of one class and what each cell cost.

    A positive is an image whose mask is not empty. Returns counts ``tp, fp, fn, tn``,
    ``precision`` / ``recall`` (None when undefined) and ``cost[cell]``: Dice points the cell's
    images lost, as a share of the class's mean Dice (``class``) and of the overall mean over
    all (image, class) pairs (``mean``). A false positive or a miss loses a whole point per
    image; a true positive loses ``1 - dice``; a true negative nothing.
    """
    pred = scores.pred_area[:, class_index] > 0
    truth = scores.truth_area[:, class_index] > 0
    lost = 1.0 - scores.dice[:, class_index]
    n = len(scores.ids)
    cells = {"tp": pred & truth, "fp": pred & ~truth, "fn": ~pred & truth, "tn": ~pred & ~truth}
    counts = {name: int(mask.sum()) for name, mask in cells.items()}
    cost = {
        name: {"class": float(lost[mask].sum() / n), "mean": float(lost[mask].sum() / (n * len(CLASS_IDS)))}
        for name, mask in cells.items()
    }
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        **counts,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "cost": cost,
    }


def dice_by_area(scores: ImageScores, class_index: int, bins=AREA_BINS) -> list[dict]:
    """Mean Dice of the defect images of one class, grouped by their true defect area.

    Returns one ``{"low", "high", "images", "mean_dice"}`` per bin (``low <= area < high``,
    the last bin closed; ``mean_dice`` None when empty): which sizes the model misses.
    """
    area = scores.truth_area[:, class_index]
    dice = scores.dice[:, class_index]
    rows = []
    for k, (low, high) in enumerate(pairwise(bins)):
        last = k == len(bins) - 2
        inside = (area > 0) & (area >= low) & ((area <= high) if last else (area < high))
        rows.append(
            {
                "low": int(low),
                "high": int(high),
                "images": int(inside.sum()),
                "mean_dice": float(dice[inside].mean()) if inside.any() else None,
            }
        )
    return rows


def worst_images(scores: ImageScores, class_index: int, n: int) -> list[int]:
    """Rows of the ``n`` lowest-Dice images of a class, among those that lost anything.

    Ties go to the larger wrong area (pixels predicted or missed), then to file order, so a
    false positive of 5,000 pixels comes before one of 5.
    """
    dice = scores.dice[:, class_index]
    wrong = (
        scores.pred_area[:, class_index]
        + scores.truth_area[:, class_index]
        - 2 * scores.inter[:, class_index]
    )
    rows = np.flatnonzero(dice < 1.0)
    order = np.lexsort((rows, -wrong[rows], dice[rows]))  # last key sorts first
    return [int(r) for r in rows[order][: max(0, n)]]
