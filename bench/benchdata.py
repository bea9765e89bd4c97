"""Inputs shared by the benchmarks: synthetic frames on disk and the checkpoints to time."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from steel_defect.config import load_config
from steel_defect.data.synth import generate_frame
from steel_defect.models import build_model
from steel_defect.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def synthetic_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic 1600x256 JPEGs in ``folder``, every other one defect-free."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image, _ = generate_frame(rng, defect_free=i % 2 == 0)
        paths.append(folder / f"{i:09x}.jpg")
        cv2.imwrite(str(paths[-1]), np.dstack([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return paths


def bench_checkpoints(work: Path, given: list[str] | None) -> list[str]:
    """The given checkpoints, else the ones `make demo` trained, else untrained full-size models
    (speed does not depend on the weights)."""
    if given:
        return given
    demo = [
        REPO / "work/demo/seg/fold0/checkpoints/best.pth",
        REPO / "work/demo/cls/fold0/checkpoints/best.pth",
    ]
    if all(p.is_file() for p in demo):
        return [str(p) for p in demo]
    paths = []
    for config in ("configs/seg/unet_resnet18_bcedice.yml", "configs/cls/resnet34_5class.yml"):
        cfg = load_config(REPO / config, ["model.encoder_weights=null"])
        path = work / f"{cfg.task}.pth"
        save_checkpoint(path, build_model(cfg), cfg, epoch=0, metrics={})
        paths.append(str(path))
    return paths


def print_rows(rows: list[tuple[str, str]]) -> None:
    """One aligned ``name  value`` line per measured figure."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>8}")


def fastest(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls: the run least disturbed by other work."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def arrive(
    folder: Path,
    source: Path,
    names: list[str],
    rate_hz: float,
    arrivals: dict,
    stop: threading.Event | None = None,
) -> None:
    """The camera: frames of ``source`` renamed into ``folder`` at ``rate_hz`` under new names
    (``f0000000.jpg``...), each copied to a hidden partial file first; ``arrivals[new name]`` is
    the rename's ``time.time()``. Cycles through ``names`` until ``stop`` is set, or, without it,
    stops after one pass."""
    period, index = 1.0 / rate_hz, 0
    next_at = time.monotonic()
    while stop is None or not stop.is_set():
        if stop is None and index >= len(names):
            return
        name = f"f{index:07d}.jpg"
        partial = folder / f".{name}.part"
        shutil.copyfile(source / names[index % len(names)], partial)
        time.sleep(max(0.0, next_at - time.monotonic()))
        os.rename(partial, folder / name)
        arrivals[name] = time.time()
        index += 1
        next_at += period
