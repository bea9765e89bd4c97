"""Faults injected into line mode, in one place: the next fault found in review gets its test here.

Each test plays one fault at a point the test controls (a reused file name, a pruned log, a
stepped clock, a stalled writer, a corrupt log, a slow export, a reader racing the loop) on
the real things: a real SQLite log in a temporary folder, real files, the dashboard app. The
invariants are the same throughout: no frame lost, none judged twice, no figure that lies.
The labels database's faults are in ``tests/test_faults_labels.py``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import wait

import pytest
from fastapi.testclient import TestClient

from steel_defect.data.headers import jpeg_complete
from steel_defect.data.images import TruncatedImage, decode_image
from steel_defect.line.log import InspectionLog, LogError, Search, bulk_fill
from steel_defect.line.watch import Watcher
from steel_defect.webapp.app import Limits
from steel_defect.webapp.dashboard import create_dashboard_app
from tests.conftest import random_checkpoints
from tests.test_labels import _frames as frames_in
from tests.test_line import T0, FakeClock


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from steel_defect.inference.pipeline import build_predictor

    checkpoints = random_checkpoints(tmp_path_factory.mktemp("line-model"), seg_prior=0.6, exported=True)
    return build_predictor(None, [checkpoints["seg"]], untuned=True)


@pytest.fixture
def inspection(tmp_path) -> InspectionLog:
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    yield log
    log.close()


def _rows(log: InspectionLog) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in log.iter_search(Search()):
        rows.setdefault(row["name"], []).append(row)
    return rows


# -- the folder -------------------------------------------------------------------------------


def test_a_reused_file_name_keeps_both_frames_in_the_archive(tmp_path, inspection, predictor):
    folder, archive = tmp_path / "in", tmp_path / "archive"
    frames_in(tmp_path / "camera", 2)
    first, second = ((tmp_path / "camera" / f"frame_00{i}.jpg").read_bytes() for i in (0, 1))
    folder.mkdir()
    watcher = Watcher(folder, inspection, predictor, archive=archive, settle_s=0.0, events=False)
    for data in (first, second):  # the camera writes x.jpg, then x.jpg again once it has moved
        (folder / "x.jpg").write_bytes(data)
        watcher.run(idle_exit_s=0.0)
    rows = _rows(inspection)["x.jpg"]
    assert len(rows) == 2 and len({r["path"] for r in rows}) == 2
    assert sorted(open(r["path"], "rb").read() for r in rows) == sorted([first, second])
    assert len(list(archive.iterdir())) == 2 and not list(folder.iterdir())


def test_a_kill_between_the_archive_link_and_the_unlink_keeps_one_frame(tmp_path, inspection, predictor):
    """The move is a link then an unlink: a restart after a kill between them finishes it."""
    folder, archive = tmp_path / "in", tmp_path / "archive"
    (name,) = frames_in(folder, 1)
    data = (folder / name).read_bytes()
    watcher = Watcher(folder, inspection, predictor, archive=archive, settle_s=0.0, events=False)
    watcher.step()  # judged, recorded and archived
    os.link(archive / name, folder / name)  # as if killed after the link, before the unlink
    again = Watcher(folder, inspection, predictor, archive=archive, settle_s=0.0, events=False)
    assert again.run(idle_exit_s=0.0).judged == 0
    assert not list(folder.iterdir()) and [p.read_bytes() for p in archive.iterdir()] == [data]
    assert len(_rows(inspection)[name]) == 1


def _overwritten_before_its_move(tmp_path, inspection, predictor):
    """``in/x.jpg`` judged, then replaced by the camera's next frame (renamed in over it) just
    before its archive move; one watcher run. The watcher, the two frames' bytes and the folder."""
    folder, archive = tmp_path / "in", tmp_path / "archive"
    frames_in(tmp_path / "camera", 2)
    first, second = ((tmp_path / "camera" / f"frame_00{i}.jpg").read_bytes() for i in (0, 1))
    assert len(first) != len(second)  # the rows tell the two apart by size
    folder.mkdir()
    (folder / "x.jpg").write_bytes(first)

    class ReplacedBeforeItsMove(Watcher):
        replaced = False

        def _archive(self, name, *args, **kwargs):
            if not self.replaced:  # the camera renames its next frame in, over the judged one
                self.replaced = True
                (folder / ".x.jpg.part").write_bytes(second)
                os.rename(folder / ".x.jpg.part", folder / "x.jpg")
            super()._archive(name, *args, **kwargs)

    watcher = ReplacedBeforeItsMove(
        folder, inspection, predictor, archive=archive, settle_s=0.0, events=False
    )
    watcher.run(idle_exit_s=0.0)
    assert watcher.replaced
    return watcher, first, second, folder


