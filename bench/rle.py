"""RLE throughput: our vectorised encoder/decoder beside a straightforward Python loop.

Run: ``.venv/bin/python bench/rle.py [--masks 200] [--repeat 3]``. Masks are real-sized
(256x1600) class masks from the synthetic generator (defective ones only), plus the real
labels of ../shared/data/severstal_sample when present. Both implementations are timed in
the same run on the same masks and checked to agree; the table prints masks per second
and the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.annotations import read_annotations
from steel_defect.data.rle import mask_to_rle, rle_to_mask
from steel_defect.data.synth import generate_frame

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_sample" / "train.csv"


def loop_encode(mask: np.ndarray) -> str:
    """The common Kaggle-kernel encoder: walk the column-major pixels one by one."""
    runs, start, prev = [], 0, 0
    for i, value in enumerate(mask.T.flatten().tolist(), start=1):
        if value and not prev:
            start = i
        elif not value and prev:
            runs += [start, i - start]
        prev = value
    if prev:
        runs += [start, mask.size + 1 - start]
    return " ".join(map(str, runs))


def loop_decode(rle: str, shape=IMAGE_SHAPE) -> np.ndarray:
    """The common Kaggle-kernel decoder: one slice assignment per run."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    values = rle.split()
    for start, length in zip(values[0::2], values[1::2], strict=True):
        flat[int(start) - 1 : int(start) - 1 + int(length)] = 1
    return flat.reshape(shape, order="F")


def _masks(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = []
    while len(masks) < n:
        _, frame_masks = generate_frame(rng, defect_free=False)
        masks += [m for m in frame_masks if m.any()]
    if REAL.is_file():
        masks += [rle_to_mask(rle) for rle in read_annotations(REAL).defects.EncodedPixels]
    return masks


def _rate(fn, items, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=200, help="synthetic masks to time")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    args = parser.parse_args()
    masks = _masks(args.masks)
    rles = [mask_to_rle(m) for m in masks]
    assert all(loop_encode(m) == r for m, r in zip(masks, rles, strict=True)), "encoders disagree"
    assert all((loop_decode(r) == m).all() for m, r in zip(masks, rles, strict=True)), "decoders disagree"
    runs = np.mean([len(r.split()) // 2 for r in rles])
    print(f"{len(masks)} masks of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, {runs:.0f} runs per mask on average")
    print(f"{'operation':<10}{'ours (masks/s)':>16}{'loop (masks/s)':>16}{'ratio':>8}")
    for name, ours, loop, items in (
        ("encode", mask_to_rle, loop_encode, masks),
        ("decode", rle_to_mask, loop_decode, rles),
    ):
        fast, slow = _rate(ours, items, args.repeat), _rate(loop, items, args.repeat)
        print(f"{name:<10}{fast:>16.0f}{slow:>16.0f}{fast / slow:>7.1f}x")


if __name__ == "__main__":
    main()
