"""``watch --labels-db``: the line judges with the labels database's promoted model version and
swaps to a newly promoted one between two batches.

Real components throughout: a labels database and an inspection log in SQLite files, tuned
pipelines of two small random segmenters (the versions), the watch loop with its writer thread.
The promotion lands at a batch the test picks, by driving the loop one step at a time, and the
new model's build is waited for with :meth:`PromotedModel.settle`, never with a sleep.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from steel_defect.inference.pipeline import build_predictor, save_spec
from steel_defect.inference.postprocess import PostProcessing
from steel_defect.inference.run import predict_rows
from steel_defect.inference.verdict import model_version
from steel_defect.labels.store import LabelStore
from steel_defect.line.follow import PromotedModel
from steel_defect.line.log import InspectionLog, Search
from steel_defect.line.watch import Watcher
from steel_defect.webapp.dashboard import create_dashboard_app
from tests.conftest import REPO, SMALL_OPTS
from tests.test_labels import _frames as frames_in

SOURCES = 4  # distinct frames; the watched folder holds copies of them under other names


# Smaller than conftest's random_checkpoints (a 3-level Unet on 32x192 inputs), so that 200
# full-size frames are judged in a few seconds.
TINY = [
    "model.params={encoder_depth: 3, decoder_channels: [16, 8, 4]}",
    "transforms.valid=[{name: Resize, params: {height: 32, width: 192}}, {name: Normalize}]",
]


def _tiny_segmenter(path: Path, prior: float) -> Path:
    """An untrained segmenter whose maps lie around ``prior``, saved as a checkpoint."""
    import torch

    from steel_defect.config import load_config
    from steel_defect.models import build_model
    from steel_defect.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    opts = [*SMALL_OPTS, *TINY, f"model.output_prior={prior}"]
    cfg = load_config(REPO / "configs/demo/synth_seg.yml", opts)
    return save_checkpoint(path, build_model(cfg), cfg, epoch=0, metrics={})


def _build(spec: Path):
    return build_predictor(spec, backend="torch", threads=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tuned pipelines of random segmenters that paint differently (maps around 0.5, masks
    that vary from frame to frame, and 0.2, none; threshold 0.5), the frames they judge, and
    each one's RLEs of those frames."""
    root = tmp_path_factory.mktemp("versions")
    sources = root / "sources"
    names = frames_in(sources, SOURCES, seed=2)
    specs, expected = {}, {}
    for key, prior in (("a", 0.5), ("b", 0.2)):
        (root / key).mkdir()
        checkpoint = _tiny_segmenter(root / key / "seg.pth", prior)
        untuned = build_predictor(None, [checkpoint], untuned=True, backend="torch", threads=1)
        specs[key] = save_spec(
            root / key / "postprocessing.yml",
            PostProcessing(),
            untuned.segmenters,
            tta=[],
            gate=untuned.gate,
            search_downsample=1,
            folds_csv=root / "folds.csv",
            folds_sha256="0" * 64,
        )
        predictor = _build(specs[key])
        rows, _ = predict_rows(predictor, sources, names, progress=False)
        expected[key] = {"model": model_version(predictor), "rles": [rows[n] for n in names]}
    # the log can tell who judged, and a's masks differ between frames
    assert all(ra != rb for ra, rb in zip(expected["a"]["rles"], expected["b"]["rles"], strict=True))
    assert len({tuple(r) for r in expected["a"]["rles"]}) == SOURCES
    broken = root / "broken.yml"
    broken.write_text("pipeline: [this is not a mapping]\n")
    return {"root": root, "sources": sources, "specs": specs, "expected": expected, "broken": broken}


def _labels(tmp_path: Path, models) -> Path:
    """A labels database: v1 (pipeline a), v2 (tuned pipeline a, line pipeline b: the line
    judges with b), v3 (a spec that is gone), v4 (a spec that is not a pipeline); v1 promoted."""
    path = tmp_path / "labels.sqlite"
    with LabelStore.open(path) as store:
        common = {"recipe": "synthetic", "labels_digest": "0" * 64, "counts": {}, "out_of_fold": {}}
        store.record_version(spec=models["specs"]["a"], seconds=1.0, **common)
        store.record_version(spec=models["specs"]["a"], line_spec=models["specs"]["b"], seconds=1.0, **common)
        store.record_version(spec=tmp_path / "gone" / "postprocessing.yml", seconds=1.0, **common)
        store.record_version(spec=models["broken"], seconds=1.0, **common)
        store.promote("v1", "the first")
    return path


def _promote(path: Path, name: str) -> None:
    with LabelStore.open(path) as store:
        store.promote(name, "test")


def _drop(folder: Path, sources: Path, n: int, start: int = 0) -> list[str]:
    """``n`` frames in ``folder``, frame ``i`` a copy of source ``i % SOURCES``; their names."""
    folder.mkdir(exist_ok=True)
    data = [p.read_bytes() for p in sorted(sources.glob("*.jpg"))]
    names = [f"f{i:04d}.jpg" for i in range(start, start + n)]
    for i, name in enumerate(names, start=start):
        (folder / name).write_bytes(data[i % SOURCES])
    return names


