"""Synthetic steel-like frames with defect masks, for tests, demos and smoke-training.

The real data cannot ship with the repository, yet the pipeline (folds, training,
inference, submission CSV, GUI) needs a Severstal-shaped folder to run end to end. This
module draws grey brushed-steel frames (grain, banding, brightness drift, sometimes a
dark sheet border) and paints four defect kinds that echo the real classes:

1. pits and spots: small dark or bright blobs, often a few clustered;
2. fine vertical lines: thin, faint, near-vertical;
3. scratches and streaks: elongated, mostly horizontal-ish, of varied length;
4. large patches: big irregular dark regions with rough texture.

Each mask is exactly the shape whose intensity was changed, so a model can learn it.
Write a dataset from Python::

    from steel_defect.data.synth import write_synthetic_dataset
    write_synthetic_dataset("data/synthetic", n=200, seed=0)
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_CLASSES
from steel_defect.data.annotations import WIDE_HEADER, write_annotations
from steel_defect.data.images import encode_jpeg
from steel_defect.data.rle import masks_to_rles
from steel_defect.errors import UserError

H, W = IMAGE_HEIGHT, IMAGE_WIDTH
# Shares chosen so every class shows up in a few dozen frames while class 3 still
# dominates, as it does in the real data (there it is ~70% of defects).
DEFECT_FREE_SHARE = 0.45
PRIMARY_CLASS_WEIGHTS = np.array([0.18, 0.12, 0.52, 0.18])
SECOND_CLASS_SHARE = 0.2
BORDER_SHARE = 0.25
# A defect clipped to fewer pixels than this by the sheet border is dropped: it would be
# an invisible sliver that no model can learn.
MIN_DEFECT_PIXELS = 30
JPEG_QUALITY = 95


def _smooth_noise(rng: np.random.Generator, small: tuple[int, int], full: tuple[int, int]) -> np.ndarray:
    """Unit-variance noise drawn at ``small`` (h, w) and upsampled to ``full`` (H, W), float32."""
    noise = rng.standard_normal(small, dtype=np.float32)
    return cv2.resize(noise, (full[1], full[0]), interpolation=cv2.INTER_CUBIC)


def _profile(rng: np.random.Generator, length: int, knots: int) -> np.ndarray:
    """A smooth random 1-D profile of ``length`` values, unit-ish amplitude, float32."""
    values = rng.standard_normal(knots).astype(np.float32)
    return np.interp(np.arange(length), np.linspace(0, length - 1, knots), values).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Brushed-steel background, float32 (H, W), roughly in 40..170 before clipping."""
    level = rng.uniform(60, 140)
    image = np.full((H, W), level, np.float32)
    # Brightness drifts across the sheet (lighting) and in horizontal bands (rolling).
    image += rng.uniform(-25, 25) * np.linspace(-1, 1, W, dtype=np.float32)[None, :]
    image += rng.uniform(4, 15) * _profile(rng, W, int(rng.integers(6, 30)))[None, :]
    image += rng.uniform(2, 12) * _profile(rng, H, int(rng.integers(3, 12)))[:, None]
    # Grain: 1-pixel-wide streaks along the rolling direction (vertical in real frames),
    # sometimes crossed by finer horizontal striations.
    image += rng.uniform(2, 6) * _smooth_noise(rng, (int(rng.integers(3, 12)), W), (H, W))
    if rng.random() < 0.25:
        image += rng.uniform(1, 4) * _smooth_noise(rng, (H // 2, W // int(rng.integers(20, 60))), (H, W))
    # Broad soft clouds plus sharp-edged dark flecks stretched along the rolling direction,
    # both far fainter than a defect.
    image += rng.uniform(0, 5) * _smooth_noise(rng, (4, W // 16), (H, W))
    field = _smooth_noise(rng, (int(rng.integers(6, 12)), W // int(rng.integers(4, 8))), (H, W))
    flecks = cv2.GaussianBlur((field > rng.uniform(1.0, 1.8)).astype(np.float32), (0, 0), 1.0)
    image -= rng.uniform(3, 12) * flecks
    image += rng.normal(0, rng.uniform(2, 5), (H, W)).astype(np.float32)
    # Sparkle: sparse bright grains, dense on some sheets.
    grains = rng.random((H, W), dtype=np.float32)
    density = rng.uniform(0.005, 0.08)
    sparkle = (grains < density).astype(np.float32) - 0.5 * (grains > 1 - density / 2)
    image += rng.uniform(15, 45) * cv2.GaussianBlur(sparkle, (5, 5), 0.9)
    return image


def _steel_weight(rng: np.random.Generator) -> np.ndarray:
    """Per-column weight of steel (1) versus dark background past the sheet edge (0), (W,)."""
    weight = np.ones(W, np.float32)
    if rng.random() >= BORDER_SHARE:
        return weight
    edge = int(rng.integers(80, 900))
    ramp = np.clip((np.arange(W) - edge) / rng.uniform(1, 5), 0, 1).astype(np.float32)
    # Light falls off towards the edge, so steel darkens over a few dozen columns.
    fall = rng.uniform(15, 60)
    ramp *= 1 - rng.uniform(0.1, 0.4) * np.exp(-np.maximum(np.arange(W) - edge, 0) / fall)
    return ramp if rng.random() < 0.5 else ramp[::-1].copy()


def _pits(rng: np.random.Generator, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: one or two clusters of small blobs. Returns mask uint8 and amplitude float32 (H, W)."""
    mask, amp = np.zeros((H, W), np.uint8), np.zeros((H, W), np.float32)
    for _ in range(1 if rng.random() < 0.7 else 2):
        cx, cy = rng.uniform(x_lo, x_hi), rng.uniform(10, H - 10)
        spread = rng.uniform(5, 70, 2)
        strength = rng.uniform(30, 80) * (1 if rng.random() < 0.3 else -1)
        for _ in range(int(rng.integers(1, 9))):
            x = int(np.clip(cx + rng.normal(0, spread[0]), x_lo, x_hi - 1))
            y = int(np.clip(cy + rng.normal(0, spread[1]), 0, H - 1))
            axes = (int(rng.integers(3, 14)), int(rng.integers(3, 10)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(mask, (x, y), axes, angle, 0, 360, 1, -1)
            cv2.ellipse(amp, (x, y), axes, angle, 0, 360, strength * rng.uniform(0.7, 1.2), -1)
    return mask, amp


def _vertical_lines(rng: np.random.Generator, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 2: 1-3 thin near-vertical lines, sometimes in parallel pairs. Mask uint8, amplitude float32."""
    mask, amp = np.zeros((H, W), np.uint8), np.zeros((H, W), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        length = H if rng.random() < 0.4 else int(rng.integers(50, H))
        y0 = int(rng.integers(0, H - length + 1))
        x0 = rng.uniform(x_lo, x_hi)
        dx = rng.uniform(-10, 10)
        strength = rng.uniform(25, 55) * (1 if rng.random() < 0.35 else -1)
        for offset in (0.0, rng.uniform(4, 10)) if rng.random() < 0.3 else (0.0,):
            top = (round(x0 + offset), y0)
            bottom = (round(x0 + offset + dx), y0 + length - 1)
            thickness = int(rng.integers(2, 5))
            cv2.line(mask, top, bottom, 1, thickness)
            cv2.line(amp, top, bottom, strength, thickness)
    return mask, amp


def _scratches(rng: np.random.Generator, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 3: elongated scratches (thin, bright or dark) and streaks (wider, fainter)."""
    mask, amp = np.zeros((H, W), np.uint8), np.zeros((H, W), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        streak = rng.random() < 0.3
        length = float(np.exp(rng.uniform(np.log(40), np.log(1000))))
        angle = np.deg2rad(np.clip(rng.normal(0, 12), -35, 35)) + (np.pi if rng.random() < 0.5 else 0)
        n_points = int(rng.integers(3, 7))
        t = np.linspace(0, length, n_points)
        # Slight bends along the scratch, as a drifting tool leaves.
        bend = np.cumsum(rng.normal(0, length * 0.02, n_points))
        x = rng.uniform(x_lo, x_hi) + t * np.cos(angle) - bend * np.sin(angle)
        y = rng.uniform(0, H) + t * np.sin(angle) + bend * np.cos(angle)
        # Points may leave the frame: OpenCV clips the drawing, the caller clips to the steel.
        points = np.stack([x, y], 1).round().astype(np.int32)
        width = rng.uniform(8, 20) if streak else rng.uniform(2, 8)
        strength = rng.uniform(25, 45) if streak else rng.uniform(30, 75)
        strength *= 1 if rng.random() < 0.55 else -1
        for i in range(n_points - 1):
            # Tapered: thinner towards both ends.
            taper = 0.5 + 0.5 * np.sin(np.pi * (i + 0.5) / (n_points - 1))
            thickness = max(1, round(width * taper))
            p, q = tuple(points[i].tolist()), tuple(points[i + 1].tolist())
            cv2.line(mask, p, q, 1, thickness)
            cv2.line(amp, p, q, strength * rng.uniform(0.8, 1.1), thickness)
    return mask, amp


def _patches(rng: np.random.Generator, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 4: one or two large irregular dark regions with rough texture."""
    mask = np.zeros((H, W), np.uint8)
    for _ in range(1 if rng.random() < 0.75 else 2):
        half_w, half_h = rng.uniform(70, 320), rng.uniform(40, 140)
        cx, cy = rng.uniform(x_lo, x_hi), rng.uniform(0, H)
        # Shape: an ellipse whose edge is pushed around by smooth noise, drawn at 1/4 scale.
        yy, xx = np.mgrid[0 : H // 4, 0 : W // 4].astype(np.float32)
        radius = ((xx * 4 - cx) / half_w) ** 2 + ((yy * 4 - cy) / half_h) ** 2
        rough = _smooth_noise(rng, (H // 64, W // 64), (H // 4, W // 4))
        rough += 0.4 * _smooth_noise(rng, (H // 16, W // 16), (H // 4, W // 4))
        blob = (1 - radius + 0.4 * rough > 0.2).astype(np.uint8)
        mask |= cv2.resize(blob, (W, H), interpolation=cv2.INTER_NEAREST)
    # Rough inside: ridges and pits on the scale of a few pixels to a few dozen.
    texture = 1 + 0.15 * _smooth_noise(rng, (H // 4, W // 4), (H, W))
    texture += 0.25 * _smooth_noise(rng, (H // 16, W // 16), (H, W))
    amp = -rng.uniform(25, 60) * texture * mask
    return mask, amp.astype(np.float32)


DRAWERS = {1: _pits, 2: _vertical_lines, 3: _scratches, 4: _patches}


def _choose_classes(rng: np.random.Generator, defect_free: bool | None) -> list[int]:
    """Classes to draw in one frame: [] for a clean frame, else one or two class ids."""
    if defect_free is None:
        defect_free = bool(rng.random() < DEFECT_FREE_SHARE)
    if defect_free:
        return []
    first = int(rng.choice(CLASS_IDS, p=PRIMARY_CLASS_WEIGHTS))
    if rng.random() >= SECOND_CLASS_SHARE:
        return [first]
    others = [c for c in CLASS_IDS if c != first]
    weights = PRIMARY_CLASS_WEIGHTS[[c - 1 for c in others]]
    return [first, int(rng.choice(others, p=weights / weights.sum()))]


def generate_frame(
    rng: np.random.Generator, defect_free: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic frame.

    ``defect_free``: True for a clean frame, False for at least one defect, None to draw
    it (about 45% clean). Returns ``(image, masks)``: image uint8 (256, 1600) grayscale;
    masks uint8 (4, 256, 1600) of 0/1, class k at index k-1, non-empty exactly for the
    classes drawn. Deterministic given the state of ``rng``.
    """
    while True:
        image = _background(rng)
        steel = _steel_weight(rng)
        columns = np.flatnonzero(steel > 0.5)
        x_lo, x_hi = int(columns[0]), int(columns[-1]) + 1
        masks = np.zeros((NUM_CLASSES, H, W), np.uint8)
        amp = np.zeros((H, W), np.float32)
        # Contrast wanders within a defect, as real ones are rough rather than flat.
        roughness = 1 + rng.uniform(0.1, 0.4) * _smooth_noise(rng, (H // 4, W // 4), (H, W))
        taken = np.zeros((H, W), bool)
        for class_id in _choose_classes(rng, defect_free):
            mask, class_amp = DRAWERS[class_id](rng, x_lo, x_hi)
            # A later defect never paints over an earlier one, so each mask stays honest.
            keep = mask.astype(bool) & ~taken
            keep[:, :x_lo] = False
            keep[:, x_hi:] = False
            if keep.sum() < MIN_DEFECT_PIXELS:
                continue
            masks[class_id - 1] = keep
            amp += class_amp * roughness * keep
            taken |= keep
        if defect_free is False and not masks.any():
            continue  # every drawn defect was a sliver; draw the frame again
        image += cv2.GaussianBlur(amp, (0, 0), 0.8)
        border_level = rng.uniform(0, 12) + rng.normal(0, 1.0, (H, W)).astype(np.float32)
        image = image * steel[None, :] + border_level * (1 - steel[None, :])
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks


def _image_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique ids of 9 hex characters plus ``.jpg``, like the real ones."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        for value in rng.integers(0, 16**9, n - len(ids)).tolist():
            ids[f"{value:09x}.jpg"] = None
    return list(ids)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    """Encode a (H, W) uint8 image as a 3-channel JPEG and move it into place whole."""
    data = encode_jpeg(cv2.merge([image, image, image]), JPEG_QUALITY, str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# Written beside ``train_images/`` so a model trained on these frames can say so (checkpoints
# record ``trained_on.source``; the web page warns that such a model is not for real steel).
SYNTHETIC_MARKER = "SYNTHETIC.txt"


def mark_synthetic(out_dir: str | Path) -> None:
    """Leave the marker that tells :func:`images_source` these frames are synthetic."""
    Path(out_dir, SYNTHETIC_MARKER).write_text(
        "Frames generated by `steel-defect synth`: models trained on them have never seen real steel.\n"
    )


def images_source(images_dir: str | Path) -> str:
    """``"synthetic"`` for a folder written by :func:`write_synthetic_dataset`, else ``"real"``."""
    return "synthetic" if (Path(images_dir).parent / SYNTHETIC_MARKER).is_file() else "real"


def _write_frame(job: tuple) -> tuple[list[str], np.ndarray]:
    """Draw frame ``seed`` and write it to ``path``; its RLEs and which classes it holds."""
    seed, path = job
    image, masks = generate_frame(np.random.default_rng(seed))
    _write_jpeg(path, image)
    return masks_to_rles(masks), masks.reshape(NUM_CLASSES, -1).any(axis=1)


def write_synthetic_dataset(
    out_dir: str | Path, n: int, seed: int, test_fraction: float = 0.25, workers: int = 1
) -> dict:
    """Write a Severstal-layout folder of ``n`` synthetic images; same seed, same bytes.

    ``workers`` > 1 draws and encodes the frames in that many processes; every frame has its
    own seed, so the folder's bytes do not depend on it.

    Layout: ``train_images/``, ``train.csv`` (wide), ``test_images/``,
    ``sample_submission.csv`` (4 rows per test image, ``"1 1"`` as Kaggle's) and
    ``test_truth.csv`` (wide, the test labels). ``round(n * test_fraction)`` images go to
    test, at least one when ``n >= 2`` and ``test_fraction > 0``. ``train.csv`` is written
    last, so a killed run never leaves a folder that looks complete. Returns
    ``{"train", "test", "per_class": {1..4: images with that class}, "defect_free",
    "out_dir"}``, counted over all ``n`` images.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"n must be an integer >= 1 (the number of images to write), got {n!r}")
    if not 0 <= test_fraction < 1:
        raise UserError(
            f"test_fraction must be in [0, 1) so some images are left to train on, got {test_fraction}"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; pass a new or empty folder so no stale images mix in")
    n_test = round(n * test_fraction)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    root = np.random.SeedSequence(seed)
    id_seed, *frame_seeds = root.spawn(n + 1)
    # One generator per frame: frame i is the same whatever n is.
    image_ids = _image_ids(np.random.default_rng(id_seed), n)
    splits = {"train": image_ids[: n - n_test], "test": image_ids[n - n_test :]}
    rles: dict[str, list[str]] = {}
    per_class = dict.fromkeys(CLASS_IDS, 0)
    defect_free = 0
    for folder in ("train_images", "test_images"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    jobs = [
        (frame_seeds[index], out_dir / ("train_images" if index < n - n_test else "test_images") / image_id)
        for index, image_id in enumerate(image_ids)
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            frames = list(pool.map(_write_frame, jobs, chunksize=max(1, n // (8 * workers))))
    else:
        frames = map(_write_frame, jobs)
    for image_id, (frame_rles, present) in zip(image_ids, frames, strict=True):
        rles[image_id] = frame_rles
        for class_id in CLASS_IDS:
            per_class[class_id] += int(present[class_id - 1])
        defect_free += int(not present.any())
    test_ids = sorted(splits["test"])
    write_annotations(out_dir / "test_truth.csv", test_ids, [rles[i] for i in test_ids])
    with atomic_write(out_dir / "sample_submission.csv", newline="") as handle:
        handle.write(",".join(WIDE_HEADER) + "\n")
        for image_id in test_ids:
            handle.writelines(f"{image_id}_{class_id},1 1\n" for class_id in CLASS_IDS)
    mark_synthetic(out_dir)
    train_ids = sorted(splits["train"])
    write_annotations(out_dir / "train.csv", train_ids, [rles[i] for i in train_ids])
    return {
        "train": len(train_ids),
        "test": len(test_ids),
        "per_class": per_class,
        "defect_free": defect_free,
        "out_dir": str(out_dir),
    }
