"""Per-class grid search of post-processing parameters on out-of-fold predictions.

The challenge metric is a mean over (image, class) pairs, so each class is searched on its
own. For every (threshold, min_component) the post-processed area and its intersection with
the truth are computed once per image; min_area and the classifier gate only decide whether
a whole image's mask becomes empty, so they are scored for all images at once::

    probs = downsample_probs(oof_probs, 4)      # (4, 64, 400) uint8 per image, stacked to (N, 4, ...)
    truth = downsample_mask(truth_masks, 4)     # (4, 64, 400) bool per image
    params, report = search_all(probs, truth, cls_probs, scale=4)
    params.save("runs/exp/postprocess.yml")

Units: :func:`search_class` works in pixels of the maps it is given. :func:`search_all` takes
and returns every minimum size in full-resolution pixels; with ``scale=f`` the maps are
``f`` times smaller per side and a size ``m`` is searched as ``ceil(m / f**2)``.

Ties (scores within 1e-12) go to the simplest parameters, compared in this order: lower
min_component, lower min_area, no gate, lower gate, threshold closest to 0.5, lower threshold.
"""

from __future__ import annotations

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_CLASSES
from steel_defect.inference.postprocess import ClassParams, PostProcessing, binarize

DEFAULT_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
# Full-resolution pixels; multiples of 16 so they are exact at 4x downsampling.
DEFAULT_MIN_COMPONENTS = (0, 64, 128, 256, 512, 1024, 2048)
DEFAULT_MIN_AREAS = (0, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192)
DEFAULT_CLS_THRESHOLDS = (None, *DEFAULT_THRESHOLDS)
_TIE = 1e-12


# min_area that no 256x1600 mask reaches: the class is never predicted.
NEVER = IMAGE_HEIGHT * IMAGE_WIDTH + 1


def downsample_probs(probs: np.ndarray, factor: int) -> np.ndarray:
    """Area-average probability maps and store them as uint8 (p * 255 rounded).

    probs: (..., H, W) float in [0, 1] (uint8 is read as p * 255). H and W must be divisible
    by ``factor``. Returns uint8 (..., H / factor, W / factor).
    """
    probs = np.asarray(probs)
    if probs.dtype == np.uint8:
        probs = probs / 255.0
    blocks = _blocks(probs, factor)
    return np.clip(np.rint(blocks.mean(axis=(-3, -1)) * 255.0), 0, 255).astype(np.uint8)


def downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A reduced pixel is positive when at least half of its ``factor x factor`` block is.

    mask: (..., H, W) binary. Returns bool (..., H / factor, W / factor).
    """
    counts = _blocks(np.asarray(mask) != 0, factor).sum(axis=(-3, -1), dtype=np.int64)
    return 2 * counts >= factor * factor


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a whole number >= 1, got {factor!r}")
    *lead, h, w = array.shape
    if h % factor or w % factor:
        raise ValueError(f"maps of {h}x{w} cannot be downsampled by {factor}; pick a divisor of both")
    return array.reshape(*lead, h // factor, factor, w // factor, factor)


def _areas(probs, truth, thresholds, min_components):
    """Post-processed area and intersection, int64 (T, M, N), before min_area and gating."""
    n = len(probs)
    area = np.zeros((len(thresholds), len(min_components), n), dtype=np.int64)
    inter = np.zeros_like(area)
    mins = np.asarray(min_components, dtype=np.int64)[:, None]
    for j in range(n):
        for t, threshold in enumerate(thresholds):
            pred = binarize(probs[j], threshold)
            if not pred.any():
                continue
            _, labels, stats, _ = cv2.connectedComponentsWithStats(
                pred.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
            )
            sizes = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
            hits = np.bincount(labels[truth[j]], minlength=len(stats))[1:]
            keep = sizes[None, :] >= mins  # (M, components); min 0 or 1 keeps all
            area[t, :, j] = keep @ sizes
            inter[t, :, j] = keep @ hits
    return area, inter


def _scores(area, inter, truth_area, cls_probs, min_areas, cls_thresholds):
    """Mean Dice over images, float64 (T, M, A, G), from the (T, M, N) areas."""
    empty = (truth_area == 0).astype(np.float64)  # Dice of an empty prediction
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = np.where(area > 0, 2.0 * inter / (area + truth_area), empty)
    gain = kept - empty  # what keeping the mask adds over emptying it
    keep_area = area[:, :, None, :] >= np.asarray(min_areas, dtype=np.int64)[:, None]  # (T, M, A, N)
    gate = np.ones((len(cls_thresholds), len(truth_area)))
    for g, value in enumerate(cls_thresholds):
        if value is not None:
            gate[g] = cls_probs >= value
    return empty.mean() + np.einsum("tman,gn->tmag", keep_area * gain[:, :, None, :], gate) / len(truth_area)


def _check(probs, truth, cls_probs, ndim):
    probs, truth = np.asarray(probs), np.asarray(truth).astype(bool)
    if probs.ndim != ndim or probs.shape != truth.shape:
        raise ValueError(
            f"probabilities {probs.shape} and truth {truth.shape} must both be {ndim}-d with equal shapes"
        )
    if probs.dtype != np.uint8 and not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probabilities must be uint8 (p * 255) or float, got {probs.dtype}")
    if cls_probs is not None:
        cls_probs = np.asarray(cls_probs, dtype=np.float64)
        if cls_probs.shape != probs.shape[: ndim - 2]:
            raise ValueError(f"classifier probabilities {cls_probs.shape} must be {probs.shape[: ndim - 2]}")
    return probs, truth, cls_probs


def search_class(
    probs: np.ndarray,
    truth: np.ndarray,
    cls_probs: np.ndarray | None = None,
    thresholds=DEFAULT_THRESHOLDS,
    min_components=DEFAULT_MIN_COMPONENTS,
    min_areas=DEFAULT_MIN_AREAS,
    cls_thresholds=None,
) -> tuple[ClassParams, float, dict]:
    """Best parameters of one class by its mean Dice over the images.

    probs: (N, h, w) uint8 (p * 255) or float. truth: (N, h, w) bool. cls_probs: (N,) or None.
    Minimum sizes are pixels at this (h, w) (the default grids suit full resolution; at
    reduced resolution call :func:`search_all` with ``scale``). ``cls_thresholds`` defaults to None plus
    0.30..0.80 when ``cls_probs`` is given and to (None,) otherwise.
    Returns (params, best mean Dice, table) where table holds the grids and ``scores``,
    float64 (T, M, A, G) indexed like the grids.
    """
    probs, truth, cls_probs = _check(probs, truth, cls_probs, 3)
    if cls_thresholds is None:
        cls_thresholds = DEFAULT_CLS_THRESHOLDS if cls_probs is not None else (None,)
    cls_thresholds = tuple(cls_thresholds)
    if cls_probs is None and any(g is not None for g in cls_thresholds):
        raise ValueError("cls_thresholds other than None need cls_probs (classifier probabilities)")
    grids = {"threshold": thresholds, "min_component": min_components, "min_area": min_areas}
    for name, grid in {**grids, "cls_threshold": cls_thresholds}.items():
        if len(grid) == 0:
            raise ValueError(f"the {name} grid is empty; give at least one value")
        for value in grid:
            if value is not None or name != "cls_threshold":
                ClassParams(**{name: value})  # validates the range with a clear message

    area, inter = _areas(probs, truth, tuple(thresholds), tuple(min_components))
    truth_area = truth.sum(axis=(1, 2), dtype=np.int64)
    scores = _scores(area, inter, truth_area, cls_probs, min_areas, cls_thresholds)

    best = scores.max()
    candidates = [tuple(int(i) for i in idx) for idx in np.argwhere(scores >= best - _TIE)]

    def simplicity(idx):
        t, m, a, g = thresholds[idx[0]], min_components[idx[1]], min_areas[idx[2]], cls_thresholds[idx[3]]
        # rounded so that 0.45 and 0.55 tie on distance and the lower one wins
        return (m, a, g is not None, g or 0.0, round(abs(t - 0.5), 9), t)

    t, m, a, g = min(candidates, key=simplicity)
    params = ClassParams(thresholds[t], min_components[m], min_areas[a], cls_thresholds[g])
    table = {
        "thresholds": list(thresholds),
        "min_components": list(min_components),
        "min_areas": list(min_areas),
        "cls_thresholds": list(cls_thresholds),
        "scores": scores,
    }
    return params, float(scores[t, m, a, g]), table


def _to_reduced(full_sizes, scale):
    """Map full-resolution sizes to reduced ones; the smallest full size wins a collision."""
    mapping = {}
    for size in sorted(int(s) for s in full_sizes):
        mapping.setdefault(-(-size // scale**2), size)
    return mapping


def search_all(
    probs: np.ndarray,
    truth: np.ndarray,
    cls_probs: np.ndarray | None = None,
    scale: int = 1,
    thresholds=DEFAULT_THRESHOLDS,
    min_components=DEFAULT_MIN_COMPONENTS,
    min_areas=DEFAULT_MIN_AREAS,
    cls_thresholds=None,
    min_gain: float | None = None,
) -> tuple[PostProcessing, dict]:
    """Search every class and collect a report.

    A class whose best mean Dice beats all-empty masks by less than ``min_gain`` (default
    one image's worth, 1/N) is disabled: its params never predict (``min_area`` = :data:`NEVER`).

    probs: (N, 4, h, w) uint8 (p * 255) or float, maps downsampled by ``scale`` per side.
    truth: (N, 4, h, w) bool at the same resolution. cls_probs: (N, 4) or None.
    ``min_components`` / ``min_areas`` are full-resolution pixels, and so are the sizes in
    the returned parameters (the grid value that was searched, not a rounded-up multiple).
    Report: ``classes[c]`` with best / baseline (0.5, 0, 0, no gate) / all-empty mean Dice
    and the params; ``mean`` of those over classes (= mean over all pairs); ``tables[c]``
    from :func:`search_class` with sizes in full-resolution pixels (holds numpy arrays).
    """
    probs, truth, cls_probs = _check(probs, truth, cls_probs, 4)
    if probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} classes on axis 1, got shape {probs.shape}")
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be the whole downsampling factor per side (>= 1), got {scale!r}")
    for name, grid in {"min_components": min_components, "min_areas": min_areas}.items():
        if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in grid):
            raise ValueError(f"{name} must be whole pixel counts >= 0, got {list(grid)}")
    comp_map, area_map = _to_reduced(min_components, scale), _to_reduced(min_areas, scale)

    found, report = [], {"classes": {}, "mean": {}, "tables": {}}
    for i, class_id in enumerate(CLASS_IDS):
        cls_i = None if cls_probs is None else cls_probs[:, i]
        p, score, table = search_class(
            probs[:, i], truth[:, i], cls_i, thresholds, tuple(comp_map), tuple(area_map), cls_thresholds
        )
        empty = float(np.mean(~truth[:, i].any(axis=(1, 2))))
        gain = 1.0 / len(probs) if min_gain is None else min_gain
        if score < empty + gain - _TIE:
            # Masks that beat predicting nothing by less than one image's worth of Dice are
            # noise on these images, not evidence they help on others, and a false positive
            # costs a whole point on a defect-free image.
            full = ClassParams(0.5, 0, NEVER, None)
        else:
            full = ClassParams(p.threshold, comp_map[p.min_component], area_map[p.min_area], p.cls_threshold)
        found.append(full)
        _, baseline, _ = search_class(probs[:, i], truth[:, i], None, (0.5,), (0,), (0,), (None,))
        table["min_components"] = list(comp_map.values())
        table["min_areas"] = list(area_map.values())
        report["tables"][class_id] = table
        report["classes"][class_id] = {
            "best_dice": score,
            "baseline_dice": baseline,
            "empty_dice": empty,
            "disabled": full.min_area == NEVER,
            "params": {
                "threshold": full.threshold,
                "min_component": full.min_component,
                "min_area": full.min_area,
                "cls_threshold": full.cls_threshold,
            },
        }
    for key in ("best_dice", "baseline_dice", "empty_dice"):
        report["mean"][key] = float(np.mean([c[key] for c in report["classes"].values()]))
    return PostProcessing(tuple(found)), report
