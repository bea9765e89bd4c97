"""Turn per-class probability maps into the binary masks that are submitted.

The last step of the winning pipeline, per class: a classifier gate, a "top threshold" gate
on the map's maximum probability, a pixel probability threshold, removal of small connected
components and removal of masks with a small total area. An empty mask on a defect-free
image scores a full Dice point, so these steps mostly fight false positives. Parameters live
in a YAML file (``{"classes": {1: {threshold, min_component, min_area, cls_threshold,
top_threshold}, ...}}``) written by
:func:`steel_defect.inference.search.search_all` and read by inference::

    params = PostProcessing.load("runs/exp/postprocess.yml")
    masks = postprocess(probs, params, cls_probs)  # (4, H, W) uint8 0/1

Probabilities may be float in [0, 1] or uint8 0..255 (probability * 255, rounded): a uint8
value ``u`` is foreground when ``u / 255 >= threshold``, i.e. ``u >= uint8_threshold(t)``.
Minimum sizes are pixel counts at the resolution of the maps they are applied to; for maps
downsampled by ``f`` per side, :func:`reduced_size` gives the count (``ceil(m / f**2)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from pathlib import Path

import cv2
import numpy as np
import yaml

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_CLASSES
from steel_defect.errors import UserError

# 255 * t is computed in floating point (0.2 * 255 = 51.00000000000001); without the slack
# ceil would move such thresholds one step up and break u / 255 >= t.
_EPS = 1e-9


def _check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise UserError(f"{name} must be a whole number of pixels >= 0 (0 disables it), got {value!r}")
    return int(value)


# min_area that no 256x1600 mask reaches: the class is never predicted (switched off).
NEVER = IMAGE_HEIGHT * IMAGE_WIDTH + 1


@dataclass(frozen=True)
class ClassParams:
    """Post-processing of one class.

    threshold: pixel probability; a pixel is foreground when ``p >= threshold``.
    min_component: 8-connected components with fewer pixels are removed (0 or 1: keep all).
    min_area: after component removal, a mask with fewer pixels in total becomes empty.
    cls_threshold: the mask is empty when the classifier probability of the class is below
        it; None disables the gate.
    top_threshold: the mask is empty when no pixel of the class's map reaches it (the 2019
        winners' "top threshold": a confident core is required before the lower pixel
        threshold may paint the defect's full extent); works without a classifier. None
        disables it.
    """

    threshold: float = 0.5
    min_component: int = 0
    min_area: int = 0
    cls_threshold: float | None = None
    top_threshold: float | None = None

    @property
    def disabled(self) -> bool:
        """Whether these parameters never predict the class: ``min_area`` larger than a frame, as
        the threshold search sets it (:data:`NEVER`) for a class it found no gain for."""
        return self.min_area >= NEVER

    def __post_init__(self):
        # normalise numpy scalars to Python numbers so YAML can dump them
        object.__setattr__(self, "threshold", _check_probability("threshold", self.threshold))
        object.__setattr__(self, "min_component", _check_count("min_component", self.min_component))
        object.__setattr__(self, "min_area", _check_count("min_area", self.min_area))
        if self.cls_threshold is not None:
            value = _check_probability("cls_threshold (or null to disable the gate)", self.cls_threshold)
            object.__setattr__(self, "cls_threshold", value)
        if self.top_threshold is not None:
            value = _check_probability("top_threshold (or null to disable the gate)", self.top_threshold)
            object.__setattr__(self, "top_threshold", value)


_FIELDS = tuple(f.name for f in fields(ClassParams))


@dataclass(frozen=True)
class PostProcessing:
    """Parameters of all four classes; ``classes[i]`` is class ``CLASS_IDS[i]``."""

    classes: tuple[ClassParams, ClassParams, ClassParams, ClassParams] = tuple(
        ClassParams() for _ in CLASS_IDS
    )

    def __post_init__(self):
        classes = tuple(self.classes)
        if len(classes) != NUM_CLASSES or not all(isinstance(c, ClassParams) for c in classes):
            raise ValueError(f"classes must be {NUM_CLASSES} ClassParams (classes {list(CLASS_IDS)})")
        object.__setattr__(self, "classes", classes)

    @classmethod
    def from_dict(cls, data: dict, source: str = "post-processing config") -> PostProcessing:
        """Build from ``{"classes": {1: {...}, ...}}``; a missing class gets default params.

        A ``pipeline`` entry (what the search tuned, :mod:`steel_defect.inference.pipeline`) and
        a ``clean_gate`` (:mod:`steel_defect.inference.gate`) may stand beside ``classes``; that
        module reads and checks them.
        """
        beside = {"classes", "pipeline", "clean_gate"}
        if not isinstance(data, dict) or set(data) - beside:
            extra = sorted(map(str, set(data) - beside)) if isinstance(data, dict) else data
            raise UserError(
                f"{source}: expected a mapping with the keys 'classes' (and 'pipeline', 'clean_gate'), "
                f"got {extra!r}"
            )
        classes = data.get("classes") or {}
        if not isinstance(classes, dict):
            raise UserError(f"{source}: 'classes' must map class ids {list(CLASS_IDS)} to parameters")
        params = {c: ClassParams() for c in CLASS_IDS}
        for key, values in classes.items():
            class_id = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if class_id not in CLASS_IDS or isinstance(class_id, bool):
                raise UserError(f"{source}: unknown class key {key!r} in 'classes'; valid: {list(CLASS_IDS)}")
            values = values or {}
            if not isinstance(values, dict):
                raise UserError(f"{source}: classes.{key} must be a mapping of {list(_FIELDS)}")
            unknown = sorted(map(str, set(values) - set(_FIELDS)))
            if unknown:
                raise UserError(
                    f"{source}: unknown key(s) {unknown} in classes.{key}; valid: {list(_FIELDS)}"
                )
            try:
                params[class_id] = ClassParams(**values)
            except ValueError as err:
                raise UserError(f"{source}: classes.{key}: {err}") from None
        return cls(tuple(params[c] for c in CLASS_IDS))

    def to_dict(self) -> dict:
        """``{"classes": {1: {...}, ...}}`` with plain Python values (YAML-safe)."""
        return {"classes": {c: asdict(p) for c, p in zip(CLASS_IDS, self.classes, strict=True)}}

    @classmethod
    def load(cls, path: str | Path) -> PostProcessing:
        """Read a YAML file written by :meth:`save`; errors name the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"post-processing file {path} does not exist; create it with the threshold search "
                "(steel_defect.inference.search.search_all) or write one by hand"
            )
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML: {err}") from None
        return cls.from_dict(data if data is not None else {}, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write YAML atomically, so a crash never leaves a half-written file."""
        with atomic_write(path) as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)


def check_factor(factor) -> int:
    """``factor`` (a per-side downsampling factor) if it is a whole number >= 1, else ValueError."""
    if isinstance(factor, bool) or not isinstance(factor, Integral) or factor < 1:
        raise UserError(f"factor must be a whole number >= 1, got {factor!r}")
    return int(factor)


def reduced_size(size: int, factor: int) -> int:
    """A pixel count for maps downsampled by ``factor`` per side: ``ceil(size / factor**2)``.

    It keeps exactly the components whose full-resolution size ``s * factor**2`` is at least
    ``size``.
    """
    return -(-int(size) // check_factor(factor) ** 2)


def uint8_threshold(threshold: float) -> int:
    """The smallest uint8 value ``u`` with ``u / 255 >= threshold``: ``ceil(255 * threshold)``.

    With ``u = round(255 * p)`` this disagrees with the float rule ``p >= threshold`` only for
    ``p`` within half a quantisation step (0.5 / 255) of the threshold; at 0.5 they agree.
    """
    return math.ceil(255.0 * threshold - _EPS)


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Foreground where ``probs >= threshold`` (float) or ``probs >= uint8_threshold`` (uint8).

    probs: any shape, float in [0, 1] or uint8 0..255. Returns bool of the same shape.
    """
    probs = np.asarray(probs)
    if probs.dtype == np.uint8:
        return probs >= uint8_threshold(threshold)
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(
            f"probabilities must be float in [0, 1] or uint8 0..255 (p * 255), got dtype {probs.dtype}"
        )
    return probs >= threshold


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels.

    mask: (H, W) bool or uint8 (non-zero is foreground). Returns bool (H, W).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected one (H, W) mask, got shape {mask.shape}")
    if min_size <= 1 or not mask.any():
        return mask.astype(bool)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        (mask != 0).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # label 0 is the background
    return keep[labels]


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 ``round(p * 255)``: what every mask is thresholded from.

    ``predict``, the web app and the threshold search all post-process these levels, so a
    threshold means the same everywhere and the page's stored maps give the CLI's masks.
    """
    out = np.clip(probs, 0.0, 1.0)
    out *= 255.0
    return np.rint(out, out=out).astype(np.uint8)


def postprocess(probs: np.ndarray, params: PostProcessing, cls_probs: np.ndarray | None = None) -> np.ndarray:
    """Masks of all classes from their probability maps.

    probs: (4, H, W) float in [0, 1] or uint8 0..255. cls_probs: (4,) classifier
    probabilities or None (no gating). Returns uint8 (4, H, W) with values 0/1.
    Per class: gates (cls_prob < cls_threshold or max pixel probability < top_threshold ->
    empty), threshold, component removal, then min_area (fewer pixels in total -> empty).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(params.classes):
        raise ValueError(f"expected probabilities (4, H, W) (one map per class), got shape {probs.shape}")
    if cls_probs is not None:
        cls_probs = np.asarray(cls_probs, dtype=np.float64)
        if cls_probs.shape != (len(params.classes),):
            raise ValueError(f"expected classifier probabilities of shape (4,), got {cls_probs.shape}")
    out = np.zeros(probs.shape, dtype=np.uint8)
    for i, p in enumerate(params.classes):
        if cls_probs is not None and p.cls_threshold is not None and cls_probs[i] < p.cls_threshold:
            continue
        if p.top_threshold is not None and not binarize(probs[i].max(), p.top_threshold):
            continue
        mask = remove_small_components(binarize(probs[i], p.threshold), p.min_component)
        if mask.sum() >= max(p.min_area, 1):
            out[i] = mask
    return out


def removals(
    probs: np.ndarray, params: PostProcessing, cls_probs: np.ndarray | None = None
) -> list[dict | None]:
    """Per class, why :func:`postprocess` left the mask empty although pixels reached the threshold,
    so the page can say so instead of showing "0 px" under a peak above the threshold; None when
    the mask is kept or no pixel reached the threshold.

    probs, cls_probs: as :func:`postprocess`. Each entry: ``by`` (the step that emptied the mask,
    in the order they run: ``off`` the class is switched off, ``cls_threshold``, ``top_threshold``,
    ``min_component``, ``min_area``), ``pixels`` (over the threshold, or left after ``min_component``
    for ``min_area``), ``limit`` (the parameter), ``threshold`` and ``peak`` (the highest pixel
    probability, in [0, 1]); ``largest`` (the largest region, pixels) for ``min_component`` and
    ``value`` (the classifier's probability) for ``cls_threshold``.
    """
    probs = np.asarray(probs)
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    out: list[dict | None] = []
    for i, p in enumerate(params.classes):
        over = binarize(probs[i], p.threshold)
        pixels = int(over.sum())
        if not pixels:
            out.append(None)
            continue
        base = {"pixels": pixels, "threshold": p.threshold, "peak": round(float(probs[i].max()) / scale, 4)}
        if p.disabled:
            out.append({**base, "by": "off", "limit": p.min_area})
        elif cls_probs is not None and p.cls_threshold is not None and cls_probs[i] < p.cls_threshold:
            gate = {"limit": p.cls_threshold, "value": float(cls_probs[i])}
            out.append({**base, "by": "cls_threshold", **gate})
        elif p.top_threshold is not None and not binarize(probs[i].max(), p.top_threshold):
            out.append({**base, "by": "top_threshold", "limit": p.top_threshold})
        else:
            kept = int(remove_small_components(over, p.min_component).sum())
            if not kept:
                _, _, stats, _ = cv2.connectedComponentsWithStats(over.astype(np.uint8), connectivity=8)
                largest = int(stats[1:, cv2.CC_STAT_AREA].max())
                out.append({**base, "by": "min_component", "limit": p.min_component, "largest": largest})
            elif kept < max(p.min_area, 1):
                out.append({**base, "by": "min_area", "limit": p.min_area, "pixels": kept})
            else:
                out.append(None)
    return out
