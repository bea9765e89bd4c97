"""RLE: hand-made masks with known encodings, validation errors, real-label round trips."""

import csv

import numpy as np
import pytest

from steel_defect.data.rle import (
    RLEError,
    mask_to_rle,
    masks_to_rles,
    rle_to_mask,
    rles_to_hwc,
    rles_to_masks,
)


def test_known_mask_encodes_column_major_one_based():
    mask = np.zeros((4, 3), np.uint8)
    mask[1:3, 0] = 1  # pixels 2, 3 (column 0)
    mask[3, 0] = 1  # pixel 4
    mask[0, 1] = 1  # pixel 5: the run wraps from column 0 into column 1
    mask[2, 2] = 1  # pixel 11
    assert mask_to_rle(mask) == "2 4 11 1"
    np.testing.assert_array_equal(rle_to_mask("2 4 11 1", (4, 3)), mask)


def test_empty_and_full_masks():
    assert mask_to_rle(np.zeros((256, 1600), bool)) == ""
    assert mask_to_rle(np.ones((256, 1600), bool)) == "1 409600"
    assert rle_to_mask("").sum() == 0
    assert rle_to_mask(None).sum() == 0
    assert rle_to_mask(float("nan")).sum() == 0
    assert rle_to_mask("1 409600").all()


def test_last_pixel_and_corner_runs():
    mask = np.zeros((256, 1600), np.uint8)
    mask[-1, -1] = 1
    mask[0, 0] = 1
    assert mask_to_rle(mask) == "1 1 409600 1"
    np.testing.assert_array_equal(rle_to_mask("1 1 409600 1"), mask)


def test_adjacent_runs_decode_as_union():
    np.testing.assert_array_equal(rle_to_mask("1 3 4 3", (3, 2)), np.ones((3, 2), np.uint8))


def test_random_round_trip():
    rng = np.random.default_rng(0)
    for density in (0.001, 0.3, 0.97):
        mask = (rng.random((256, 1600)) < density).astype(np.uint8)
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask)


def test_stack_helpers():
    masks = np.zeros((4, 8, 5), np.uint8)
    masks[2, 3:5, 1] = 1
    rles = masks_to_rles(masks)
    assert rles == ["", "", "12 2", ""]
    np.testing.assert_array_equal(rles_to_masks(rles, (8, 5)), masks)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number"),
        ("0 5", "below 1"),
        ("5 0", "run length 0 is below 1"),
        ("10 2 5 1", "out of order or overlaps"),
        ("1 5 4 2", "out of order or overlaps"),
        ("409600 2", "past the last pixel"),
        ("1 x", "'x' is not an integer"),
        ("-3 2", "below 1"),
    ],
)
def test_malformed_rle_is_rejected_with_reason(rle, message):
    with pytest.raises(RLEError, match=message):
        rle_to_mask(rle)


def test_round_trip_on_every_real_label(real_sample):
    with open(real_sample / "train.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["EncodedPixels"].strip()]
    assert len(rows) >= 20
    for row in rows:
        rle = row["EncodedPixels"].strip()
        mask = rle_to_mask(rle)
        assert mask.sum() == sum(int(n) for n in rle.split()[1::2])
        assert mask_to_rle(mask) == rle, row["ImageId_ClassId"]


def test_channels_last_decoding_of_sparse_and_dense_full_frames():
    rng = np.random.default_rng(0)
    # class 1 sparse (scattered pixels and a block that wraps columns), 2 empty, 3 dense, 4 full
    stack = np.zeros((4, 256, 1600), np.uint8)
    stack[0] = rng.random((256, 1600)) < 0.02
    stack[0, 200:, 10:40] = 1
    stack[2] = rng.random((256, 1600)) < 0.6
    stack[3] = 1
    rles = masks_to_rles(stack)
    got = rles_to_hwc(rles)
    assert got.shape == (256, 1600, 4) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, stack.transpose(1, 2, 0))
