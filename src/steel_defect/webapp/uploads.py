"""Checking uploaded files before the network sees them: size, kind (by content), frame size.

Every check raises :class:`UploadError` carrying the HTTP status the API answers with:
413 for a file over the size limit, 415 for bytes that are no image format we decode,
422 for an image that is corrupt or not a 1600x256 Severstal frame (told from its header, before
decoding, so a decompression bomb costs no memory). A client's file name is
only ever a label: :func:`display_name` strips any folders and odd characters from it, and
nothing is written to disk under it.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.headers import ACCEPTED, image_format
from steel_defect.data.images import ImageReadError, ImageSizeError, decode_image
from steel_defect.errors import UserError

_UNSAFE = re.compile(r"[^\w.\- ()+]")


class UploadError(UserError):
    """An uploaded item that cannot be predicted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def megabytes(size: int) -> str:
    """``1536000`` -> ``"1.46 MB"``: enough digits to tell a size from a limit near it."""
    return f"{size / 2**20:.3g} MB"


def display_name(name: str | None, index: int) -> str:
    """A safe label for an uploaded file: its last path part, no control or CSV characters.

    ``"../../etc/passwd"`` -> ``"passwd"``; ``"C:\\\\x\\\\a,b.jpg"`` -> ``"a_b.jpg"``;
    empty -> ``"upload-<index>"``.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKC", base)
    base = _UNSAFE.sub("_", base).strip(" .")[:120]
    return base or f"upload-{index}"


def decode_upload(
    data: bytes,
    name: str,
    max_bytes: int,
    expected_shape: tuple[int, int] = IMAGE_SHAPE,
    declared_size: int | None = None,
) -> np.ndarray:
    """Decode one uploaded file to an RGB uint8 (H, W, 3) frame or raise :class:`UploadError`.

    ``data`` may be cut at ``max_bytes + 1``; ``declared_size`` (the whole upload's size, when
    known) makes the 413 message say how large the file was.
    """
    if len(data) > max_bytes or (declared_size or 0) > max_bytes:
        size = f"is {megabytes(declared_size)}" if declared_size else "is larger"
        raise UploadError(413, f"{name}: file {size}; the limit is {megabytes(max_bytes)}")
    if not data:
        raise UploadError(422, f"{name}: the file is empty")
    kind = image_format(data)
    if kind is None:
        raise UploadError(415, f"{name}: not an image (its content is not {ACCEPTED})")
    try:
        # The header's size is checked before decoding, so a decompression bomb costs nothing.
        return decode_image(data, channels=3, name=name, expected_shape=expected_shape)
    except ImageSizeError as err:
        raise UploadError(
            422,
            f"{name}: image is {err.width}x{err.height}; expected a {expected_shape[1]}x{expected_shape[0]} "
            "(width x height) steel frame as in the Severstal data",
        ) from None
    except ImageReadError as err:
        raise UploadError(422, f"{err} ({kind} header, but the data cannot be decoded)") from None
