"""The clean-frame gate: a cheap first pass that calls a frame clean and spares it the segmenter.

Most frames of a strip line hold no defect. Before the full pass, the pipeline's own segmenters
run once more on each frame shrunk ``scale`` times per side (:func:`coarse_shape`), without TTA,
and each class's peak probability on that coarse map is compared with the class's gate
threshold. A frame whose every class stays below its threshold is clean: it gets empty masks and
the full pass never runs on it. The others run as before, in one batch. The predictor applies it
(:meth:`.predictor.Predictor.predict`); the tuned pipeline stores it (``clean_gate:`` in
``postprocessing.yml``, :class:`GateSpec`)::

    clean_gate:
      scale: 2
      thresholds: {1: 0.0745, 2: null, 3: 0.1294, 4: 0.0902}   # null: the class never holds a frame

**Why this gate.** The line runs the distilled student, which has no classifier head, so a
classifier gate (the other candidate; pipelines with one keep it, and a class it gates off
counts as absent here too) would mean a second network to train and ship. The segmenter at a
coarse scale needs nothing new: its weights are the pipeline's, and its peak is the signal the
post-processing's own top-threshold reads. At scale 2 a pass costs about a quarter of the
multiply-adds (a side is rounded to a multiple of 32, which the encoders need); bench/gate.py
measures its time against the full pass side by side (docs/inference.md, "Skipping clean
frames"). On ONNX Runtime and OpenVINO the coarse pass runs its own export at the coarse shape
(the exports have a fixed frame size), written once beside the checkpoint as the full one is.

**Tuned out of fold** (:func:`tune_gate`): the threshold search records, for every out-of-fold
frame, the coarse peaks of the fold models that never saw it, and the Dice the tuned
post-processing earns on each (frame, class) pair over an empty mask. A pair with a gain is
*marked*: the pipeline finds a defect there, and skipping the frame would lose that Dice. Per
class the threshold starts at the lowest coarse peak of a marked pair, so the gate loses
nothing; it may then rise past marked pairs whose Dice adds up to at most ``max_lost_pairs``
(default one pair, ``inference.gate_max_lost_pairs``), where that lets it skip more frames. Of
all such settings the one skipping the most frames wins (then the one losing least, then the
lowest thresholds). The pairs given up are listed in the search report (``sacrificed``); every
other marked frame is kept, which tests/test_gate.py checks against the recorded peaks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from numbers import Integral, Real

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.errors import UserError
from steel_defect.inference.postprocess import PostProcessing, quantise, uint8_threshold

# The encoders downsample five times: each side of a network's input must divide by 2**5.
ALIGN = 32
# A level no peak reaches (peaks are uint8 0..255): the class never holds a frame back.
NEVER = 256
# Thresholds each class may take in the search: the lowest marked peaks, enough for any budget of
# a few pairs; the product over four classes stays a few thousand settings.
MAX_OPTIONS = 12
_TOL = 1e-9


@dataclass(frozen=True)
class GateSpec:
    """A tuned clean-frame gate: the coarse ``scale`` and, per class of :data:`CLASS_IDS`, the
    peak probability at or above which the class holds the frame for the full pass (None: never;
    the pipeline paints nothing of that class on the out-of-fold frames it could lose)."""

    scale: int
    thresholds: tuple[float | None, ...]

    def __post_init__(self):
        object.__setattr__(self, "scale", _check_scale(self.scale, "scale"))
        thresholds = tuple(self.thresholds)
        if len(thresholds) != NUM_CLASSES:
            raise UserError(f"thresholds: one per class {list(CLASS_IDS)}, got {len(thresholds)}")
        checked = tuple(
            None if t is None else _check_threshold(t, f"thresholds.{c}")
            for c, t in zip(CLASS_IDS, thresholds, strict=True)
        )
        object.__setattr__(self, "thresholds", checked)

    @property
    def levels(self) -> np.ndarray:
        """(4,) int: a class is present when its uint8 peak level is at least this (:data:`NEVER`
        for None), the rule :func:`~.postprocess.binarize` applies to a threshold."""
        return np.array([NEVER if t is None else uint8_threshold(t) for t in self.thresholds])

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "thresholds": dict(zip(CLASS_IDS, self.thresholds, strict=True)),
        }

    @classmethod
    def from_dict(cls, data, source: str = "clean_gate") -> GateSpec:
        """From ``{"scale": 2, "thresholds": {1: 0.07, 2: null, ...}}``; an error names the key."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: clean_gate must be a mapping with scale and thresholds, got {data!r}")
        unknown = sorted(map(str, set(data) - {"scale", "thresholds"}))
        missing = [k for k in ("scale", "thresholds") if k not in data]
        if unknown or missing:
            what = f"unknown key(s) {unknown}" if unknown else f"missing {missing}"
            raise UserError(f"{source}: {what} in clean_gate; valid: scale, thresholds")
        thresholds = data["thresholds"]
        if not isinstance(thresholds, dict):
            raise UserError(f"{source}: clean_gate.thresholds must map classes {list(CLASS_IDS)} to numbers")
        keys = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in thresholds.items()}
        if sorted(map(str, keys)) != sorted(map(str, CLASS_IDS)) or set(keys) != set(CLASS_IDS):
            raise UserError(
                f"{source}: clean_gate.thresholds has classes {sorted(map(str, thresholds))}; it needs "
                f"exactly {list(CLASS_IDS)} (null: the class never holds a frame back)"
            )
        try:
            scale = _check_scale(data["scale"], "scale")
            values = [
                None if keys[c] is None else _check_threshold(keys[c], f"thresholds.{c}") for c in CLASS_IDS
            ]
        except UserError as err:
            raise UserError(f"{source}: clean_gate.{err}") from None
        return cls(scale, tuple(values))


