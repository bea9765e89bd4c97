"""The error-analysis report: its numbers against `evaluate`, hand-built confusion counts,
worst-image order, threshold-search curves, and the page itself in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_defect.cli import main
from steel_defect.data.annotations import read_annotations
from steel_defect.data.images import read_image
from steel_defect.data.rle import mask_to_rle, rles_to_masks
from steel_defect.data.submission import write_submission
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.evaluation.analysis import ImageScores, confusion, dice_by_area, score_images, worst_images
from steel_defect.evaluation.metric import evaluate_files
from steel_defect.evaluation.report import read_search_curves, write_report
from steel_defect.inference.predictor import Predictor
from steel_defect.inference.search import search_class, search_curves
from tests.conftest import random_checkpoints
from tests.test_webapp_e2e import SCREENSHOT_DIR


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Synthetic test frames and a flawed prediction: shifted masks, one miss, one false alarm."""
    root = tmp_path_factory.mktemp("report")
    write_synthetic_dataset(root / "data", n=32, seed=3, test_fraction=0.25)
    truth = read_annotations(root / "data" / "test_truth.csv")
    ids, rles = truth.image_ids, []
    for k, image_id in enumerate(ids):
        masks = rles_to_masks(truth.rles(image_id))
        masks = np.roll(masks, 12 * (k % 3), axis=2)  # partial overlap, different per image
        if k == 0:
            masks[:] = 0  # misses whatever the first frame has
        if k == 1:
            masks[1, :40, :200] = 1  # a class-2 patch, a false alarm unless the truth has it
        rles.append([mask_to_rle(m) for m in masks])
    write_submission(root / "pred.csv", ids, rles)
    return root


def test_report_numbers_equal_evaluate(case):
    pred, truth = case / "pred.csv", case / "data" / "test_truth.csv"
    expected = evaluate_files(pred, truth)
    result = write_report(pred, truth, case / "data" / "test_images", case / "report.html", worst=2)
    assert result["mean_dice"] == expected["mean_dice"] and result["per_class"] == expected["per_class"]
    empty = evaluate_files(_empty_submission(case, truth), truth)
    assert result["empty_dice"] == empty["mean_dice"]
    assert expected["mean_dice"] != empty["mean_dice"]  # the flawed prediction is not all-empty

    page = (case / "report.html").read_text()
    summary = page[page.index("<table id='summary'>") :]
    cells = re.findall(r"<tr><td>([^<]+)</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", summary)[:5]
    assert cells[0] == ("mean (all pairs)", f"{expected['mean_dice']:.4f}", f"{empty['mean_dice']:.4f}")
    for (name, model, baseline), c in zip(cells[1:], "1234", strict=True):
        assert (name, model, baseline) == (
            f"class {c}",
            f"{expected['per_class'][c]:.4f}",
            f"{empty['per_class'][c]:.4f}",
        )
    links = re.findall(r"""(?:src|href)=['"]([^'"]{0,12})""", page)
    assert links and all(link.startswith("data:") for link in links)  # self-contained, offline


def _empty_submission(case: Path, truth: Path) -> Path:
    ids = read_annotations(truth).image_ids
    write_submission(case / "empty.csv", ids, [[""] * 4 for _ in ids])
    return case / "empty.csv"


def _hand_built() -> ImageScores:
    """Five 8x8 frames; class 1: TP (dice 0.5), TP (dice 1), FP, FN, TN."""
    pred, truth = np.zeros((2, 5, 4, 8, 8), np.uint8)
    truth[0, 0, 0:4, 0:4] = 1  # 16 px
    pred[0, 0, 0:4, 0:2] = 1  # 8 px inside: Dice 2*8/24
    truth[1, 0, 2:4, 2:4] = pred[1, 0, 2:4, 2:4] = 1  # exact
    pred[2, 0, 5:7, 5:7] = 1  # false alarm
    truth[3, 0, 1:3, 1:6] = 1  # miss
    return ImageScores.from_masks([f"{i}.jpg" for i in range(5)], pred, truth)


