"""Image kind and size read from the file header, before anything is decoded.

A 400 KB PNG can declare 20000x20000 pixels and cost a decoder 1.2 GB; a JPEG or TIFF can do
the same. Every decode path (:func:`~steel_defect.data.images.decode_image`, hence training,
``predict``, the web API and ``serve --examples``) reads the size here first and refuses a
frame of the wrong size before any pixel buffer exists:

    header_size(data)   # -> (width, height), e.g. (1600, 256); HeaderError when unreadable

Only the four formats we accept are parsed, by their leading bytes, never by file name. We
parse the few header bytes ourselves rather than ask Pillow: its decompression-bomb guard
raises without the size for large images, and its limit is a process-wide setting.
"""

from __future__ import annotations

import struct

# Leading bytes of the formats we decode; judged by content, not by extension.
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
ACCEPTED = "JPEG, PNG, BMP or TIFF"

# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_SHORT, _TIFF_LONG = 3, 4


class HeaderError(ValueError):
    """A file whose header does not say its size: not an accepted format, or cut short."""


def image_format(data: bytes) -> str | None:
    """The format named by the file's leading bytes (``"PNG"``...), or None for anything else."""
    for magic, name in SIGNATURES.items():
        if data.startswith(magic):
            return name
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length (4), b"IHDR", width (4), height (4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk")
    return struct.unpack(">II", data[16:24])


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise HeaderError("BMP header cut short")
    (info_size,) = struct.unpack("<I", data[14:18])
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows run top-down


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if height == 0:  # height given later by a DNL marker, which our decoders refuse
                raise HeaderError("JPEG frame header without a height")
            return width, height
        if length < 2:
            raise HeaderError(f"JPEG segment of length {length} at byte {pos}")
        pos += 2 + length
    raise HeaderError("JPEG without a frame header (SOF) before its image data")


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's bytes run to its end-of-image marker: one after its first scan starts.

    The segments before the first scan are skipped by their lengths, so the end marker of an
    EXIF thumbnail (inside APP1) does not count; inside a scan every 0xFF byte is stuffed, so
    the first FF D9 after it is the image's own end, wherever it lies (a camera may append
    data after it). A file cut anywhere before that marker is incomplete.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:
            return data.find(b"\xff\xd9", pos + 2) >= 0
        if marker == 0xD9:
            return False  # an end before any scan: no image
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return False
        pos += 2 + length
    return False


def _tiff_size(data: bytes) -> tuple[int, int]:
    # The first image file directory (IFD) describes the page OpenCV decodes.
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise HeaderError("TIFF header cut short")
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        raise HeaderError("TIFF directory offset past the end of the file")
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    size = {}
    for index in range(count):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and kind in (_TIFF_SHORT, _TIFF_LONG):
            # A value that fits in 4 bytes sits left-justified in the entry's value field.
            field = data[entry + 8 : entry + 12]
            if kind == _TIFF_SHORT:
                (size[tag],) = struct.unpack(order + "H", field[:2])
            else:
                (size[tag],) = struct.unpack(order + "I", field)
    if _TIFF_WIDTH not in size or _TIFF_LENGTH not in size:
        raise HeaderError("TIFF directory without ImageWidth and ImageLength")
    return size[_TIFF_WIDTH], size[_TIFF_LENGTH]


_PARSERS = {"PNG": _png_size, "BMP": _bmp_size, "JPEG": _jpeg_size, "TIFF": _tiff_size}


def header_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` declared by the header of a JPEG, PNG, BMP or TIFF file's bytes.

    Reads a few dozen bytes (a JPEG's segments up to its frame header); decodes nothing.
    Raises :class:`HeaderError` saying why when ``data`` is no such file or its header is cut short.
    """
    kind = image_format(data)
    if kind is None:
        raise HeaderError(f"not an image (its content is not {ACCEPTED})")
    try:
        return _PARSERS[kind](data)
    except struct.error:
        raise HeaderError(f"{kind} header cut short") from None
