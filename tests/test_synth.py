"""Synthetic steel frames: shapes, determinism, class shares, visible defects, dataset layout."""

from __future__ import annotations

import csv
import re

import cv2
import numpy as np
import pytest

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data import synth
from steel_defect.data.annotations import read_annotations
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.synth import generate_frame, images_source, write_synthetic_dataset


@pytest.fixture(scope="module")
def frames():
    """60 frames from one generator: enough for every class, small enough to stay fast."""
    rng = np.random.default_rng(2024)
    return [generate_frame(rng) for _ in range(60)]


def test_frame_shapes_dtypes_and_binary_masks():
    image, masks = generate_frame(np.random.default_rng(0))
    assert image.shape == IMAGE_SHAPE and image.dtype == np.uint8
    assert masks.shape == (4, *IMAGE_SHAPE) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= {0, 1}


def test_defect_free_flag_is_obeyed():
    rng = np.random.default_rng(1)
    for _ in range(3):
        assert not generate_frame(rng, defect_free=True)[1].any()
        assert generate_frame(rng, defect_free=False)[1].any()


def test_same_seed_same_frame_other_seed_other_frame():
    image_a, masks_a = generate_frame(np.random.default_rng(7), defect_free=False)
    image_b, masks_b = generate_frame(np.random.default_rng(7), defect_free=False)
    image_c, _ = generate_frame(np.random.default_rng(8), defect_free=False)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(masks_a, masks_b)
    assert np.abs(image_a.astype(int) - image_c.astype(int)).mean() > 5


def test_class_shares_look_like_the_real_data(frames):
    present = np.array([masks.reshape(4, -1).any(axis=1) for _, masks in frames])
    per_class = present.sum(axis=0)
    assert (per_class >= 1).all(), per_class
    assert per_class[2] == per_class.max(), f"class 3 should be the most common, got {per_class}"
    assert 0.25 <= (~present.any(axis=1)).mean() <= 0.65
    assert (present.sum(axis=1) == 2).any(), "some frames should carry two classes"


def _contrast(image: np.ndarray, mask: np.ndarray, others: np.ndarray) -> float:
    """Mean |intensity - ring median| inside ``mask`` minus the same in the ring around it."""
    inner = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    outer = cv2.dilate(mask, np.ones((15, 15), np.uint8))
    ring = (outer > 0) & (inner == 0) & (others == 0)
    reference = np.median(image[ring])
    return float(np.abs(image[mask > 0] - reference).mean() - np.abs(image[ring] - reference).mean())


def test_defects_are_visible_against_their_surroundings(frames):
    contrasts = {c: [] for c in CLASS_IDS}
    for image, masks in frames:
        for class_id in CLASS_IDS:
            if masks[class_id - 1].any():
                contrast = _contrast(image.astype(np.float32), masks[class_id - 1], masks.sum(axis=0))
                contrasts[class_id].append(contrast)
    mean_contrast = {c: float(np.mean(v)) for c, v in contrasts.items()}
    # Measured about 24 (faint vertical lines) to 44 (pits); grain alone scores about 0.
    assert all(v > 10 for v in mean_contrast.values()), mean_contrast


