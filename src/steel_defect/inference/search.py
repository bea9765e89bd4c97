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

The top-threshold gate is searched from each image's maximum probability per class at full
resolution (``top_probs``, recorded before downsampling, because block averages lower the
maximum), so the tuned value means the same at inference.

Ties (scores within 1e-12) go to the simplest parameters, compared in this order: lower
min_component, lower min_area, no classifier gate, lower classifier gate, no top gate, lower
top gate, threshold closest to 0.5, lower threshold.

A slack widens the tie (:func:`search_all`'s ``slack_images``, the config's
``inference.search_slack``; :func:`search_class` takes it as mean Dice): every setting within
that many images' worth of Dice of the best is a candidate, and the one that paints the
fewest images wins (then the fewest pixels, then the simplest). On a few dozen out-of-fold
images the best setting often beats a stricter one by a fraction of one image, which is noise
there, while a false positive costs a whole image's Dice. Measured on the real sample it
changed the held-out mean by +0.0007 (docs/real-steel.md), so the default is 0. With
thousands of images half an image's worth is a few 1e-5 and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.errors import UserError
from steel_defect.inference.postprocess import (
    NEVER,
    ClassParams,
    PostProcessing,
    binarize,
    check_factor,
    reduced_size,
)

DEFAULT_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
# Full-resolution pixels; multiples of 16 so they are exact at 4x downsampling.
DEFAULT_MIN_COMPONENTS = (0, 64, 128, 256, 512, 1024, 2048)
DEFAULT_MIN_AREAS = (0, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192)
DEFAULT_CLS_THRESHOLDS = (None, *DEFAULT_THRESHOLDS)
# A top gate at or below the pixel threshold changes nothing, so the grid reaches higher.
DEFAULT_TOP_THRESHOLDS = (None, 0.5, 0.6, 0.7, 0.8, 0.9)
_TIE = 1e-12


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
    factor = check_factor(factor)
    *lead, h, w = array.shape
    if h % factor or w % factor:
        raise UserError(f"maps of {h}x{w} cannot be downsampled by {factor}; pick a divisor of both")
    return array.reshape(*lead, h // factor, factor, w // factor, factor)


def area_table(probs, truth, thresholds=DEFAULT_THRESHOLDS, min_components=DEFAULT_MIN_COMPONENTS):
    """One map's post-processed area and intersection with ``truth``, int64 (T, M) each, per
    (threshold, min_component), before min_area and the gates.

    probs: (H, W) uint8 levels (:func:`~.postprocess.quantise`) or float; truth: (H, W) bool.
    These few numbers are all the search needs of an image, so the out-of-fold search can take
    them from each full-resolution map as it is predicted and keep no map at all.
    """
    area = np.zeros((len(thresholds), len(min_components)), dtype=np.int64)
    inter = np.zeros_like(area)
    mins = np.asarray(min_components, dtype=np.int64)[:, None]
    truth = np.asarray(truth, dtype=bool)
    for t, threshold in enumerate(thresholds):
        pred = binarize(probs, threshold)
        if not pred.any():
            continue
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            pred.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        sizes = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
        hits = np.bincount(labels[truth], minlength=len(stats))[1:]
        keep = sizes[None, :] >= mins  # (M, components); min 0 or 1 keeps all
        area[t] = keep @ sizes
        inter[t] = keep @ hits
    return area, inter


def _areas(probs, truth, thresholds, min_components):
    """Post-processed area and intersection, int64 (T, M, N), before min_area and gating."""
    tables = [area_table(p, t, thresholds, min_components) for p, t in zip(probs, truth, strict=True)]
    if not tables:
        empty = np.zeros((len(thresholds), len(min_components), 0), dtype=np.int64)
        return empty, empty.copy()
    return np.stack([a for a, _ in tables], axis=-1), np.stack([i for _, i in tables], axis=-1)


def _gate(values, thresholds, n):
    """(len(thresholds), n) float: 1 where an image passes the gate; None always passes."""
    gate = np.ones((len(thresholds), n))
    for g, value in enumerate(thresholds):
        if value is not None:
            gate[g] = values >= value
    return gate


def _scores(area, inter, truth_area, min_areas, cls_gate, top_gate):
    """Mean Dice over images, float64 (T, M, A, G, K), from the (T, M, N) areas.

    cls_gate (G, N) and top_gate (K, N): 1 where the image's mask may be kept.
    """
    empty = (truth_area == 0).astype(np.float64)  # Dice of an empty prediction
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = np.where(area > 0, 2.0 * inter / (area + truth_area), empty)
    gain = kept - empty  # what keeping the mask adds over emptying it
    keep_area = area[:, :, None, :] >= np.asarray(min_areas, dtype=np.int64)[:, None]  # (T, M, A, N)
    both = (cls_gate[:, None, :] * top_gate[None, :, :]).reshape(-1, len(truth_area))  # (G*K, N)
    gained = (keep_area * gain[:, :, None, :]) @ both.T  # (T, M, A, G*K), a matmul over images
    shape = (*gained.shape[:3], len(cls_gate), len(top_gate))
    return empty.mean() + gained.reshape(shape) / len(truth_area)


def _painted(area, min_areas, cls_gate, top_gate):
    """How many images each setting paints and how many pixels in all, float64 (T, M, A, G, K)
    each, from the (T, M, N) areas: what a setting would show on frames like these."""
    n = area.shape[-1]
    keep = (area[:, :, None, :] >= np.asarray(min_areas, dtype=np.int64)[:, None]) & (area[:, :, None, :] > 0)
    both = (cls_gate[:, None, :] * top_gate[None, :, :]).reshape(-1, n)  # (G*K, N)
    shape = (*keep.shape[:3], len(cls_gate), len(top_gate))
    images = (keep.astype(np.float64) @ both.T).reshape(shape)
    pixels = ((keep * area[:, :, None, :]).astype(np.float64) @ both.T).reshape(shape)
    return images, pixels


def _check(probs, truth, cls_probs, top_probs, ndim):
    probs, truth = np.asarray(probs), np.asarray(truth).astype(bool)
    if probs.ndim != ndim or probs.shape != truth.shape:
        raise ValueError(
            f"probabilities {probs.shape} and truth {truth.shape} must both be {ndim}-d with equal shapes"
        )
    if probs.dtype != np.uint8 and not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probabilities must be uint8 (p * 255) or float, got {probs.dtype}")
    checked = []
    for name, values in (("classifier probabilities", cls_probs), ("top probabilities", top_probs)):
        if values is not None:
            values = np.asarray(values, dtype=np.float64)
            if values.shape != probs.shape[: ndim - 2]:
                raise ValueError(f"{name} {values.shape} must be {probs.shape[: ndim - 2]}")
        checked.append(values)
    return probs, truth, *checked


def _gate_grid(name, values, grid, default):
    """The gate's grid: ``default`` when ``values`` are given and (None,) otherwise."""
    if grid is None:
        grid = default if values is not None else (None,)
    grid = tuple(grid)
    if values is None and any(g is not None for g in grid):
        raise ValueError(f"{name}_thresholds other than None need {name}_probs")
    return grid


def search_class(
    probs: np.ndarray,
    truth: np.ndarray,
    cls_probs: np.ndarray | None = None,
    thresholds=DEFAULT_THRESHOLDS,
    min_components=DEFAULT_MIN_COMPONENTS,
    min_areas=DEFAULT_MIN_AREAS,
    cls_thresholds=None,
    top_probs: np.ndarray | None = None,
    top_thresholds=None,
    slack: float = 0.0,
) -> tuple[ClassParams, float, dict]:
    """Best parameters of one class by its mean Dice over the images.

    probs: (N, h, w) uint8 (p * 255) or float. truth: (N, h, w) bool. cls_probs: (N,) or None.
    top_probs: (N,) maximum probability of each image's full-resolution map, or None.
    Minimum sizes are pixels at this (h, w) (the default grids suit full resolution; at
    reduced resolution call :func:`search_all` with ``scale``). ``cls_thresholds`` defaults to
    None plus 0.30..0.80 when ``cls_probs`` is given and to (None,) otherwise;
    ``top_thresholds`` likewise to :data:`DEFAULT_TOP_THRESHOLDS` when ``top_probs`` is given.
    ``slack``: settings within this much mean Dice of the best are candidates, and the one
    that paints the fewest images wins (module docstring); 0 keeps only exact ties.
    Returns (params, best mean Dice, table) where table holds the grids and ``scores``,
    float64 (T, M, A, G, K) indexed like the grids.
    """
    probs, truth, cls_probs, top_probs = _check(probs, truth, cls_probs, top_probs, 3)
    area, inter = _areas(probs, truth, tuple(thresholds), tuple(min_components))
    truth_area = truth.sum(axis=(1, 2), dtype=np.int64)
    return search_class_tables(
        area,
        inter,
        truth_area,
        cls_probs,
        thresholds,
        min_components,
        min_areas,
        cls_thresholds,
        top_probs,
        top_thresholds,
        slack,
    )


def search_class_tables(
    area: np.ndarray,
    inter: np.ndarray,
    truth_area: np.ndarray,
    cls_probs: np.ndarray | None = None,
    thresholds=DEFAULT_THRESHOLDS,
    min_components=DEFAULT_MIN_COMPONENTS,
    min_areas=DEFAULT_MIN_AREAS,
    cls_thresholds=None,
    top_probs: np.ndarray | None = None,
    top_thresholds=None,
    slack: float = 0.0,
) -> tuple[ClassParams, float, dict]:
    """:func:`search_class` from the images' :func:`area_table` s: ``area`` and ``inter`` int64
    (T, M, N) over the ``thresholds`` x ``min_components`` grid, ``truth_area`` (N,)."""
    n = len(truth_area)
    for name, values in (("classifier probabilities", cls_probs), ("top probabilities", top_probs)):
        if values is not None and np.shape(values) != (n,):
            raise ValueError(f"{name} {np.shape(values)} must be ({n},)")
    cls_thresholds = _gate_grid("cls", cls_probs, cls_thresholds, DEFAULT_CLS_THRESHOLDS)
    top_thresholds = _gate_grid("top", top_probs, top_thresholds, DEFAULT_TOP_THRESHOLDS)
    grids = {"threshold": thresholds, "min_component": min_components, "min_area": min_areas}
    gates = {"cls_threshold": cls_thresholds, "top_threshold": top_thresholds}
    for name, grid in {**grids, **gates}.items():
        if len(grid) == 0:
            raise UserError(f"the {name} grid is empty; give at least one value")
        for value in grid:
            if value is not None or name not in gates:
                ClassParams(**{name: value})  # validates the range with a clear message

    if area.shape != (len(thresholds), len(min_components), n) or inter.shape != area.shape:
        raise ValueError(
            f"area tables {area.shape} must be (thresholds {len(thresholds)}, min_components "
            f"{len(min_components)}, images {n})"
        )
    if not (isinstance(slack, int | float) and 0.0 <= slack < 1.0):
        raise UserError(f"slack must be a mean Dice in [0, 1), got {slack!r}")
    cls_gate, top_gate = _gate(cls_probs, cls_thresholds, n), _gate(top_probs, top_thresholds, n)
    scores = _scores(area, inter, truth_area, min_areas, cls_gate, top_gate)

    best = scores.max()
    candidates = [tuple(int(i) for i in idx) for idx in np.argwhere(scores >= best - slack - _TIE)]

    def simplicity(idx):
        t, m, a = thresholds[idx[0]], min_components[idx[1]], min_areas[idx[2]]
        g, k = cls_thresholds[idx[3]], top_thresholds[idx[4]]
        # rounded so that 0.45 and 0.55 tie on distance and the lower one wins
        return (m, a, g is not None, g or 0.0, k is not None, k or 0.0, round(abs(t - 0.5), 9), t)

    if slack > 0:
        images, pixels = _painted(area, min_areas, cls_gate, top_gate)
        t, m, a, g, k = min(candidates, key=lambda idx: (images[idx], pixels[idx], simplicity(idx)))
    else:
        t, m, a, g, k = min(candidates, key=simplicity)
    params = ClassParams(thresholds[t], min_components[m], min_areas[a], cls_thresholds[g], top_thresholds[k])
    table = {
        "thresholds": list(thresholds),
        "min_components": list(min_components),
        "min_areas": list(min_areas),
        "cls_thresholds": list(cls_thresholds),
        "top_thresholds": list(top_thresholds),
        "scores": scores,
    }
    return params, float(scores[t, m, a, g, k]), table


def search_curves(table: dict, params: ClassParams, components=None, areas=None) -> dict:
    """One-parameter slices of a :func:`search_class` table through the best point.

    Returns ``{"threshold" | "min_component" | "min_area": {"values", "dice", "chosen"}}``:
    mean Dice as that parameter moves along its grid with the others held at ``params``,
    and the index of ``params`` in it. ``components`` / ``areas`` are the grids as searched
    when ``table`` now holds them in other units (full-resolution pixels); ``params`` uses the
    searched units.
    """
    grids = {
        "threshold": list(table["thresholds"]),
        "min_component": list(components if components is not None else table["min_components"]),
        "min_area": list(areas if areas is not None else table["min_areas"]),
        "cls_threshold": list(table["cls_thresholds"]),
        "top_threshold": list(table["top_thresholds"]),
    }
    best = [grid.index(getattr(params, name)) for name, grid in grids.items()]
    shown = {"threshold": "thresholds", "min_component": "min_components", "min_area": "min_areas"}
    curves = {}
    for axis, (name, key) in enumerate(shown.items()):
        index = list(best)
        index[axis] = slice(None)
        curves[name] = {
            "values": list(table[key]),
            "dice": [float(v) for v in table["scores"][tuple(index)]],
            "chosen": best[axis],
        }
    return curves


def class_signal(top_probs: np.ndarray, present: np.ndarray, lowest_threshold: float) -> dict:
    """Whether a class's out-of-fold maps carry anything a threshold can find, per class.

    top_probs: (N, 4) each image's highest probability per class; present: (N, 4) bool, the
    class is in the image's truth. Per class: ``defect_images``; ``peak_on_defects`` and
    ``peak_elsewhere``, the highest peak on images with and without the class (None where
    there are none); ``separation``, the chance that an image with the class peaks higher than
    one without (ROC AUC; 0.5 is no signal; None unless both occur); ``reaches_threshold``,
    whether any image with the class has a pixel at or above ``lowest_threshold``. A class
    that does not reach it paints nothing on its defects at any setting of the search, so it
    can only be switched off: it needs more labelled frames, not another decision rule.
    """
    top_probs, present = np.asarray(top_probs, dtype=np.float64), np.asarray(present, dtype=bool)
    if top_probs.shape != present.shape or top_probs.ndim != 2 or top_probs.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"expected (N, {NUM_CLASSES}) peaks and truth, got {top_probs.shape}, {present.shape}"
        )
    signal = {}
    for i, class_id in enumerate(CLASS_IDS):
        on, off = top_probs[present[:, i], i], top_probs[~present[:, i], i]
        separation = None
        if len(on) and len(off):
            higher = (on[:, None] > off[None, :]).sum() + 0.5 * (on[:, None] == off[None, :]).sum()
            separation = float(higher / (len(on) * len(off)))
        signal[class_id] = {
            "defect_images": len(on),
            "peak_on_defects": float(on.max()) if len(on) else None,
            "peak_elsewhere": float(off.max()) if len(off) else None,
            "separation": separation,
            "reaches_threshold": bool(len(on)) and float(on.max()) >= lowest_threshold,
            "lowest_threshold": float(lowest_threshold),
        }
    return signal