def test_a_frame_put_under_a_judged_frames_name_before_its_move_stays_and_is_judged(
    tmp_path, inspection, predictor
):
    """A camera that reuses a name may put the next frame there while the last one's batch is
    being written. The move took whatever lay under the name: the new frame went to the archive
    under the old frame's row and was never judged."""
    _, first, second, folder = _overwritten_before_its_move(tmp_path, inspection, predictor)
    rows = _rows(inspection)["x.jpg"]
    assert sorted((r["status"], r["size"]) for r in rows) == sorted(
        [("judged", len(first)), ("judged", len(second))]
    )
    (newest,) = [r for r in rows if r["size"] == len(second)]
    assert open(newest["path"], "rb").read() == second and not list(folder.iterdir())


def test_a_frame_overwritten_before_its_move_does_not_show_the_next_frame(tmp_path, inspection, predictor):
    """The row of a frame the camera overwrote before its move named ``archive/x.jpg``, where
    the next frame of that name was then archived: the old row showed the new frame's image."""
    watcher, first, second, folder = _overwritten_before_its_move(tmp_path, inspection, predictor)
    archive = watcher.archive
    rows = {r["size"]: r for r in _rows(inspection)["x.jpg"]}
    lost, newest = rows[len(first)], rows[len(second)]
    assert open(newest["path"], "rb").read() == second and newest["reason"] is None
    assert lost["path"] != newest["path"] and not os.path.exists(lost["path"])
    assert "overwritten" in lost["reason"], lost["reason"]
    # a restart keeps it so: the name's next frame does not take the lost frame's path either
    (folder / "x.jpg").write_bytes(first + b"\0")
    Watcher(folder, inspection, predictor, archive=archive, settle_s=0.0, events=False).run(idle_exit_s=0.0)
    paths = [r["path"] for r in _rows(inspection)["x.jpg"]]
    assert len(paths) == 3 and len(set(paths)) == 3, paths


def test_frames_pruned_from_the_log_are_not_judged_again_after_a_restart(tmp_path, inspection, predictor):
    folder = tmp_path / "in"
    names = frames_in(folder, 3)
    watcher = Watcher(folder, inspection, predictor, settle_s=0.0, events=False, keep_rows=1)
    assert watcher.run(idle_exit_s=0.0).judged == 3
    assert inspection.count() == 1  # retention: two rows went, their files stayed
    restarted = Watcher(folder, inspection, predictor, settle_s=0.0, events=False, keep_rows=1)
    assert restarted.run(idle_exit_s=0.0).judged == 0 and inspection.count() == 1
    # a pruned frame that leaves the folder is forgotten; put back, it is a new frame again
    oldest = folder / names[0]
    data, stat = oldest.read_bytes(), oldest.stat()
    identity = (names[0], stat.st_size, stat.st_mtime_ns)
    assert identity in inspection.judged(restarted.source, [identity])
    oldest.unlink()
    restarted.step()
    assert inspection.judged(restarted.source, [identity]) == {}
    oldest.write_bytes(data)
    assert restarted.run(idle_exit_s=0.0).judged == 1


def test_pruned_identities_of_files_removed_while_no_watcher_ran_are_forgotten(
    tmp_path, inspection, predictor
):
    folder = tmp_path / "in"
    names = frames_in(folder, 3)
    Watcher(folder, inspection, predictor, settle_s=0.0, events=False, keep_rows=1).run(idle_exit_s=0.0)
    stats = {n: (folder / n).stat() for n in names}
    identities = [(n, s.st_size, s.st_mtime_ns) for n, s in stats.items()]
    for name in names:
        (folder / name).unlink()
    Watcher(folder, inspection, predictor, settle_s=0.0, events=False).step()
    assert inspection.judged(str(folder.resolve()), identities).keys() == {identities[2]}  # the kept row


