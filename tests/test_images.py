"""Image decoding: jpeg4py and OpenCV agree, grayscale/3-channel, clear errors."""

import logging

import cv2
import numpy as np
import pytest
from jpeg4py import _cffi

from steel_defect.data import images
from steel_defect.data.images import ImageReadError, decode_image, read_image


@pytest.fixture
def jpeg(tmp_path):
    rng = np.random.default_rng(0)
    gray = cv2.GaussianBlur(rng.integers(0, 255, (256, 1600), dtype=np.uint8), (9, 9), 3)
    path = tmp_path / "frame.jpg"
    cv2.imwrite(str(path), np.dstack([gray] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path, gray


def test_channels_and_values(jpeg):
    path, gray = jpeg
    rgb = read_image(path, channels=3)
    one = read_image(path, channels=1)
    assert rgb.shape == (256, 1600, 3) and rgb.dtype == np.uint8
    assert one.shape == (256, 1600, 1)
    # JPEG is lossy; a q95 blurred frame stays within a couple of grey levels on average
    assert np.abs(one[..., 0].astype(int) - gray).mean() < 2.0


def test_opencv_fallback_matches_and_warns_once(jpeg, monkeypatch, caplog):
    path, _ = jpeg
    turbo = read_image(path)

    def no_library(*args, **kwargs):
        raise OSError("simulated: Could not load libjpeg-turbo library")

    monkeypatch.setattr(_cffi, "initialize", no_library)
    monkeypatch.setattr(images, "_turbojpeg_ok", None)
    with caplog.at_level(logging.WARNING, logger="steel_defect.data.images"):
        first = read_image(path)
        read_image(path)
    assert images._turbojpeg_ok is False
    assert sum("libturbojpeg" in r.message for r in caplog.records) == 1
    # libjpeg-turbo and OpenCV's libjpeg may round differently by a grey level
    assert np.abs(first.astype(int) - turbo).max() <= 2


def test_png_decodes(tmp_path):
    image = np.full((256, 1600, 3), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), image)


def test_corrupt_missing_and_wrong_size_name_the_path(tmp_path, jpeg):
    path, _ = jpeg
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"broken\.jpg: truncated JPEG"):
        read_image(broken)
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match=r"text\.jpg: not a decodable image"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(ImageReadError, match=r"absent\.jpg: cannot read"):
        read_image(tmp_path / "absent.jpg")
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), np.zeros((255, 1600, 3), np.uint8))
    with pytest.raises(ImageReadError, match=r"small\.jpg: image is 1600x255; expected 1600x256"):
        read_image(small)
    assert read_image(small, expected_shape=None).shape == (255, 1600, 3)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_image(path.read_bytes(), channels=2)


def test_a_failed_decode_does_not_poison_the_next(jpeg):
    # jpeg4py 0.1.4 pooled the failed decompressor and the next decode segfaulted
    path, _ = jpeg
    data = path.read_bytes()
    garbage = data[:600] + bytes(range(256)) * 20 + data[-2:]  # header, junk, end marker
    for _ in range(3):
        with pytest.raises(ImageReadError):
            decode_image(garbage, name="garbage.jpg")
        assert decode_image(data).shape == (256, 1600, 3)


def test_real_frames_decode(real_sample):
    paths = sorted((real_sample / "train_images").glob("*.jpg"))[:5]
    for path in paths:
        image = read_image(path)
        assert image.shape == (256, 1600, 3)
        assert 20 < image.mean() < 200  # steel, not a blank frame
