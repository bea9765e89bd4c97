"""Watch a folder a line camera writes into: judge every complete frame once and log its verdict.

    steel-defect watch /line/in --db inspection.sqlite --postprocessing work/postprocessing.yml

The loop (:class:`Watcher`) is idempotent by construction, so it can be killed anywhere:

1. **Scan.** The folder's listing is the source of truth. A frame is keyed on its identity (name,
   size, mtime): one the log already holds is done; any other is pending.
2. **Complete?** A pending frame is complete when its size and mtime have not changed for
   ``settle_s`` seconds, or at once when it was renamed into the folder under its final name
   (the usual camera pattern: write ``x.jpg.part``, rename to ``x.jpg``). Names starting with a
   dot and suffixes that are not images are never frames. Nothing is decoded before that, and
   the bytes read are checked against a second ``stat``: a file still growing goes back to wait.
3. **Judge.** Complete frames are judged in batches of up to ``batch_size``: one at a time when the
   line is idle (lowest latency), full batches when a backlog builds (highest throughput).
4. **Record.** The batch's verdicts, one row per frame, are written in one transaction
   (:meth:`InspectionLog.record`); corrupt frames get a row with the reason (never retried), a
   frame gone before it was judged a ``missing`` row.
5. **Archive** (optional): judged frames move to ``archive`` after the commit. A kill between
   the commit and the move leaves a done frame in the folder, which the next start moves.

After a kill the next start scans again: what has a row is done, the rest is judged. No frame is
judged twice and none is skipped (``tests/test_line.py`` kills it between frames and inside a
write).

Why polling as the source of truth, with watchdog only as a wake-up: inotify does not see files
that another machine writes into a network share (NFS, SMB), which is where line cameras often
write, and its queue can overflow under a burst. A listing every ``poll_s`` seconds works on
every filesystem; where inotify works, watchdog's events wake the loop at once and tell a rename
from a write, so latency does not wait for the next poll. ``--poll`` turns the events off.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.images import IMAGE_SUFFIXES, ImageReadError, TruncatedImage, decode_image
from steel_defect.inference.verdict import class_report, model_version
from steel_defect.line.alarms import AlarmMonitor
from steel_defect.line.follow import PromotedModel
from steel_defect.line.log import FrameRecord, InspectionLog
from steel_defect.pause import pause_point

log = logging.getLogger(__name__)

EMPTY_GRACE_S = 30.0  # a file that stays empty, or cut short, this long is logged as corrupt
MAX_BACKOFF_S = 30.0  # the longest wait between retries of a folder that has gone
HEARTBEAT_S = 1.0  # how often the watcher's row (state, backlog) is refreshed


@dataclass
class Pending:
    """A frame seen but not judged: its last identity and since when it has kept it.

    ``seen_at`` and ``arrived_at`` are wall-clock times for the log; ``stable_since`` is on the
    monotonic clock, so that a wall clock stepped back (NTP, a daylight-saving bug) cannot hold
    a frame back from settling."""

    size: int
    mtime_ns: int
    seen_at: float
    stable_since: float
    arrived_at: float
    renamed: bool = False
    cut_short: bool = False  # decoded once as a truncated JPEG: waits as an empty file does

    def wait_s(self, settle_s: float) -> float:
        """How long it must keep its identity before it is judged."""
        if self.size == 0 or self.cut_short:
            return EMPTY_GRACE_S
        return 0.0 if self.renamed else settle_s


@dataclass
class WatchStats:
    judged: int = 0
    corrupt: int = 0
    missing: int = 0
    batches: int = 0
    archived: int = 0


class Watcher:
    """The loop over one folder. :meth:`step` does one scan-judge-record pass; :meth:`run` loops."""

    def __init__(
        self,
        folder: str | Path,
        inspection_log: InspectionLog,
        predictor,
        *,
        line: str | None = None,
        archive: str | Path | None = None,
        settle_s: float = 1.0,
        poll_s: float = 0.5,
        batch_size: int = 4,
        events: bool = True,
        keep_days: float | None = None,
        keep_rows: int | None = None,
        alarms: AlarmMonitor | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        decode_workers: int = 2,
        overlap_writes: bool = False,
        follow: PromotedModel | None = None,
    ):
        """``clock`` gives the wall-clock times written to the log; ``monotonic`` measures the
        intervals (settling, heartbeats, retention). A test's own ``clock`` drives both unless
        it passes ``monotonic`` as well.

        Under a backlog the stages overlap: a batch's frames are read and decoded by
        ``decode_workers`` threads (the decoders release the GIL), and with ``overlap_writes``
        its log transaction, archive moves and alarm check run in a writer thread while the next
        batch is judged (``steel-defect watch`` turns it on; a test that calls :meth:`step` and
        reads the log at once leaves it off, or calls :meth:`flush`). One batch at most is being
        written at a time, and its frames count as done from the moment they are handed over; a
        write that fails stops the loop at its next pass with its error, and the frames it held
        are judged again at the next start.

        ``follow``: the labels database's promoted version, loaded (``watch --labels-db``); the
        predictor is then its own (pass None), and a newly promoted version takes over between
        two batches once it is built (:mod:`steel_defect.line.follow`)."""
        self.folder = Path(folder).resolve()
        self.source = str(self.folder)
        self.follow = follow
        if follow is not None:
            if predictor is not None or follow.current is None:
                raise ValueError("with follow, pass predictor=None and load() the promoted version first")
            predictor = follow.current.predictor
        self.log, self.predictor = inspection_log, predictor
        self.line = line or self.folder.name
        self.archive = Path(archive).resolve() if archive else None
        self.settle_s, self.poll_s, self.batch_size = settle_s, poll_s, max(1, batch_size)
        self.keep_days, self.keep_rows = keep_days, keep_rows
        self.alarms = alarms
        self.clock = clock
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.model = follow.current.model if follow is not None else model_version(predictor)
        self.pending: dict[str, Pending] = {}
        self.done: set[tuple[str, int, int]] = set()  # identities in the folder that have a row
        self.stats = WatchStats()
        self.state, self.message = "starting", None
        self.backoff = 0.0
        self.wake = threading.Event()
        self._renamed: set[str] = set()
        self._lock = threading.Lock()
        self._observer = None
        self._events = events
        self._last_beat: float | None = None
        self._last_prune: float | None = None
        self._forgot_absent = False
        self._tombstones = 0  # identities of this folder that retention left in the log
        self._decoders = ThreadPoolExecutor(decode_workers, "decode") if decode_workers > 1 else None
        self._writer = ThreadPoolExecutor(1, "log-writer") if overlap_writes else None
        self._writing: Future | None = None
        # Published by the loop's thread for the status page, which must never walk ``pending``
        # while the loop changes it.
        self.published = {"backlog": 0, "lag_s": None}
        self.started_at = clock()
        if self.archive is not None:
            if self.archive == self.folder:
                raise ValueError(
                    f"--archive {self.archive} is the watched folder itself; give another folder"
                )
            self.archive.mkdir(parents=True, exist_ok=True)

    # -- the folder -----------------------------------------------------------------------

    def _listing(self) -> dict[str, tuple[int, int, float]]:
        """{name: (size, mtime_ns, arrived)} of the image files in the folder; OSError when it is
        gone. ``arrived``: the later of the last write (mtime) and the rename that brought the
        file in (ctime changes on a rename, mtime does not)."""
        found = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed between the listing and the stat
                found[name] = (stat.st_size, stat.st_mtime_ns, max(stat.st_mtime, stat.st_ctime))
        return found

    def scan(self) -> list[FrameRecord]:
        """Update the pending frames from a listing; the ``missing`` records of pending frames that
        vanished. Raises OSError when the folder cannot be listed."""
        now, tick = self.clock(), self.monotonic()
        # The renames first, then the listing: every rename taken here happened before the listing
        # began, so the listing holds its file. The other order loses a frame renamed in while the
        # folder is listed: its event is taken, its file is not listed yet, and it waits to settle.
        with self._lock:
            renamed, self._renamed = self._renamed, set()
        listing = self._listing()
        new = set()
        for name, (size, mtime_ns, _) in listing.items():
            known = self.pending.get(name)
            if (name, size, mtime_ns) not in self.done and (
                known is None or (known.size, known.mtime_ns) != (size, mtime_ns)
            ):
                new.add((name, size, mtime_ns))
        if new:
            logged = self.log.judged(self.source, new)
            for identity, path in logged.items():
                self.done.add(identity)
                self.pending.pop(identity[0], None)
                self._archive(identity[0], path, identity[1:])  # a kill after the commit left it here
            for name, size, mtime_ns in new - logged.keys():
                old = self.pending.get(name)
                # A file's time ahead of ours is another machine's clock (a network share): the
                # arrival is then when we saw it.
                arrived = min(listing[name][2], now)
                self.pending[name] = Pending(size, mtime_ns, old.seen_at if old else now, tick, arrived)
        for name in renamed & self.pending.keys():
            self.pending[name].renamed = True
        present = {(name, size, mtime_ns) for name, (size, mtime_ns, _) in listing.items()}
        if not self._forgot_absent:  # pruned identities of files removed while no watcher ran
            self._forgot_absent = True
            self._tombstones = self.log.forget_absent(self.source, present)
        left = self.done - present  # frames that left the folder (archived, deleted)
        if left:
            self.done -= left
            if self._tombstones or self.keep_days or self.keep_rows:  # else there is none to forget
                self.log.forget(self.source, left)
        missing = []
        for name in [n for n in self.pending if n not in listing]:
            gone = self.pending.pop(name)
            missing.append(self._record(name, gone, "missing", "deleted before it was judged"))
        return missing

    def complete(self) -> list[str]:
        """Pending frames ready to judge, the longest waiting first."""
        tick = self.monotonic()
        ready = [
            n for n, item in self.pending.items() if tick - item.stable_since >= item.wait_s(self.settle_s)
        ]
        return sorted(ready, key=lambda n: (self.pending[n].seen_at, n))

    # -- judging --------------------------------------------------------------------------

    def _record(
        self, name: str, item: Pending, status: str, reason: str | None = None, classes=()
    ) -> FrameRecord:
        path = self._archive_target(name, item.mtime_ns) if status != "missing" else self.folder / name
        return FrameRecord(
            source=self.source,
            line=self.line,
            name=name,
            size=item.size,
            mtime_ns=item.mtime_ns,
            path=str(path),
            status=status,
            seen_at=item.seen_at,
            judged_at=self.clock(),
            arrived_at=item.arrived_at,
            reason=reason,
            model=self.model if status == "judged" else None,
            classes=list(classes),
        )

    def _read(self, name: str, item: Pending) -> bytes | None:
        """The frame's bytes when they are the whole identity seen; None when it changed (it goes
        back to settle). FileNotFoundError when it has gone."""
        path = self.folder / name
        with open(path, "rb") as handle:
            data = handle.read()
            stat = os.fstat(handle.fileno())
        if (stat.st_size, stat.st_mtime_ns) != (item.size, item.mtime_ns) or len(data) != stat.st_size:
            item.size, item.mtime_ns = stat.st_size, stat.st_mtime_ns
            item.stable_since, item.renamed = self.monotonic(), False
            item.arrived_at = min(max(stat.st_mtime, stat.st_ctime), self.clock())
            return None
        return data

    def _load(self, name: str, item: Pending) -> FrameRecord | np.ndarray | None:
        """The frame decoded, or its corrupt or missing record, or None while it may still be
        being written (it goes back to wait). Runs in the decode threads."""
        try:
            data = self._read(name, item)
        except FileNotFoundError:
            return self._record(name, item, "missing", "deleted before it was judged")
        except OSError as err:
            return self._record(name, item, "corrupt", f"cannot read ({err.strerror or err})")
        if data is None:
            return None  # still being written
        try:
            return decode_image(data, channels=3, name=name, expected_shape=IMAGE_SHAPE)
        except TruncatedImage as err:
            # A camera writing in place may pause longer than the settle time: a file cut
            # short waits as an empty one does before it is called corrupt.
            if not item.cut_short and self.monotonic() - item.stable_since < EMPTY_GRACE_S:
                item.cut_short = True
                return None
            return self._record(name, item, "corrupt", str(err))
        except ImageReadError as err:
            return self._record(name, item, "corrupt", str(err))

    def judge(self, names: list[str]) -> list[FrameRecord]:
        """Records for ``names``: judged, corrupt (with the reason) or missing."""
        items = [(name, self.pending[name]) for name in names]
        if self._decoders is not None and len(items) > 1:
            loaded = list(self._decoders.map(lambda pair: self._load(*pair), items))
        else:
            loaded = [self._load(name, item) for name, item in items]
        records = [r for r in loaded if isinstance(r, FrameRecord)]
        good = [(name, item, image) for (name, item), image in zip(items, loaded, strict=True)]
        good = [(name, item, image) for name, item, image in good if isinstance(image, np.ndarray)]
        if good:
            predictions = self.predictor.predict([image for _, _, image in good])
            for (name, item, _), prediction in zip(good, predictions, strict=True):
                classes = class_report(prediction.masks, prediction.probs, prediction.cls_probs)
                records.append(self._record(name, item, "judged", classes=classes))
        return records

    def _archive_target(self, name: str, mtime_ns: int) -> Path:
        """Where a judged frame will lie: the archive under its own name, or, when a camera reused
        the name and an older frame holds it there, under the name and its mtime."""
        if self.archive is None:
            return self.folder / name
        target = self.archive / name
        if os.path.lexists(target):
            target = self.archive / _stamped(name, mtime_ns)
        return target

    def _archive(self, name: str, target: str | Path | None, identity: tuple[int, int]) -> None:
        """Move a judged frame, of ``identity`` (size, mtime_ns), to ``target`` in the archive, the
        path its row gives (chosen afresh when its row has none there). A file already in the
        archive is never replaced: the move is a hard link then an unlink (a copy, then a link,
        across filesystems), so a kill at any point leaves the frame whole under one name or the
        other, or both."""
        if self.archive is None:
            return
        source = self.folder / name
        try:
            stat = source.stat()
        except FileNotFoundError:
            return
        if (stat.st_size, stat.st_mtime_ns) != identity:
            # A camera that reuses the name put its next frame there while this one's batch was
            # written: that frame is judged in its turn, not moved away under this one's row. This
            # one's image is gone; its row gives up the archive path it was to have, which the
            # name's next frame takes, for one no frame will (the name and its mtime).
            self.log.repath(
                self.source,
                (name, *identity),
                str(self.archive / _stamped(name, identity[1])),
                "overwritten by the next frame of its name before it was archived",
            )
            return
        target = Path(target) if target is not None else None
        if target is None or target.parent != self.archive:
            target = self._archive_target(name, stat.st_mtime_ns)
        try:
            _move_without_replacing(source, target)
            self.stats.archived += 1
        except FileNotFoundError:
            pass  # moved already, or deleted
        except FileExistsError:
            log.error("%s: not archived, %s holds another frame already", source, target)
        except OSError as err:
            log.error("%s: cannot move it to the archive %s (%s)", source, self.archive, err.strerror or err)

    def step(self) -> int:
        """One pass: scan, judge a batch, record it, archive it, check alarms; frames recorded."""
        if self._writing is not None and self._writing.done():
            # A failed write stops the loop now, not when the next batch comes: on a quiet line
            # that may be hours, with its frames counted as done and no row for them.
            self.flush()
        try:
            missing = self.scan()
        except OSError as err:
            self._source_gone(err)
            return 0
        if self.state != "running":
            self._start_events()
            log.info("%s: watching (%s)", self.folder, "events and polling" if self._observer else "polling")
        self.state, self.message, self.backoff = "running", None, 0.0
        self._follow_promotions()
        batch = self.complete()[: self.batch_size]
        records = missing + (self.judge(batch) if batch else [])
        if records:
            self.flush()  # the previous batch's write: its error stops the loop here
            for record in records:
                self.pending.pop(record.name, None)
                if record.status != "missing":
                    self.done.add((record.name, record.size, record.mtime_ns))
                setattr(self.stats, record.status, getattr(self.stats, record.status) + 1)
            self.stats.batches += 1
            if self._writer is not None:
                self._writing = self._writer.submit(self._commit, records)
            else:
                self._commit(records)
        self._maintain()
        return len(records)

    def _follow_promotions(self) -> None:
        """Judge the next batch with a newly promoted version, once it is built. Between two
        batches, on the loop's thread: the rows of the batch being written name the model that
        judged them already."""
        loaded = self.follow.poll() if self.follow is not None else None
        if loaded is not None:
            self.predictor, self.model = loaded.predictor, loaded.model
            self._last_beat = None  # the page names the new version at once

    def _commit(self, records: list[FrameRecord]) -> None:
        """Write a batch's rows in one transaction, then move its frames and check the alarms."""
        self.log.record(records)
        pause_point("batch:watch")  # test-only: a kill between batches, everything committed
        for record in records:
            if record.status != "missing":
                self._archive(record.name, record.path, (record.size, record.mtime_ns))
            _log_verdict(record)
        if self.alarms is not None:
            self.alarms.check(self.log, self.line, self.clock())

    def flush(self) -> None:
        """Wait for the batch being written; raise its error (a LogError) if it failed."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def backlog(self) -> int:
        """Complete frames waiting to be judged, as the loop last counted them (any thread)."""
        return self.published["backlog"]

    def lag_s(self) -> float | None:
        """How long the oldest complete frame not yet judged has waited since it arrived, as the
        loop last saw it; None when none waits (any thread)."""
        return self.published["lag_s"]

    def _publish(self) -> None:
        ready = self.complete()
        oldest = min((self.pending[n].arrived_at for n in ready), default=None)
        lag = None if oldest is None else round(max(0.0, self.clock() - oldest), 3)
        self.published = {"backlog": len(ready), "lag_s": lag}  # one assignment: read whole

    def _maintain(self, force: bool = False) -> None:
        tick = self.monotonic()
        self._publish()
        if force or self._last_beat is None or tick - self._last_beat >= HEARTBEAT_S:
            self._last_beat = tick
            self.log.heartbeat(
                self.source,
                line=self.line,
                host=socket.gethostname(),
                pid=os.getpid(),
                model=self.model,
                started_at=self.started_at,
                state=self.state,
                message=self.message,
                backlog=self.backlog(),
                lag_s=self.lag_s(),
                judged=self.stats.judged,
            )
        if (self.keep_days or self.keep_rows) and (
            self._last_prune is None or tick - self._last_prune >= 60.0
        ):
            self._last_prune = tick
            pruned = self.log.prune(self.keep_days, self.keep_rows, self.clock())
            if pruned:
                log.info("retention: %d old frames left the log", pruned)

    def _source_gone(self, err: OSError) -> None:
        self.backoff = min(MAX_BACKOFF_S, max(self.poll_s, 2 * self.backoff))
        message = (
            f"{self.folder}: cannot list it ({err.strerror or err}); retrying every {self.backoff:.0f} s"
        )
        if self.state != "source missing":
            log.error("%s", message)
        self.state, self.message = "source missing", message
        self._stop_events()
        self._maintain(force=True)

    # -- events ---------------------------------------------------------------------------

    def _start_events(self) -> None:
        if not self._events or self._observer is not None:
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: polling every %.1f s", self.poll_s)
            self._events = False
            return
        watcher = self

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type == "moved" and Path(event.dest_path).parent == watcher.folder:
                    with watcher._lock:
                        watcher._renamed.add(Path(event.dest_path).name)
                watcher.wake.set()

        # inotify tells a frame renamed in from a folder it does not watch (a camera's own
        # staging folder) from a write, but watchdog says so only in its full events; otherwise
        # it is a new file, which waits to settle.
        full = {"generate_full_events": True} if Observer.__name__ == "InotifyObserver" else {}
        try:
            observer = Observer(**full)
            observer.schedule(Wake(), str(self.folder), recursive=False)
            observer.start()
        except OSError as err:  # inotify watch limit, a filesystem without it
            log.warning("%s: no file events (%s): polling every %.1f s", self.folder, err, self.poll_s)
            self._events = False
            return
        self._observer = observer

    def _stop_events(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _wait(self) -> None:
        """Sleep until the next poll, an event, or the next pending frame's settle time."""
        if self.state == "source missing":
            timeout = self.backoff
        else:
            timeout = self.poll_s
            tick = self.monotonic()
            for item in self.pending.values():
                timeout = min(timeout, max(0.01, item.stable_since + item.wait_s(self.settle_s) - tick))
        self.wake.wait(timeout)
        self.wake.clear()

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> WatchStats:
        """Loop until ``stop`` is set (or, with ``idle_exit_s``, until nothing is pending and
        nothing arrived for that long: for tests and batch catch-up). A log that cannot be
        written raises :class:`~steel_defect.line.log.LogError` out of here; the frames not yet
        recorded stay in the folder for the next start."""
        stop = stop or threading.Event()
        idle_since = self.monotonic()
        try:
            while not stop.is_set():
                if self.step() or self.pending:
                    idle_since = self.monotonic()
                elif idle_exit_s is not None and self.monotonic() - idle_since >= idle_exit_s:
                    break
                if not self.complete():
                    self._wait()
        finally:
            try:
                self.flush()
            finally:
                self._stop_events()
                self.state = "stopped"
            try:
                self._maintain(force=True)
            except Exception as err:  # the log may be what failed; the error that stopped us wins
                log.debug("last heartbeat not written: %s", err)
        return self.stats


