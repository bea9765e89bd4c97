"""What the labelling loop says: the class in doubt and where, the queue's progress, its build in
the background, the frame list, the doubt heat map, and the first run without a model.

Real SQLite files in a temporary folder, the app's own test client, a real untrained segmenter
(seconds, no training); the browser side is in test_label_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.queue import frame_score, progress_line
from steel_defect.labels.store import LabelStore
from steel_defect.webapp.labelling import LabelService, create_label_app
from tests.conftest import REPO, random_checkpoints
from tests.test_labels import EMPTY, _frames


@pytest.fixture(scope="module")
def seg_predictor(tmp_path_factory):
    from steel_defect.inference.pipeline import build_predictor

    root = tmp_path_factory.mktemp("model")
    checkpoints = random_checkpoints(root, seg_prior=0.45)
    return build_predictor(None, [checkpoints["seg"]], untuned=True, tta=(), backend="torch"), checkpoints


def test_the_queue_names_the_class_in_doubt_its_peak_beside_its_threshold_and_where_it_is():
    shape = (4, 4, 64, 400)
    members = np.full(shape, 0.02, np.float32)
    members[:, 2, 10:20, 50:150] = 0.97  # class 3: every member sure of it
    members[:2, 0, 30:34, 200:240] = 0.9  # class 1: two members see a 160-pixel spot, two do not
    thresholds = np.array([0.5, 0.6, 0.55, 0.7])
    score, detail = frame_score(members, thresholds=thresholds, peaks=np.array([0.47, 0.02, 0.97, 0.02]))
    doubt = detail["doubt"]
    assert doubt["class_id"] == 1 and score == detail["1"]["score"]
    assert doubt["peak"] == 0.47 and doubt["threshold"] == 0.5
    # the spot's columns 200-240 of 400 and rows 30-34 of 64, as fractions of the frame
    assert doubt["box"] == [0.5, round(30 / 64, 4), 0.6, round(34 / 64, 4)]
    x, y = doubt["at"]
    assert 0.5 <= x <= 0.6 and 30 / 64 <= y <= 34 / 64
    # a class switched off (NaN) has no threshold to compare with: the page says it is off
    off = frame_score(members, thresholds=np.array([np.nan, 0.6, 0.55, 0.7]))[1]["doubt"]
    assert off["off"] is True and off["threshold"] is None and doubt["off"] is False
    # without the pipeline's peaks the mean map's is used: two of four members at 0.9
    assert frame_score(members)[1]["doubt"]["peak"] == pytest.approx((0.9 * 2 + 0.02 * 2) / 4, abs=1e-4)


def test_the_progress_line_says_frames_rate_and_time_left():
    assert progress_line(37, 102, 37 * 2.3) == "37/102 frames, 2.3 s/frame, about 2 min left"
    assert progress_line(10, 12, 10 * 4.0) == "10/12 frames, 4.0 s/frame, about 8 s left"
    assert progress_line(12, 12, 30.0) == "12/12 frames, 2.5 s/frame, done"
    assert progress_line(0, 12, 0.0) == "0/12 frames, scoring the first batch"


def test_labels_queue_prints_its_progress_on_stderr_and_stores_the_doubt(tmp_path, seg_predictor):
    _, checkpoints = seg_predictor
    folder = tmp_path / "frames"
    names = _frames(folder, 3, seed=2)
    db = tmp_path / "labels.sqlite"
    with LabelStore.open(db) as store:
        store.add_frames([(n, 1600, 256) for n in names])
    result = subprocess.run(
        [
            *(sys.executable, "-m", "steel_defect.cli", "labels", "queue", "--db", str(db)),
            *("--images", str(folder), "--untuned", "--checkpoints", str(checkpoints["seg"])),
            *("--backend", "torch", "--opts", "inference.batch_size=2"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " frames" in line]
    assert lines[0].endswith("0/3 frames, scoring the first batch")
    assert re.search(r"3/3 frames, \d+\.\d s/frame, done$", lines[-1]), lines
    assert result.stdout.lstrip().startswith("{")  # stdout keeps the summary's JSON alone
    with LabelStore.open(db) as store:
        doubt = store.queue_entry(names[0])["detail"]["doubt"]
    assert doubt["class_id"] in (1, 2, 3, 4) and doubt["threshold"] == 0.5


def test_the_page_builds_the_queue_in_the_background_when_a_model_is_there_and_none_is_stored(
    tmp_path, seg_predictor
):
    predictor, _ = seg_predictor
    folder = tmp_path / "frames"
    names = _frames(folder, 3, seed=4)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        service = LabelService(store, FrameFolder(folder), predictor, build_queue=True)
        assert service.queue_status()["state"] == "idle"
        with TestClient(create_label_app(service)) as client:  # the startup starts the build
            service.queue_build.thread.join(timeout=120)
            built = client.get("/api/label/queue").json()
            assert built["state"] == "done" and built["done"] == built["total"] == 3
            assert built["summary"]["scored"] == 3
            assert client.get("/api/label/info").json()["stats"]["queue"]["size"] == 3
            assert client.get("/api/label/next").json()["name"] in names
            # built once: a second page start on the same database keeps the stored queue
            assert service.start_queue_build() is False
            again = client.post("/api/label/queue")
            assert again.status_code == 202
            service.queue_build.thread.join(timeout=120)
            assert client.get("/api/label/queue").json()["state"] == "done"
            # a model taken up later (a promoted version) names the queue and the pre-labels it rebuilds
            service.use_model(predictor, "v7")
            assert client.post("/api/label/queue").status_code == 202
            service.queue_build.thread.join(timeout=120)
            assert store.stats().queue["model_version"] == "v7"
            assert {store.frame(n).proposal_model for n in names} == {"v7"}


def test_a_first_run_without_a_model_names_the_command_that_makes_one(tmp_path):
    folder = tmp_path / "frames"
    _frames(folder, 1)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        client = TestClient(create_label_app(LabelService(store, FrameFolder(folder), build_queue=True)))
        status = client.get("/api/label/info").json()["queue_build"]
        assert status["state"] == "none"
        assert "steel-defect labels train --db labels.sqlite" in status["hint"]
        assert "--postprocessing" in status["hint"]
        refused = client.post("/api/label/queue")
        assert refused.status_code == 409 and "labels train" in refused.json()["detail"]
        assert client.get("/api/label/frames/x.jpg/doubt.png", params={"class_id": 1}).status_code == 409


def test_the_frame_list_gives_status_classes_queue_rank_and_doubt_and_filters_by_status(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 4)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        client = TestClient(create_label_app(LabelService(store, FrameFolder(folder))))
        store.save_masks(names[0], EMPTY, version=0, status="defect-free")
        store.save_masks(names[1], ["", "", "1 5", "9 3"], version=0, status="confirmed")
        store.set_proposal(names[2], ["1 4", "", "", ""], "m:1")
        store.set_queue(
            [(names[3], 0.9, {"doubt": {"class_id": 2}}), (names[2], 0.4, {"doubt": {"class_id": 1}})], "m:1"
        )
        listed = client.get("/api/label/frames").json()
        assert [f["name"] for f in listed] == [names[3], names[2], names[0], names[1]]  # queue order first
        by_name = {f["name"]: f for f in listed}
        assert by_name[names[0]]["status"] == "defect-free" and by_name[names[0]]["classes"] == []
        assert by_name[names[1]]["classes"] == [3, 4] and by_name[names[1]]["rank"] is None
        assert by_name[names[2]]["classes"] == [1] and by_name[names[2]]["proposed"] is True
        assert by_name[names[2]]["status"] == "pre-labelled"
        assert by_name[names[3]] | {"score": 0.9} == {
            "name": names[3],
            "status": "unlabelled",
            "version": 0,
            "classes": [],
            "proposed": False,
            "rank": 0,
            "score": 0.9,
            "doubt_class": 2,
        }
        only = client.get("/api/label/frames", params={"status": "defect-free"}).json()
        assert [f["name"] for f in only] == [names[0]]
        bad = client.get("/api/label/frames", params={"status": "done"})
        assert bad.status_code == 422 and "defect-free" in bad.json()["detail"]


def test_the_doubt_heat_map_is_the_class_probability_under_its_threshold_computed_once(
    tmp_path, seg_predictor
):
    predictor, _ = seg_predictor
    folder = tmp_path / "frames"
    names = _frames(folder, 1, seed=6)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        service = LabelService(store, FrameFolder(folder), predictor)
        client = TestClient(create_label_app(service))
        answer = client.get(f"/api/label/frames/{names[0]}/doubt.png", params={"class_id": 3})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        png = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert png.shape == (128, 800, 4)
        assert (png[..., 2] == 0xD5).all() and (png[..., 1] == 0x5E).all()  # class 3's colour, #D55E00
        levels = predictor.predict([FrameFolder(folder).decode(names[0])], skip_gated=False)[0].levels[2]
        small = cv2.resize(levels, (800, 128), interpolation=cv2.INTER_AREA).astype(np.float64)
        # opacity 200 at the threshold (0.5: level 127.5) and above, proportional under it
        expected = np.rint(np.clip(small / 127.5, 0, 1) * 200)
        assert np.abs(png[..., 3] - expected).max() <= 1
        assert 0 < png[..., 3].min() < png[..., 3].max()
        assert names[0] in service.doubt._cache  # a second toggle reuses the maps
        wrong_class = client.get(f"/api/label/frames/{names[0]}/doubt.png", params={"class_id": 5})
        assert wrong_class.status_code == 422
        unknown = client.get("/api/label/frames/nothere.jpg/doubt.png", params={"class_id": 1})
        assert unknown.status_code == 404


def test_a_page_started_on_the_promoted_version_scores_the_frames_once_in_its_name(tmp_path, monkeypatch):
    """`label` loaded the promoted version and no queue is stored: the page's own build scores the
    frames, once, and names the queue and the pre-labels after the version, not a digest; no
    re-scoring runs beside it."""
    from steel_defect.inference.pipeline import build_predictor
    from tests.test_label_page_meaning_e2e import promote_untrained_model

    folder = tmp_path / "frames"
    names = _frames(folder, 2, seed=7)
    db = tmp_path / "labels.sqlite"
    spec = promote_untrained_model(tmp_path / "model", db)  # as `labels train` leaves it
    with LabelStore.open(db) as store:
        predictor = build_predictor(spec, backend="torch")
        service = LabelService(store, FrameFolder(folder), predictor, build_queue=True, batch_size=1)
        app = create_label_app(service)
        assert app.state.rescorer._thread is None  # the page runs the promoted version already
        with TestClient(app) as client:  # the startup starts the page's one build
            service.queue_build.thread.join(timeout=120)
            assert client.get("/api/label/queue").json()["state"] == "done"
            assert not app.state.rescorer.busy()
            assert store.stats().queue["size"] == 2 and store.stats().queue["model_version"] == "v1"
            assert {store.frame(n).proposal_model for n in names} == {"v1"}
            assert client.get("/api/label/next").json()["name"] in names
