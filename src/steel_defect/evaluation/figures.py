"""Pictures for the error-analysis report, returned as bytes so the HTML can inline them.

Charts are matplotlib PNGs; frames are JPEGs with the truth drawn as contours and the
prediction as filled areas, in the class colours the web page uses
(:data:`steel_defect.constants.CLASS_COLORS`). Called by :mod:`steel_defect.evaluation.report`.
"""

from __future__ import annotations

import io

import cv2
import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from steel_defect.constants import CLASS_COLORS
from steel_defect.data.images import encode_jpeg

FILL_ALPHA = 0.45
FRAME_JPEG_QUALITY = 85


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def dice_histogram(dice: np.ndarray, class_id: int) -> bytes:
    """Histogram of the Dice of one class's defect images (``dice``: 1-D float)."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.hist(dice, bins=np.linspace(0, 1, 11), color=CLASS_COLORS[class_id], edgecolor="#333")
    ax.set(
        xlabel="Dice", ylabel="defect images", xlim=(0, 1), title=f"class {class_id}: Dice of defect images"
    )
    ax.grid(alpha=0.3)
    return _png(fig)


def dice_vs_area(area: np.ndarray, dice: np.ndarray, bins: list[dict], class_id: int) -> bytes:
    """Dice of each defect image against its true area (log scale), with the per-bin means."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.scatter(area, dice, s=9, alpha=0.5, color=CLASS_COLORS[class_id], edgecolors="#333", linewidths=0.3)
    filled = [b for b in bins if b["mean_dice"] is not None]
    if filled:
        centres = [np.sqrt(max(b["low"], 1) * b["high"]) for b in filled]
        ax.plot(centres, [b["mean_dice"] for b in filled], "-o", color="#1d2329", label="mean per size bin")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short range
    ax.set_xlim(max(1.0, float(np.min(area)) / 2), float(np.max(area)) * 2)
    ax.set(
        xlabel="true defect area (pixels)",
        ylabel="Dice",
        ylim=(-0.03, 1.03),
        title=f"class {class_id}: by size",
    )
    ax.grid(alpha=0.3)
    return _png(fig)


def search_curves(curves: dict, class_id: int) -> bytes:
    """Dice against pixel threshold and against minimum area, the chosen point marked.

    ``curves``: one class's entry of a threshold-search ``.report.json`` (``"threshold"`` and
    ``"min_area"``, each ``{"values", "dice", "chosen"}``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 2.6))
    for ax, key, label in zip(
        axes, ("threshold", "min_area"), ("pixel threshold", "min area (pixels)"), strict=True
    ):
        curve = curves[key]
        ax.plot(curve["values"], curve["dice"], "-o", ms=3, color=CLASS_COLORS[class_id], mec="#333")
        chosen = curve["chosen"]
        ax.plot(
            [curve["values"][chosen]], [curve["dice"][chosen]], "*", ms=14, color="#1d2329", label="chosen"
        )
        ax.set(xlabel=label, ylabel="OOF Dice", title=f"class {class_id}: Dice vs {label}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def _bgr(hex_colour: str) -> tuple[int, int, int]:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, class_id: int) -> bytes:
    """A JPEG of one frame: the prediction filled, the truth outlined, both in the class colour.

    image: uint8 (H, W, 3) RGB or (H, W). pred, truth: binary (H, W) masks of one class.
    The truth outline gets a dark halo so it stays visible on bright steel and on the fill.
    """
    frame = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    colour = np.array(_bgr(CLASS_COLORS[class_id]), dtype=np.float32)
    filled = np.asarray(pred, dtype=bool)
    blend = frame.astype(np.float32)
    blend[filled] = (1 - FILL_ALPHA) * blend[filled] + FILL_ALPHA * colour
    frame = blend.round().astype(np.uint8)
    contours, _ = cv2.findContours(
        np.asarray(truth, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(frame, contours, -1, (20, 20, 20), 4)
    cv2.drawContours(frame, contours, -1, _bgr(CLASS_COLORS[class_id]), 2)
    return encode_jpeg(frame, FRAME_JPEG_QUALITY, "the overlay")
