"""Render docs/synthetic_vs_real.png: synthetic frames (one per class) beside a real one.

Shows what ``steel_defect.data.synth`` draws, each mask outlined in its class colour,
next to a real frame with its real mask from ``../shared/data/severstal_sample`` when
that folder is there (otherwise synthetic frames only, and the script says so). Run from
the repository root::

    .venv/bin/python docs/make_synthetic_figure.py [--real-dir DIR] [--out PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # render to a file; no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from PIL import Image

from steel_defect.constants import CLASS_IDS, CLASS_NAMES
from steel_defect.data.annotations import read_annotations
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.synth import generate_frame

HERE = Path(__file__).resolve().parent
DEFAULT_REAL_DIR = HERE.parent.parent / "shared" / "data" / "severstal_sample"
COLOURS = {1: (230, 25, 75), 2: (60, 180, 75), 3: (0, 130, 200), 4: (255, 225, 25)}  # RGB per class


def overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Gray (H, W) uint8 plus masks (4, H, W) -> RGB (H, W, 3) with each mask outlined."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    # Outlines only, drawn thick enough to survive downscaling, so the defect stays visible.
    for class_id in CLASS_IDS:
        contours, _ = cv2.findContours(
            masks[class_id - 1].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(rgb, contours, -1, COLOURS[class_id], 3)
    return rgb


def synthetic_examples(seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One frame per class (the first drawn that carries it), then one defect-free frame."""
    rng = np.random.default_rng(seed)
    wanted, found = list(CLASS_IDS), {}
    while wanted:
        image, masks = generate_frame(rng, defect_free=False)
        present = [c for c in CLASS_IDS if masks[c - 1].any()]
        hit = next((c for c in wanted if c in present), None)
        if hit is not None:
            found[hit] = (image, masks)
            wanted.remove(hit)
    examples = []
    for class_id in CLASS_IDS:
        image, masks = found[class_id]
        present = ", ".join(str(c) for c in CLASS_IDS if masks[c - 1].any())
        examples.append((f"synthetic, class {present}", image, masks))
    image, masks = generate_frame(rng, defect_free=True)
    examples.append(("synthetic, defect-free", image, masks))
    return examples


def real_example(real_dir: Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The real frame with the most classes in the sample (ties: first by id), or None."""
    if not (real_dir / "train.csv").is_file():
        print(f"{real_dir} has no train.csv: rendering synthetic frames only")
        return None
    annotations = read_annotations(real_dir / "train.csv")
    image_id = max(annotations.image_ids, key=lambda i: sum(bool(r) for r in annotations.rles(i)))
    image = read_image(real_dir / "train_images" / image_id, channels=1)[:, :, 0]
    masks = rles_to_masks(annotations.rles(image_id))
    present = ", ".join(str(c) for c in CLASS_IDS if masks[c - 1].any())
    return f"real {image_id}, class {present}", image, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR)
    parser.add_argument("--out", type=Path, default=HERE / "synthetic_vs_real.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    examples = synthetic_examples(args.seed)
    real = real_example(args.real_dir)
    if real is not None:
        examples.insert(0, real)
    fig, axes = plt.subplots(len(examples), 1, figsize=(12, 2.2 * len(examples) + 0.5))
    for ax, (title, image, masks) in zip(axes, examples, strict=True):
        ax.imshow(overlay(image, masks), interpolation="antialiased")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_axis_off()
    handles = [Patch(color=np.array(COLOURS[c]) / 255, label=f"{c}: {CLASS_NAMES[c]}") for c in CLASS_IDS]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.04, hspace=0.25)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90)
    # A 256-colour palette keeps the grey frames faithful at a fraction of the file size.
    Image.open(buffer).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