def test_defects_stay_off_the_dark_sheet_border():
    rng = np.random.default_rng(3)
    for _ in range(30):
        image, masks = generate_frame(rng, defect_free=False)
        dark_columns = image.mean(axis=0) < 20
        assert not masks[:, :, dark_columns].any()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 images (6 train, 2 test) with every generated frame recorded for comparison."""
    recorded = []

    def recording(rng, defect_free=None):
        frame = generate_frame(rng, defect_free)
        recorded.append(frame)
        return frame

    out = tmp_path_factory.mktemp("synth") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synth, "generate_frame", recording)
        summary = write_synthetic_dataset(out, n=8, seed=0)
    return out, summary, recorded


def test_dataset_layout_and_summary(dataset):
    out, summary, _ = dataset
    assert summary["train"] == 6 and summary["test"] == 2 and summary["out_dir"] == str(out)
    train_ids = sorted(p.name for p in (out / "train_images").iterdir())
    test_ids = sorted(p.name for p in (out / "test_images").iterdir())
    assert len(train_ids) == 6 and len(test_ids) == 2 and not set(train_ids) & set(test_ids)
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", i) for i in train_ids + test_ids)
    assert read_image(out / "train_images" / train_ids[0]).shape == (*IMAGE_SHAPE, 3)
    train = read_annotations(out / "train.csv")
    truth = read_annotations(out / "test_truth.csv")
    assert train.layout == "wide" and sorted(train.image_ids) == train_ids
    assert sorted(truth.image_ids) == test_ids
    present = np.concatenate([train.labels(train_ids), truth.labels(test_ids)])
    assert summary["per_class"] == {c: int(present[:, c - 1].sum()) for c in CLASS_IDS}
    assert summary["defect_free"] == int((~present.any(axis=1)).sum())


def test_sample_submission_lists_four_rows_per_test_image(dataset):
    out, _, _ = dataset
    with open(out / "sample_submission.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    test_ids = sorted(p.name for p in (out / "test_images").iterdir())
    assert rows[0] == ["ImageId_ClassId", "EncodedPixels"]
    assert rows[1:] == [[f"{i}_{c}", "1 1"] for i in test_ids for c in CLASS_IDS]


def test_written_labels_decode_to_the_generated_masks(dataset):
    out, _, recorded = dataset
    assert len(recorded) == 8
    for folder, labels in (("train_images", "train.csv"), ("test_images", "test_truth.csv")):
        annotations = read_annotations(out / labels)
        for image_id in annotations.image_ids:
            decoded = read_image(out / folder / image_id, channels=1)[:, :, 0].astype(int)
            # Match the file to the frame it was encoded from; JPEG at quality 95 is near-lossless.
            errors = [np.abs(decoded - image.astype(int)).mean() for image, _ in recorded]
            best = int(np.argmin(errors))
            assert errors[best] < 2.0
            np.testing.assert_array_equal(rles_to_masks(annotations.rles(image_id)), recorded[best][1])


def test_same_seed_writes_identical_bytes(dataset, tmp_path):
    out, _, _ = dataset
    write_synthetic_dataset(tmp_path / "again", n=8, seed=0, workers=2)  # in two processes: the same
    write_synthetic_dataset(tmp_path / "other", n=8, seed=1)
    names = ["train.csv", "test_truth.csv", "sample_submission.csv"]
    names += [f"{d}/{p.name}" for d in ("train_images", "test_images") for p in (out / d).iterdir()]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert (out / "train.csv").read_bytes() != (tmp_path / "other" / "train.csv").read_bytes()
    assert not {p.name for p in (out / "train_images").iterdir()} & set(
        p.name for p in (tmp_path / "other" / "train_images").iterdir()
    )


def test_small_n_splits(tmp_path):
    assert write_synthetic_dataset(tmp_path / "one", n=1, seed=0)["test"] == 0
    two = write_synthetic_dataset(tmp_path / "two", n=2, seed=0, test_fraction=0.1)
    assert (two["train"], two["test"]) == (1, 1)
    with open(tmp_path / "one" / "sample_submission.csv") as handle:
        assert handle.read() == "ImageId_ClassId,EncodedPixels\n"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": 0}, ValueError, "n must be an integer >= 1"),
        ({"n": 4, "test_fraction": 1.0}, ValueError, r"test_fraction must be in \[0, 1\)"),
        ({"n": 4, "test_fraction": -0.1}, ValueError, "test_fraction"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        write_synthetic_dataset(tmp_path / "x", seed=0, **kwargs)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "stale.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(tmp_path, n=2, seed=0)


def test_synthetic_folders_are_marked_and_real_ones_are_not(tmp_path):
    write_synthetic_dataset(tmp_path / "synth", n=4, seed=1)
    assert images_source(tmp_path / "synth" / "train_images") == "synthetic"
    (tmp_path / "real" / "train_images").mkdir(parents=True)
    assert images_source(tmp_path / "real" / "train_images") == "real"