def _to_reduced(full_sizes, scale):
    """Map full-resolution sizes to reduced ones; the smallest full size wins a collision."""
    mapping = {}
    for size in sorted(int(s) for s in full_sizes):
        mapping.setdefault(reduced_size(size, scale), size)
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
    top_probs: np.ndarray | None = None,
    top_thresholds=None,
    slack_images: float = 0.0,
) -> tuple[PostProcessing, dict]:
    """Search every class and collect a report.

    A class whose best mean Dice beats all-empty masks by less than ``min_gain`` (default
    one image's worth, 1/N) is disabled: its params never predict (``min_area`` = :data:`NEVER`).
    ``slack_images``: settings within this many images' worth of Dice (``slack_images / N``)
    of a class's best are candidates, and the one painting the fewest images wins (module
    docstring); 0 keeps the best.

    probs: (N, 4, h, w) uint8 (p * 255) or float, maps downsampled by ``scale`` per side.
    truth: (N, 4, h, w) bool at the same resolution. cls_probs: (N, 4) or None. top_probs:
    (N, 4) maximum probability per image and class of the full-resolution maps, or None (no
    top-threshold gate).
    ``min_components`` / ``min_areas`` are full-resolution pixels, and so are the sizes in
    the returned parameters (the grid value that was searched, not a rounded-up multiple).
    Report: ``classes[c]`` with best / baseline (0.5, 0, 0, no gate) / all-empty mean Dice
    and the params; ``mean`` of those over classes (= mean over all pairs); ``tables[c]``
    from :func:`search_class` with sizes in full-resolution pixels (holds numpy arrays);
    ``curves[c]`` from :func:`search_curves` (plain lists, for the report JSON).
    """
    probs, truth, cls_probs, top_probs = _check(probs, truth, cls_probs, top_probs, 4)
    if probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} classes on axis 1, got shape {probs.shape}")
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise UserError(f"scale must be the whole downsampling factor per side (>= 1), got {scale!r}")
    for name, grid in {"min_components": min_components, "min_areas": min_areas}.items():
        if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in grid):
            raise UserError(f"{name} must be whole pixel counts >= 0, got {list(grid)}")
    comp_map, area_map = _to_reduced(min_components, scale), _to_reduced(min_areas, scale)
    tables, baselines = [], []
    for i in range(NUM_CLASSES):
        area, inter = _areas(probs[:, i], truth[:, i], tuple(thresholds), tuple(comp_map))
        tables.append((area, inter, truth[:, i].sum(axis=(1, 2), dtype=np.int64)))
        baselines.append(search_class(probs[:, i], truth[:, i], None, (0.5,), (0,), (0,))[1])
    gates = (cls_thresholds, top_thresholds, min_gain, slack_images)
    return _search_all(tables, baselines, cls_probs, top_probs, thresholds, comp_map, area_map, gates)


