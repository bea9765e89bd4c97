"""The teacher's maps, computed once and kept as data: what the students learn from.

Every frame goes through each segmenter of the tuned ensemble once, with the spec's TTA, and
the maps are kept at the student's training resolution, quantised as inference quantises them
(uint8 ``round(p * 255)``, :func:`~steel_defect.inference.postprocess.quantise`):

* the whole ensemble's: per class, the mean over the segmenters that predict it, exactly what
  the tuned pipeline's predictor averages before post-processing (a soft head's gating
  included; a classifier or a hard head only gates masks, so it is not in the maps);
* each fold's share of it (the models trained with fold K held out): what out-of-fold student K
  learns (:mod:`.run` says why).

Layout::

    <cache_dir>/<teacher key>/teacher.json                which models, TTA and shape the key is
    <cache_dir>/<teacher key>/<frame name>.<sha256>.png   one frame: 4 channels, classes 1..4

A teacher key is a digest of the models' weights SHA-256s, the TTA and the shape; a frame's
file is named by the frame and the SHA-256 of its bytes. A retrained model or a changed frame
is a new file, never a stale one, and a frame whose files are all there is not predicted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.data.images import read_image
from steel_defect.errors import UserError
from steel_defect.inference.pipeline import ModelRef, PipelineError, PipelineSpec
from steel_defect.inference.postprocess import quantise
from steel_defect.inference.predictor import Predictor

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored maps change meaning: every key changes with it


@dataclass(frozen=True)
class Frame:
    """One frame the students learn from: labelled (its labels are in the fold split) or not."""

    image_id: str
    path: Path
    sha256: str
    labelled: bool


def frame(path: str | Path, labelled: bool) -> Frame:
    path = Path(path)
    return Frame(path.name, path, hashlib.sha256(path.read_bytes()).hexdigest(), labelled)


@dataclass(frozen=True)
class Teacher:
    """A set of segmenters whose mean map a student learns, at ``shape``, under ``tta``."""

    models: tuple[ModelRef, ...]
    tta: tuple[str, ...]
    shape: tuple[int, int]

    @property
    def identity(self) -> dict:
        return {
            "format": FORMAT,
            "weights_sha256": sorted(m.weights_sha256 for m in self.models),
            "tta": list(self.tta),
            "shape": list(self.shape),
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]

    def folder(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / self.key

    def map_path(self, cache_dir: Path, item: Frame) -> Path:
        return self.folder(cache_dir) / f"{item.image_id}.{item.sha256[:16]}.png"


def teachers(spec: PipelineSpec, shape: tuple[int, int]) -> tuple[Teacher, dict[int, Teacher]]:
    """(the whole ensemble, {fold K: the segmenters trained with fold K held out})."""
    seg = tuple(m for m in spec.models if m.task == "seg")
    unfolded = [str(m.path) for m in seg if m.fold is None]
    if unfolded:
        raise UserError(
            f"{spec.source}: {', '.join(unfolded)} record(s) no held-out fold (trained on every "
            "frame), so no frame is out of fold for the teacher and no student can be scored "
            "honestly; distil from a pipeline of fold models (`steel-defect thresholds`)"
        )
    folds = sorted({m.fold for m in seg})
    by_fold = {k: Teacher(tuple(m for m in seg if m.fold == k), spec.tta, shape) for k in folds}
    return Teacher(seg, spec.tta, shape), by_fold


def read_levels(path: Path) -> np.ndarray:
    """uint8 (4, h, w) levels of one cached frame."""
    levels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if levels is None or levels.ndim != 3 or levels.shape[2] != NUM_CLASSES:
        raise UserError(f"{path} is not a teacher map (4-channel PNG); delete it and run distill again")
    return np.ascontiguousarray(levels.transpose(2, 0, 1))


def write_levels(path: Path, levels: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(levels.transpose(1, 2, 0)))
    if not ok:
        raise OSError(f"cannot encode the teacher map {path}")
    with atomic_write(path, "wb") as handle:
        handle.write(data.tobytes())


def _mean(maps: list[np.ndarray], classes: list[tuple[int, ...]]) -> np.ndarray:
    """Per class, the mean of the maps that predict it (0 where none does): the same float32
    sums in the same order and the same scaling as :meth:`Predictor.segment_with_heads`, so the
    levels equal the tuned pipeline's to the last one."""
    total = np.zeros_like(maps[0])
    count = np.zeros(NUM_CLASSES, np.float32)
    for probs, predicted in zip(maps, classes, strict=True):
        channels = [CLASS_IDS.index(c) for c in predicted]
        total[:, channels] += probs[:, channels]
        count[channels] += 1
    for channel in np.flatnonzero(count > 1):
        total[:, channel] *= np.float32(1 / count[channel])
    return total


def _networks(models, tta, backend: str, threads: int | None, device: str) -> dict[str, Predictor]:
    """One single-network predictor per segmenter, checked against the weights the spec names."""
    found = {}
    for model in models:
        predictor = Predictor([model.path], None, tuple(tta), device=device, backend=backend, threads=threads)
        digest = predictor.segmenters[0].info.get("weights_sha256")
        if digest != model.weights_sha256:
            raise PipelineError(
                f"{model.path} holds the weights {str(digest)[:12]}, not the {model.weights_sha256[:12]} "
                "the tuned pipeline names: retrained in place? Re-run `steel-defect thresholds`"
            )
        found[model.weights_sha256] = predictor
    return found


def compute_maps(
    wanted: list[Teacher],
    frames: list[Frame],
    cache_dir: str | Path,
    backend: str = "auto",
    threads: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
) -> dict:
    """Write every missing map of ``wanted`` for ``frames``; returns what was computed and found.

    Each segmenter runs once per frame that misses a file of any teacher, however many teachers
    hold it. ``{"frames", "computed", "cached", "passes"}``: ``passes`` counts network passes
    (TTA views included), 0 when everything was cached.
    """
    cache_dir = Path(cache_dir)
    for teacher in wanted:
        about = teacher.folder(cache_dir) / "teacher.json"
        if not about.is_file():
            entry = {**teacher.identity, "models": [str(m.path) for m in teacher.models]}
            with atomic_write(about) as handle:
                json.dump(entry, handle, indent=2)
    missing = [f for f in frames if any(not t.map_path(cache_dir, f).is_file() for t in wanted)]
    summary = {"frames": len(frames), "computed": len(missing), "cached": len(frames) - len(missing)}
    summary["passes"] = 0
    if not missing:
        return summary
    models = {m.weights_sha256: m for t in wanted for m in t.models}
    tta = wanted[0].tta
    networks = _networks(models.values(), tta, backend, threads, device)
    log.info("teacher: %d networks on %d frames (%d cached)", len(networks), len(missing), summary["cached"])
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        images = [read_image(f.path, channels=3, expected_shape=IMAGE_SHAPE) for f in chunk]
        maps = {d: p.segment(images, wanted[0].shape) for d, p in networks.items()}
        for teacher in wanted:
            digests = [m.weights_sha256 for m in teacher.models]
            classes = [tuple(networks[d].segmenters[0].classes) for d in digests]
            levels = quantise(_mean([maps[d] for d in digests], classes))
            for item, frame_levels in zip(chunk, levels, strict=True):
                path = teacher.map_path(cache_dir, item)
                if not path.is_file():
                    write_levels(path, frame_levels)
    summary["passes"] = len(missing) * len(networks) * (1 + len(tta))
    return summary
