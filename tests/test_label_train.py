"""The labelling page trains: POST/GET/DELETE /api/label/train, versions, promotion, re-scoring.

A real labels database of synthetic frames, the real app (its test client, or `steel-defect label`
in a subprocess where a server restart is played out), and a real `steel-defect labels train`
child on tiny settings. The child is held at a known point with the pause hook
(``STEEL_DEFECT_TEST_PAUSE_AT=batch:train``) instead of racing it with sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.jobs import ENDED, process_alive
from steel_defect.labels.store import LabelStore
from steel_defect.labels.transfer import import_csv
from steel_defect.pause import ENV, FILE_ENV
from steel_defect.webapp.labelling import LabelService, create_label_app
from steel_defect.webapp.training import TrainingSettings
from tests.test_labels import running_label_server

# one training in about a minute on two CPU cores (with --epochs 1): two folds of one batch each
HALF = "{name: Normalize, params: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}"  # lite0's weights
TINY = [
    f"transforms.train=[{{name: Resize, params: {{height: 64, width: 384}}}}, {HALF}]",
    f"transforms.valid=[{{name: Resize, params: {{height: 64, width: 384}}}}, {HALF}]",
    "data.batch_size=4",
    "data.num_workers=0",
    "folds.n_splits=2",
    "train.max_train_batches=1",
    "train.max_valid_batches=1",
    "inference.backend=torch",
    "inference.tta=[hflip]",
]
UNLABELLED = 4  # frames in the folder that the database does not hold labels of


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory) -> Path:
    """A labels database of 12 confirmed synthetic frames, and a folder that also holds
    ``UNLABELLED`` frames without labels (what the queue scores); returns the database."""
    root = tmp_path_factory.mktemp("train")
    total = 12 + UNLABELLED
    write_synthetic_dataset(root / "data", n=total, seed=4, test_fraction=UNLABELLED / total)
    frames = root / "frames"
    shutil.copytree(root / "data/train_images", frames)
    for path in (root / "data/test_images").iterdir():
        shutil.copy(path, frames / path.name)
    with LabelStore.open(root / "labels.sqlite") as store:
        import_csv(store, root / "data/train.csv", frames)
    return root / "labels.sqlite"


def _copy(labelled_db: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the database beside the shared frames: (database, frames)."""
    db = tmp_path / "labels.sqlite"
    shutil.copy(labelled_db, db)
    return db, labelled_db.parent / "frames"


def _torch(spec: str):
    from steel_defect.inference.pipeline import build_predictor

    return build_predictor(spec, backend="torch")


def _client(db: Path, frames: Path) -> tuple[TestClient, LabelStore]:
    store = LabelStore.open(db)
    service = LabelService(store, FrameFolder(frames))
    settings = TrainingSettings("synthetic", tuple(TINY), epochs=1, load_predictor=_torch)
    return TestClient(create_label_app(service, training=settings)), store


