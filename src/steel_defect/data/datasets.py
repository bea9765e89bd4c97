"""torch Datasets that turn Severstal images and labels into dict samples.

Catalyst runners consume dict batches, so every item is a dict:

* :class:`SegmentationDataset` -> ``{"image", "mask", "image_id"}``
* :class:`ClassificationDataset` -> ``{"image", "targets", "image_id"}``
* :class:`ImageFolderDataset` (inference, no labels) -> ``{"image", "image_id"}``

Image scaling rule: normalisation belongs to the transforms (``Normalize``). If the
transformed image is still uint8 (no Normalize configured) it is divided by 255, so the
model always sees float32 in [0, 1] or the normalised range, never 0..255. A float image
coming out of the transforms is passed through unchanged.

Masks are decoded from the RLE at the Severstal frame size and transformed together with
the image (see :mod:`steel_defect.data.transforms`), so crops and flips move both alike.
Classification targets are computed from the masks *after* the transforms: a crop that
cuts a defect out of the frame makes that sample defect-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.annotations import Annotations
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_hwc
from steel_defect.errors import UserError

# Called as transforms(image=..., mask=...) -> dict, as an albumentations Compose is.
Transforms = Callable[..., dict[str, Any]]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 or float image -> float32 tensor (C, H, W); uint8 is scaled by 1/255."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype == np.uint8:
        array = image.astype(np.float32) / 255.0
    else:
        array = image.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def image_to_uint8_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 image -> uint8 tensor (C, H, W), for ``data.normalize_on_device``."""
    if image.dtype != np.uint8:
        raise UserError(f"data.normalize_on_device needs uint8 images from the transforms, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W, 4) mask (any dtype, non-zero is defect) -> float32 0/1 tensor (4, H, W)."""
    return torch.from_numpy(np.ascontiguousarray((mask > 0).transpose(2, 0, 1)).astype(np.float32))


def multi_hot_targets(mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) mask -> float32 (5,) ``[no_defect, class1, .., class4]``.

    A class is present when any of its pixels is set; ``no_defect`` is 1 iff none is.
    """
    present = (mask > 0).reshape(-1, mask.shape[-1]).any(axis=0)
    return np.concatenate(([not present.any()], present)).astype(np.float32)


class SegmentationDataset(Dataset):
    """Images with their class masks.

    ``image_ids``: file names inside ``images_dir``; ``annotations``: labels for them
    (an image without rows is defect-free); ``classes``: the class ids whose masks are
    returned, in order (default all four). Items: ``image`` float32 (C, H, W), ``mask``
    float32 0/1 (len(classes), H, W), ``image_id`` str. ``H, W`` are the Severstal
    256 x 1600 unless a transform resizes or crops.
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        images_dir: str | Path,
        annotations: Annotations,
        transforms: Transforms | None = None,
        channels: int = 3,
        classes: Sequence[int] = CLASS_IDS,
        uint8: bool = False,
    ) -> None:
        self.uint8 = uint8  # items as uint8 tensors, normalised on the device (data.normalize_on_device)
        self.image_ids = list(image_ids)
        self.images_dir = Path(images_dir)
        self.annotations = annotations
        self.transforms = transforms
        self.channels = channels
        self.classes = tuple(classes)
        self._channels = [CLASS_IDS.index(c) for c in self.classes]

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """``(image_id, image uint8 (H, W, C), mask uint8 (H, W, len(classes)))`` after the transforms.

        Raises :class:`~steel_defect.data.images.ImageReadError` naming the file when it
        is missing, corrupt or not 1600x256.
        """
        image_id = self.image_ids[index]
        image = read_image(self.images_dir / image_id, self.channels, IMAGE_SHAPE)
        # albumentations wants multi-channel masks channels-last, like the image.
        rles = self.annotations.rles(image_id)
        mask = rles_to_hwc([rles[c] for c in self._channels], IMAGE_SHAPE)
        if self.transforms is not None:
            out = self.transforms(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if mask.shape[:2] != image.shape[:2] or mask.shape[-1] != len(self.classes):
            raise UserError(
                f"{image_id}: transforms returned image {image.shape} but mask {mask.shape}; "
                "image and mask must keep the same height and width"
            )
        return image_id, image, mask

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        return image_to_uint8_tensor(image) if self.uint8 else image_to_tensor(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, image, mask = self.load(index)
        if self.uint8:  # 0/1 as uint8: a quarter of float32's bytes through the loader's queue
            masks = torch.from_numpy(np.ascontiguousarray((mask > 0).transpose(2, 0, 1)).view(np.uint8))
            return {"image": self.image_tensor(image), "mask": masks, "image_id": image_id}
        return {"image": image_to_tensor(image), "mask": mask_to_tensor(mask), "image_id": image_id}


class ClassificationDataset(SegmentationDataset):
    """Images with multi-hot targets ``[no_defect, class1, class2, class3, class4]``.

    Same arguments as :class:`SegmentationDataset`. Items: ``image`` float32 (C, H, W),
    ``targets`` float32 (5,), ``image_id`` str. Targets come from the transformed masks.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, image, mask = self.load(index)
        return {
            "image": self.image_tensor(image),
            "targets": torch.from_numpy(multi_hot_targets(mask)),
            "image_id": image_id,
        }


class ImageFolderDataset(Dataset):
    """Unlabelled images for inference. Items: ``image`` float32 (C, H, W), ``image_id`` (file name).

    ``expected_shape`` (H, W) is checked on read unless None; a wrong size raises
    :class:`~steel_defect.data.images.ImageReadError` naming the file and both sizes.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transforms: Transforms | None = None,
        channels: int = 3,
        expected_shape: tuple[int, int] | None = IMAGE_SHAPE,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.transforms = transforms
        self.channels = channels
        self.expected_shape = expected_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = read_image(path, self.channels, self.expected_shape)
        if self.transforms is not None:
            image = self.transforms(image=image)["image"]
        return {"image": image_to_tensor(image), "image_id": path.name}
