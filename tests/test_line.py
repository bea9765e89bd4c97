"""Line mode: the inspection log (a real SQLite file), the watch loop, alarms and the log's API.

The kill-and-restart test runs ``steel-defect watch`` in a subprocess and SIGKILLs it at named
pause points (between batches, inside a log write), never after a sleep. The PostgreSQL runs of
the same checks are in ``tests/test_line_pg.py`` (slow suite); the page in Chromium is in
``tests/test_line_e2e.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from steel_defect.data.rle import mask_to_rle
from steel_defect.data.synth import generate_frame
from steel_defect.line.alarms import AlarmMonitor, parse_rule
from steel_defect.line.log import FrameRecord, InspectionLog, LogError, Search, bulk_fill, metadata
from steel_defect.line.watch import EMPTY_GRACE_S, Watcher
from steel_defect.webapp.dashboard import create_dashboard_app
from tests.conftest import random_checkpoints
from tests.test_labels import _frames as frames_in

T0 = 1_800_000_000.0  # a fixed "now" for the log tests (2027-01-15)


def classes(present: dict[int, int] | None = None, probability: float = 0.9) -> list[dict]:
    """Four class entries; ``present``: {class_id: area} of the classes painted."""
    present = present or {}
    return [
        {
            "class_id": c,
            "probability": probability if c in present else 0.1,
            "area": present.get(c, 0),
            "components": 1 if c in present else 0,
            "boxes": [[10, 20, 30, 40]] if c in present else [],
            "rle": f"1 {present[c]}" if c in present else "",
        }
        for c in (1, 2, 3, 4)
    ]


def record(name: str, at: float, present=None, line="line-1", status="judged", **extra) -> FrameRecord:
    return FrameRecord(
        source="/line/in",
        line=line,
        name=name,
        size=1000,
        mtime_ns=int(at * 1e9),
        path=f"/line/in/{name}",
        status=status,
        seen_at=at - 0.25,
        judged_at=at,
        model="unet:abc" if status == "judged" else None,
        classes=classes(present, **extra) if status == "judged" else [],
        reason=None if status == "judged" else "truncated JPEG",
    )


@pytest.fixture
def inspection(tmp_path) -> InspectionLog:
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    yield log
    log.close()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from steel_defect.inference.pipeline import build_predictor

    checkpoints = random_checkpoints(tmp_path_factory.mktemp("line-model"), seg_prior=0.6, exported=True)
    return build_predictor(None, [checkpoints["seg"]], untuned=True)


# -- the log ----------------------------------------------------------------------------------


def test_the_migrated_schema_is_the_one_the_queries_use(inspection):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert inspection.revision() == "0003"
    with inspection.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    mode = inspection.engine.connect().exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"


def test_a_log_made_at_0001_is_migrated_forward_with_its_minute_counts(tmp_path):
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from steel_defect.line.log import MIGRATIONS, detections, frames

    entries = [record(f"{i}.jpg", T0 + 7 * i, {4: 100 + i} if i % 3 else {1: 5}) for i in range(30)]
    entries.append(record("bad.jpg", T0 + 2, status="corrupt"))
    old = tmp_path / "old.sqlite"
    engine = sa.create_engine(f"sqlite:///{old}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        for frame_id, entry in enumerate(entries, start=1):
            connection.execute(
                frames.insert().values(
                    id=frame_id, source=entry.source, line=entry.line, name=entry.name, size=entry.size,
                    mtime_ns=entry.mtime_ns, path=entry.path, status=entry.status, reason=entry.reason,
                    seen_at=entry.seen_at, judged_at=entry.judged_at, latency_ms=250.0, model=entry.model,
                    defects=entry.defects,
                )
            )  # fmt: skip
            for c in entry.classes:
                connection.execute(
                    detections.insert().values(
                        frame_id=frame_id, class_id=c["class_id"], judged_at=entry.judged_at,
                        probability=c["probability"], area=c["area"], regions=c["components"],
                        boxes="[]", rle=c["rle"],
                    )
                )  # fmt: skip
    engine.dispose()
    migrated = InspectionLog.open(old)
    assert migrated.revision() == "0003"
    rows = migrated.search(Search(limit=100))
    assert len(rows) == 31 and all(r["arrived_at"] == r["seen_at"] for r in rows)  # arrived when seen
    fresh = InspectionLog.open(tmp_path / "fresh.sqlite")
    fresh.record(entries)
    for log in (migrated, fresh):
        assert log.aggregates()["frames"] == {"judged": 30, "corrupt": 1, "missing": 0}
    assert migrated.aggregates() == fresh.aggregates()
    assert migrated.rates(T0, T0 + 600, 120) == fresh.rates(T0, T0 + 600, 120)
    assert fresh.aggregates()["classes"][4]["mean_area"] == pytest.approx(
        np.mean([100 + i for i in range(30) if i % 3])
    )


def test_a_newer_schema_and_another_programs_database_are_refused(tmp_path):
    path = tmp_path / "inspection.sqlite"
    InspectionLog.open(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(LogError, match=r"inspection.sqlite.*newer steel-defect"):
        InspectionLog.open(path)
    other = tmp_path / "labels.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE masks (frame TEXT)")
    with pytest.raises(LogError, match=r"labels.sqlite.*not an inspection log"):
        InspectionLog.open(other)
    with pytest.raises(LogError, match="no inspection log here"):
        InspectionLog.open(tmp_path / "absent.sqlite", create=False)


def test_a_frame_recorded_twice_keeps_one_row(inspection):
    first = inspection.record([record("a.jpg", T0, {3: 100})])
    again = inspection.record([record("a.jpg", T0, {3: 100}), record("b.jpg", T0 + 1)])
    assert len(first) == 1 and len(again) == 1  # only b.jpg is new
    assert inspection.count() == 2
    done = inspection.judged("/line/in", [("a.jpg", 1000, int(T0 * 1e9)), ("a.jpg", 999, int(T0 * 1e9))])
    assert done == {("a.jpg", 1000, int(T0 * 1e9)): "/line/in/a.jpg"}  # a new size is a new frame


def test_search_filters_by_class_area_probability_time_line_and_pages(inspection):
    inspection.record(
        [
            record("a.jpg", T0, {4: 600}),
            record("b.jpg", T0 + 10, {4: 200}),
            record("c.jpg", T0 + 20, {1: 50, 4: 900}, probability=0.55),
            record("d.jpg", T0 + 30, {3: 5000}, line="line-2"),
            record("e.jpg", T0 + 40),
            record("f.jpg", T0 + 50, status="corrupt"),
        ]
    )

    def names(**query):
        return [row["name"] for row in inspection.search(Search(**query))]

    assert names() == ["f.jpg", "e.jpg", "d.jpg", "c.jpg", "b.jpg", "a.jpg"]
    assert names(class_ids=[4]) == ["c.jpg", "b.jpg", "a.jpg"]
    assert names(class_ids=[4], min_area=500) == ["c.jpg", "a.jpg"]
    assert names(class_ids=[4], min_area=500, min_probability=0.8) == ["a.jpg"]
    assert names(class_ids=[1, 3]) == ["d.jpg", "c.jpg"]
    assert names(line="line-2") == ["d.jpg"]
    assert inspection.lines() == ["line-1", "line-2"]  # no watcher: found from the frames alone
    assert names(start=T0 + 10, end=T0 + 30) == ["c.jpg", "b.jpg"]
    assert names(status="corrupt") == ["f.jpg"]
    first = inspection.search(Search(limit=4))
    rest = inspection.search(Search(limit=4, before_id=first[-1]["id"]))
    assert [r["name"] for r in rest] == ["b.jpg", "a.jpg"]
    row = inspection.search(Search(class_ids=[1]))[0]
    assert [c["class_id"] for c in row["classes"]] == [1, 2, 3, 4]
    assert row["classes"][0] == {
        "class_id": 1, "probability": 0.55, "area": 50, "regions": 1,
        "boxes": [[10, 20, 30, 40]], "rle": "1 50",
    }  # fmt: skip
    assert row["defects"] == 0b1001 and row["latency_ms"] == pytest.approx(250.0)
    with pytest.raises(ValueError, match="class ids"):
        inspection.search(Search(class_ids=[5]))


def test_rates_and_aggregates_count_what_was_recorded(inspection):
    inspection.record(
        [
            record(f"{i}.jpg", T0 + i, {4: 100} if i % 4 == 0 else ({2: 10} if i == 5 else None))
            for i in range(90)
        ]
        + [record("bad.jpg", T0 + 3, status="corrupt")]
    )
    buckets = inspection.rates(T0, T0 + 120, bucket_s=60)
    # T0 is a multiple of 60, so the buckets are [T0, T0+60) and [T0+60, T0+120)
    assert [b["start"] for b in buckets] == [T0, T0 + 60]
    assert [b["frames"] for b in buckets] == [60, 30]  # the corrupt frame is not a judged one
    assert [b["classes"][4] for b in buckets] == [15, 8]
    assert [b["classes"][2] for b in buckets] == [1, 0]
    summary = inspection.aggregates(T0, T0 + 120)
    assert summary["frames"] == {"judged": 90, "corrupt": 1, "missing": 0}
    assert summary["classes"][4]["frames"] == 23 and summary["classes"][4]["rate"] == pytest.approx(23 / 90)
    assert summary["classes"][4]["mean_area"] == 100.0
    assert inspection.window_rate("line-1", 4, T0 + 60) == (30, 8)


def test_retention_drops_the_oldest_rows_and_their_detections(inspection):
    inspection.record([record(f"{i}.jpg", T0 + i * 3600, {3: 10}) for i in range(10)])
    assert inspection.prune(keep_rows=6) == 4
    assert inspection.count() == 6
    assert inspection.prune(keep_days=0.1, now=T0 + 9 * 3600) == 3  # rows older than 2.4 h
    left = [r["name"] for r in inspection.search(Search())]
    assert left == ["9.jpg", "8.jpg", "7.jpg"]
    with inspection.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM detections").scalar() == 12


def test_a_locked_log_fails_with_its_name_and_loses_nothing(tmp_path):
    path = tmp_path / "inspection.sqlite"
    log = InspectionLog.open(path, busy_timeout_s=0.2)
    log.record([record("a.jpg", T0)])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(LogError, match=r"inspection.sqlite: cannot write.*locked"):
            log.record([record("b.jpg", T0 + 1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [r["name"] for r in log.search(Search())] == ["a.jpg"]
    log.record([record("b.jpg", T0 + 1)])
    assert log.count() == 2


# -- the loop, in process ---------------------------------------------------------------------


def test_every_frame_is_judged_once_with_the_rles_predict_writes(tmp_path, predictor):
    from steel_defect.inference.run import predict_rows

    folder = tmp_path / "in"
    names = frames_in(folder, 6)
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".frame_9999.jpg").write_bytes(b"a hidden temporary")
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=0.0, batch_size=4, events=False)
    stats = watcher.run(idle_exit_s=0.0)
    assert stats.judged == 6 and stats.batches == 2  # a backlog of 6: a batch of 4, then 2
    rows = {r["name"]: r for r in log.search(Search())}
    assert sorted(rows) == names
    expected, _ = predict_rows(predictor, folder, names, progress=False)
    for name in names:
        assert [c["rle"] for c in rows[name]["classes"]] == expected[name]
        assert rows[name]["model"] == watcher.model and rows[name]["line"] == "in"
    assert any(c["area"] for r in rows.values() for c in r["classes"])  # the check compares masks
    # a second watcher on the same folder and log judges nothing
    assert Watcher(folder, log, predictor, settle_s=0.0, events=False).run(idle_exit_s=0.0).judged == 0
    assert log.count() == 6


def test_corrupt_wrong_size_and_deleted_frames_are_logged_once_with_reasons(tmp_path, predictor):
    folder = tmp_path / "in"
    frames_in(folder, 2)
    whole = (folder / "frame_000.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    cv2.imwrite(str(folder / "small.jpg"), np.zeros((128, 800, 3), np.uint8))
    clock = FakeClock()
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=1.0, events=False, clock=clock)
    watcher.step()  # everything is seen and settling
    (folder / "frame_001.jpg").unlink()  # deleted before it was judged
    clock.advance(2.0)
    for _ in range(4):
        watcher.step()
    assert "cut.jpg" not in {r["name"] for r in log.search(Search())}  # may still be being written
    clock.advance(EMPTY_GRACE_S)
    watcher.step()
    rows = {r["name"]: r for r in log.search(Search())}
    assert {n: r["status"] for n, r in rows.items()} == {
        "frame_000.jpg": "judged", "frame_001.jpg": "missing", "cut.jpg": "corrupt", "small.jpg": "corrupt"
    }  # fmt: skip
    assert "truncated JPEG" in rows["cut.jpg"]["reason"]
    assert "800x128" in rows["small.jpg"]["reason"] and "1600x256" in rows["small.jpg"]["reason"]
    assert rows["frame_001.jpg"]["reason"] == "deleted before it was judged"
    assert log.count() == 4  # not retried


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_frame_grown_in_steps_is_judged_once_and_only_when_complete(tmp_path, predictor):
    folder = tmp_path / "in"
    source = tmp_path / "whole"
    frames_in(source, 1)
    whole = (source / "frame_000.jpg").read_bytes()
    folder.mkdir()
    target = folder / "frame_000.jpg"
    clock = FakeClock()
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=1.0, events=False, clock=clock)
    steps = [len(whole) // 4, len(whole) // 2, 3 * len(whole) // 4, len(whole)]
    for size in steps:
        with open(target, "ab") as handle:
            handle.write(whole[target.stat().st_size if target.exists() else 0 : size])
        os.utime(target, ns=(int(clock() * 1e9), int(clock() * 1e9)))  # a writer's mtime
        watcher.step()
        assert log.count() == 0, f"judged at {size} of {len(whole)} bytes"
        clock.advance(0.6)  # less than the settle time between two writes
    clock.advance(0.6)
    watcher.step()
    rows = log.search(Search())
    assert [(r["name"], r["status"], r["size"]) for r in rows] == [("frame_000.jpg", "judged", len(whole))]
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(whole, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    expected = [mask_to_rle(m) for m in predictor.predict([image])[0].masks]
    assert [c["rle"] for c in rows[0]["classes"]] == expected
    clock.advance(5)
    watcher.step()
    assert log.count() == 1


def test_a_frame_renamed_into_the_folder_is_judged_without_waiting_to_settle(tmp_path, predictor):
    folder = tmp_path / "in"
    folder.mkdir()
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=60.0, poll_s=0.2, events=True)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while watcher.state != "running":
            assert time.monotonic() < deadline, "the watcher never started"
            time.sleep(0.02)
        frames_in(tmp_path / "staging", 1)
        partial = folder / ".frame_000.jpg.part"
        partial.write_bytes((tmp_path / "staging" / "frame_000.jpg").read_bytes())
        os.rename(partial, folder / "frame_000.jpg")
        while log.count() == 0:
            assert time.monotonic() < deadline, "a renamed frame waited for the 60 s settle time"
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.wake.set()
        thread.join(timeout=20)
    assert [r["status"] for r in log.search(Search())] == ["judged"]


def test_a_rename_whose_event_lands_while_the_folder_is_listed_is_not_lost(tmp_path, predictor):
    """The race bench/line_rate.py found: a frame renamed in just after the scan listed the folder,
    its event taken by that same scan. Before the fix the scan spent the event on a listing that
    did not hold the frame yet, and the frame then waited the whole settle time (60 s there; 1 s
    by default) like one still being written."""
    folder = tmp_path / "in"
    folder.mkdir()
    frames_in(tmp_path / "staging", 1)
    log = InspectionLog.open(tmp_path / "inspection.sqlite")

    class RenameDuringTheListing(Watcher):
        raced = False

        def _listing(self):
            found = super()._listing()
            if self._observer is not None and not self.raced:  # the second scan: events are on
                self.raced = True
                partial = folder / ".frame_000.jpg.part"
                partial.write_bytes((tmp_path / "staging" / "frame_000.jpg").read_bytes())
                os.rename(partial, folder / "frame_000.jpg")
                deadline = time.monotonic() + 10
                while "frame_000.jpg" not in self._renamed:  # watchdog's real inotify event
                    assert time.monotonic() < deadline, "no rename event from watchdog"
                    time.sleep(0.01)
            return found

    watcher = RenameDuringTheListing(folder, log, predictor, settle_s=3600.0, events=True)
    try:
        watcher.step()  # starts the events
        watcher.step()  # the frame arrives while this scan lists the folder
        assert watcher.raced and log.count() == 0
        watcher.step()
        assert [(r["name"], r["status"]) for r in log.search(Search())] == [("frame_000.jpg", "judged")]
    finally:
        watcher._stop_events()
        watcher.flush()
        log.close()


def test_a_frame_renamed_in_from_another_folder_is_judged_without_waiting_to_settle(tmp_path, predictor):
    """A camera that writes each frame in a folder of its own, then renames it into the watched
    one. inotify tells that rename from a write, but watchdog reports a rename from a folder it
    does not watch as a new file unless asked for its full events: the frame waited to settle."""
    folder = tmp_path / "in"
    folder.mkdir()
    frames_in(tmp_path / "staging", 1)
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=3600.0, events=True)
    try:
        watcher.step()  # starts the events
        watcher.wake.clear()
        os.rename(tmp_path / "staging" / "frame_000.jpg", folder / "frame_000.jpg")
        assert watcher.wake.wait(10), "no event from watchdog"
        watcher.step()
        assert [(r["name"], r["status"]) for r in log.search(Search())] == [("frame_000.jpg", "judged")]
    finally:
        watcher._stop_events()
        watcher.flush()
        log.close()


def test_judged_frames_move_to_the_archive_and_a_vanished_folder_is_reported(tmp_path, predictor):
    folder, archive = tmp_path / "in", tmp_path / "archive"
    names = frames_in(folder, 3)
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    watcher = Watcher(folder, log, predictor, archive=archive, settle_s=0.0, events=False)
    watcher.run(idle_exit_s=0.0)
    assert sorted(p.name for p in archive.iterdir()) == names and not list(folder.iterdir())
    assert {r["path"] for r in log.search(Search())} == {str(archive / n) for n in names}
    folder.rmdir()
    watcher.step()
    assert watcher.state == "source missing" and "cannot list it" in watcher.message
    assert log.watchers()[0]["state"] == "source missing"
    folder.mkdir()
    frames_in(folder, 1, start=7)
    watcher.run(idle_exit_s=0.0)
    assert watcher.state == "stopped" and log.count() == 4


def test_a_log_that_cannot_be_written_stops_the_loop_and_leaves_the_frames(tmp_path, predictor):
    folder, archive = tmp_path / "in", tmp_path / "archive"
    names = frames_in(folder, 2)
    path = tmp_path / "inspection.sqlite"
    log = InspectionLog.open(path, busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    watcher = Watcher(folder, log, predictor, archive=archive, settle_s=0.0, events=False)
    try:
        with pytest.raises(LogError, match=r"inspection.sqlite: cannot write.*locked"):
            watcher.run(idle_exit_s=0.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sorted(p.name for p in folder.iterdir()) == names and not list(archive.iterdir())
    assert log.count() == 0
    again = Watcher(folder, log, predictor, archive=archive, settle_s=0.0, events=False)
    assert again.run(idle_exit_s=0.0).judged == 2 and log.count() == 2


def test_sigterm_stops_watch_after_its_batch_with_the_watcher_marked_stopped(tmp_path):
    folder, db = tmp_path / "in", tmp_path / "inspection.sqlite"
    folder.mkdir()
    checkpoint = random_checkpoints(tmp_path / "model", exported=True)["seg"]
    process = _watch(folder, db, checkpoint, dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while not (db.is_file() and InspectionLog.open(db).watchers()):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[
                -2000:
            ]
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    finally:
        _kill(process)
    assert process.returncode == 0, errors.decode()[-2000:]
    assert "SIGTERM: stopping after the current batch" in errors.decode()
    assert InspectionLog.open(db).watchers()[0]["state"] == "stopped"


def test_an_alarm_is_raised_posted_and_cleared(tmp_path):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    monitor = AlarmMonitor(
        {4: 0.35}, window_s=60, min_frames=10, url=f"http://127.0.0.1:{server.server_port}/"
    )
    log.record([record(f"{i}.jpg", T0 + i, {4: 100} if i < 3 else None) for i in range(10)])
    assert monitor.check(log, "line-1", T0 + 10) == []  # 3 of 10: under 35%
    log.record([record("10.jpg", T0 + 10, {4: 100})])
    raised = monitor.check(log, "line-1", T0 + 11)  # 4 of 11
    assert [(a["class_id"], a["frames"]) for a in raised] == [(4, 11)]
    assert monitor.check(log, "line-1", T0 + 11) == []  # raised once, not per batch
    for thread in monitor.posts:
        thread.join(timeout=10)
    server.shutdown()
    assert received == [{"event": "alarm", **raised[0]}]
    assert log.open_alarms("line-1")[0]["notified"] == "204"
    log.record([record(f"q{i}.jpg", T0 + 12 + i) for i in range(20)])
    monitor.check(log, "line-1", T0 + 40)  # 4 of 31 in the window
    assert log.open_alarms() == [] and log.recent_alarms()[0]["cleared_at"] == T0 + 40
    with pytest.raises(ValueError, match="CLASS:RATE"):
        parse_rule("5:0.2")


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def log_client(inspection, tmp_path):
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.full((256, 1600, 3), 90, np.uint8))
    entries = [record("a.jpg", T0, {4: 600}), record("b.jpg", T0 + 10, {3: 20}), record("c.jpg", T0 + 20)]
    entries[0].path = str(image)
    inspection.record(entries)
    return TestClient(create_dashboard_app(inspection))


def test_the_api_searches_aggregates_and_exports(log_client):
    found = log_client.get("/api/log/frames", params={"classes": "3,4"}).json()
    assert [f["name"] for f in found["frames"]] == ["b.jpg", "a.jpg"] and found["next_before"] is None
    page = log_client.get("/api/log/frames", params={"limit": 2}).json()
    assert [f["name"] for f in page["frames"]] == ["c.jpg", "b.jpg"]
    older = log_client.get("/api/log/frames", params={"limit": 2, "before": page["next_before"]}).json()
    assert [f["name"] for f in older["frames"]] == ["a.jpg"]
    one = log_client.get(f"/api/log/frames/{found['frames'][1]['id']}").json()
    assert one["classes"][3]["rle"] == "1 600"
    assert log_client.get(f"/api/log/frames/{one['id']}/image").headers["content-type"] == "image/jpeg"
    gone = log_client.get(f"/api/log/frames/{found['frames'][0]['id']}/image")
    assert gone.status_code == 404 and "no longer at /line/in/b.jpg" in gone.json()["detail"]
    assert log_client.get("/api/log/frames/999").status_code == 404
    thumb = log_client.get(f"/api/log/frames/{one['id']}/thumbnail")
    small = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
    assert thumb.headers["content-type"] == "image/jpeg" and small.shape == (64, 400, 3)
    # the class-4 mask "1 600" is the first 600 pixels down column 0..2: the left edge is tinted,
    # the rest stays the frame's grey (90)
    assert abs(int(small[5:60, 40:].mean()) - 90) <= 2 and small[5:60, 0].std(axis=1).max() > 5
    assert log_client.get(f"/api/log/frames/{found['frames'][0]['id']}/thumbnail").status_code == 404
    bad = log_client.get("/api/log/frames", params={"classes": "7"})
    assert bad.status_code == 422 and "classes" in bad.json()["detail"]
    rates = log_client.get("/api/log/rates", params={"start": T0, "end": T0 + 60}).json()
    assert rates["buckets"][0]["frames"] == 3 and rates["buckets"][0]["classes"]["4"] == 1
    aggregates = log_client.get("/api/log/aggregates").json()
    assert aggregates["classes"]["3"]["frames"] == 1 and aggregates["frames"]["judged"] == 3
    submission = log_client.get("/api/log/export", params={"format": "submission", "classes": "4"})
    rows = list(csv.reader(io.StringIO(submission.text)))
    assert rows == [["ImageId_ClassId", "EncodedPixels"], ["a.jpg_1", ""], ["a.jpg_2", ""], ["a.jpg_3", ""],
                    ["a.jpg_4", "1 600"]]  # fmt: skip
    summary = list(csv.DictReader(io.StringIO(log_client.get("/api/log/export").text)))
    assert [r["name"] for r in summary] == ["c.jpg", "b.jpg", "a.jpg"] and summary[2]["area_4"] == "600"
    assert "/api/log/frames" in log_client.get("/openapi.json").json()["paths"]


def test_serve_with_a_log_shows_the_dashboard_beside_the_viewer(inspection, predictor):
    from steel_defect.webapp.app import create_app
    from steel_defect.webapp.service import InferenceService

    inspection.record([record("a.jpg", T0, {2: 30})])
    client = TestClient(create_app(InferenceService(predictor), inspection_log=inspection))
    assert "dashboard.js" in client.get("/line").text and "predict" in client.get("/").text.lower()
    assert [f["name"] for f in client.get("/api/log/frames", params={"classes": "2"}).json()["frames"]] == [
        "a.jpg"
    ]
    plain = TestClient(create_app(InferenceService(predictor)))
    assert plain.get("/api/log/frames").status_code == 404 and plain.get("/line").status_code == 404


def test_with_a_token_the_log_api_needs_it(inspection):
    client = TestClient(create_dashboard_app(inspection, token="a-long-enough-token"))
    assert client.get("/api/log/frames").status_code == 401
    headers = {"Authorization": "Bearer a-long-enough-token"}
    assert client.get("/api/log/frames", headers=headers).status_code == 200


# -- the command, killed and restarted --------------------------------------------------------


def _watch(folder: Path, db: Path, checkpoint: Path, env: dict, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "steel_defect.cli", "watch", str(folder), "--db", str(db)]
    command += ["--checkpoints", str(checkpoint), "--untuned", "--no-page", "--settle", "0.3", *extra]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _kill(process: subprocess.Popen) -> None:
    """Make sure a test's ``watch`` is gone, whatever the test did."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _kill_at(point: str, folder, db, checkpoint, tmp_path, writer=None) -> None:
    marker = tmp_path / f"paused-{point.replace(':', '-')}"
    env = {**os.environ, "STEEL_DEFECT_TEST_PAUSE_AT": point, "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker)}
    process = _watch(folder, db, checkpoint, env)
    deadline = time.monotonic() + 180
    try:
        while not marker.is_file():
            if process.poll() is not None:
                pytest.fail(f"watch exited before {point}: {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, f"watch never reached {point}"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow  # 200 frames, three processes: about 1.5 min on two idle cores
def test_watch_killed_between_frames_and_mid_write_judges_every_frame_once(tmp_path, predictor):
    from steel_defect.inference.run import predict_rows

    folder, db = tmp_path / "in", tmp_path / "inspection.sqlite"
    folder.mkdir()
    checkpoint = random_checkpoints(tmp_path / "model", seg_prior=0.6, exported=True)["seg"]
    total = 200
    writer = threading.Thread(target=_write_slowly, args=(folder, total), daemon=True)
    writer.start()  # the camera writes while the first watch runs
    _kill_at("batch:watch@3", folder, db, checkpoint, tmp_path)  # between batches: all committed
    after_first = InspectionLog.open(db).count()
    assert after_first >= 3
    _kill_at("write:log@5", folder, db, checkpoint, tmp_path)  # a frame row written, not committed
    writer.join(timeout=300)
    process = _watch(folder, db, checkpoint, dict(os.environ), "--exit-when-idle", "1")
    try:
        _, errors = process.communicate(timeout=600)
    finally:
        _kill(process)
    assert process.returncode == 0, errors.decode()[-2000:]
    names = sorted(p.name for p in folder.glob("*.jpg"))
    assert len(names) == total
    with sqlite3.connect(db) as connection:
        counts = dict(connection.execute("SELECT name, count(*) FROM frames GROUP BY name").fetchall())
        statuses = {s for (s,) in connection.execute("SELECT DISTINCT status FROM frames")}
    assert counts == dict.fromkeys(names, 1) and statuses == {"judged"}
    rows = {r["name"]: r for r in InspectionLog.open(db).iter_search(Search())}
    expected, _ = predict_rows(predictor, folder, names, progress=False)
    assert all([c["rle"] for c in rows[n]["classes"]] == expected[n] for n in names)


def _write_slowly(folder: Path, total: int) -> None:
    """The camera: frames written as a camera does (a hidden partial file renamed into place),
    a few a second."""
    rng = np.random.default_rng(5)
    for i in range(total):
        image, _ = generate_frame(rng)
        _, data = cv2.imencode(".jpg", image)
        partial = folder / f".frame_{i:04d}.jpg.part"
        partial.write_bytes(data.tobytes())
        os.rename(partial, folder / f"frame_{i:04d}.jpg")
        time.sleep(0.01)


def test_the_search_of_a_bulk_log_uses_the_indexes(tmp_path):
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    bulk_fill(log, 5000, T0, rate_hz=10)
    assert log.count() == 5000 and log.aggregates()["frames"]["judged"] == 5000
    with log.engine.connect() as connection:
        (present,) = connection.exec_driver_sql(
            "SELECT count(*) FROM detections WHERE class_id = 4 AND area > 0"
        )
    assert log.aggregates()["classes"][4]["frames"] == present[0]
    with log.engine.connect() as connection:
        plan = " ".join(
            row[-1]
            for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT frame_id FROM detections WHERE class_id = 4 AND area > 0 "
                "AND area >= 500 ORDER BY judged_at DESC, frame_id DESC LIMIT 50"
            )
        )
    assert "detections_present" in plan and "TEMP B-TREE" not in plan  # walked in order, no sort
    rows = log.search(Search(class_ids=[4], min_area=500, limit=50))
    assert len(rows) == 50 and all(r["classes"][3]["area"] >= 500 for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    both = log.search(Search(class_ids=[1, 4], min_area=500, limit=50))
    expected = [
        r["id"]
        for r in log.search(Search(limit=5000))
        if any(c["class_id"] in (1, 4) and c["area"] >= 500 for c in r["classes"])
    ][:50]
    assert [r["id"] for r in both] == expected  # the two classes' pages merged, newest first