def _until(check, timeout: float = 180, what: str = "the condition"):
    """Poll ``check`` (a state the test waits for, not a race) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _paused(monkeypatch, tmp_path: Path) -> Path:
    """Hold the training child at its first training batch; the marker file says it is there."""
    marker = tmp_path / "paused"
    monkeypatch.setenv(ENV, "batch:train")
    monkeypatch.setenv(FILE_ENV, str(marker))
    return marker


def test_without_a_training_the_api_says_none_and_cancel_is_a_409(labelled_db, tmp_path):
    db, frames = _copy(labelled_db, tmp_path)
    client, store = _client(db, frames)
    with client, store:
        view = client.get("/api/label/train").json()
        assert view["state"] == "none" and view["version"] is None
        refused = client.delete("/api/label/train")
        assert refused.status_code == 409
        assert "no training is running" in refused.json()["detail"]
        versions = client.get("/api/label/versions").json()
        assert versions["versions"] == [] and versions["promoted"] is None
        assert versions["labelled"]["frames"] == 12
        assert client.get("/api/label/rescore").json()["state"] == "idle"
        missing = client.post("/api/label/promote", json={"version": "v7"})
        assert missing.status_code == 404 and "no model version 'v7'" in missing.json()["detail"]


def _ended(client: TestClient) -> dict:
    view = client.get("/api/label/train").json()
    return view if view["state"] != "running" else None


def _log_tail(view: dict) -> str:
    return Path(view["log"]).read_text()[-3000:] if view.get("log") else ""


def test_train_reports_progress_refuses_a_second_and_ends_with_a_promoted_version_the_queue_follows(
    labelled_db, tmp_path, monkeypatch
):
    db, frames = _copy(labelled_db, tmp_path)
    marker = tmp_path / "paused"
    monkeypatch.setenv(ENV, "batch:train@2")  # the second fold's first batch: the first fold reported
    monkeypatch.setenv(FILE_ENV, str(marker))
    client, store = _client(db, frames)
    with client, store:
        started = client.post("/api/label/train", json={})
        assert started.status_code == 202, started.text
        first = started.json()
        assert first["state"] == "running" and first["pid"] > 0
        _until(marker.exists, what="the training child at its second training batch")
        second = client.post("/api/label/train", json={"recipe": "synthetic"})
        assert second.status_code == 409
        assert second.json()["training"]["id"] == first["id"]
        assert f"training {first['id']} is running" in second.json()["detail"]
        view = client.get("/api/label/train").json()
        assert view["state"] == "running", _log_tail(view)
        assert (view["stage"], view["fold"], view["epoch"]) == ("train", 0, 1)
        assert 0 < view["fraction"] < 0.5 and view["eta_s"] > 0
        assert Path(view["log"]).parent == db.parent and "labels train" in Path(view["log"]).read_text()
        marker.unlink()  # go on
        done = _until(lambda: _ended(client), what="the training's end")
        assert done["state"] == "done", f"{done['error']}\n{_log_tail(done)}"
        assert done["version"] == "v1" and done["fraction"] == 1.0
        result = done["result"]
        assert result["promoted"] and result["promotion_reason"] == "first version"
        assert set(result["out_of_fold"]["per_class"]) == {"1", "2", "3", "4"}
        assert result["counts"]["frames"] == 12
        # reaped by the server: no zombie left behind
        _until(lambda: not Path(f"/proc/{first['pid']}").exists(), 30, "the child to be reaped")
        # the promotion re-scores the pre-labels and the queue with v1, and says so
        rescore = _until(
            lambda: (r := client.get("/api/label/rescore").json())["state"] in ("done", "failed") and r,
            what="the re-scoring",
        )
        assert rescore["state"] == "done", rescore
        assert rescore["version"] == "v1" and rescore["done"] == rescore["total"] == UNLABELLED
        proposed = store.names("pre-labelled")
        assert len(proposed) == UNLABELLED
        assert {store.frame(n).proposal_model for n in proposed} == {"v1"}
        assert store.stats().queue["model_version"] == "v1"
        opened = client.get(f"/api/label/frames/{proposed[0]}").json()
        assert opened["proposal_model"] == "v1"  # the page's model is v1 now: no second proposal
        versions = client.get("/api/label/versions").json()
        assert versions["promoted"] == "v1" and [v["name"] for v in versions["versions"]] == ["v1"]
        # a promotion from the page (a rollback is the same call) re-scores once more
        again = client.post("/api/label/promote", json={"version": "v1", "reason": "again"})
        assert again.status_code == 200 and again.json()["promoted"] == "v1"
        second = _until(
            lambda: (
                (r := client.get("/api/label/rescore").json())["promotion"] != rescore["promotion"]
                and r["state"] == "done"
                and r
            ),
            what="the second re-scoring",
        )
        assert second["version"] == "v1" and second["total"] == UNLABELLED
        assert [p["reason"] for p in store.promotions()] == ["first version", "again"]


def test_cancel_stops_the_training_and_frees_the_slot(labelled_db, tmp_path, monkeypatch):
    db, frames = _copy(labelled_db, tmp_path)
    marker = _paused(monkeypatch, tmp_path)
    with LabelStore.open(db) as store:  # promoted before this page started, which runs no model
        store.promote(store.record_version("synthetic", "d", {}, {}, str(tmp_path / "gone.yml"), 1.0), "old")
    client, store = _client(db, frames)
    with client, store:
        first = client.post("/api/label/train", json={}).json()
        _until(marker.exists, what="the training child at its first batch")
        cancelled = client.delete("/api/label/train")
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled" and cancelled.json()["version"] is None
        assert not process_alive(first["pid"], first["id"])
        _until(lambda: not Path(f"/proc/{first['pid']}").exists(), 30, "the child to be reaped")
        assert store.training(first["id"])["state"] == "cancelled" and len(store.versions()) == 1
        for thread in threading.enumerate():  # the reaper, done with what follows a training's end
            if thread.name == f"training-{first['id']}":
                thread.join(30)
        assert client.get("/api/label/rescore").json()["state"] == "idle"  # a cancel promotes nothing
        marker.unlink()
        again = client.post("/api/label/train", json={})  # one at a time: the slot is free again
        assert again.status_code == 202 and again.json()["id"] == first["id"] + 1
        _until(marker.exists, what="the second training at its first batch")
        assert client.delete("/api/label/train").json()["state"] == "cancelled"


def _server_args() -> list[str]:
    return ["--train-recipe", "synthetic", "--train-epochs", "1", "--backend", "torch", "--train-opts", *TINY]


def _orphan(db: Path, frames: Path, marker: Path) -> dict:
    """Start a training from a real `steel-defect label`, hold it at its first batch, and kill
    the server with SIGKILL (the child, its own process group, trains on); the training's row."""
    env = {**os.environ, ENV: "batch:train", FILE_ENV: str(marker)}
    with running_label_server(frames, db, *_server_args(), env=env) as (url, server):
        started = httpx.post(f"{url}/api/label/train", json={}, timeout=60)
        assert started.status_code == 202, started.text
        _until(marker.exists, what="the training child at its first batch")
        server.kill()
        server.wait()
    return started.json()


