"""The labels database, import and export, the labelling API and the active-learning queue.

Real SQLite files in a temporary folder, the real server in a subprocess for the kill test;
no mocks. The Chromium tests of the page are in test_label_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from steel_defect.data.annotations import read_annotations, resolve_image_ids
from steel_defect.data.synth import generate_frame
from steel_defect.labels import store as store_module
from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.queue import diverse_order, frame_score
from steel_defect.labels.store import (
    ImportConflict,
    InvalidMasks,
    LabelStore,
    LabelStoreError,
    StaleSave,
    UnknownFrame,
)
from steel_defect.labels.transfer import ExportError, export_folder, import_csv
from steel_defect.webapp.app import Limits
from steel_defect.webapp.labelling import MAX_SAVE_BYTES, LabelService, create_label_app
from tests.conftest import REPO, random_checkpoints

EMPTY = ["", "", "", ""]


def _frames(folder: Path, n: int, seed: int = 0, start: int = 0) -> list[str]:
    """``n`` synthetic 1600x256 JPEG frames in ``folder``, numbered from ``start``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(start, start + n):
        image, _ = generate_frame(rng)
        name = f"frame_{i:03d}.jpg"
        cv2.imwrite(str(folder / name), image)
        names.append(name)
    return names


@pytest.fixture
def db(tmp_path) -> LabelStore:
    store = LabelStore.open(tmp_path / "labels.sqlite")
    store.add_frames([("a.jpg", 1600, 256), ("b.jpg", 1600, 256), ("c.jpg", 1600, 256)])
    yield store
    store.close()


# ---------- the store ----------


def test_a_save_bumps_the_version_and_a_stale_one_is_refused_keeping_the_first(db):
    first = db.save_masks("a.jpg", ["", "", "1 5", ""], version=0, status="pre-labelled")
    assert first.version == 1 and first.masks == ["", "", "1 5", ""]
    with pytest.raises(StaleSave) as err:
        db.save_masks("a.jpg", ["7 3", "", "", ""], version=0, status="confirmed")  # the second tab
    assert err.value.current.version == 1
    kept = db.frame("a.jpg")
    assert kept.masks == ["", "", "1 5", ""] and kept.status == "pre-labelled" and kept.version == 1
    assert [h["version"] for h in db.history("a.jpg")] == [1]


def test_masks_that_do_not_fit_the_frame_are_refused_and_nothing_is_written(db):
    for masks, problem in (
        (["", "", str(1600 * 256) + " 2", ""], "past"),
        (["", "", "5 x", ""], "integer"),
        (["", "", "9 2 3 1", ""], "order"),
        (["", ""], "4"),
    ):
        with pytest.raises(InvalidMasks, match=problem):
            db.save_masks("a.jpg", masks, version=0, status="confirmed")
    assert db.frame("a.jpg").version == 0 and db.history("a.jpg") == []


