"""The frames of a labelling folder: listed once, each checked from its header, looked up by name.

    folder = FrameFolder("test_images")       # 1600x256 frames; the rest in folder.skipped
    folder.skipped                            # [("bad.jpg", "image is 1600x255; ...")]
    folder.read("a.jpg")                      # the file's bytes; UnknownFrame for any other name,
                                              # FrameRemoved once its file is deleted or moved

A name from a client is looked up in this listing only, never joined onto a path, so
``../x`` is simply not found. Sizes are read from the header (no pixel is decoded at start,
so 12,568 frames list in seconds); a frame whose data turns out corrupt fails when it is opened.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.headers import HeaderError, header_size
from steel_defect.data.images import IMAGE_SUFFIXES, decode_image
from steel_defect.errors import UserError
from steel_defect.labels.store import UnknownFrame

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"[\w.\- ()+]+")  # what a CSV ImageId and a URL path segment hold as they are
HEADER_BYTES = 256 * 1024  # a JPEG's EXIF block comes before its frame header; 64 KB at most each


class FolderError(UserError):
    """A labelling folder that is missing or holds no usable frame."""


class FrameRemoved(UnknownFrame):
    """A listed frame whose file has gone since the folder was listed (deleted or moved away)."""

    def __init__(self, name: str, directory: Path):
        super().__init__(name)
        self.args = (
            f"{name} is no longer in the labelling folder {directory}: it was deleted or moved after "
            "the folder was listed; put it back, or go on with another frame",
        )


class FrameFolder:
    """The usable frames of ``directory`` by file name, and the skipped files with their reasons."""

    def __init__(
        self, directory: str | Path, max_bytes: int = 10 * 2**20, shape: tuple[int, int] = IMAGE_SHAPE
    ):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.shape = shape
        if not self.directory.is_dir():
            raise FolderError(f"--images {self.directory}: no such folder")
        self.paths: dict[str, Path] = {}
        self.skipped: list[tuple[str, str]] = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            reason = self._problem(path)
            if reason is None:
                self.paths[path.name] = path
            else:
                self.skipped.append((path.name, reason))
                log.warning("skipping %s: %s", path, reason)
        if not self.paths:
            raise FolderError(
                f"--images {self.directory}: no usable frame among {len(self.skipped)} image files"
                + (f" (first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else "")
            )

    def _problem(self, path: Path) -> str | None:
        if not _SAFE_NAME.fullmatch(path.name):
            return "its name has characters a CSV ImageId cannot hold; rename it"
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                return f"file is {size / 2**20:.3g} MB; the limit is {self.max_bytes / 2**20:.3g} MB"
            with path.open("rb") as handle:
                width, height = header_size(handle.read(HEADER_BYTES))
        except OSError as err:
            return f"cannot read it ({err.strerror or err})"
        except HeaderError as err:
            return str(err)
        if (height, width) != self.shape:
            return f"image is {width}x{height}; expected a {self.shape[1]}x{self.shape[0]} steel frame"
        return None

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    def listing(self) -> list[tuple[str, int, int]]:
        """``(name, width, height)`` of every usable frame, for :meth:`LabelStore.add_frames`."""
        height, width = self.shape
        return [(name, width, height) for name in self.paths]

    def check(self, name: str) -> None:
        """:class:`UnknownFrame` unless ``name`` is listed, :class:`FrameRemoved` if its file has gone."""
        path = self.paths.get(name)
        if path is None:
            raise UnknownFrame(name)
        if not path.is_file():
            raise FrameRemoved(name, self.directory)

    def read(self, name: str) -> bytes:
        path = self.paths.get(name)
        if path is None:
            raise UnknownFrame(name)
        try:
            with path.open("rb") as handle:
                return handle.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise FrameRemoved(name, self.directory) from None

    def decode(self, name: str) -> np.ndarray:
        """The RGB uint8 (H, W, 3) frame; :class:`ImageReadError` when its data is corrupt."""
        return decode_image(self.read(name), channels=3, name=name, expected_shape=self.shape)