def test_a_restarted_server_finds_the_live_training_running_and_can_cancel_it(labelled_db, tmp_path):
    db, frames = _copy(labelled_db, tmp_path)
    row = _orphan(db, frames, tmp_path / "paused")
    assert process_alive(row["pid"], row["id"])
    client, store = _client(db, frames)  # the restarted server: a new app on the same database
    with client, store:
        view = client.get("/api/label/train").json()
        assert view["state"] == "running" and view["pid"] == row["pid"] and view["id"] == row["id"]
        assert client.post("/api/label/train", json={}).status_code == 409
        cancelled = client.delete("/api/label/train").json()
        assert cancelled["state"] == "cancelled"
        assert not process_alive(row["pid"], row["id"])
        assert store.training(row["id"])["state"] == "cancelled"


def test_a_restarted_server_records_a_training_whose_process_is_gone_as_failed(labelled_db, tmp_path):
    db, frames = _copy(labelled_db, tmp_path)
    row = _orphan(db, frames, tmp_path / "paused")
    os.killpg(row["pid"], signal.SIGKILL)  # the child dies too, before it could end its row
    _until(lambda: not process_alive(row["pid"], row["id"]), 30, "the child's death")
    with LabelStore.open(db) as store:
        assert store.training(row["id"])["state"] == "running"  # what the dead process left
    client, store = _client(db, frames)
    with client, store:
        view = client.get("/api/label/train").json()
        assert view["state"] == "failed"
        assert view["error"].startswith(ENDED) and f"pid {row['pid']} is gone" in view["error"]
        assert view["log"] in view["error"]  # where to look
        assert store.training(row["id"])["state"] == "failed"  # recorded, not only reported


@pytest.mark.e2e
def test_the_page_trains_shows_progress_and_ends_with_a_new_version_in_the_list(
    labelled_db, tmp_path, browser
):
    from tests.test_label_e2e import _screenshot
    from tests.test_webapp_e2e import SCREENSHOT_DIR

    db, frames = _copy(labelled_db, tmp_path)
    marker = tmp_path / "paused"
    env = {**os.environ, ENV: "batch:train@2", FILE_ENV: str(marker)}  # held once the first fold reported
    with running_label_server(frames, db, *_server_args(), env=env) as (url, _):
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector('#train-panel[data-ready="1"]')
        assert page.text_content("#train-state") == "not trained yet"
        assert page.is_hidden("#versions")
        page.click("#train-start")
        _until(marker.exists, what="the training child at its second training batch")
        page.wait_for_selector('#train-progress-text:has-text("fold 1/2, epoch 1/1")')
        text = page.text_content("#train-progress-text")
        assert text.startswith("training the classifier fold 1/2, epoch 1/1 · 1") and "left" in text
        assert page.text_content("#train-state") == "training…"
        assert page.is_visible("#train-cancel") and page.is_disabled("#train-start")
        percent = int(page.get_attribute("#train-bar", "aria-valuenow"))
        assert 5 < percent < 50
        # the fill slides to its width (a 0.4 s transition): what it shows once it has arrived
        page.wait_for_function(
            """p => { const bar = document.getElementById("train-bar").getBoundingClientRect().width;
                     const fill = document.getElementById("train-bar-fill").getBoundingClientRect().width;
                     return Math.abs(fill / bar * 100 - p) < 1; }""",
            arg=percent,
            timeout=5_000,
        )
        if SCREENSHOT_DIR:
            _screenshot(page, "label_train_progress.png")
        marker.unlink()  # go on
        row = '#versions tr[data-version="v1"][data-promoted="true"]'
        page.wait_for_selector(row, timeout=300_000)
        page.wait_for_selector('#train-state:text-is("trained v1")')
        assert page.is_hidden("#train-progress") and page.is_hidden("#train-cancel")
        assert "Promoted: first version." in page.text_content("#train-result")
        assert "12 frames" in page.text_content(f"{row} >> nth=0")
        page.wait_for_selector('#rescore[data-state="done"]', timeout=120_000)
        assert page.text_content("#rescore").startswith("Pre-labels and queue from v1")
        # the open frame was untouched: the page reloads it with v1's proposal, and says so
        page.wait_for_selector('#frame-meta:has-text("by v1")')
        assert page.text_content("#model-line") == "pre-labels and queue from v1, the promoted version"
        assert page.is_hidden("#queue-hint")  # no "no model yet" banner once there is one
        if SCREENSHOT_DIR:
            _screenshot(page, "label_train_done.png")
        with LabelStore.open(db) as store:  # a second version, v1's model under another name
            v1 = store.version("v1")
            made = {k: v1[k] for k in ("recipe", "labels_digest", "counts", "out_of_fold", "spec")}
            store.record_version(**made, seconds=2.0)
        page.click('#versions button[data-promote="v2"]', timeout=30_000)  # listed at the next poll
        page.wait_for_selector('#versions tr[data-version="v2"][data-promoted="true"]')
        assert page.is_visible('#versions tr[data-version="v1"] button[data-promote="v1"]')
        page.wait_for_selector('#rescore[data-state="done"]:has-text("from v2")', timeout=120_000)
        page.wait_for_selector('#frame-meta:has-text("by v2")')
        assert page.text_content("#train-result").endswith("Promoted (first version); v2 is in use since.")
        if SCREENSHOT_DIR:
            _screenshot(page, "label_train_promoted.png")
        assert errors == []
        page.close()


