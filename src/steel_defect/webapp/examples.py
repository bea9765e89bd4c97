"""Synthetic example frames one click away on the page (no real data ships with the package)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS
from steel_defect.data.synth import generate_frame

EXAMPLE_SEED = 28  # its five defect frames cover all four classes
N_EXAMPLES = 6


@lru_cache(maxsize=1)
def example_images() -> dict[str, bytes]:
    """``{file name: JPEG bytes}``: five frames with defects and one clean, the same every run.

    The name says which classes were drawn (``example-2-c3c4.jpg``), so a user can compare.
    """
    rng = np.random.default_rng(EXAMPLE_SEED)
    examples = {}
    for index in range(1, N_EXAMPLES + 1):
        image, masks = generate_frame(rng, defect_free=index == N_EXAMPLES)
        drawn = "".join(f"c{c}" for c in CLASS_IDS if masks[c - 1].any()) or "clean"
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError("OpenCV could not encode an example frame")
        examples[f"example-{index}-{drawn}.jpg"] = data.tobytes()
    return examples
