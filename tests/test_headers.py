"""Image sizes read from headers: agree with Pillow on every accepted format and variant, refuse
what they cannot read, and let decode_image refuse a wrong size without decoding."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from steel_defect.data import images
from steel_defect.data.headers import HeaderError, header_size, image_format
from steel_defect.data.images import ImageReadError, ImageSizeError, decode_image
from tests.bombs import bomb, tiff_bomb


def _pillow(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def _variants() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (23, 37, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a long description: the APP1 segment comes before the frame header
    return [
        ("JPEG", _pillow(rgb, "JPEG")),
        ("JPEG progressive", _pillow(rgb, "JPEG", progressive=True)),
        ("JPEG with EXIF", _pillow(rgb, "JPEG", exif=exif)),
        ("JPEG grey", _pillow(rgb.convert("L"), "JPEG")),
        ("PNG", _pillow(rgb, "PNG")),
        ("PNG palette", _pillow(rgb.convert("P"), "PNG")),
        ("BMP", _pillow(rgb, "BMP")),
        ("TIFF", _pillow(rgb, "TIFF")),
        ("TIFF deflate", _pillow(rgb, "TIFF", compression="tiff_adobe_deflate")),
        ("TIFF big-endian", tiff_bomb(37, 23, order=">")),
    ]


@pytest.mark.parametrize(("label", "data"), _variants(), ids=[v[0] for v in _variants()])
def test_header_size_agrees_with_pillow(label, data):
    assert header_size(data) == Image.open(io.BytesIO(data)).size == (37, 23)


def test_top_down_bmp_reports_a_positive_height():
    data = bytearray(_pillow(Image.new("L", (37, 23)), "BMP"))
    data[22:26] = struct.pack("<i", -23)  # rows stored top-down
    assert header_size(bytes(data)) == (37, 23)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "BMP", "TIFF"])
def test_bombs_report_their_declared_size(kind):
    data = bomb(kind)
    assert len(data) < 500_000
    assert image_format(data) == kind
    assert header_size(data) == (20000, 20000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello", "not an image"),
        (b"", "not an image"),
        (b"GIF89a" + bytes(20), "not an image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(4), "PNG header cut short|PNG without an IHDR"),
        (b"BM" + bytes(10), "BMP header cut short"),
        (b"II*\x00" + struct.pack("<I", 9999), "TIFF directory offset past the end"),
        (b"II*\x00" + struct.pack("<IH", 8, 0), "without ImageWidth and ImageLength"),
        (b"\xff\xd8\xff\xe0\x00\x10" + bytes(14), "without a frame header"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(20), "without a frame header"),
        (b"\xff\xd8\xff\xe0\x00\x00", "segment of length 0"),
        (b"\xff\xd8\xff\xe0\x00\x04\x00\x00junk", "marker expected at byte 8"),
    ],
)
def test_unreadable_headers_say_why(data, reason):
    with pytest.raises(HeaderError, match=reason):
        header_size(data)


def test_a_wrong_size_is_refused_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image whose header already had the wrong size")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(images, "_decode_turbojpeg", no_decoding)
    for kind in ("PNG", "JPEG", "BMP", "TIFF"):
        with pytest.raises(ImageSizeError, match=r"b\.x: image is 20000x20000; expected 1600x256") as info:
            decode_image(bomb(kind), name="b.x", expected_shape=(256, 1600))
        assert (info.value.width, info.value.height) == (20000, 20000)
        # with no size expected, the pixel limit still holds
        with pytest.raises(ImageSizeError, match=r"image is 20000x20000, over the limit of 50 million"):
            decode_image(bomb(kind), name="b.x")
    with pytest.raises(ImageReadError, match=r"g\.gif: not a decodable image \(not an image"):
        decode_image(b"GIF89a" + bytes(40), name="g.gif")
