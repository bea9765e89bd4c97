"""The challenge metric on hand-computed pairs, the submission validator, and `evaluate`."""

import json

import numpy as np
import pytest

from steel_defect.cli import main
from steel_defect.data.annotations import write_annotations
from steel_defect.data.submission import (
    SubmissionError,
    read_sample_submission,
    read_submission,
    write_submission,
)
from steel_defect.evaluation.metric import dice_pairs, evaluate_files, summarize
from tests.conftest import excel_csv


def test_dice_of_known_pairs():
    pred = np.zeros((1, 4, 4, 4), bool)
    truth = np.zeros((1, 4, 4, 4), bool)
    pred[0, 0, :2, :2] = True  # 4 pixels
    truth[0, 0, :2, :] = True  # 8 pixels, overlap 4 -> 2*4/12
    truth[0, 1, 0, 0] = True  # missed entirely -> 0
    pred[0, 2, 3, 3] = True  # false positive on empty truth -> 0
    # class 4: both empty -> 1
    np.testing.assert_allclose(dice_pairs(pred, truth), [[2 * 4 / 12, 0.0, 0.0, 1.0]])


def test_summary_means_over_every_pair():
    dice = np.array([[1.0, 1.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0]])
    result = summarize(dice)
    assert result["mean_dice"] == pytest.approx(6.5 / 8)
    assert result["per_class"] == {"1": 0.5, "2": 1.0, "3": 0.75, "4": 1.0}
    assert result["images"] == 2


def _files(tmp_path):
    truth_rles = [["1 10", "", "", ""], ["", "", "", ""], ["", "", "100 20", "5000 100"]]
    pred_rles = [["1 5", "", "", ""], ["", "", "", "7 3"], ["", "", "100 20", ""]]
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    write_annotations(tmp_path / "truth.csv", ids, truth_rles, layout="wide")
    write_annotations(tmp_path / "truth_long.csv", ids, truth_rles, layout="long")
    write_submission(tmp_path / "sub.csv", ids, pred_rles)
    return tmp_path / "sub.csv"


def test_evaluate_files_both_truth_layouts(tmp_path):
    sub = _files(tmp_path)
    # pairs: a1 = 2*5/15, b4 = 0 (false positive), c4 = 0 (missed); the other nine are 1
    expected = (2 * 5 / 15 + 9) / 12
    for truth in ("truth.csv", "truth_long.csv"):
        result = evaluate_files(sub, tmp_path / truth)
        assert result["mean_dice"] == pytest.approx(expected)
        assert result["per_class"]["1"] == pytest.approx((2 / 3 + 2) / 3)
        assert result["per_class"]["4"] == pytest.approx(1 / 3)
        assert result["images"] == 3


def test_evaluate_cli_json(tmp_path, capsys):
    sub = _files(tmp_path)
    assert main(["evaluate", "--pred", str(sub), "--truth", str(tmp_path / "truth.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"mean_dice", "per_class", "images"}
    assert result["per_class"]["3"] == 1.0


def test_evaluate_refuses_an_incomplete_submission(tmp_path, capsys):
    _files(tmp_path)
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:9]) + "\n")  # drops c.jpg
    code = main(["evaluate", "--pred", str(tmp_path / "short.csv"), "--truth", str(tmp_path / "truth.csv")])
    assert code == 2
    assert "image c.jpg is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("ImageId_ClassId,EncodedPixels", "ImageId,EncodedPixels"), "line 1: header"),
        (lambda t: t.replace("a.jpg_1,1 5", "a.jpg_1,5 1 1 5"), r"line 2: .*out of order"),
        (lambda t: t.replace("a.jpg_2,", "a.jpg_1,"), r"line 3: second row for a\.jpg_1"),
        (lambda t: t.replace("b.jpg_4,7 3", "b.jpg_4,7 -3"), r"line 9: .*below 1"),
        (lambda t: t.replace("c.jpg_2,\n", ""), r"c\.jpg has no row for class\(es\) 2"),
        (lambda t: t.replace("c.jpg_3,100 20", "c.jpg_3,100 20,1"), r"line 12: 3 fields"),
    ],
)
def test_validator_names_rows(tmp_path, edit, message):
    sub = _files(tmp_path)
    sub.write_text(edit(sub.read_text()))
    with pytest.raises(SubmissionError, match=message):
        read_submission(sub)