def _judged_by(row: dict, models) -> str:
    """Which pipeline's masks a logged frame carries ("a" or "b")."""
    source = int(row["name"][1:5]) % SOURCES
    rles = [c["rle"] for c in row["classes"]]
    found = [k for k, e in models["expected"].items() if e["rles"][source] == rles]
    assert len(found) == 1, f"{row['name']}: masks of {found or 'neither pipeline'}"
    return found[0]


def _watcher(tmp_path, labels, batch_size):
    follow = PromotedModel(labels, build=_build, check_s=0.0)  # a look at every batch
    follow.load()
    inspection = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(
        tmp_path / "in",
        inspection,
        None,
        follow=follow,
        settle_s=0.0,
        batch_size=batch_size,
        events=False,
        overlap_writes=True,  # as `watch` runs: a batch is written while the next is judged
    )
    return follow, inspection, watcher


def test_200_frames_across_a_promotion_are_each_judged_once_and_the_versions_split_at_one_point(
    tmp_path, models
):
    labels = _labels(tmp_path, models)
    names = _drop(tmp_path / "in", models["sources"], 200)
    follow, inspection, watcher = _watcher(tmp_path, labels, batch_size=8)
    judged = 0
    while judged < 96:
        judged += watcher.step()
    _promote(labels, "v2")
    judged += watcher.step()  # sees the promotion and builds v2 beside the loop; v1 judges this batch
    assert follow.settle(timeout=120)
    while judged < 200:
        judged += watcher.step()  # the first of these swaps, while v1's last batch is being written
    watcher.flush()

    with sqlite3.connect(tmp_path / "inspection.sqlite") as connection:
        counts = dict(connection.execute("SELECT name, count(*) FROM frames GROUP BY name").fetchall())
        statuses = {s for (s,) in connection.execute("SELECT DISTINCT status FROM frames")}
    assert counts == dict.fromkeys(names, 1) and statuses == {"judged"}
    rows = sorted(inspection.iter_search(Search()), key=lambda r: r["name"])
    v1 = f"v1 ({models['expected']['a']['model']})"
    v2 = f"v2 ({models['expected']['b']['model']})"  # v2's line pipeline, not its tuned one
    assert [r["model"] for r in rows] == [v1] * 104 + [v2] * 96
    assert [_judged_by(r, models) for r in rows] == ["a"] * 104 + ["b"] * 96
    # the page names the version judging now, from the loop and from its heartbeat
    [row] = (
        TestClient(create_dashboard_app(inspection, watcher=watcher))
        .get("/api/log/status")
        .json()["watchers"]
    )
    assert (row["version"], row["model"], row["model_problem"]) == ("v2", v2, None)
    watcher._maintain(force=True)
    [row] = TestClient(create_dashboard_app(inspection)).get("/api/log/status").json()["watchers"]
    assert (row["version"], row["model"]) == ("v2", v2)
    follow.close()


def test_a_promoted_version_that_does_not_load_leaves_the_old_one_judging_and_says_why(
    tmp_path, models, caplog
):
    labels = _labels(tmp_path, models)
    _drop(tmp_path / "in", models["sources"], 9)
    follow, inspection, watcher = _watcher(tmp_path, labels, batch_size=1)
    page = TestClient(create_dashboard_app(inspection, watcher=watcher))
    caplog.set_level(logging.INFO, logger="steel_defect.line.follow")
    for name, why in (("v3", r"gone/postprocessing\.yml"), ("v4", "'pipeline' must be a mapping")):
        _promote(labels, name)
        assert watcher.step() == 1  # the promotion seen, its build started
        assert follow.settle(timeout=120)
        assert watcher.step() == 1 and watcher.step() == 1  # the build failed: v1 judges on
        assert follow.problem.startswith(f"model version {name} does not load from ")
        assert follow.problem.endswith("; v1 judges on")
        assert re.search(why, follow.problem)
        errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
        failures = [m for m in errors if f"version {name} " in m]
        assert len(failures) == 1  # logged once, not at every look
        status = page.get("/api/log/status").json()["watchers"][0]
        assert (status["version"], status["model_problem"]) == ("v1", follow.problem)
    _promote(labels, "v2")  # a working version after the broken ones
    assert watcher.step() == 1 and follow.settle(timeout=120) and watcher.step() == 1
    assert follow.problem is None and follow.current.version == "v2"
    assert watcher.step() == 1
    watcher.flush()
    rows = sorted(inspection.iter_search(Search()), key=lambda r: r["name"])
    assert [r["model"].split()[0] for r in rows] == ["v1"] * 7 + ["v2"] * 2
    follow.close()