def test_a_camera_writing_in_place_that_pauses_gets_one_row_when_it_is_done(tmp_path, inspection, predictor):
    folder = tmp_path / "in"
    frames_in(tmp_path / "camera", 1)
    whole = (tmp_path / "camera" / "frame_000.jpg").read_bytes()
    folder.mkdir()
    target = folder / "frame_000.jpg"
    clock = FakeClock()
    watcher = Watcher(folder, inspection, predictor, settle_s=1.0, events=False, clock=clock)
    target.write_bytes(whole[: len(whole) // 2])
    watcher.step()
    clock.advance(5.0)  # the writer pauses five times the settle time
    for _ in range(3):
        watcher.step()
    assert inspection.count() == 0
    with open(target, "ab") as handle:
        handle.write(whole[len(whole) // 2 :])
    watcher.step()
    clock.advance(1.5)
    watcher.step()
    assert [(r["status"], r["size"]) for r in inspection.search(Search())] == [("judged", len(whole))]


def test_the_end_of_a_jpeg_is_found_after_its_scan_wherever_it_lies(tmp_path):
    (name,) = frames_in(tmp_path, 1)
    whole = (tmp_path / name).read_bytes()
    trailer = whole + bytes(8192)  # a camera's own data after the image, past the old 4 KB window
    assert jpeg_complete(trailer) and decode_image(trailer).shape == (256, 1600, 3)
    # an EXIF thumbnail's end marker in APP1 is not the image's: cut after it, the file is short
    thumbnail = b"\xff\xd8\xff\xdb" + bytes(10) + b"\xff\xd9"
    app1 = b"\xff\xe1" + (2 + 6 + len(thumbnail)).to_bytes(2, "big") + b"Exif\x00\x00" + thumbnail
    with_exif = whole[:2] + app1 + whole[2:]
    assert jpeg_complete(with_exif) and not jpeg_complete(with_exif[: len(app1) + 600])
    with pytest.raises(TruncatedImage, match="truncated JPEG"):
        decode_image(whole[: len(whole) - 100])


def test_a_failed_write_stops_the_loop_at_its_next_pass_not_at_its_next_batch(tmp_path, predictor):
    """With the writer thread, the error of a batch's write was raised only when a later batch was
    handed over: on a line that then went quiet the loop ran on as "running", and the batch's
    frames, counted as done, got no row until a restart."""
    folder = tmp_path / "in"
    folder.mkdir()
    path = tmp_path / "inspection.sqlite"
    log = InspectionLog.open(path, busy_timeout_s=0.2)
    clock = FakeClock()  # frozen: after the first pass no heartbeat is due, so only the batch writes
    watcher = Watcher(folder, log, predictor, settle_s=0.0, events=False, overlap_writes=True, clock=clock)
    watcher.step()
    (name,) = frames_in(folder, 1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert watcher.step() == 1  # handed to the writer, which finds the log locked
        wait([watcher._writing])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(LogError, match=r"inspection.sqlite: cannot write.*locked"):
        watcher.step()  # nothing new arrived: the failed write itself stops the loop
    assert log.count() == 0 and (folder / name).exists()
    again = Watcher(folder, log, predictor, settle_s=0.0, events=False)
    assert again.run(idle_exit_s=0.0).judged == 1 and log.count() == 1
    log.close()


# -- clocks -----------------------------------------------------------------------------------


def test_a_wall_clock_stepped_back_stalls_neither_settling_nor_heartbeats_nor_retention(
    tmp_path, inspection, predictor
):
    folder = tmp_path / "in"
    frames_in(folder, 2)
    wall, tick = FakeClock(), FakeClock(1000.0)
    watcher = Watcher(
        folder, inspection, predictor, settle_s=1.0, events=False, keep_rows=1, clock=wall, monotonic=tick
    )
    watcher.step()  # seen, settling; first heartbeat and retention pass
    wall.advance(-3600.0)  # NTP steps the clock back an hour
    tick.advance(1.5)
    watcher.step()
    watcher.step()
    assert watcher.stats.judged == 2
    beats = inspection.watchers()[0]["judged"]
    assert beats == 2  # the heartbeat kept coming (it counts what was judged)
    tick.advance(61.0)  # the next retention pass is due by the monotonic clock
    watcher.step()
    assert inspection.count() == 1


def test_latency_runs_from_the_frames_arrival_not_from_when_the_watcher_noticed_it(
    tmp_path, inspection, predictor
):
    folder = tmp_path / "in"
    folder.mkdir()
    frames_in(tmp_path / "camera", 1)
    os.rename(tmp_path / "camera" / "frame_000.jpg", folder / "frame_000.jpg")  # renamed in
    arrived = os.stat(folder / "frame_000.jpg").st_ctime
    clock = FakeClock(arrived + 4.0)  # the watcher notices it 4 s later (a busy loop, a slow share)
    watcher = Watcher(folder, inspection, predictor, settle_s=0.0, events=False, clock=clock)
    watcher.step()
    (row,) = inspection.search(Search())
    assert row["arrived_at"] == pytest.approx(arrived, abs=1e-3)
    assert row["seen_at"] == pytest.approx(arrived + 4.0)  # the noticed time is kept
    assert row["latency_ms"] == pytest.approx(4000.0, abs=5.0)


# -- what the watcher says --------------------------------------------------------------------


def test_watch_logs_one_info_line_per_verdict(tmp_path, inspection, predictor, caplog):
    folder = tmp_path / "in"
    names = frames_in(folder, 2)
    (folder / "cut.jpg").write_bytes((folder / names[0]).read_bytes()[:500])
    clock = FakeClock()
    watcher = Watcher(folder, inspection, predictor, settle_s=0.0, events=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="steel_defect.line.watch"):
        watcher.step()
        clock.advance(60.0)
        watcher.step()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "after it arrived" in r.message
    ]
    assert sorted(line.split(":")[0] for line in lines) == sorted([*names, "cut.jpg"])
    cut = next(line for line in lines if line.startswith("cut.jpg"))
    assert "corrupt: cut.jpg: truncated JPEG" in cut
    judged = [line for line in lines if not line.startswith("cut.jpg")]
    assert all(("clean" in line) != ("class " in line) for line in judged)


def test_the_status_read_from_another_thread_never_meets_the_loop_half_way(tmp_path, inspection, predictor):
    """The page's status endpoint reads the backlog while the loop changes ``pending``."""
    folder = tmp_path / "in"
    folder.mkdir()
    watcher = Watcher(folder, inspection, predictor, settle_s=3600.0, events=False)
    errors, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                watcher.backlog()
            except Exception as err:  # any error is the fault
                errors.append(repr(err))

    reader = threading.Thread(target=read, daemon=True)
    # The reader never blocks, so at the default 5 ms switch interval each of the loop's file
    # calls waited for the reader's whole slice (a GIL convoy: 6 to 7 minutes for the test); a
    # short interval interleaves the two threads more often, which is what the test is after.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    reader.start()
    try:
        for round_ in range(150):  # frames come and go while the loop scans
            for i in range(30):
                path = folder / f"f{(round_ + i) % 60:03d}.jpg"
                if path.exists():
                    path.unlink()
                else:
                    path.write_bytes(b"\xff\xd8\xff")
            watcher.step()
    finally:
        stop.set()
        reader.join(timeout=10)
        sys.setswitchinterval(interval)
    assert errors == []
    assert watcher.backlog() == 0 and watcher.lag_s() is None  # nothing settles within an hour


def test_the_page_shows_the_backlog_and_the_lag_of_one_pass(tmp_path, inspection, predictor):
    """The status endpoint read the backlog and the lag in two calls: a pass of the loop
    published between them gave a pair no pass saw (a backlog with no lag, or the reverse)."""
    folder = tmp_path / "in"
    frames_in(folder, 2)

    class PublishesBetweenReads(Watcher):
        armed = False

        @property
        def published(self):
            snapshot = self._published
            if self.armed:  # the loop's next pass lands right after the page's first read
                self.armed = False
                self.step()
            return snapshot

        @published.setter
        def published(self, value):
            self._published = value

    watcher = PublishesBetweenReads(folder, inspection, predictor, settle_s=0.0, batch_size=1, events=False)
    watcher.step()  # one frame judged, the other waiting
    before = watcher._published
    assert before["backlog"] == 1 and before["lag_s"] is not None
    watcher.armed = True
    client = TestClient(create_dashboard_app(inspection, watcher=watcher))
    [row] = client.get("/api/log/status").json()["watchers"]
    assert watcher._published == {"backlog": 0, "lag_s": None}  # the pass ran during the request
    assert (row["backlog"], row["lag_s"]) == (before["backlog"], before["lag_s"])


# -- following the promoted version -----------------------------------------------------------


def test_a_version_promoted_away_while_it_was_building_never_judges(tmp_path, predictor):
    """A rollback (v1 promoted again) while v2 was still being built: v2 took over once built all
    the same, and judged until the next look at the promotions had v1 built again."""
    from steel_defect.labels.store import LabelStore
    from steel_defect.line.follow import PromotedModel

    labels = tmp_path / "labels.sqlite"
    common = {"recipe": "synthetic", "labels_digest": "0" * 64, "counts": {}, "out_of_fold": {}}
    with LabelStore.open(labels) as store:
        for name in ("v1", "v2"):
            store.record_version(spec=str(tmp_path / f"{name}.yml"), seconds=1.0, **common)
        store.promote("v1", "the first")
    release, built = threading.Event(), []

    def build(spec):
        built.append(spec.stem)
        if spec.stem == "v2":
            assert release.wait(60)  # v2's build holds until the test has rolled back
        return predictor

    follow = PromotedModel(labels, build, check_s=0.0)  # a look at every batch
    try:
        assert follow.load().version == "v1"
        with LabelStore.open(labels) as store:
            store.promote("v2", "a new model")
        assert follow.poll() is None  # v2 is being built beside the loop
        with LabelStore.open(labels) as store:
            store.promote("v1", "rollback: v2 misses class 3")
        release.set()
        assert follow.settle(timeout=60)
        assert [follow.poll() for _ in range(3)] == [None, None, None]  # no batch for v2
        assert follow.current.version == "v1" and follow.problem is None
        assert built == ["v1", "v2"]  # v1 judged throughout: not built again
    finally:
        release.set()
        follow.close()


# -- the log and the dashboard ----------------------------------------------------------------


def test_a_corrupt_log_fails_at_once_naming_the_file(tmp_path):
    path = tmp_path / "inspection.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    started = time.monotonic()
    with pytest.raises(LogError, match=r"inspection.sqlite: cannot open .*not a database"):
        InspectionLog.open(path, busy_timeout_s=120.0)
    assert time.monotonic() - started < 60.0  # it did not wait out the busy timeout


def test_retention_prunes_cleared_alarms_older_than_the_oldest_frame_kept(inspection):
    from tests.test_line import record

    inspection.record([record(f"{i}.jpg", T0 + 60 * i) for i in range(5)])
    fields = {"line": "line-1", "class_id": 4, "threshold": 0.1, "window_s": 60.0, "rate": 0.5, "frames": 10}
    old = inspection.raise_alarm(**fields, raised_at=T0)
    inspection.clear_alarm(old, T0 + 30)
    recent = inspection.raise_alarm(**fields, raised_at=T0 + 200)
    inspection.clear_alarm(recent, T0 + 230)
    still_open = inspection.raise_alarm(**fields, raised_at=T0 + 10)
    inspection.prune(keep_rows=2, now=T0 + 300)  # frames at T0+180 and T0+240 stay
    assert sorted(a["id"] for a in inspection.recent_alarms()) == sorted([recent, still_open])


def test_a_csv_export_longer_than_the_request_timeout_is_sent_whole(tmp_path, inspection):
    rows = 10_000  # about 4 s to export on a quiet 2-core machine, its chunks 0.15 s apart at most
    bulk_fill(inspection, rows, start=T0, rate_hz=10.0)
    client = TestClient(create_dashboard_app(inspection, limits=Limits(timeout_s=1.0)))
    started = time.monotonic()
    answer = client.get("/api/log/export", params={"start": T0, "end": T0 + rows})
    took = time.monotonic() - started
    assert answer.status_code == 200
    lines = list(csv.reader(io.StringIO(answer.text)))
    assert took > 1.0, f"the export took {took:.2f} s: too quick to test the timeout"
    assert len(lines) == rows + 1  # the header and every frame, not what fitted in 1 s
