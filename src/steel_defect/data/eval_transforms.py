"""The inference pipeline of a checkpoint's ``transforms.valid``: fast when it can be, checked always.

:func:`build_eval_transforms` builds the steps with :mod:`.fast_transforms` (OpenCV and numpy)
when every one of them is a plain ``Resize`` or ``Normalize``; anything else is handed to
:func:`steel_defect.data.transforms.build_transforms`, which imports albumentations and
validates it, and refused when it moves pixels. ``tests/test_eval_transforms.py`` checks that
both give equal arrays on full-size frames.

    pipeline = build_eval_transforms(cfg.transforms.valid, "model.pth: transforms.valid")
    image = pipeline(image=frame)["image"]          # the call signature of an A.Compose
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from steel_defect.data.fast_transforms import INVERTIBLE, EvalPipeline, Normalize, Resize, fast_transform
from steel_defect.errors import UserError

__all__ = ["EvalPipeline", "Normalize", "Resize", "build_eval_transforms", "fast_transform"]


def build_eval_transforms(specs: Sequence[Mapping[str, Any]] | None, key_path: str = "transforms.valid"):
    """A pipeline for ``specs`` that inference can undo: cv2/numpy when possible, else albumentations.

    Raises :class:`ValueError` (a ``ComponentError`` for a bad spec) when a transform moves
    pixels (flips, crops...), naming ``key_path``.
    """
    fast = [fast_transform(spec) for spec in specs or []]
    if all(step is not None for step in fast):
        return EvalPipeline(fast)
    from steel_defect.data.transforms import build_transforms  # imports albumentations

    pipeline = build_transforms(specs, key_path)
    for step in pipeline.transforms:
        if type(step).__name__ not in INVERTIBLE:
            raise UserError(
                f"{key_path}: validation transform {type(step).__name__} moves pixels; inference can only "
                "undo Resize (use Resize and Normalize in transforms.valid)"
            )
    return pipeline
