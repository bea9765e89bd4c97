"""bench/real_holdout.py's line table: the pooled figures beside empty masks, and the frames
behind a difference (a wrong table would misreport the issue's Dice bar)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def holdout():
    spec = importlib.util.spec_from_file_location("real_holdout", REPO / "bench" / "real_holdout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _csv(path, masks: dict[str, dict[int, str]]):
    rows = ["ImageId_ClassId,EncodedPixels"]
    rows += [f"{image}_{c},{masks[image].get(c, '')}" for image in masks for c in (1, 2, 3, 4)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _quarter(tmp_path, k: int, truth, ensemble, line) -> dict:
    """A quarter's summary as run_demo writes it, from the three mask sets."""
    folder = tmp_path / f"q{k}"
    folder.mkdir()
    paths = {
        name: _csv(folder / f"{name}.csv", masks)
        for name, masks in (
            ("truth", truth),
            ("ensemble", ensemble),
            ("line", line),
            ("empty", {i: {} for i in truth}),
        )
    }
    from steel_defect.evaluation.analysis import overall, score_images

    per_class = {
        name: overall(score_images(paths[name], paths["truth"])[0])["model"]["per_class"]
        for name in ("ensemble", "line", "empty")
    }
    speed = {"ensemble_frames_per_s": 1.0, "line_frames_per_s": 10.0, "threads": 2}
    return {
        "holdout": k,
        "test_images": len(truth),
        "test_truth": paths["truth"],
        "submission": paths["ensemble"],
        "per_class": per_class["ensemble"],
        "empty_per_class": per_class["empty"],
        "line": {"submission": paths["line"], "per_class": per_class["line"], "speed": speed},
    }


def test_the_line_table_counts_the_frames_behind_a_difference(tmp_path, holdout):
    # quarter 0: the ensemble finds a's class 3, the line misses it and paints b's
    q0 = _quarter(
        tmp_path,
        0,
        truth={"a.jpg": {3: "1 100"}, "b.jpg": {}},
        ensemble={"a.jpg": {3: "1 100"}, "b.jpg": {}},
        line={"a.jpg": {}, "b.jpg": {3: "1 50"}},
    )
    # quarter 1, listed in another order: the line finds c's class 1 half-right, the ensemble not
    q1 = _quarter(
        tmp_path,
        1,
        truth={"c.jpg": {1: "1 100"}, "d.jpg": {}},
        ensemble={"d.jpg": {}, "c.jpg": {}},
        line={"c.jpg": {1: "1 50"}, "d.jpg": {}},
    )
    moves = holdout.paired([q0, q1])
    assert moves["3"] == pytest.approx((0.0, 2.0))
    assert moves["1"] == pytest.approx((2 * 50 / 150, 0.0))  # Dice 2*50/(50+100) on one frame
    assert moves["2"] == moves["4"] == (0.0, 0.0)
    q0["line"]["fit"] = {"frames": 143, "loose_above": 0.1, "loose": 16, "worst": []}
    table = holdout.line_table([q0, q1])
    # the student's fit where its summary has one (quarters run before it was measured have none)
    assert "  holdout 0: 1.00 10.00 2  fit: 16 pairs > 0.1 on 143 frames" in table.splitlines()
    assert "  holdout 1: 1.00 10.00 2" in table.splitlines()
    rows = {
        line.split()[0] + (line.split()[1] if line.startswith("class") else ""): line.split()
        for line in table.splitlines()[2:7]
    }
    # class 3: line 2/4 (the two empty frames c, d), ensemble 4/4, empty 3/4
    assert rows["class3"][2:6] == ["0.5000", "1.0000", "0.7500", "-0.5000"]
    assert rows["class3"][6:] == ["+0.00", "-2.00"]
    assert table.splitlines()[0].startswith("one frame of one class moves it by 0.2500, the mean by 0.0625")
