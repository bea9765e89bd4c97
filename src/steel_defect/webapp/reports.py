"""What the API says about one image's masks, and the mask PNG it hands out.

Pure functions of numpy arrays; :mod:`steel_defect.webapp.service` calls them with the
masks it post-processed. Class colours come from :mod:`steel_defect.constants`, so the page,
its legend, the PNGs and the error-analysis report agree.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from steel_defect.constants import CLASS_COLORS, CLASS_IDS
from steel_defect.inference.verdict import MAX_BOXES, bounding_boxes, class_report

__all__ = ["MAX_BOXES", "bounding_boxes", "class_report", "mask_png"]


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