def _log_verdict(record: FrameRecord) -> None:
    """One INFO line per frame: what the line's operator reads in the watcher's output."""
    if record.status == "judged":
        present = [f"class {c['class_id']} ({c['area']} px)" for c in record.classes if c["area"] > 0]
        verdict = ", ".join(present) or "clean"
    else:
        verdict = f"{record.status}: {record.reason}"
    log.info("%s: %s, %.0f ms after it arrived", record.name, verdict, record.latency_ms)


def _stamped(name: str, mtime_ns: int) -> str:
    """``name`` with its mtime before the extension: ``x~1700000000000000000.jpg``."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}~{mtime_ns}.{suffix}" if dot else f"{name}~{mtime_ns}"


def _move_without_replacing(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; FileExistsError when another file holds ``target``."""
    try:
        _place(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        partial = target.with_name(f".{target.name}.partial")
        shutil.copy2(source, partial)
        try:
            _place(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    source.unlink(missing_ok=True)


def _place(source: Path, target: Path) -> None:
    """Give ``source``'s file the name ``target`` too, never replacing another file there."""
    try:
        os.link(source, target)
    except FileExistsError:
        if not os.path.samefile(source, target):  # else: a kill between the link and the unlink
            raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):  # a filesystem without hard links: checked, then renamed
            raise FileExistsError(errno.EEXIST, "another file is there", str(target)) from None
        os.replace(source, target)
