"""Label files: both train.csv layouts into one table, row-level errors, real data."""

import numpy as np
import pytest

from steel_defect.data.annotations import (
    AnnotationError,
    read_annotations,
    resolve_image_ids,
    write_annotations,
)
from tests.conftest import excel_csv

WIDE = """ImageId_ClassId,EncodedPixels
a.jpg_1,
a.jpg_2,
a.jpg_3,1 5 100 10
a.jpg_4,
b.jpg_1,7 3
b.jpg_2,
b.jpg_3,
b.jpg_4,20 1
c.jpg_1,
c.jpg_2,
c.jpg_3,
c.jpg_4,
"""

LONG = """ImageId,ClassId,EncodedPixels
a.jpg,3,1 5 100 10
b.jpg,1,7 3
b.jpg,4,20 1
"""


def _write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_both_layouts_give_the_same_defect_table(tmp_path):
    wide = read_annotations(_write(tmp_path, WIDE, "wide.csv"))
    long = read_annotations(_write(tmp_path, LONG, "long.csv"))
    assert wide.layout == "wide" and long.layout == "long"
    assert wide.defects.equals(long.defects)
    assert wide.defects.values.tolist() == [
        ["a.jpg", 3, "1 5 100 10"],
        ["b.jpg", 1, "7 3"],
        ["b.jpg", 4, "20 1"],
    ]
    assert wide.image_ids == ["a.jpg", "b.jpg", "c.jpg"]
    assert long.image_ids == ["a.jpg", "b.jpg"]
    assert wide.rles("b.jpg") == ["7 3", "", "", "20 1"]
    assert wide.rles("c.jpg") == ["", "", "", ""]
    np.testing.assert_array_equal(
        wide.labels(["c.jpg", "b.jpg", "a.jpg"]),
        [[0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]],
    )


@pytest.mark.parametrize("text", [WIDE, LONG], ids=["wide", "long"])
def test_a_file_saved_by_excel_reads_like_the_plain_one(tmp_path, text):
    excel = tmp_path / "excel.csv"
    excel.write_bytes(excel_csv(text))
    assert excel.read_bytes().startswith(b"\xef\xbb\xbf ImageId") and b" , " in excel.read_bytes()
    plain, saved = read_annotations(_write(tmp_path, text)), read_annotations(excel)
    assert saved.layout == plain.layout
    assert saved.defects.equals(plain.defects)
    assert saved.image_ids == plain.image_ids
    # a bad row in such a file is still reported by its line (the blank second row counts)
    bad = excel_csv(text.replace("b.jpg_1,7 3", "b.jpg_1,7 x").replace("b.jpg,1,7 3", "b.jpg,1,7 x"))
    excel.write_bytes(bad)
    line = 7 if text is WIDE else 4
    with pytest.raises(
        AnnotationError, match=rf"excel\.csv, line {line} \(b\.jpg class 1\): bad RLE: value 'x'"
    ):
        read_annotations(excel)


def test_a_file_not_in_utf8_says_how_to_save_it(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(LONG.replace("a.jpg", "\xe4.jpg").encode("latin-1"))
    with pytest.raises(
        AnnotationError, match=r"latin\.csv, line 2: byte 0xe4 is not UTF-8 text; save the file as CSV UTF-8"
    ):
        read_annotations(path)


def test_long_layout_takes_defect_free_images_from_the_folder(tmp_path):
    images = tmp_path / "train_images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        (images / name).write_bytes(b"")
    long = read_annotations(_write(tmp_path, LONG))
    assert resolve_image_ids(long, images) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    wide = read_annotations(_write(tmp_path, WIDE, "wide.csv"))
    assert resolve_image_ids(wide, images) == ["a.jpg", "b.jpg", "c.jpg"]
    (images / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.jpg"):
        resolve_image_ids(wide, images)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            WIDE.replace("a.jpg_3,1 5 100 10", "a.jpg_3,1 5 3 10"),
            r"line 4 \(a\.jpg class 3\): bad RLE.*overlaps",
        ),
        (WIDE.replace("b.jpg_1,7 3", "b.jpg_1,7 3 9"), r"line 6 .*odd number"),
        (WIDE.replace("b.jpg_4,20 1", "b.jpg_4,409600 5"), r"line 9 .*past the last pixel"),
        (WIDE.replace("c.jpg_4,\n", ""), r"line 10: image c\.jpg has 3 rows"),
        (WIDE.replace("c.jpg_2,", "c.jpg_5,"), r"line 11: 'c\.jpg_5' is not"),
        (WIDE.replace("c.jpg_2,", "c.jpg_1,"), r"line 11: duplicate row for c\.jpg class 1"),
        (LONG.replace("b.jpg,4,", "b.jpg,7,"), r"line 4: ClassId '7'"),
        (LONG.replace("b.jpg,4,20 1", "b.jpg,4,"), r"line 4: empty EncodedPixels"),
        ("Image,Class\nx,1\n", r"header \['Image', 'Class'\] is neither"),
        ("", "line 1: no header"),
        (LONG.replace("a.jpg,3,1 5 100 10", "a.jpg,3"), r"line 2: 2 fields, expected 3"),
    ],
)
def test_malformed_files_name_the_line_and_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_write_then_read_round_trip(tmp_path):
    rles = [["", "", "1 5 100 10", ""], ["7 3", "", "", "20 1"], ["", "", "", ""]]
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    write_annotations(tmp_path / "w.csv", ids, rles, layout="wide")
    write_annotations(tmp_path / "l.csv", ids, rles, layout="long")
    assert (tmp_path / "w.csv").read_text() == WIDE
    assert (tmp_path / "l.csv").read_text() == LONG
    assert not list(tmp_path.glob(".*.tmp"))


def test_real_train_csv(real_sample):
    ann = read_annotations(real_sample / "train.csv")
    assert ann.layout == "wide"
    ids = resolve_image_ids(ann, real_sample / "train_images")
    labels = ann.labels(ids)
    assert len(ids) == len(list((real_sample / "train_images").glob("*.jpg")))
    # per SOURCES.md: several defect-free frames and every class present
    assert (~labels.any(axis=1)).sum() >= 1
    assert labels.any(axis=0).all()
