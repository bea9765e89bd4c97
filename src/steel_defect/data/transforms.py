"""Build albumentations pipelines from the ``transforms`` section of a config.

Each pipeline is a list of specs, applied in order::

    train:
      - {name: HorizontalFlip, params: {p: 0.5}}
      - {name: CoarseDropout, params: {num_holes_range: [1, 4], hole_height_range: [16, 64],
                                       hole_width_range: [16, 128], fill: 0, p: 0.5}}
      - {name: OneOf, params: {p: 0.5}, transforms: [{name: RandomGamma}, {name: RandomBrightnessContrast}]}
      - {name: Normalize, params: {}}

A spec has ``name`` (a key of :data:`TRANSFORMS`), optional ``params`` passed straight
to the albumentations constructor, and, for ``OneOf`` only, a nested ``transforms`` list.

albumentations 2.x only *warns* about constructor arguments it does not know (such as the
``Cutout``-era ``max_holes``), so a stale config would silently run with defaults. We check
every parameter name against the constructor's signature and raise
:class:`~steel_defect.config.errors.ComponentError` naming the key path
(``transforms.train[1].params.max_holes``) and the valid names; the config loader builds every
pipeline once, so this happens before anything is written. Values are validated by
albumentations itself (pydantic); its message is re-raised with the key path.

Masks: the datasets pass the four class masks as ``mask`` of shape (H, W, 4), so every
geometric transform moves them exactly like the image (nearest-neighbour interpolation,
the albumentations default for masks). Pixel-level transforms (noise, brightness, gamma,
Normalize) never touch masks. ``CoarseDropout`` also leaves masks unchanged, as the old
``Cutout`` did: a hole hides the steel, it does not remove the defect, and zeroing the
mask would teach the model that defects vanish under a black patch. ``fill_mask`` is
therefore rejected for CoarseDropout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np

from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params, lookup
from steel_defect.data.copy_paste import CopyPaste, copy_pastes
from steel_defect.data.fast_transforms import Normalize, fast_transform


class LutNormalize(A.Normalize):
    """``A.Normalize`` whose plain form (numbers for mean, std, max_pixel_value) runs on uint8
    images as :class:`.fast_transforms.Normalize` does: one multi-channel ``cv2.LUT`` of the same
    float32 table instead of one per channel and a merge, so the same values, in about a quarter
    of the time (it runs on every training frame: ``bench/loader.py``)."""

    def __init__(self, fast: Normalize, **kwargs):
        super().__init__(**kwargs)
        self.fast = fast

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self.fast(img) if img.dtype == np.uint8 else super().apply(img, **params)


# One registry for every transform a config may name. ShiftScaleRotate is left out on
# purpose: albumentations 2.x deprecates it in favour of Affine.
TRANSFORMS: dict[str, type] = {
    "HorizontalFlip": A.HorizontalFlip,
    "VerticalFlip": A.VerticalFlip,
    "CoarseDropout": A.CoarseDropout,
    "RandomCrop": A.RandomCrop,
    "CenterCrop": A.CenterCrop,
    # Crop ``height`` x ``width`` around a defect pixel when the image has one (else anywhere):
    # small real sets have few defect pixels, and a plain random crop often misses them.
    "CropNonEmptyMaskIfExists": A.CropNonEmptyMaskIfExists,
    # Crop a random region (height in ``min_max_height``, width = height * ``w2h_ratio``)
    # and scale it to ``size``; with w2h_ratio 6.25 it keeps the 1600/256 frame shape.
    "RandomSizedCrop": A.RandomSizedCrop,
    # Crop by area fraction and aspect ratio, then scale to ``size``.
    "RandomResizedCrop": A.RandomResizedCrop,
    "Resize": A.Resize,
    "Affine": A.Affine,
    "Normalize": A.Normalize,
    "GaussNoise": A.GaussNoise,
    "RandomBrightnessContrast": A.RandomBrightnessContrast,
    "RandomGamma": A.RandomGamma,
    "OneOf": A.OneOf,
    # Paste defects cut from the fold's training frames (data/copy_paste.py); training only.
    "CopyPaste": CopyPaste,
}
# Transforms that only the training pipeline may hold: they need the fold's training frames.
_TRAIN_ONLY = {"CopyPaste"}

# Transforms whose nested list comes from the spec's ``transforms`` key.
_CONTAINERS = {"OneOf"}

# Parameters the constructor accepts but this project forbids, with the reason.
_FORBIDDEN_PARAMS: dict[str, dict[str, str]] = {
    "CoarseDropout": {
        "fill_mask": "masks are kept unchanged under dropout holes (a hole hides the steel, "
        "not the defect); remove fill_mask",
    },
}

# Hints for argument names that changed in albumentations 2.x, shown when a stale one is used.
_RENAMED_HINTS: dict[str, str] = {
    "CoarseDropout": " (albumentations 2.x replaced Cutout's and the old CoarseDropout's "
    "max_holes/max_height/max_width/fill_value with num_holes_range/hole_height_range/"
    "hole_width_range/fill)",
}

_SPEC_KEYS = ("name", "params", "transforms")


def _forbidden(name: str) -> dict[str, str]:
    """Parameters of transform ``name`` that a config may not set, with the reason."""
    forbidden = dict(_FORBIDDEN_PARAMS.get(name, {}))
    if name in _CONTAINERS:
        forbidden["transforms"] = (
            f"give {name}'s nested transforms as the spec's own 'transforms:' list, beside 'params:'"
        )
    return forbidden


def build_transform(spec: Mapping[str, Any], key_path: str) -> A.BasicTransform | A.BaseCompose:
    """Build one transform from ``{name, params?, transforms?}``; ``key_path`` locates it in errors."""
    if not isinstance(spec, Mapping):
        raise ComponentError(
            key_path,
            f"expected a mapping like {{name: HorizontalFlip, params: {{p: 0.5}}}}, "
            f"got {type(spec).__name__} {spec!r}",
        )
    check_params(_SPEC_KEYS, spec, key_path)
    name = spec.get("name")
    cls = lookup("transform", name, TRANSFORMS, f"{key_path}.name")
    kwargs = check_params(
        cls,
        spec.get("params"),
        f"{key_path}.params",
        forbidden=_forbidden(name),
        hint=_RENAMED_HINTS.get(name, ""),
    )
    if name in _CONTAINERS:
        if "transforms" not in spec:
            raise ComponentError(f"{key_path}.transforms", f"{name} needs a list of nested transforms")
        kwargs["transforms"] = _build_list(spec["transforms"], f"{key_path}.transforms")
    elif "transforms" in spec:
        raise ComponentError(
            f"{key_path}.transforms", f"only {', '.join(sorted(_CONTAINERS))} take nested transforms"
        )
    try:
        built = cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ComponentError(_error_path(err, key_path), f"invalid value for {name}: {err}") from err
    fast = fast_transform(spec) if name == "Normalize" else None
    return LutNormalize(fast, **kwargs) if isinstance(fast, Normalize) else built


def _error_path(err: Exception, key_path: str) -> str:
    """``<key_path>.params.<field>`` when pydantic says which field failed, else ``.params``."""
    # albumentations re-raises pydantic's ValidationError as a plain ValueError "from" it.
    for cause in (err, err.__cause__):
        try:
            loc = cause.errors()[0]["loc"]
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
        if loc and isinstance(loc[0], str):
            return f"{key_path}.params.{loc[0]}"
    return f"{key_path}.params"


def _build_list(specs: Sequence[Mapping[str, Any]], key_path: str) -> list:
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise ComponentError(key_path, f"expected a list of transform specs, got {specs!r}")
    return [build_transform(spec, f"{key_path}[{i}]") for i, spec in enumerate(specs)]


def build_transforms(
    specs: Sequence[Mapping[str, Any]] | None, key_path: str = "transforms", seed: int | None = None
) -> A.Compose:
    """Build an ``A.Compose`` from a list of specs (None or [] gives the identity).

    Call the result as ``pipeline(image=image, mask=mask)`` with ``image`` uint8 (H, W, C)
    and ``mask`` uint8 (H, W, 4); it returns a dict with the transformed ``image`` and ``mask``.
    ``seed`` fixes the random draws: albumentations keeps its own generator, which neither
    numpy's nor torch's global seed reaches (None: a fresh random sequence every run).
    """
    pipeline = A.Compose(_build_list(specs or [], key_path), seed=seed)
    if key_path != "transforms.train" and copy_pastes(pipeline):
        raise ComponentError(
            key_path,
            "CopyPaste is a training augmentation (its defects come from the fold's training frames); "
            "move it to transforms.train",
        )
    return pipeline


def split_normalize(specs: Sequence[Mapping[str, Any]] | None, key_path: str):
    """``specs`` without their last step, and that step as an :class:`.fast_transforms.Normalize`
    (``data.normalize_on_device``: the loader stops before it and the device runs it).

    Raises :class:`ComponentError` naming ``key_path`` unless the last step is a plain
    ``Normalize`` (numbers for ``mean``, ``std`` and ``max_pixel_value``, always applied).
    """
    specs = list(specs or [])
    last = fast_transform(specs[-1]) if specs else None
    if not isinstance(last, Normalize):
        raise ComponentError(
            key_path,
            "data.normalize_on_device needs a plain Normalize (mean, std, max_pixel_value; p 1) as the "
            "last step; set it false or end the list with Normalize",
        )
    return specs[:-1], last
