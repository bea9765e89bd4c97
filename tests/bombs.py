"""Decompression bombs for tests: small files that declare (and, for PNG and TIFF, really hold)
huge images, built in milliseconds without ever holding the pixels.

    bomb("PNG", 20000, 20000)   # ~400 KB of valid PNG: 400 million grey pixels of zero

PNG and TIFF carry a complete deflate stream of all their zero pixels, so a decoder that
trusts them allocates and fills the whole image; the JPEG is a small frame whose header is
patched to the bomb's size (libjpeg then fills the missing data with grey); the BMP is RLE8
whose first code ends the bitmap.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

_BLOCK = 1 << 20


def _zeros_zlib(n_bytes: int) -> bytes:
    """A zlib stream of ``n_bytes`` zero bytes, from one compressed block repeated.

    After a full flush deflate forgets its history, so every full-flushed block of the same
    input compresses to the same bytes: we compress one block and repeat it.
    """
    whole, rest = divmod(n_bytes, _BLOCK)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(_BLOCK)) + raw.flush(zlib.Z_FULL_FLUSH)
    tail = raw.compress(bytes(rest)) + raw.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(whole):
        checksum = zlib.adler32(bytes(_BLOCK), checksum)
    checksum = zlib.adler32(bytes(rest), checksum)
    return b"\x78\xda" + block * whole + tail + struct.pack(">I", checksum)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """8-bit grey PNG, every row filter 0 and all pixels 0."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = _zeros_zlib(height * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def tiff_bomb(width: int, height: int, order: str = "<") -> bytes:
    """8-bit grey TIFF, one deflate-compressed strip of zeros; ``order`` ``"<"`` (II) or ``">"`` (MM)."""
    strip = _zeros_zlib(width * height)
    tags = [  # (tag, type, value): type 3 SHORT, 4 LONG
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 8),  # deflate
        (262, 3, 1),  # black is zero
        (273, 4, 0),  # strip offset, filled in below
        (277, 3, 1),
        (278, 4, height),
        (279, 4, len(strip)),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    strip_offset = 8 + ifd_size
    entries = b""
    for tag, kind, value in tags:
        value = strip_offset if tag == 273 else value
        field = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
        entries += struct.pack(order + "HHI", tag, kind, 1) + field
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    ifd = struct.pack(order + "H", len(tags)) + entries + struct.pack(order + "I", 0)
    return magic + struct.pack(order + "I", 8) + ifd + strip


def bmp_bomb(width: int, height: int) -> bytes:
    """8-bit RLE8 BMP with a grey palette whose data is only the end-of-bitmap code."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return file_header + info + palette + pixels


def jpeg_bomb(width: int, height: int) -> bytes:
    """A 64x64 grey JPEG whose frame header is patched to ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", np.full((64, 64), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BUILDERS = {"PNG": png_bomb, "JPEG": jpeg_bomb, "BMP": bmp_bomb, "TIFF": tiff_bomb}


def bomb(kind: str, width: int = 20000, height: int = 20000) -> bytes:
    """A ``kind`` (``"PNG"``, ``"JPEG"``, ``"BMP"``, ``"TIFF"``) file declaring ``width`` x ``height``."""
    return BUILDERS[kind](width, height)
