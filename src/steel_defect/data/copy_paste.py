"""Copy-paste of real defects: cut labelled defect regions out with their masks, paste them elsewhere.

    transforms:
      train:
        - {name: CopyPaste, params: {p: 0.5, max_pastes: 2, classes: [1, 2, 4]}}
        - {name: Resize, params: {height: 128, width: 800}}
        ...

Rare classes are the ones a small real set cannot learn (class 2 on 4 sample frames, class 4 on
5): pasting their defects onto other frames and positions multiplies them (Ghiasi et al.,
"Simple Copy-Paste", CVPR 2021). The bank of pieces is built by the training datasets from the
fold's **training** frames only (:func:`attach_banks`, called by ``build_datasets``), never from
validation or test frames, so no scored frame leaks into training; a pipeline that holds a
``CopyPaste`` without a bank refuses to run.

A piece is one connected component of one class's mask (at least ``min_area`` pixels) with a
margin of ``feather`` pixels. Pasting picks a class uniformly among those the bank holds (so a
rare class is pasted as often as a common one), then a piece; flips it at random; shifts its grey
levels so that its surroundings match the target's, plus a random ``brightness`` jitter; and
blends it with a mask blurred by ``feather`` pixels, so no seam is drawn. Targets that are mostly
black (the frame's edge, off the sheet) are avoided. The pasted class's mask gets the piece; the
other classes lose those pixels (the piece covers them). Place it first in ``transforms.train``:
it works on the full-resolution frame, before any resize or crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform

from steel_defect.constants import CLASS_IDS

DARK_LEVEL = 24  # a target box darker than this on average is off the sheet
PLACEMENT_TRIES = 8


@dataclass(frozen=True)
class Piece:
    class_id: int
    image: np.ndarray  # uint8 (h, w, C): the defect and its margin
    mask: np.ndarray  # bool (h, w): the defect's pixels
    source: str  # the frame it was cut from


class DefectBank:
    """Pieces by class id, cut from labelled frames (:meth:`from_frames`)."""

    def __init__(self, pieces: Sequence[Piece]):
        self.by_class: dict[int, list[Piece]] = {}
        for piece in pieces:
            self.by_class.setdefault(piece.class_id, []).append(piece)

    @property
    def sources(self) -> set[str]:
        """Every frame a piece was cut from (the leak test reads it)."""
        return {p.source for pieces in self.by_class.values() for p in pieces}

    def __len__(self) -> int:
        return sum(len(p) for p in self.by_class.values())

    @classmethod
    def from_frames(
        cls,
        frames,
        classes: Sequence[int],
        min_area: int = 16,
        margin: int = 3,
        max_per_class: int = 400,
        seed: int = 0,
    ) -> DefectBank:
        """Cut pieces of ``classes`` from ``frames``: ``(image_id, image (H, W, C) uint8,
        masks (4, H, W) uint8)`` tuples. At most ``max_per_class`` pieces a class, drawn evenly."""
        found: dict[int, list[Piece]] = {c: [] for c in classes}
        for image_id, image, masks in frames:
            for class_id in classes:
                mask = masks[CLASS_IDS.index(class_id)]
                if not mask.any():
                    continue
                count, labels, stats, _ = cv2.connectedComponentsWithStats(
                    mask.astype(np.uint8), connectivity=8
                )
                for k in range(1, count):
                    x, y, w, h, area = stats[k]
                    if area < min_area:
                        continue
                    x0, y0 = max(0, x - margin), max(0, y - margin)
                    x1, y1 = min(mask.shape[1], x + w + margin), min(mask.shape[0], y + h + margin)
                    found[class_id].append(
                        Piece(class_id, image[y0:y1, x0:x1].copy(), labels[y0:y1, x0:x1] == k, image_id)
                    )
        rng = np.random.default_rng(seed)
        pieces = []
        for items in found.values():
            if len(items) > max_per_class:
                items = [items[i] for i in sorted(rng.choice(len(items), max_per_class, replace=False))]
            pieces += items
        return cls(pieces)


class CopyPaste(DualTransform):
    """Paste 1..``max_pastes`` defect pieces of ``classes`` from the bank onto the frame (see the
    module docstring). ``brightness``: the largest random grey-level shift, as a fraction of 255."""

    def __init__(
        self,
        max_pastes: int = 2,
        classes: Sequence[int] = CLASS_IDS,
        brightness: float = 0.08,
        feather: float = 2.0,
        min_area: int = 16,
        flip: bool = True,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        if not isinstance(max_pastes, int) or max_pastes < 1:
            raise ValueError(f"max_pastes must be an integer of at least 1, got {max_pastes!r}")
        bad = [c for c in classes if c not in CLASS_IDS]
        if bad or not classes:
            raise ValueError(f"classes must be a non-empty list of {list(CLASS_IDS)}, got {list(classes)}")
        if not 0 <= brightness <= 1 or feather < 0 or min_area < 1:
            raise ValueError("brightness must be in [0, 1], feather at least 0, min_area at least 1")
        self.max_pastes, self.classes, self.brightness = max_pastes, tuple(classes), brightness
        self.feather, self.min_area, self.flip = feather, min_area, flip
        self.bank: DefectBank | None = None
        self.channels: tuple[int, ...] = CLASS_IDS  # the dataset's mask channels, as class ids

    def attach(self, bank: DefectBank, channels: Sequence[int]) -> None:
        self.bank, self.channels = bank, tuple(channels)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        if self.bank is None:
            raise RuntimeError(
                "CopyPaste has no defect bank: build_datasets cuts it from the training fold; a "
                "pipeline built by hand must call attach_banks(pipeline, bank, channels)"
            )
        image = data["image"]
        rng = self.random_generator
        usable = [c for c in self.classes if c in self.channels and self.bank.by_class.get(c)]
        pastes = []
        if usable:
            for _ in range(int(rng.integers(1, self.max_pastes + 1))):
                class_id = usable[int(rng.integers(len(usable)))]
                piece = self.bank.by_class[class_id][int(rng.integers(len(self.bank.by_class[class_id])))]
                flips = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if self.flip else (False, False)
                h, w = piece.mask.shape
                if h > image.shape[0] or w > image.shape[1]:
                    continue
                for _ in range(PLACEMENT_TRIES):
                    y, x = (
                        int(rng.integers(0, image.shape[0] - h + 1)),
                        int(rng.integers(0, image.shape[1] - w + 1)),
                    )
                    if image[y : y + h, x : x + w].mean() >= DARK_LEVEL:
                        break
                else:
                    continue
                jitter = float(rng.uniform(-self.brightness, self.brightness)) * 255
                pastes.append((piece, flips, y, x, jitter))
        return {"pastes": pastes}

    def _placed(self, piece: Piece, flips: tuple[bool, bool]) -> tuple[np.ndarray, np.ndarray]:
        image, mask = piece.image, piece.mask
        if flips[0]:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if flips[1]:
            image, mask = image[::-1], mask[::-1]
        return image, mask

    def apply(self, img: np.ndarray, pastes=(), **params) -> np.ndarray:
        out = img.copy() if pastes else img
        for piece, flips, y, x, jitter in pastes:
            patch, mask = self._placed(piece, flips)
            h, w = mask.shape
            target = out[y : y + h, x : x + w].astype(np.float32)
            source = patch.astype(np.float32).reshape(target.shape)
            # match the piece's surroundings to the target's, then jitter
            ring = ~mask
            shift = (target[ring].mean() - source[ring].mean()) if ring.any() else 0.0
            alpha = mask.astype(np.float32)
            if self.feather > 0:
                alpha = cv2.GaussianBlur(alpha, (0, 0), self.feather)
                alpha = np.maximum(alpha, mask)  # the defect itself is pasted whole
            alpha = alpha.reshape(h, w, *([1] * (target.ndim - 2)))
            blended = alpha * np.clip(source + shift + jitter, 0, 255) + (1 - alpha) * target
            out[y : y + h, x : x + w] = np.clip(np.rint(blended), 0, 255).astype(img.dtype)
        return out

    def apply_to_mask(self, mask: np.ndarray, pastes=(), **params) -> np.ndarray:
        out = mask.copy() if pastes else mask
        for piece, flips, y, x, _ in pastes:
            _, shape = self._placed(piece, flips)
            h, w = shape.shape
            region = out[y : y + h, x : x + w]
            region[shape] = 0  # the piece covers whatever was there
            region[..., self.channels.index(piece.class_id)][shape] = 1
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_pastes", "classes", "brightness", "feather", "min_area", "flip")


def copy_pastes(pipeline) -> list[CopyPaste]:
    """Every :class:`CopyPaste` in an albumentations pipeline, nested ``OneOf`` included."""
    found = []
    for transform in getattr(pipeline, "transforms", []):
        if isinstance(transform, CopyPaste):
            found.append(transform)
        found += copy_pastes(transform)
    return found