def test_a_rescoring_cut_off_by_a_restart_is_taken_up_and_a_version_that_does_not_load_says_why(
    labelled_db, tmp_path
):
    db, frames = _copy(labelled_db, tmp_path)
    gone = tmp_path / "gone" / "postprocessing.yml"
    with LabelStore.open(db) as store:
        name = store.record_version("synthetic", store.labels_digest(), {}, {}, str(gone), 1.0)
        store.promote(name, "by hand")
        promotion = store.promotions()[-1]["id"]
        # what a server killed in the middle of re-scoring leaves behind
        record = {"promotion": promotion, "version": name, "state": "running", "done": 4, "total": 8}
        store.set_meta("rescore", json.dumps(record))
    client, store = _client(db, frames)  # the restarted server takes it up at once
    with client, store:
        ended = ("done", "failed")
        status = _until(
            lambda: (r := client.get("/api/label/rescore").json())["state"] in ended and r, 30, "its end"
        )
        assert status["state"] == "failed" and status["version"] == name and status["promotion"] == promotion
        assert status["error"].startswith(f"re-scoring with {name} failed:") and str(gone) in status["error"]
        assert store.stats().queue["size"] == 0  # nothing half-written
        # a failed re-scoring is not retried on every poll: only a new promotion starts another
        assert client.get("/api/label/rescore").json()["finished_at"] == status["finished_at"]


def test_a_page_started_after_a_promotion_keeps_its_model_until_one_is_made_while_it_runs(
    labelled_db, tmp_path
):
    db, frames = _copy(labelled_db, tmp_path)
    gone = tmp_path / "gone" / "postprocessing.yml"
    with LabelStore.open(db) as store:  # a version a command-line training made and promoted earlier
        training = store.start_training(None, "elsewhere", None)
        name = store.record_version(
            "synthetic",
            store.labels_digest(),
            {},
            {},
            str(gone),
            1.0,
            promote_reason="first",
            training_id=training,
        )
    client, store = _client(db, frames)  # a page on no model (or `label --postprocessing` another one)
    with client, store:
        assert client.get("/api/label/train").json()["state"] == "done"
        assert client.get("/api/label/rescore").json()["state"] == "idle"  # nothing swapped behind its back
        assert store.get_meta("rescore") is None
        assert client.post("/api/label/promote", json={"version": name}).status_code == 200
        ended = ("done", "failed")
        status = _until(
            lambda: (r := client.get("/api/label/rescore").json())["state"] in ended and r, 30, "its end"
        )
        assert status["version"] == name and str(gone) in status["error"]  # followed, and says why it failed


@pytest.mark.e2e
def test_cancel_in_the_page_stops_the_training_and_says_so(labelled_db, tmp_path, browser):
    db, frames = _copy(labelled_db, tmp_path)
    marker = tmp_path / "paused"
    env = {**os.environ, ENV: "batch:train", FILE_ENV: str(marker)}
    with running_label_server(frames, db, *_server_args(), env=env) as (url, _):
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector('#train-panel[data-ready="1"]')
        page.click("#train-start")
        _until(marker.exists, what="the training child at its first batch")
        page.wait_for_selector("#train-cancel:visible")
        page.click("#train-cancel")
        page.wait_for_selector('#train-state:text-is("training cancelled")')
        assert "no version recorded" in page.text_content("#train-result")
        assert page.is_enabled("#train-start") and page.is_hidden("#train-cancel")
        with LabelStore.open(db, readonly=True) as store:
            row = store.training()
            assert row["state"] == "cancelled" and store.versions() == []
        assert not process_alive(row["pid"], row["id"])
        assert errors == []
        page.close()