@pytest.mark.parametrize(
    ("edit", "only_problem"),
    [
        (lambda t: t.replace("b.jpg_4,7 3", "b.jpg_4,7 x"), "line 9: value 'x' is not an integer"),
        (lambda t: t.replace("c.jpg_3,100 20", "c.jpg_3,100 20,1"), "line 12: 3 fields, expected 2"),
        (lambda t: t.replace("c.jpg_3,100 20", "c.jpg_3"), "line 12: 1 fields, expected 2"),
        (lambda t: t.replace("c.jpg_2,", "c.jpg_5,"), "line 11: 'c.jpg_5' is not '<ImageId>_<ClassId>'"),
    ],
    ids=["bad RLE", "extra field", "missing field", "bad class"],
)
def test_one_bad_row_is_one_problem(tmp_path, edit, only_problem):
    # not also "image c.jpg has no row for class(es) 3", nor "image c.jpg is missing"
    sub = _files(tmp_path)
    sub.write_text(edit(sub.read_text()))
    with pytest.raises(SubmissionError) as info:
        read_submission(sub, expected_ids=["a.jpg", "b.jpg", "c.jpg"])
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(only_problem)


def test_an_image_whose_every_row_is_bad_is_not_also_missing(tmp_path):
    sub = _files(tmp_path)
    text = sub.read_text()
    for c in range(1, 5):
        text = text.replace(f"c.jpg_{c},", f"c.jpg_{c + 4},")
    sub.write_text(text)
    with pytest.raises(SubmissionError) as info:
        read_submission(sub, expected_ids=["a.jpg", "b.jpg", "c.jpg"])
    assert [p.split(":")[0] for p in info.value.problems] == ["line 10", "line 11", "line 12", "line 13"]


def test_validator_reports_many_problems_at_once(tmp_path):
    sub = _files(tmp_path)
    sub.write_text(sub.read_text().replace(",\n", ",0 1\n"))
    with pytest.raises(SubmissionError) as info:
        read_submission(sub, expected_ids=["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    assert len(info.value.problems) >= 9 and "image d.jpg is missing" in info.value.problems[-1]


def test_a_submission_saved_by_excel_is_valid(tmp_path):
    sub = _files(tmp_path)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(excel_csv(sub.read_text()))
    assert excel.read_bytes()[:3] == b"\xef\xbb\xbf" and b"\r\n" in excel.read_bytes()
    assert read_submission(excel) == read_submission(sub)
    assert read_sample_submission(excel) == ["a.jpg", "b.jpg", "c.jpg"]
    # its errors still name the line: the header is line 1, the blank row line 2
    excel.write_bytes(excel_csv(sub.read_text().replace("b.jpg_4,7 3", "b.jpg_4,7 -3")))
    with pytest.raises(SubmissionError, match=r"line 10: .*below 1"):
        read_submission(excel)


def test_sample_submission_layouts(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text(
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(f"x.jpg_{c},1 1\n" for c in range(1, 5))
        + "".join(f"a.jpg_{c},1 1\n" for c in range(1, 5))
    )
    new = tmp_path / "new.csv"
    new.write_text("ImageId,EncodedPixels,ClassId\nx.jpg,1 1,0\na.jpg,1 1,0\n")
    assert read_sample_submission(old) == ["x.jpg", "a.jpg"]
    assert read_sample_submission(new) == ["x.jpg", "a.jpg"]
    new.write_bytes(excel_csv(new.read_text()))
    assert read_sample_submission(new) == ["x.jpg", "a.jpg"]
    new.write_text("EncodedPixels,ClassId,ImageId\n1 1,0,x.jpg\n1 1,0\n")
    with pytest.raises(ValueError, match=r"new\.csv: a row has fewer fields"):
        read_sample_submission(new)


def test_validate_cli(tmp_path, capsys):
    sub = _files(tmp_path)
    assert main(["validate", str(sub), "--truth", str(tmp_path / "truth.csv")]) == 0
    assert "valid, 3 images" in capsys.readouterr().out
