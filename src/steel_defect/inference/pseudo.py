"""Pseudo labels: an ensemble labels unlabelled frames, and only its confident verdicts are kept.

``steel-defect pseudo-label --checkpoints F0.pth F1.pth ... --postprocessing post.yml
--images DIR --out OUT`` predicts every frame of DIR with the ensemble (and its flip TTA),
post-processes it as inference does, and keeps a frame only when, for every class, the
ensemble is sure (:class:`PseudoRules`):

* a class painted by the post-processing needs a pixel probability of at least ``upper``;
* a class left empty needs every pixel below ``lower``;
* with a classifier in the ensemble (and ``agree``), the classifier's verdict
  (probability >= 0.5) must match whether the mask is painted.

A frame in between is dropped: a wrong pseudo label teaches the wrong thing, while a dropped
one only costs a training example. OUT gets ``train.csv`` (wide layout, so defect-free frames
are listed too) and ``pseudo_labels.csv`` (every frame: kept, why not, the maximum
probabilities). Train on them with ``--opts 'data.extra=[{train_csv: OUT/train.csv,
train_images: DIR, weight: 1.0}]'``; the folds never validate on them (data.loaders).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.annotations import write_annotations
from steel_defect.data.images import ImageReadError, read_image
from steel_defect.data.rle import masks_to_rles
from steel_defect.errors import UserError
from steel_defect.inference.predictor import Prediction, Predictor
from steel_defect.inference.run import list_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoRules:
    """When the ensemble's verdict on a frame is trusted as a label (see the module docstring)."""

    upper: float = 0.8
    lower: float = 0.2
    agree: bool = True

    def __post_init__(self):
        for name in ("upper", "lower"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must be a probability in [0, 1], got {value!r}")


def evidence(prediction: Prediction) -> tuple[np.ndarray, np.ndarray | None]:
    """(painted (4,) bool: the post-processed mask is not empty, peaks (4,) maximum probability
    per class, or None when the segmenter never ran; :func:`pseudo_label` always runs it)."""
    painted = prediction.masks.reshape(len(CLASS_IDS), -1).any(axis=1)
    peaks = None if prediction.probs is None else prediction.probs.reshape(len(CLASS_IDS), -1).max(axis=1)
    return painted, peaks


def judge(prediction: Prediction, rules: PseudoRules, found=None) -> str | None:
    """None when the frame's labels are trusted, else the first reason it is not.

    ``found``: :func:`evidence` of the prediction when the caller has it already.
    """
    painted, peaks = found if found is not None else evidence(prediction)
    if peaks is None:  # a gate closed and the maps were never computed: nothing to be sure of
        return "the segmenter did not run (classifier gate): no pixel evidence either way"
    for i, class_id in enumerate(CLASS_IDS):
        if painted[i] and peaks[i] < rules.upper:
            return f"class {class_id} painted but its peak probability {peaks[i]:.2f} < upper {rules.upper}"
        if not painted[i] and peaks[i] >= rules.lower:
            return f"class {class_id} empty but its peak probability {peaks[i]:.2f} >= lower {rules.lower}"
        if rules.agree and prediction.cls_probs is not None:
            says = prediction.cls_probs[i] >= 0.5
            if says != painted[i]:
                verdict = "present" if says else "absent"
                return f"class {class_id}: the classifier says {verdict}, the mask disagrees"
    return None


def pseudo_label(
    predictor: Predictor,
    images_dir: str | Path,
    out_dir: str | Path,
    rules: PseudoRules = PseudoRules(),
    batch_size: int = 4,
) -> dict:
    """Label every frame of ``images_dir``, keep the confident ones; returns a summary.

    Writes ``out_dir/train.csv`` (kept frames, wide layout) and ``out_dir/pseudo_labels.csv``
    (every frame), both atomically, the table last.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    image_ids = list_images(images_dir)
    table, kept, labels = [], [], []
    for start in range(0, len(image_ids), batch_size):
        chunk, frames = [], []
        for image_id in image_ids[start : start + batch_size]:
            try:
                frames.append(read_image(images_dir / image_id, channels=3, expected_shape=IMAGE_SHAPE))
                chunk.append(image_id)
            except ImageReadError as err:
                log.error("%s", err)
                table.append({"ImageId": image_id, "kept": 0, "reason": f"unreadable: {err}"})
        # The segmenter runs on every frame, gated or not: a frame the classifier gate closed
        # at 0.49 under 0.5 is no confident "defect-free" until its maps say so too.
        predictions = predictor.predict(frames, skip_gated=False)
        for image_id, prediction in zip(chunk, predictions, strict=True):
            painted, peaks = found = evidence(prediction)
            reason = judge(prediction, rules, found)
            row = {"ImageId": image_id, "kept": int(reason is None), "reason": reason or ""}
            if peaks is not None:
                row.update({f"peak_{c}": round(float(p), 4) for c, p in zip(CLASS_IDS, peaks, strict=True)})
            row.update({f"painted_{c}": int(m) for c, m in zip(CLASS_IDS, painted, strict=True)})
            table.append(row)
            if reason is None:
                kept.append(image_id)
                labels.append(masks_to_rles(prediction.masks))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_annotations(out_dir / "train.csv", kept, labels)
    columns = ["ImageId", "kept", "reason", *(f"peak_{c}" for c in CLASS_IDS)]
    columns += [f"painted_{c}" for c in CLASS_IDS]
    with atomic_write(out_dir / "pseudo_labels.csv", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(table, key=lambda r: r["ImageId"]))
    with_defects = sum(any(rle for rle in rles) for rles in labels)
    summary = {
        "images": len(image_ids),
        "kept": len(kept),
        "kept_with_defects": with_defects,
        "per_class": {str(c): sum(bool(rles[i]) for rles in labels) for i, c in enumerate(CLASS_IDS)},
        "train_csv": str(out_dir / "train.csv"),
        "train_images": str(images_dir),
        "table": str(out_dir / "pseudo_labels.csv"),
        "rules": {"upper": rules.upper, "lower": rules.lower, "agree": rules.agree},
    }
    log.info(
        "pseudo labels: kept %d of %d frames (%d with defects) -> %s",
        len(kept),
        len(image_ids),
        with_defects,
        summary["train_csv"],
    )
    return summary


def extra_opt(summary: dict, weight: float = 1.0) -> str:
    """The ``--opts`` value that trains on these pseudo labels."""
    return (
        f"data.extra=[{{train_csv: {summary['train_csv']}, train_images: {summary['train_images']}, "
        f"weight: {weight}}}]"
    )