def test_confusion_counts_and_costs_of_a_hand_built_case():
    scores = _hand_built()
    table = confusion(scores, 0)
    assert (table["tp"], table["fp"], table["fn"], table["tn"]) == (2, 1, 1, 1)
    assert table["precision"] == pytest.approx(2 / 3) and table["recall"] == pytest.approx(2 / 3)
    assert table["cost"]["tp"]["class"] == pytest.approx((1 - 16 / 24) / 5)
    assert table["cost"]["fp"]["class"] == pytest.approx(1 / 5) == table["cost"]["fn"]["class"]
    assert table["cost"]["fp"]["mean"] == pytest.approx(1 / 20) and table["cost"]["tn"]["class"] == 0
    # the cells add up to everything class 1 lost
    total = sum(cell["class"] for cell in table["cost"].values())
    assert total == pytest.approx(1 - scores.dice[:, 0].mean())
    # classes 2-4 are empty everywhere: five true negatives, nothing lost, precision undefined
    assert confusion(scores, 1) | {"cost": None} == {
        "tp": 0, "fp": 0, "fn": 0, "tn": 5, "precision": None, "recall": None, "cost": None
    }  # fmt: skip


def test_scores_from_runs_equal_scores_from_decoded_masks(tmp_path):
    """score_images never decodes a mask: its overlaps from the runs match the pixels exactly."""
    rng = np.random.default_rng(1)
    shape = (6, 10)  # runs wrap from column to column, as in the real frames
    pred = rng.random((40, 4, *shape)) < rng.random((40, 4, 1, 1))
    truth = rng.random((40, 4, *shape)) < rng.random((40, 4, 1, 1))
    pred[::5], truth[1::7] = False, False  # empty masks on either side
    ids = [f"{i}.jpg" for i in range(40)]
    write_submission(tmp_path / "p.csv", ids, [[mask_to_rle(m) for m in image] for image in pred])
    write_submission(tmp_path / "t.csv", ids, [[mask_to_rle(m) for m in image] for image in truth])
    scores, _, _ = score_images(tmp_path / "p.csv", tmp_path / "t.csv", shape)
    expected = ImageScores.from_masks(ids, pred, truth)
    for name in ("pred_area", "truth_area", "inter", "dice"):
        np.testing.assert_array_equal(getattr(scores, name), getattr(expected, name), err_msg=name)
    assert 0 < scores.inter.sum() < scores.pred_area.sum()  # partial overlaps, not a trivial case


def test_worst_images_lowest_dice_first_then_larger_error():
    scores = _hand_built()
    # FP (4 wrong px, Dice 0) and FN (10 wrong px, Dice 0) tie on Dice: the larger error first
    assert worst_images(scores, 0, 5) == [3, 2, 0]  # the exact TP and the TN lost nothing
    assert worst_images(scores, 0, 1) == [3] and worst_images(scores, 1, 3) == []


def test_dice_by_area_bins_defect_images_by_true_size():
    scores = _hand_built()
    bins = dice_by_area(scores, 0, bins=(0, 5, 12, 64))
    assert [(b["images"], b["mean_dice"]) for b in bins] == [(1, 1.0), (1, 0.0), (1, pytest.approx(2 / 3))]


def test_search_curves_pass_through_the_chosen_point():
    rng = np.random.default_rng(0)
    truth = np.zeros((6, 16, 16), bool)
    truth[:3, 4:10, 4:10] = True
    probs = np.clip(truth * 0.7 + rng.uniform(0, 0.45, truth.shape), 0, 1)
    params, best, table = search_class(probs, truth, min_components=(0, 8), min_areas=(0, 20, 60))
    curves = search_curves(table, params)
    for name, grid in (
        ("threshold", "thresholds"),
        ("min_component", "min_components"),
        ("min_area", "min_areas"),
    ):
        curve = curves[name]
        assert curve["values"] == list(table[grid])
        assert curve["values"][curve["chosen"]] == getattr(params, name)
        assert curve["dice"][curve["chosen"]] == pytest.approx(best)
        assert max(curve["dice"]) == pytest.approx(best)
    assert len(set(curves["threshold"]["dice"])) > 1  # the curve moves: not a flat line


def test_search_report_without_curves_says_how_to_get_them(tmp_path, case):
    old = tmp_path / "postprocessing.report.json"
    old.write_text(json.dumps({"mean": {}, "classes": {}}))
    with pytest.raises(ValueError, match="run `steel-defect thresholds` again"):
        read_search_curves(old)
    assert main(["report", "--pred", str(case / "pred.csv"), "--truth", str(case / "data" / "test_truth.csv"),
                 "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")]) == 2  # fmt: skip
    assert not (tmp_path / "r.html").exists()