def test_a_locked_labels_database_keeps_the_model_without_waiting_and_is_logged_once(
    tmp_path, models, caplog
):
    labels = _labels(tmp_path, models)
    follow = PromotedModel(labels, build=_build, check_s=0.0)
    follow.load()
    _promote(labels, "v2")
    holder = sqlite3.connect(labels, isolation_level=None, timeout=0)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # as a process that holds the file for a long write
    caplog.set_level(logging.WARNING, logger="steel_defect.line.follow")
    try:
        started = time.monotonic()
        assert [follow.poll() for _ in range(3)] == [None] * 3
        assert time.monotonic() - started < 2.0  # the store's busy wait (5 s) was not waited out
        warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "is locked" in warnings[0] and "v1 judges on" in warnings[0]
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert follow.poll() is None and follow.settle(timeout=120)  # readable: v2 is built
    loaded = follow.poll()
    assert loaded.version == "v2" and loaded.spec == models["specs"]["b"]
    follow.close()


def _watch(*argv: str) -> int:
    """``steel-defect watch`` in a thread (so that it installs no signal handler in pytest)."""
    from steel_defect.cli import main

    result = []
    thread = threading.Thread(target=lambda: result.append(main(["watch", *argv])))
    thread.start()
    thread.join(timeout=300)
    assert result, "watch did not return"
    return result[0]


@pytest.mark.parametrize("given", [["--postprocessing", "p.yml"], ["--checkpoints", "a.pth"], ["--untuned"]])
def test_watch_refuses_another_model_beside_labels_db(tmp_path, models, capsys, given):
    labels = _labels(tmp_path, models)
    (tmp_path / "in").mkdir()
    log_db = tmp_path / "log.sqlite"
    code = _watch(str(tmp_path / "in"), "--db", str(log_db), "--labels-db", str(labels), *given)
    assert code == 2
    error = capsys.readouterr().err
    assert f"{given[0]} and --labels-db" in error and "give one of them" in error
    assert not log_db.exists()  # refused before anything was opened


def test_watch_with_labels_db_judges_with_the_promoted_versions_line_pipeline(tmp_path, models):
    labels = _labels(tmp_path, models)
    _promote(labels, "v2")
    names = _drop(tmp_path / "in", models["sources"], 5)
    db = tmp_path / "log.sqlite"
    common = ["--db", str(db), "--no-page", "--exit-when-idle", "0", "--settle", "0", "--poll"]
    torch = ["--backend", "torch", "--threads", "1"]
    code = _watch(str(tmp_path / "in"), *common, "--labels-db", str(labels), *torch)
    assert code == 0
    rows = sorted(InspectionLog.open(db).iter_search(Search()), key=lambda r: r["name"])
    assert [r["name"] for r in rows] == names
    assert {r["model"] for r in rows} == {f"v2 ({models['expected']['b']['model']})"}
    assert {_judged_by(r, models) for r in rows} == {"b"}


def test_watch_with_labels_db_and_nothing_promoted_says_what_to_run(tmp_path, capsys):
    labels = tmp_path / "labels.sqlite"
    LabelStore.open(labels).close()
    (tmp_path / "in").mkdir()
    code = _watch(str(tmp_path / "in"), "--db", str(tmp_path / "log.sqlite"), "--labels-db", str(labels))
    assert code == 2
    error = capsys.readouterr().err
    assert "no model version is promoted yet" in error and "steel-defect labels train --db" in error


@pytest.mark.e2e
def test_the_dashboard_names_the_version_judging_and_why_a_promotion_did_not_load(tmp_path, models, browser):
    from steel_defect.webapp.server import serve_in_thread
    from tests.test_line_e2e import wait_until

    labels = _labels(tmp_path, models)
    _drop(tmp_path / "in", models["sources"], 3)
    follow, inspection, watcher = _watcher(tmp_path, labels, batch_size=1)
    _promote(labels, "v3")  # its spec is gone
    watcher.step()
    assert follow.settle(timeout=120)
    watcher.step()
    watcher.flush()
    server, url = serve_in_thread(create_dashboard_app(inspection, watcher=watcher))
    context = browser.new_context(viewport={"width": 1400, "height": 700})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(url + "/")
        wait_until(page, "() => window.dashboard && window.dashboard.refreshed >= 1")
        assert errors == []
        shown = page.locator("#watchers .watcher")
        assert re.fullmatch(r"in: running · backlog 1 · \d judged · model v1", shown.inner_text())
        assert shown.get_attribute("title").endswith(f"\nmodel: v1 ({models['expected']['a']['model']})")
        banner = page.locator("#alarms .banner.model-problem")
        assert banner.inner_text() == f"in:{follow.problem}"  # the line, then why v3 is not judging
        assert follow.problem.startswith("model version v3 does not load from ")
        page.screenshot(path=str(tmp_path / "dashboard_version.png"), full_page=True)
    finally:
        context.close()
        server.should_exit = True
        follow.close()
