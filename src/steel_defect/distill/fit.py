"""How closely the shipped student follows its teacher on the frames it learnt from.

A student that has not learnt its training frames is no stand-in for its teacher anywhere else,
and its out-of-fold Dice need not show it: a handful of frames of an unusual texture (rough or
patterned steel) can be painted whole while every other frame scores. So after training, the
shipped student runs once over every frame it learnt from, at the teacher maps' resolution and
quantisation, with its own TTA, and :func:`fit_report` compares the two maps per frame and class:

    gap = mean over the frame's pixels of |student - teacher|, in probability (levels / 255)

``distill.json`` keeps the gaps' median, 95th percentile and maximum per class and the worst
pairs; a pair whose gap exceeds :data:`LOOSE` is logged as a warning, naming the frame. On the
real sample a student of 8 epochs left 16 (frame, class) pairs of its 143 frames above it (8 of
class 3, 8 of class 4; worst a clean rough frame, class 3 at 0.43 against its teacher's 0.03):
the same student painted clean patterned frames whole when they were held out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.images import read_image
from steel_defect.distill.teacher import Frame, Teacher, read_levels
from steel_defect.inference.postprocess import quantise
from steel_defect.inference.predictor import Predictor

log = logging.getLogger(__name__)

LOOSE = 0.1  # a (frame, class) whose mean gap exceeds this is one the student has not learnt
WORST = 8  # the pairs distill.json names


def fit_report(
    checkpoint: str | Path,
    teacher: Teacher,
    frames: list[Frame],
    cache_dir: str | Path,
    tta: tuple[str, ...] = (),
    backend: str = "torch",
    threads: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
) -> dict:
    """The student ``checkpoint``'s gaps to ``teacher``'s cached maps on ``frames`` (see the module)."""
    predictor = Predictor([checkpoint], None, tuple(tta), device=device, backend=backend, threads=threads)
    gaps = np.zeros((len(frames), len(CLASS_IDS)), np.float32)
    means = np.zeros((2, len(frames), len(CLASS_IDS)), np.float32)  # student, teacher
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        images = [read_image(f.path, channels=3, expected_shape=IMAGE_SHAPE) for f in chunk]
        student = quantise(predictor.segment(images, teacher.shape)).astype(np.float32)
        for i, item in enumerate(chunk):
            target = read_levels(teacher.map_path(Path(cache_dir), item)).astype(np.float32)
            gaps[start + i] = np.abs(student[i] - target).mean(axis=(1, 2)) / 255
            means[:, start + i] = student[i].mean(axis=(1, 2)) / 255, target.mean(axis=(1, 2)) / 255
    order = np.argsort(gaps, axis=None)[::-1][:WORST]
    worst = []
    for flat in order:
        row, col = np.unravel_index(flat, gaps.shape)
        worst.append(
            {
                "frame": frames[row].image_id,
                "labelled": frames[row].labelled,
                "class": CLASS_IDS[col],
                "gap": round(float(gaps[row, col]), 4),
                "student_mean": round(float(means[0, row, col]), 4),
                "teacher_mean": round(float(means[1, row, col]), 4),
            }
        )
    report = {
        "frames": len(frames),
        "loose_above": LOOSE,
        "loose": int((gaps > LOOSE).sum()),
        "classes": {
            str(c): {
                "median": round(float(np.median(gaps[:, i])), 4),
                "p95": round(float(np.percentile(gaps[:, i], 95)), 4),
                "max": round(float(gaps[:, i].max()), 4),
                "loose": int((gaps[:, i] > LOOSE).sum()),
            }
            for i, c in enumerate(CLASS_IDS)
        },
        "worst": worst,
    }
    message = unlearnt_message(report)
    if message:
        log.warning("distill: %s", message)
    return report


def unlearnt_message(fit: dict) -> str | None:
    """What a :func:`fit_report` (or its summary: ``frames``, ``loose_above``, ``loose`` and the
    first of ``worst``) says when the student has not learnt some of its frames; None when it has."""
    if not fit.get("loose"):
        return None
    worst = fit["worst"][0]
    return (
        f"the student has not learnt {fit['loose']} (frame, class) pair(s) of the {fit['frames']} "
        f"frames it learnt from (more than {fit['loose_above']:.2f} from its teacher; worst "
        f"{worst['frame']} class {worst['class']}, {worst['student_mean']:.2f} against "
        f"{worst['teacher_mean']:.2f}): more distill.epochs or a wider student (distill.json 'fit')"
    )