def search_tables(
    area: np.ndarray,
    inter: np.ndarray,
    truth_area: np.ndarray,
    cls_probs: np.ndarray | None = None,
    thresholds=DEFAULT_THRESHOLDS,
    min_components=DEFAULT_MIN_COMPONENTS,
    min_areas=DEFAULT_MIN_AREAS,
    cls_thresholds=None,
    min_gain: float | None = None,
    top_probs: np.ndarray | None = None,
    top_thresholds=None,
    slack_images: float = 0.0,
) -> tuple[PostProcessing, dict]:
    """:func:`search_all` at full resolution from per-image :func:`area_table` s, no maps kept.

    area, inter: int64 (N, 4, T, M) over ``thresholds`` x ``min_components`` (which must hold
    the baseline's 0.5 and 0); truth_area: (N, 4) truth pixels. The result is exactly what
    inference scores with those parameters on the same maps.
    """
    area, inter, truth_area = np.asarray(area), np.asarray(inter), np.asarray(truth_area)
    if 0.5 not in thresholds or 0 not in min_components:
        raise UserError("the grids must hold threshold 0.5 and min_component 0 (the baseline)")
    t, m = list(thresholds).index(0.5), list(min_components).index(0)
    tables, baselines = [], []
    for i in range(NUM_CLASSES):
        a, x = np.moveaxis(area[:, i], 0, -1), np.moveaxis(inter[:, i], 0, -1)  # (T, M, N)
        tables.append((a, x, truth_area[:, i]))
        one = (slice(t, t + 1), slice(m, m + 1))
        base = search_class_tables(a[one], x[one], truth_area[:, i], None, (0.5,), (0,), (0,))
        baselines.append(base[1])
    identity = {int(v): int(v) for v in min_components}, {int(v): int(v) for v in min_areas}
    gates = (cls_thresholds, top_thresholds, min_gain, slack_images)
    return _search_all(tables, baselines, cls_probs, top_probs, thresholds, *identity, gates)