def test_history_is_append_only_and_restores_an_earlier_state(db):
    db.save_masks("a.jpg", ["", "", "1 5", ""], version=0, status="pre-labelled")
    db.save_masks("a.jpg", ["", "", "1 9", "20 4"], version=1, status="confirmed")
    first = db.history("a.jpg")[0]
    restored = db.restore("a.jpg", first["id"])
    assert (
        restored.version == 3 and restored.masks == ["", "", "1 5", ""] and restored.status == "pre-labelled"
    )
    assert [h["source"] for h in db.history("a.jpg")] == ["page", "page", f"restore:{first['id']}"]
    raw = sqlite3.connect(db.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE history SET masks = '[]'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM history")
    raw.close()


def test_origins_say_whether_the_proposal_was_accepted_edited_or_drawn(db):
    db.set_proposal("a.jpg", ["", "3 4", "10 5", ""], "unet:abc")
    assert db.frame("a.jpg").status == "pre-labelled"
    assert db.frame("a.jpg").masks == ["", "3 4", "10 5", ""]  # the page opens on the proposal
    # class 2 kept (as two abutting runs: the same mask), class 3 changed, class 4 drawn
    saved = db.save_masks("a.jpg", ["", "3 2 5 2", "10 6", "40 2"], version=0, status="confirmed")
    assert saved.origins == ["accepted", "accepted", "edited", "drawn"]
    assert saved.model_version == "unet:abc"
    stats = db.stats()
    assert stats.origins[3]["edited"] == 1 and stats.origins[4]["drawn"] == 1
    assert stats.confirmed_with_class == {1: 0, 2: 1, 3: 1, 4: 1}


def test_the_queue_orders_next_and_skips_what_is_done(db):
    db.set_queue([("c.jpg", 0.9, {}), ("a.jpg", 0.5, {}), ("b.jpg", 0.1, {})], "m:1")
    assert db.next_in_queue() == "c.jpg"
    assert db.next_in_queue("c.jpg") == "a.jpg"
    db.save_masks("a.jpg", EMPTY, version=0, status="confirmed")
    assert db.next_in_queue("c.jpg") == "b.jpg"
    assert db.next_in_queue("b.jpg") == "c.jpg"  # wraps round
    db.save_masks("b.jpg", EMPTY, version=0, status="skipped")
    db.save_masks("c.jpg", EMPTY, version=0, status="confirmed")
    assert db.next_in_queue("c.jpg") is None


def test_a_version_1_database_is_migrated_with_every_label_and_its_references(tmp_path):
    """Schema 2 rebuilds the frames table (a new status in its CHECK): the masks, history and
    queue that refer to it keep their rows, and the new status, versions and trainings work."""
    from steel_defect.labels.store.schema import APPLICATION_ID, MIGRATIONS, statements

    path = tmp_path / "old.sqlite"
    raw = sqlite3.connect(path, isolation_level=None)
    for statement in statements(MIGRATIONS[1]):
        raw.execute(statement)
    raw.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    raw.execute("PRAGMA user_version = 1")
    stamp = "2026-01-01T00:00:00.000+00:00"
    raw.execute("INSERT INTO meta VALUES ('created_at', ?)", (stamp,))
    for name in ("a.jpg", "b.jpg"):
        raw.execute(
            "INSERT INTO frames VALUES (?, 1600, 256, 'unlabelled', 0, NULL, ?, ?)", (name, stamp, stamp)
        )
    raw.execute("UPDATE frames SET status = 'confirmed', version = 1 WHERE name = 'a.jpg'")
    for c in range(1, 5):
        raw.execute(
            "INSERT INTO masks VALUES ('a.jpg', ?, ?, 'drawn', NULL, ?)", (c, "1 5" if c == 3 else "", stamp)
        )
    raw.execute(
        "INSERT INTO history (frame, version, status, masks, origins, model_version, source, saved_at) "
        "VALUES ('a.jpg', 1, 'confirmed', '[]', '[]', NULL, 'page', ?)",
        (stamp,),
    )
    raw.execute("INSERT INTO queue VALUES ('b.jpg', 0, 0.5, '{}', 'm:1', ?, 0)", (stamp,))
    raw.close()

    with LabelStore.open(path) as store:
        assert store.get_meta("created_at") == stamp  # a migration is not a creation
        assert (
            store.frame("a.jpg").masks == ["", "", "1 5", ""] and store.frame("a.jpg").status == "confirmed"
        )
        assert len(store.history("a.jpg")) == 1 and store.next_in_queue() == "b.jpg"
        saved = store.save_masks("b.jpg", EMPTY, version=0, status="defect-free")
        assert saved.status == "defect-free" and store.next_in_queue() is None
        assert dict(store.confirmed()) == {"a.jpg": ["", "", "1 5", ""], "b.jpg": EMPTY}
        assert store.stats().by_status["defect-free"] == 1
        with pytest.raises(InvalidMasks, match=r"b\.jpg: saved as defect-free with a mask drawn"):
            store.save_masks("b.jpg", ["1 5", "", "", ""], version=1, status="defect-free")
        tables = {r[0] for r in store._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"model_versions", "promotions", "trainings"} <= tables
        assert store._read("PRAGMA foreign_key_check") == []
        assert store._read("PRAGMA foreign_keys")[0][0] == 1
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    raw.close()


def test_an_import_records_a_frame_without_defects_as_defect_free(tmp_path):
    store = LabelStore.open(tmp_path / "labels.sqlite")
    counts = store.import_labels(
        [("a.jpg", 1600, 256, EMPTY), ("b.jpg", 1600, 256, ["", "1 5", "", ""])], "t"
    )
    assert counts["saved"] == 2
    assert [store.frame(n).status for n in ("a.jpg", "b.jpg")] == ["defect-free", "confirmed"]
    again = store.import_labels([("a.jpg", 1600, 256, EMPTY)], "t")
    assert again["unchanged"] == 1 and store.frame("a.jpg").version == 1


def test_a_newer_schema_another_programs_database_and_a_corrupt_file_are_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    LabelStore.open(newer).close()
    raw = sqlite3.connect(newer)
    raw.execute(f"PRAGMA user_version = {store_module.SCHEMA_VERSION + 1}")
    raw.close()
    newest = store_module.SCHEMA_VERSION + 1
    with pytest.raises(LabelStoreError, match=rf"{newer}.*schema version {newest}.*upgrade"):
        LabelStore.open(newer)
    other = tmp_path / "other.sqlite"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(LabelStoreError, match=rf"{other} is an SQLite database of another program"):
        LabelStore.open(other)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is no database" * 100)
    with pytest.raises(LabelStoreError, match=rf"{corrupt} is corrupt"):
        LabelStore.open(corrupt)


def test_a_locked_database_fails_with_its_name_and_keeps_its_data(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "labels.sqlite"
    store = LabelStore.open(path)
    store.add_frames([("a.jpg", 1600, 256)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    with pytest.raises(LabelStoreError, match=rf"{path} is locked by another process"):
        store.save_masks("a.jpg", ["", "", "1 5", ""], version=0, status="confirmed")
    other.execute("ROLLBACK")
    other.close()
    assert store.frame("a.jpg").version == 0
    assert store.save_masks("a.jpg", ["", "", "1 5", ""], version=0, status="confirmed").version == 1


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root may write a read-only file, so there is nothing to refuse"
)
def test_a_read_only_database_is_refused_with_its_name(tmp_path):
    path = tmp_path / "labels.sqlite"
    LabelStore.open(path).close()
    path.chmod(0o444)
    with pytest.raises(LabelStoreError, match=rf"{path} is read-only"):
        LabelStore.open(path)
    assert LabelStore.open(path, readonly=True).stats().frames == 0


def test_the_cli_names_a_corrupt_database(tmp_path):
    corrupt = tmp_path / "labels.sqlite"
    corrupt.write_bytes(b"\0garbage" * 512)
    result = subprocess.run(
        [sys.executable, "-m", "steel_defect.cli", "labels", "stats", "--db", str(corrupt)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"steel-defect labels: error: {corrupt} is corrupt" in result.stderr


# ---------- the folder, import and export ----------


def test_the_folder_lists_bad_frames_with_their_reasons(tmp_path):
    folder = tmp_path / "frames"
    _frames(folder, 2)
    cv2.imwrite(str(folder / "short.jpg"), np.zeros((255, 1600, 3), np.uint8))
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    (folder / "notes.txt").write_text("not a frame")
    frames = FrameFolder(folder)
    assert sorted(frames.paths) == ["frame_000.jpg", "frame_001.jpg"]
    reasons = dict(frames.skipped)
    assert "1600x255" in reasons["short.jpg"] and "JPEG without a frame header" in reasons["cut.jpg"]
    assert "notes.txt" not in reasons
    with pytest.raises(UnknownFrame, match=re.escape("no frame '../frames/frame_000.jpg'")):
        frames.read("../frames/frame_000.jpg")


@pytest.mark.realdata
def test_the_real_sample_round_trips_through_the_database(real_sample, tmp_path):
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        counts = import_csv(store, real_sample / "train.csv", real_sample / "train_images")
        assert counts["saved"] == 54 and counts["layout"] == "wide"
        assert store.stats().confirmed_with_class == {1: 11, 2: 4, 3: 24, 4: 5}
        export_folder(store, tmp_path / "export")
    original = read_annotations(real_sample / "train.csv")
    exported = read_annotations(tmp_path / "export" / "train.csv")
    ids = resolve_image_ids(exported, tmp_path / "export" / "train_images")
    assert ids == sorted(original.image_ids)
    for image_id in ids:
        assert exported.rles(image_id) == original.rles(image_id), image_id


def test_import_of_the_long_layout_refuses_conflicts_unless_replace(tmp_path):
    folder = tmp_path / "train_images"
    names = _frames(folder, 3)
    long_csv = tmp_path / "train.csv"
    long_csv.write_text(f"ImageId,ClassId,EncodedPixels\n{names[0]},3,1 5\n{names[1]},1,9 9\n")
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        counts = import_csv(store, long_csv, folder)
        assert counts["frames"] == 3 and counts["saved"] == 3  # the third one is defect-free
        assert store.frame(names[2]).status == "defect-free" and store.frame(names[2]).masks == EMPTY
        state = store.frame(names[0])
        store.save_masks(names[0], ["", "", "1 7", ""], version=state.version, status="confirmed")
        with pytest.raises(ImportConflict, match=f"first: {names[0]}"):
            import_csv(store, long_csv, folder)
        assert store.frame(names[0]).masks[2] == "1 7"  # nothing was written
        counts = import_csv(store, long_csv, folder, replace=True)
        assert counts["replaced"] == 1 and store.frame(names[0]).masks[2] == "1 5"
        assert [h["masks"][2] for h in store.history(names[0])] == ["1 5", "1 7", "1 5"]


def test_export_is_read_as_it_is_and_refuses_a_foreign_folder(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 3)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        store.add_frames([(n, 1600, 256) for n in names])
        store.set_meta("images_dir", str(folder))
        with pytest.raises(ExportError, match="no confirmed frame"):
            export_folder(store, tmp_path / "out")
        store.save_masks(names[1], ["", "", "1 5", ""], version=0, status="confirmed")
        store.save_masks(names[2], EMPTY, version=0, status="confirmed")
        store.save_masks(names[0], ["3 3", "", "", ""], version=0, status="pre-labelled")  # not confirmed
        export_folder(store, tmp_path / "out")
        exported = read_annotations(tmp_path / "out" / "train.csv")
        assert resolve_image_ids(exported, tmp_path / "out" / "train_images") == names[1:]
        assert exported.rles(names[1]) == ["", "", "1 5", ""] and exported.rles(names[2]) == EMPTY
        store.save_masks(names[0], ["3 3", "", "", ""], version=1, status="confirmed")
        export_folder(store, tmp_path / "out")  # an earlier export is replaced whole
        assert len(list((tmp_path / "out" / "train_images").iterdir())) == 3
        foreign = tmp_path / "mine"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("keep me")
        with pytest.raises(ExportError, match="not an earlier export"):
            export_folder(store, foreign)
        assert (foreign / "notes.txt").read_text() == "keep me"


# ---------- the API ----------


@pytest.fixture
def label_client(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 3)
    store = LabelStore.open(tmp_path / "labels.sqlite")
    client = TestClient(create_label_app(LabelService(store, FrameFolder(folder)), Limits()))
    yield client, names, store
    store.close()


def test_the_api_saves_and_answers_a_second_tab_with_409(label_client):
    client, names, store = label_client
    name = names[0]
    opened = client.get(f"/api/label/frames/{name}").json()
    assert opened["version"] == 0 and opened["masks"] == EMPTY and opened["proposal"] is None
    first = client.put(f"/api/label/frames/{name}", json={"version": 0, "masks": ["", "", "1 5", ""]})
    assert first.status_code == 200 and first.json()["version"] == 1
    second = client.put(
        f"/api/label/frames/{name}", json={"version": 0, "masks": ["9 9", "", "", ""], "status": "confirmed"}
    )
    assert second.status_code == 409
    assert "saved elsewhere" in second.json()["detail"] and second.json()["current"]["version"] == 1
    assert store.frame(name).masks == ["", "", "1 5", ""]


def test_the_api_refuses_bad_masks_with_422_and_unknown_names_with_404(label_client):
    client, names, store = label_client
    too_far = client.put(
        f"/api/label/frames/{names[0]}", json={"version": 0, "masks": ["", "", "409600 2", ""]}
    )
    assert too_far.status_code == 422 and "class 3" in too_far.json()["detail"]
    short = client.put(f"/api/label/frames/{names[0]}", json={"version": 0, "masks": ["", ""]})
    assert short.status_code == 422
    assert store.frame(names[0]).version == 0
    for bad in ("nothere.jpg", "..%2Ffra mes%2Fframe_000.jpg", "%2Fetc%2Fpasswd"):
        assert client.get(f"/api/label/frames/{bad}").status_code == 404
        assert client.get(f"/api/label/frames/{bad}/image").status_code == 404
    image = client.get(f"/api/label/frames/{names[0]}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


def test_a_frame_whose_data_is_corrupt_is_answered_422_naming_it(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 2)
    data = (folder / names[1]).read_bytes()
    (folder / names[1]).write_bytes(data[: len(data) // 3])  # the header is whole, the data cut
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        frames = FrameFolder(folder)
        assert names[1] in frames  # the listing reads headers only
        client = TestClient(create_label_app(LabelService(store, frames)))
        answer = client.get(f"/api/label/frames/{names[1]}")
        assert answer.status_code == 422 and names[1] in answer.json()["detail"]
        assert client.get(f"/api/label/frames/{names[0]}").status_code == 200


def test_the_model_pre_labels_a_frame_when_it_opens(tmp_path):
    from steel_defect.inference.pipeline import build_predictor

    checkpoints = random_checkpoints(tmp_path, seg_prior=0.6, exported=True)
    predictor = build_predictor(None, [checkpoints["seg"]], untuned=True)
    folder = tmp_path / "frames"
    names = _frames(folder, 2)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        client = TestClient(create_label_app(LabelService(store, FrameFolder(folder), predictor)))
        opened = client.get(f"/api/label/frames/{names[0]}").json()
        assert opened["status"] == "pre-labelled" and opened["proposal_model"].startswith("unet-")
        expected = predictor.predict([FrameFolder(folder).decode(names[0])])[0].masks
        from steel_defect.data.rle import rle_to_mask

        assert any(opened["masks"]) and opened["masks"] == opened["proposal"]
        for class_index, rle in enumerate(opened["masks"]):
            assert np.array_equal(rle_to_mask(rle), expected[class_index])
        saved = client.put(
            f"/api/label/frames/{names[0]}",
            json={"version": 0, "masks": opened["masks"], "status": "confirmed"},
        ).json()
        assert saved["origins"] == ["accepted"] * 4
        info = client.get("/api/label/info").json()
        assert info["model"]["version"] == opened["proposal_model"]


def test_a_server_killed_mid_save_keeps_every_earlier_save(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 2)
    db = tmp_path / "labels.sqlite"
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "STEEL_DEFECT_TEST_PAUSE_AT": "save:labels@2",
        "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker),
    }
    with running_label_server(folder, db, env=env) as (url, server):
        first = httpx.put(
            f"{url}/api/label/frames/{names[0]}", json={"version": 0, "masks": ["", "", "1 5", ""]}
        )
        assert first.status_code == 200
        # the second save pauses between its writes and its commit; the request never returns
        threading.Thread(
            target=lambda: _quiet_put(f"{url}/api/label/frames/{names[0]}", ["", "", "1 99", "5 5"], 1),
            daemon=True,
        ).start()
        deadline = time.monotonic() + 60
        while not marker.is_file():
            assert server.poll() is None and time.monotonic() < deadline, "the save never reached its pause"
            time.sleep(0.02)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert server.returncode == -signal.SIGKILL
    with LabelStore.open(db) as store:
        state = store.frame(names[0])
        assert state.version == 1 and state.masks == ["", "", "1 5", ""]
        assert [h["version"] for h in store.history(names[0])] == [1]
        assert store.save_masks(names[0], EMPTY, version=1, status="confirmed").version == 2


@contextmanager
def running_label_server(images: Path, db: Path, *extra: str, env: dict | None = None):
    """``steel-defect label`` in a subprocess (its own process group) on a free port; yields
    ``(url, process)`` once it answers, and stops it on exit unless it was killed already."""
    port = _free_port()
    command = [sys.executable, "-m", "steel_defect.cli", "label", "--images", str(images), "--db", str(db)]
    process = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        process.stderr.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {process.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    pytest.fail("the server did not start")


def _quiet_put(url: str, masks: list[str], version: int) -> None:
    try:
        httpx.put(url, json={"version": version, "masks": masks}, timeout=120)
    except httpx.HTTPError:
        pass  # the server was killed under it


# ---------- the queue ----------


def test_a_frame_the_ensemble_disagrees_on_ranks_above_one_it_agrees_on():
    rng = np.random.default_rng(0)
    shape = (4, 4, 64, 400)  # 4 members (2 folds x identity and flip), 4 classes
    agreed = np.full(shape, 0.02, np.float32)
    agreed[:, 2, 10:20, 50:150] = 0.97  # every member sees the same scratch, confidently
    disputed = agreed.copy()
    disputed[:2, 0, 30:34, 200:230] = 0.9  # two members see a small class 1 spot, two do not
    score_agreed, detail_agreed = frame_score(agreed)
    score_disputed, detail_disputed = frame_score(disputed)
    assert score_disputed > score_agreed + 0.3
    assert detail_disputed["1"]["disagreement"] > 0.7 and detail_agreed["1"]["disagreement"] == 0
    # the spot is 120 of 25,600 pixels: a whole-frame mean would dilute its doubt 200-fold
    assert detail_disputed["1"]["entropy"] > 0.5
    # an undecided presence (gate at 0.5) scores above a sure one
    noise = rng.uniform(0, 0.05, shape).astype(np.float32)
    unsure, _ = frame_score(noise, gate=np.array([0.5, 0.01, 0.01, 0.01]))
    sure, _ = frame_score(noise, gate=np.array([0.01, 0.01, 0.01, 0.01]))
    assert unsure > sure


def test_near_duplicate_frames_move_behind_the_rest():
    rng = np.random.default_rng(1)
    thumbs = rng.normal(size=(4, 50)).astype(np.float32)
    thumbs[1] = thumbs[0] + 0.01 * rng.normal(size=50)  # frame 1 is a near copy of frame 0
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    order, duplicates = diverse_order(np.array([0.9, 0.8, 0.5, 0.1]), thumbs)
    assert order == [0, 2, 3, 1] and duplicates == [1]


def test_labels_queue_scores_stores_pre_labels_and_next_follows_it(tmp_path):
    checkpoints = random_checkpoints(tmp_path, exported=True)
    folder = tmp_path / "frames"
    names = _frames(folder, 4, seed=5)
    db = tmp_path / "labels.sqlite"
    with LabelStore.open(db) as store:
        store.add_frames([(n, 1600, 256) for n in names])
        store.save_masks(names[3], EMPTY, version=0, status="confirmed")  # labelled: not queued
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "steel_defect.cli",
            "labels",
            "queue",
            "--db",
            str(db),
            "--images",
            str(folder),
            "--untuned",
            "--checkpoints",
            str(checkpoints["seg"]),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    with LabelStore.open(db) as store:
        ranked = [store.queue_entry(n) for n in names]
        assert ranked[3] is None and sorted(e["rank"] for e in ranked[:3]) == [0, 1, 2]
        first = min(names[:3], key=lambda n: store.queue_entry(n)["rank"])
        assert store.next_in_queue() == first
        assert all(store.frame(n).proposal is not None for n in names[:3])
        assert store.frame(names[3]).proposal is None
        scores = [
            store.queue_entry(n)["score"]
            for n in sorted(names[:3], key=lambda n: store.queue_entry(n)["rank"])
        ]
        assert scores == sorted(scores, reverse=True)
        assert store.stats().queue["size"] == 3


def test_next_skips_frames_the_folder_does_not_hold(label_client):
    client, names, store = label_client
    store.add_frames([("elsewhere.jpg", 1600, 256)])  # listed by an earlier session's folder
    store.set_queue([("elsewhere.jpg", 0.9, {}), (names[1], 0.5, {}), (names[0], 0.1, {})], "m:1")
    assert store.next_in_queue() == "elsewhere.jpg"
    assert client.get("/api/label/next").json() == {"name": names[1]}
    assert client.get("/api/label/next", params={"after": names[0]}).json() == {"name": names[2]}


def test_with_a_token_the_labelling_api_needs_it(tmp_path):
    folder = tmp_path / "frames"
    names = _frames(folder, 1)
    token = "a-long-enough-token-for-tests"
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        client = TestClient(create_label_app(LabelService(store, FrameFolder(folder)), token=token))
        assert client.get("/api/health").status_code == 200
        assert client.get(f"/api/label/frames/{names[0]}").status_code == 401
        refused = client.put(
            f"/api/label/frames/{names[0]}", json={"version": 0, "masks": ["1 5", "", "", ""]}
        )
        assert refused.status_code == 401 and store.frame(names[0]).version == 0
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get(f"/api/label/frames/{names[0]}", headers=headers).status_code == 200
        assert client.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_the_worst_case_save_fits_the_request_limit(tmp_path):
    from steel_defect.data.rle import mask_to_rle

    checkerboard = (np.indices((256, 1600)).sum(axis=0) % 2).astype(np.uint8)
    body = len(json.dumps({"version": 0, "status": "confirmed", "masks": [mask_to_rle(checkerboard)] * 4}))
    assert body < MAX_SAVE_BYTES  # the limit `steel-defect label` serves with


def test_versions_are_recorded_promoted_and_rolled_back_and_one_training_runs_at_a_time(tmp_path):
    from steel_defect.labels.store import TrainingRunning, UnknownVersion

    store = LabelStore.open(tmp_path / "labels.sqlite")
    store.import_labels([("a.jpg", 1600, 256, EMPTY), ("b.jpg", 1600, 256, ["", "", "1 5", ""])], "t")
    assert store.labelled_counts() == {
        "frames": 2,
        "defect_free": 1,
        "per_class": {"1": 0, "2": 0, "3": 1, "4": 0},
    }
    digest = store.labels_digest()
    assert store.promoted() is None
    oof = {"mean_dice": 0.8, "per_class": {}, "empty": 0.75}
    first = store.record_version("synthetic", digest, store.labelled_counts(), oof, "a/post.yml", 3.0)
    second = store.record_version("synthetic", digest, store.labelled_counts(), oof, "b/post.yml", 4.0)
    assert (first, second) == ("v1", "v2")
    store.promote(first, "first version")
    store.promote(second, "better out of fold")
    assert store.promoted()["spec"] == "b/post.yml"
    store.promote(first, "rollback")  # a rollback is one more promotion
    assert store.promoted()["name"] == "v1" and store.promoted()["promotion_reason"] == "rollback"
    assert [v["promoted"] for v in store.versions()] == [True, False]
    assert [p["version"] for p in store.promotions()] == ["v1", "v2", "v1"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._db.execute("DELETE FROM promotions")
    with pytest.raises(UnknownVersion, match=r"no model version 'v9'.*versions: v1, v2"):
        store.promote("v9", "by hand")
    store.save_masks("a.jpg", ["1 5", "", "", ""], version=1, status="confirmed")
    assert store.labels_digest() != digest  # a new label is a new snapshot

    training = store.start_training(pid=123, host="here", log="train.log")
    with pytest.raises(TrainingRunning, match=f"training {training} is running"):
        store.start_training(pid=124, host="here", log=None)
    store.training_progress(training, {"stage": "train", "fold": 0, "fraction": 0.25})
    assert store.training()["progress"]["fraction"] == 0.25
    store.finish_training(training, "done", version="v3")
    store.finish_training(training, "failed", error="late")  # the first ending stays
    assert store.training(training)["state"] == "done" and store.training()["version"] == "v3"
    assert store.start_training(pid=125, host="here", log=None) == training + 1