def _check_scale(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 2:
        raise UserError(
            f"{name} must be a whole factor >= 2 per side (2: a quarter of the pixels), got {value!r}"
        )
    return int(value)


def _check_threshold(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{name} must be a probability in [0, 1] or null, got {value!r}")
    return float(value)


def coarse_shape(shape: tuple[int, int], scale: int) -> tuple[int, int]:
    """The coarse pass's (H, W) for a network input of ``shape``: each side divided by ``scale``
    and taken to the nearest multiple of :data:`ALIGN` (at least one): 128x800 at 2 is 64x384."""
    scale = _check_scale(scale, "scale")
    return tuple(max(1, round(side / (scale * ALIGN))) * ALIGN for side in shape)


def shrink(batch: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) float32 network inputs as (N, C, h, w), area-averaged (OpenCV INTER_AREA).

    The transform's Normalize is per-channel affine, so shrinking its output is shrinking the
    frame: the full pass's input serves both passes, and a surviving frame is not decoded twice.
    """
    n, channels, height, width = batch.shape
    if (height, width) == tuple(shape):
        return batch
    out = np.empty((n, channels, *shape), np.float32)
    for i in range(n):
        frame = np.ascontiguousarray(batch[i].transpose(1, 2, 0))
        small = cv2.resize(frame, shape[::-1], interpolation=cv2.INTER_AREA)
        out[i] = (small[:, :, None] if small.ndim == 2 else small).transpose(2, 0, 1)
    return out


def peak_levels(maps: np.ndarray) -> np.ndarray:
    """(N, 4, h, w) probabilities -> (N, 4) uint8: each map's peak as the level the masks use."""
    return quantise(maps.reshape(*maps.shape[:2], -1).max(axis=2))


def open_classes(levels: np.ndarray, gate: GateSpec) -> np.ndarray:
    """(N, 4) bool: where a class holds the frame for the full pass (peak at its threshold)."""
    return np.asarray(levels, np.int64) >= gate.levels[None, :]


def classifier_absent(cls_probs, post: PostProcessing, gate: str) -> np.ndarray | None:
    """(N, 4) bool: the classes the classifier gates off, where the predictor skips on it (a
    classifier and a ``cls_threshold`` for every class); else None."""
    thresholds = [p.cls_threshold for p in post.classes]
    if cls_probs is None or gate != "classifier" or any(t is None for t in thresholds):
        return None
    return np.asarray(cls_probs) < np.asarray(thresholds, np.float64)[None, :]


def _options(levels: np.ndarray, gains: np.ndarray, budget: float) -> list[int]:
    """The thresholds worth trying for one class, lowest first: each marked peak level (from the
    lowest, which loses nothing), then :data:`NEVER`, as far as the marked pairs below the
    threshold add up to at most ``budget`` of Dice."""
    marked = gains > 0
    options = []
    for level in [*np.unique(levels[marked]).tolist(), NEVER]:
        if gains[marked & (levels < level)].sum() > budget + _TOL or len(options) == MAX_OPTIONS:
            break
        options.append(int(level))
    return options


@dataclass
class TunedGate:
    """What :func:`tune_gate` found: the gate, the search report's entry (JSON-safe), and per
    frame whether the gate skips it and which of its pairs are marked (the ``.oof.csv`` columns)."""

    spec: GateSpec
    report: dict
    skip: np.ndarray  # (N,) bool
    marked: np.ndarray  # (N, 4) bool


def tune_gate(
    levels: np.ndarray,
    dice: np.ndarray,
    empty: np.ndarray,
    scale: int,
    absent: np.ndarray | None = None,
    max_lost_pairs: float = 1.0,
) -> TunedGate:
    """The out-of-fold gate (module docstring).

    levels: (N, 4) uint8 coarse peaks of the out-of-fold frames; dice: (N, 4) the tuned
    pipeline's Dice on each pair, empty: (N, 4) an empty mask's (1 on a pair without the class,
    else 0); absent: (N, 4) bool, classes the classifier gates off (they count as below any
    threshold), or None; ``max_lost_pairs``: the Dice, in pairs, the gate may lose in all.
    """
    levels = np.asarray(levels, np.int64)
    dice, empty = np.asarray(dice, np.float64), np.asarray(empty, np.float64)
    n = len(levels)
    if levels.shape != (n, NUM_CLASSES) or dice.shape != levels.shape or empty.shape != levels.shape:
        raise ValueError(f"levels {levels.shape}, dice {dice.shape}, empty {empty.shape} must all be (N, 4)")
    if isinstance(max_lost_pairs, bool) or not isinstance(max_lost_pairs, Real) or max_lost_pairs < 0:
        raise UserError(f"gate_max_lost_pairs must be a number of pairs >= 0, got {max_lost_pairs!r}")
    absent = np.zeros(levels.shape, bool) if absent is None else np.asarray(absent, bool)
    gains = np.where(absent, 0.0, np.maximum(dice - empty, 0.0))
    options = [_options(levels[:, c], gains[:, c], max_lost_pairs) for c in range(NUM_CLASSES)]
    below = [[absent[:, c] | (levels[:, c] < t) for t in opts] for c, opts in enumerate(options)]
    frame_gain = gains.sum(axis=1)
    best, best_key = None, None
    for choice in itertools.product(*(range(len(o)) for o in options)):
        skip = below[0][choice[0]] & below[1][choice[1]] & below[2][choice[2]] & below[3][choice[3]]
        lost = float(frame_gain[skip].sum())
        if lost > max_lost_pairs + _TOL:
            continue
        chosen = [options[c][j] for c, j in enumerate(choice)]
        key = (int(skip.sum()), -lost, -sum(chosen))
        if best_key is None or key > best_key:
            best, best_key = (chosen, skip), key
    chosen, skip = best  # the lowest thresholds always qualify: they lose nothing
    spec = GateSpec(scale, tuple(None if t >= NEVER else t / 255.0 for t in chosen))
    marked = gains > 0
    sacrificed = [
        {"row": int(i), "class": CLASS_IDS[c], "dice_lost": float(gains[i, c])}
        for i, c in zip(*np.nonzero(marked & skip[:, None]), strict=True)
    ]
    lost = float(gains[skip].sum())
    change = float((empty - dice)[skip].sum())  # false positives cleared count here, as gains
    report = {
        "scale": spec.scale,
        "thresholds": {str(c): t for c, t in zip(CLASS_IDS, spec.thresholds, strict=True)},
        "max_lost_pairs": float(max_lost_pairs),
        "frames": n,
        "skipped": int(skip.sum()),
        "skipped_share": float(skip.mean()) if n else 0.0,
        "marked_frames": int(marked.any(axis=1).sum()),
        "lost_pairs": lost,
        "dice_change_pairs": change,
        "mean_dice_change": change / (NUM_CLASSES * n) if n else 0.0,
        "sacrificed": sacrificed,
    }
    return TunedGate(spec, report, skip, marked)
