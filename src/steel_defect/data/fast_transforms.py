"""Inference transforms (Resize, Normalize) with OpenCV and numpy, without albumentations.

Prediction undoes nothing but a resize, so a checkpoint's ``transforms.valid`` may only hold
``Resize`` and ``Normalize``. Importing albumentations (with pydantic and scipy) costs about
half a second at start-up, so these two are built here with the same OpenCV routines and the
same float32 math as albumentations 2.0 / albucore 0.0.24:

* ``Resize``: ``cv2.resize(img, (width, height), interpolation)``, skipped when the frame
  already has that size, a trailing channel of 1 kept (albucore's ``preserve_channel_dim``);
* ``Normalize`` (``normalization: standard``): uint8 through a float32 look-up table
  ``(v - mean * max_pixel_value) * (1 / (std * max_pixel_value))`` per channel; float images
  by the same two float32 operations.

:func:`fast_transform` builds one of them from a spec, or returns None for anything else (another
transform, ``p < 1``, ``area_for_downscale``, another ``normalization``, a value albumentations
would reject). This module imports neither albumentations nor the training transforms, which
use its ``Normalize``; :mod:`.eval_transforms` chooses between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import cv2
import numpy as np

# Transforms that keep every pixel in place (or only rescale the frame): the only ones
# inference can undo.
INVERTIBLE = ("Resize", "Normalize")
# albumentations' Resize accepts exactly these interpolation flags.
_INTERPOLATIONS = (
    cv2.INTER_NEAREST,
    cv2.INTER_NEAREST_EXACT,
    cv2.INTER_LINEAR,
    cv2.INTER_CUBIC,
    cv2.INTER_AREA,
    cv2.INTER_LANCZOS4,
    cv2.INTER_LINEAR_EXACT,
)
# albumentations' Normalize defaults (ImageNet statistics).
_MEAN, _STD, _MAX_PIXEL = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255.0


class Resize:
    """``A.Resize`` on the image: ``cv2.resize`` to (height, width)."""

    def __init__(self, height: int, width: int, interpolation: int = cv2.INTER_LINEAR):
        self.height, self.width, self.interpolation = height, width, interpolation

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.height, self.width):
            return image
        out = cv2.resize(image, (self.width, self.height), interpolation=self.interpolation)
        # cv2 drops a trailing channel of 1; albucore puts it back.
        return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out


class Normalize:
    """``A.Normalize`` with ``normalization: standard``: (image - mean * max) / (std * max)."""

    def __init__(self, mean=_MEAN, std=_STD, max_pixel_value: float = _MAX_PIXEL):
        # The same float32 constants albumentations computes in its constructor.
        self.mean = np.array(mean, dtype=np.float32).reshape(-1) * max_pixel_value
        self.denominator = np.reciprocal(np.array(std, dtype=np.float32).reshape(-1) * max_pixel_value)

    def _per_channel(self, values: np.ndarray, channels: int) -> np.ndarray:
        # albucore: one value, or fewer values than channels, means the first value for all.
        if len(values) == 1 or channels == 1 or len(values) < channels:
            return np.full(channels, values[0], dtype=np.float32)
        return values[:channels]

    def constants(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 (mean * max, 1 / (std * max)) for an image of ``channels``."""
        return self._per_channel(self.mean, channels), self._per_channel(self.denominator, channels)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        channels = 1 if image.ndim == 2 else image.shape[-1]
        mean, denominator = self.constants(channels)
        if image.dtype == np.uint8:
            # The float32 table per channel of albucore's normalize_lut, applied in one
            # multi-channel cv2.LUT call instead of one per channel and a merge: the same
            # values, about 4x faster on a full frame (it runs once per frame at inference).
            luts = (np.arange(256, dtype=np.float32)[:, None] - mean[None, :]) * denominator[None, :]
            if channels == 1:
                out = cv2.LUT(image, luts[:, 0])
                return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out
            return cv2.LUT(image, np.ascontiguousarray(luts).reshape(256, 1, channels))
        out = image.astype(np.float32)
        out -= mean
        out *= denominator
        return out


class EvalPipeline:
    """Transforms applied in order; called like an albumentations ``Compose``."""

    def __init__(self, transforms: list[Resize | Normalize]):
        self.transforms = transforms

    def __call__(self, *, image: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        for transform in self.transforms:
            image = transform(image)
        return {"image": image}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    """A number or a non-empty list of numbers (what mean and std may be)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return True
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
    )


def fast_transform(spec: Any) -> Resize | Normalize | None:
    """The cv2/numpy transform for ``spec``, or None when albumentations must build it."""
    if not isinstance(spec, Mapping) or set(spec) - {"name", "params"}:
        return None
    params = spec.get("params") or {}
    if not isinstance(params, Mapping) or params.get("p", 1) != 1:
        return None
    params = {k: v for k, v in params.items() if k != "p"}
    if spec.get("name") == "Resize":
        size_ok = all(_is_int(params.get(k)) and params[k] > 0 for k in ("height", "width"))
        interpolation = params.get("interpolation", cv2.INTER_LINEAR)
        # mask_interpolation does nothing to an image.
        if (
            size_ok
            and interpolation in _INTERPOLATIONS
            and set(params)
            <= {
                "height",
                "width",
                "interpolation",
                "mask_interpolation",
            }
        ):
            return Resize(params["height"], params["width"], interpolation)
    if spec.get("name") == "Normalize" and set(params) <= {"mean", "std", "max_pixel_value"}:
        mean, std = params.get("mean", _MEAN), params.get("std", _STD)
        max_pixel = params.get("max_pixel_value", _MAX_PIXEL)
        if _numbers(mean) and _numbers(std) and _numbers(max_pixel) and not isinstance(max_pixel, Sequence):
            return Normalize(mean, std, max_pixel)
    return None
