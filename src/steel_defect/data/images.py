"""Image decoding: jpeg4py (libjpeg-turbo) when it works, OpenCV otherwise; size checked first.

jpeg4py needs the system library ``libturbojpeg0``; when it is missing we decode with
OpenCV and say so once, so a fresh laptop still works, only slower.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.headers import HeaderError, header_size, jpeg_complete

log = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_turbojpeg_ok: bool | None = None
# Any size is allowed where no frame size is expected, up to this: a 4K frame is 8.3 million
# pixels, and 50 million RGB pixels cost 150 MB to decode.
MAX_PIXELS = 50_000_000


class ImageReadError(OSError):
    """An image file that is missing, unreadable, corrupt or of the wrong size."""


class TruncatedImage(ImageReadError):
    """An image whose file ends before its data does: cut off, or still being written."""


class ImageSizeError(ImageReadError):
    """An image whose size (read from its header, or decoded) is not the one expected."""

    def __init__(self, message: str, width: int, height: int):
        super().__init__(message)
        self.width = width
        self.height = height


def turbojpeg_available() -> bool:
    """Whether jpeg4py can decode (checked once per process; warns once when it cannot)."""
    global _turbojpeg_ok
    if _turbojpeg_ok is None:
        try:
            from jpeg4py import _cffi

            _cffi.initialize()  # dlopen()s libturbojpeg; OSError when it is missing
            _turbojpeg_ok = True
        except (ImportError, OSError):
            _turbojpeg_ok = False
        if not _turbojpeg_ok:
            log.warning(
                "libturbojpeg is not available: decoding JPEGs with OpenCV (slower). "
                "On Debian/Ubuntu: apt-get install libturbojpeg0"
            )
    return _turbojpeg_ok


def _decode_turbojpeg(data: bytes) -> np.ndarray | None:
    """RGB uint8 via libjpeg-turbo, or None when it refuses the data (OpenCV then tries)."""
    import jpeg4py

    jpeg = jpeg4py.JPEG(np.frombuffer(data, np.uint8))
    try:
        return jpeg.decode()
    except jpeg4py.JPEGRuntimeError:
        # jpeg4py returns the failed decompressor to its pool and reusing it segfaults
        # (seen with jpeg4py 0.1.4): drop it so it is destroyed instead.
        jpeg.decompressor = None
        return None


def _check_size(width: int, height: int, name: str, expected_shape: tuple[int, int] | None) -> None:
    if expected_shape is not None and (height, width) != tuple(expected_shape):
        raise ImageSizeError(
            f"{name}: image is {width}x{height}; expected {expected_shape[1]}x{expected_shape[0]} "
            "(width x height) as in the Severstal data",
            width,
            height,
        )
    if width * height > MAX_PIXELS:
        raise ImageSizeError(
            f"{name}: image is {width}x{height}, over the limit of {MAX_PIXELS // 10**6} million pixels",
            width,
            height,
        )


def decode_image(
    data: bytes,
    channels: int = 3,
    name: str = "<bytes>",
    expected_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode JPEG, PNG, BMP or TIFF bytes to uint8 (H, W, channels); ``channels`` is 1 or 3.

    The size in the header is checked against ``expected_shape`` (H, W) unless None, and
    against :data:`MAX_PIXELS` always, before anything is decoded: a small file declaring a
    huge image (a decompression bomb) costs no memory. Raises :class:`ImageSizeError` for a
    wrong size and :class:`ImageReadError` naming ``name`` for bytes that are not a decodable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        width, height = header_size(data)
    except HeaderError as err:
        raise ImageReadError(f"{name}: not a decodable image ({err})") from None
    _check_size(width, height, name, expected_shape)
    image = None
    if data[:3] == _JPEG_MAGIC:
        # Both decoders fill a truncated JPEG with grey instead of failing; the
        # end-of-image marker after the scan tells a cut-off file from a whole one.
        if not jpeg_complete(data):
            raise TruncatedImage(f"{name}: truncated JPEG (no end-of-image marker)")
        if turbojpeg_available():
            image = _decode_turbojpeg(data)
    if image is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageReadError(f"{name}: not a decodable image (corrupt or unsupported format)")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    # Checked again: OpenCV turns a JPEG by its EXIF orientation, so the header's size can differ.
    _check_size(image.shape[1], image.shape[0], name, expected_shape)
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.ascontiguousarray(image)


def read_image(
    path: str | Path,
    channels: int = 3,
    expected_shape: tuple[int, int] | None = IMAGE_SHAPE,
) -> np.ndarray:
    """Read an image file as uint8 (H, W, channels).

    ``expected_shape`` (H, W) is checked from the header, before decoding, unless None; a
    mismatch, a missing file or a corrupt one raises :class:`ImageReadError` with the path
    and the reason.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror or err})") from err
    return decode_image(data, channels, name=str(path), expected_shape=expected_shape)


# Files the image readers accept (predict on a folder, serve --examples).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def encode_jpeg(image: np.ndarray, quality: int, what: str = "the image", rgb: bool = False) -> bytes:
    """JPEG bytes of a uint8 (H, W) or (H, W, 3) image (BGR, or RGB with ``rgb``), grey kept grey."""
    if rgb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"OpenCV could not encode {what} as JPEG")
    return data.tobytes()