def test_report_draws_search_curves_and_the_worst_frames(case, tmp_path):
    curve = {"values": [0.3, 0.5, 0.7], "dice": [0.8, 0.9, 0.85], "chosen": 1}
    search = tmp_path / "postprocessing.report.json"
    params = {"threshold": 0.5, "min_component": 0, "min_area": 512, "cls_threshold": None}
    classes = {c: {"params": params, "disabled": c in "24"} for c in "1234"}
    unlearnt = {
        "defect_images": 5,
        "peak_on_defects": 0.08,
        "reaches_threshold": False,
        "lowest_threshold": 0.3,
    }
    classes["4"]["signal"] = unlearnt
    curves = {c: {"threshold": curve, "min_area": curve} for c in "1234"}
    search.write_text(json.dumps({"curves": curves, "classes": classes}))
    out = tmp_path / "report.html"
    pred, truth = case / "pred.csv", case / "data" / "test_truth.csv"
    write_report(pred, truth, case / "data" / "test_images", out, worst=3, search_report=search)
    page = out.read_text()
    assert page.count("Dice vs threshold and min area") == 0  # alt text is the description below
    assert page.count('alt="Dice against threshold and min area"') == 4
    scores, _, _ = score_images(pred, truth)
    for index, class_id in enumerate("1234"):
        section = page[page.index(f"<section id='class-{class_id}'>") :]
        section = section[: section.index("</section>")]
        drawn = re.findall(r"<figure data-image='([^']+)'>", section)
        assert drawn == [scores.ids[r] for r in worst_images(scores, index, 3)]
        chosen = {
            "2": "Switched off: the best point (starred) beat empty masks by less than one image",
            "4": "on none of the 5 out-of-fold frames with this class does the model reach the lowest "
            "threshold searched (0.30; its highest is 0.08)",
        }.get(class_id, "Chosen: threshold 0.5, min_component 0, min_area 512.")
        assert chosen in section
        counts = re.findall(r"<td class='count'>(\d+)</td>", section)
        table = confusion(scores, index)
        assert [int(c) for c in counts] == [table[k] for k in ("tp", "fp", "fn", "tn")]
    # the miss on frame 0 and the class-2 false alarm on frame 1 are among the drawn worst
    assert f"<figure data-image='{scores.ids[1]}'>" in page


def test_probs_from_shows_the_models_probabilities_on_the_drawn_frames(case, tmp_path, capsys):
    checkpoints = random_checkpoints(tmp_path, exported=True)
    out = tmp_path / "report.html"
    argv = ["report", "--pred", case / "pred.csv", "--truth", case / "data" / "test_truth.csv"]
    argv += ["--images", case / "data" / "test_images", "--out", out, "--worst", "2"]
    assert main([*map(str, argv), "--probs-from", str(checkpoints["seg"]), str(checkpoints["cls"])]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    predictor = Predictor([checkpoints["seg"], checkpoints["cls"]])
    shown = 0
    for class_id in (1, 2, 3, 4):
        section = page[page.index(f"<section id='class-{class_id}'>") :]
        section = section[: section.index("</section>")]
        for image_id, caption in re.findall(
            r"<figure data-image='([^']+)'>.*?<figcaption>(.*?)</figcaption>", section
        ):
            frame = read_image(case / "data" / "test_images" / image_id)
            top = predictor.segment([frame])[0, class_id - 1].max()
            cls = predictor.classify([frame])[0, class_id - 1]
            assert caption.endswith(f" · max pixel p {top:.3f} · classifier p {cls:.3f}"), caption
            shown += 1
    assert shown >= 2


@pytest.mark.e2e
def test_report_opens_in_chromium_without_console_errors(case, browser, tmp_path):
    out = tmp_path / "report.html"
    write_report(
        case / "pred.csv", case / "data" / "test_truth.csv", case / "data" / "test_images", out, worst=2
    )
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors, requests = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    # every picture decoded (a broken data URI has naturalWidth 0)
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and min(widths) > 0
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    shot = Path(SCREENSHOT_DIR or tmp_path) / "report_e2e.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1300 and image.std() > 10
    assert errors == [], errors
    page.close()
