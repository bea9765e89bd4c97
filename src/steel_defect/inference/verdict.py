"""What one frame's prediction says, class by class (probability, area, components, boxes, RLE),
and which model said it (:func:`model_version`).

Pure functions of numpy arrays. The web app's API (:mod:`steel_defect.webapp.reports`) and the
line's inspection log (:mod:`steel_defect.line.watch`) both describe a prediction with
:func:`class_report`, so a frame reads the same in the viewer and in the log.
"""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS, CLASS_NAMES
from steel_defect.data.rle import mask_to_rle

MAX_BOXES = 50


def bounding_boxes(mask: np.ndarray) -> list[list[int]]:
    """``[x, y, width, height]`` of each 8-connected component of an (H, W) mask, largest first."""
    if not mask.any():
        return []
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    stats = stats[1:count]  # row 0 is the background
    order = np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")
    return [stats[i, :4].tolist() for i in order]


def class_report(masks: np.ndarray, probs: np.ndarray | None, cls_probs: np.ndarray | None) -> list[dict]:
    """One entry per class 1..4: probability, RLE, area (pixels and percent), boxes.

    masks: uint8 (4, H, W) 0/1. probs: (4, H, W) uint8 (p * 255) or float, or None when the
    classifier gated the whole frame off and the segmenter never ran. cls_probs: (4,) or None.
    ``boxes`` lists the largest MAX_BOXES components. ``probability`` is the
    classifier's when there is one, else the segmenter's highest pixel probability;
    ``probability_source`` says which.
    """
    pixels = masks.shape[1] * masks.shape[2]
    scale = 255.0 if probs is not None and probs.dtype == np.uint8 else 1.0
    report = []
    for i, class_id in enumerate(CLASS_IDS):
        area = int(masks[i].sum())
        peak = float(probs[i].max()) / scale if probs is not None else 0.0
        boxes = bounding_boxes(masks[i])
        report.append(
            {
                "class_id": class_id,
                "name": CLASS_NAMES[class_id],
                "probability": round(float(cls_probs[i]) if cls_probs is not None else peak, 4),
                "probability_source": "classifier" if cls_probs is not None else "segmenter_max",
                "max_pixel_probability": round(peak, 4),
                "area": area,
                "area_percent": round(100.0 * area / pixels, 4),
                "components": len(boxes),
                "boxes": boxes[:MAX_BOXES],
                "rle": mask_to_rle(masks[i]),
            }
        )
    return report


def model_version(predictor) -> str:
    """A short name of the model that pre-labelled, scored the queue or judged a line frame: the
    first segmenter's name and a digest of every network's weights and the post-processing
    (``unet-...:3f9a1c07b2``)."""
    digest = hashlib.sha256()
    for network in predictor.segmenters + predictor.classifiers:
        digest.update(str(network.info.get("weights_sha256") or network.path).encode())
    digest.update(json.dumps(predictor.post.to_dict(), sort_keys=True, default=str).encode())
    name = predictor.segmenters[0].name if predictor.segmenters else "model"
    return f"{name}:{digest.hexdigest()[:10]}"
