"""What the API says about one image's masks, and the mask PNG it hands out.

Pure functions of numpy arrays; :mod:`steel_defect.webapp.service` calls them with the
masks it post-processed. Class colours come from :mod:`steel_defect.constants`, so the page,
its legend, the PNGs and the error-analysis report agree.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from steel_defect.constants import CLASS_COLORS, CLASS_IDS, CLASS_NAMES
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


def class_report(masks: np.ndarray, probs: np.ndarray, cls_probs: np.ndarray | None) -> list[dict]:
    """One entry per class 1..4: probability, RLE, area (pixels and percent), boxes.

    masks: uint8 (4, H, W) 0/1. probs: (4, H, W) uint8 (p * 255) or float. cls_probs: (4,)
    or None. ``boxes`` lists the largest MAX_BOXES components. ``probability`` is the
    classifier's when there is one, else the segmenter's highest pixel probability;
    ``probability_source`` says which.
    """
    pixels = masks.shape[1] * masks.shape[2]
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    report = []
    for i, class_id in enumerate(CLASS_IDS):
        area = int(masks[i].sum())
        peak = float(probs[i].max()) / scale
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


def _palette() -> list[int]:
    """Palette for indices 0..15, where bit k-1 set means class k: the mean colour of the set bits."""
    rgb = {c: [int(CLASS_COLORS[c][j : j + 2], 16) for j in (1, 3, 5)] for c in CLASS_IDS}
    palette = []
    for index in range(16):
        present = [rgb[c] for c in CLASS_IDS if index >> (c - 1) & 1]
        palette += [round(sum(v) / len(present)) for v in zip(*present, strict=True)] if present else [0] * 3
    return palette


def mask_png(masks: np.ndarray) -> bytes:
    """An indexed PNG of (4, H, W) masks: pixel index = sum of 2**(k-1) over the classes k present.

    Viewers show class colours (overlaps in a mix of them); ``np.array(Image.open(f))`` gives
    the indices back, so ``index >> (k - 1) & 1`` is the mask of class k.
    """
    index = np.zeros(masks.shape[1:], np.uint8)
    for i, class_id in enumerate(CLASS_IDS):
        index |= (masks[i] != 0).astype(np.uint8) << (class_id - 1)
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    image.putpalette(_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
