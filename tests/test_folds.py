"""Folds: each image in exactly one fold, class shares per fold close to the whole, seeded."""

import numpy as np
import pandas as pd
import pytest

from steel_defect.data.folds import assign_folds, make_folds_table, read_folds, split_ids, write_folds


def _labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    # shares echoing the real data: class 3 common, 2 and 4 rare, ~45% defect-free
    probs = np.array([0.12, 0.04, 0.4, 0.07])
    labels = rng.random((n, 4)) < probs
    labels[rng.random(n) < 0.3] = False
    return labels


def test_every_image_in_exactly_one_fold_and_balanced():
    labels = _labels()
    folds = assign_folds(labels, n_splits=5, seed=3)
    assert folds.shape == (400,) and set(folds.tolist()) == {0, 1, 2, 3, 4}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 5  # within ~1% of 80 images per fold
    flags = np.column_stack([~labels.any(axis=1), labels]).astype(float)
    whole = flags.mean(axis=0)
    for fold in range(5):
        share = flags[folds == fold].mean(axis=0)
        # within 3 percentage points of the whole for every flag (one image is 1.25 points)
        np.testing.assert_allclose(share, whole, atol=0.03)
        # and the rare classes get their fair count give or take two images
        counts = flags[folds == fold].sum(axis=0)
        assert (np.abs(counts - flags.sum(axis=0) / 5) <= 2.5).all(), counts


def test_seeded_and_seed_sensitive():
    labels = _labels()
    np.testing.assert_array_equal(assign_folds(labels, 5, 1), assign_folds(labels, 5, 1))
    assert (assign_folds(labels, 5, 1) != assign_folds(labels, 5, 2)).any()


def test_table_round_trip_and_split(tmp_path):
    labels = _labels(40)
    ids = [f"{i:09x}.jpg" for i in range(40)][::-1]
    table = make_folds_table(ids, labels, n_splits=4, seed=0)
    assert list(table.columns) == [
        "ImageId",
        "fold",
        "defect_free",
        "class_1",
        "class_2",
        "class_3",
        "class_4",
    ]
    assert table.ImageId.is_monotonic_increasing
    row = table.set_index("ImageId").loc[ids[0]]
    assert row.class_3 == int(labels[0, 2]) and row.defect_free == int(not labels[0].any())
    write_folds(table, tmp_path / "folds.csv")
    again = read_folds(tmp_path / "folds.csv")
    pd.testing.assert_frame_equal(again, table)
    train, valid = split_ids(again, 2)
    assert set(train).isdisjoint(valid) and len(train) + len(valid) == 40
    assert set(valid) == set(table.ImageId[table.fold == 2])


def test_errors():
    with pytest.raises(ValueError, match="cannot split 3 images into 5 folds"):
        assign_folds(np.zeros((3, 4), bool), 5, 0)
    with pytest.raises(FileNotFoundError, match=r"split_folds\.py"):
        read_folds("/nonexistent/folds.csv")
    table = pd.DataFrame({"ImageId": ["a", "b"], "fold": [0, 1]})
    with pytest.raises(ValueError, match=r"fold 3 is not in the split; folds are \[0, 1\]"):
        split_ids(table, 3)