def _search_all(tables, baselines, cls_probs, top_probs, thresholds, comp_map, area_map, gates):
    """Every class from its (area, inter, truth_area) tables; sizes searched as ``comp_map`` /
    ``area_map`` keys and reported as their values (full-resolution pixels)."""
    cls_thresholds, top_thresholds, min_gain, slack_images = gates
    found, report = [], {"classes": {}, "mean": {}, "tables": {}, "curves": {}}
    for i, class_id in enumerate(CLASS_IDS):
        cls_i = None if cls_probs is None else cls_probs[:, i]
        top_i = None if top_probs is None else top_probs[:, i]
        area, inter, truth_area = tables[i]
        p, score, table = search_class_tables(
            area,
            inter,
            truth_area,
            cls_i,
            thresholds,
            tuple(comp_map),
            tuple(area_map),
            cls_thresholds,
            top_i,
            top_thresholds,
            slack_images / max(len(truth_area), 1),
        )
        empty = float(np.mean(truth_area == 0))
        gain = 1.0 / len(truth_area) if min_gain is None else min_gain
        if score < empty + gain - _TIE:
            # Masks that beat predicting nothing by less than one image's worth of Dice are
            # noise on these images, not evidence they help on others, and a false positive
            # costs a whole point on a defect-free image.
            full = ClassParams(0.5, 0, NEVER)
        else:
            full = replace(p, min_component=comp_map[p.min_component], min_area=area_map[p.min_area])
        found.append(full)
        baseline = baselines[i]
        table["min_components"] = list(comp_map.values())
        table["min_areas"] = list(area_map.values())
        report["tables"][class_id] = table
        report["curves"][class_id] = search_curves(table, p, list(comp_map), list(area_map))
        report["classes"][class_id] = {
            "best_dice": score,
            "baseline_dice": baseline,
            "empty_dice": empty,
            "disabled": full.disabled,
            "params": asdict(full),
        }
    for key in ("best_dice", "baseline_dice", "empty_dice"):
        report["mean"][key] = float(np.mean([c[key] for c in report["classes"].values()]))
    return PostProcessing(tuple(found)), report
