"""The labels database: every query of it, behind functions named after what they answer.

One SQLite file (WAL mode) holds, per frame, its four masks in the Severstal RLE, its status
(``unlabelled``, ``pre-labelled``, ``confirmed``, ``skipped``), a version counter, the model's
proposal and where each saved mask came from (``accepted`` as the model proposed it, ``edited``
from a proposal, ``drawn`` from nothing, or ``imported``), plus an append-only history of saves
and the active-learning queue:

    store = LabelStore.open("labels.sqlite")
    store.add_frames([("a.jpg", 1600, 256)])
    state = store.frame("a.jpg")                         # masks, status, version, proposal
    store.save_masks("a.jpg", ["", "", "1 5", ""], version=state.version, status="confirmed")
    store.next_in_queue(after="a.jpg")                   # the frame to label next

Why the standard library's ``sqlite3`` and not SQLAlchemy: the labels live in one local file
written by one server at a time, every query is here, and each save needs an explicit
``BEGIN IMMEDIATE`` transaction (the write lock taken before the version is read, so two tabs
cannot both pass the version check). SQLAlchemy would add a dependency and hide exactly that.

A save is one transaction: masks, status, version and the history row land together or not
at all, so a server killed mid-save (``STEEL_DEFECT_TEST_PAUSE_AT=save:labels``) keeps every
earlier save. The schema version lives in the file (``PRAGMA user_version``); an older one is
migrated forward at open, a newer one refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.data.rle import RLEError, parse_rle
from steel_defect.errors import UserError
from steel_defect.pause import pause_point

STATUSES = ("unlabelled", "pre-labelled", "confirmed", "skipped")
DONE = ("confirmed", "skipped")  # statuses the queue passes over
ORIGINS = ("accepted", "edited", "drawn", "imported")
APPLICATION_ID = 0x53544C44  # "STLD": tells our file from any other SQLite database
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000  # wait this long for another process's write before "locked"

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE frames (
    name TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'unlabelled'
        CHECK (status IN ('unlabelled', 'pre-labelled', 'confirmed', 'skipped')),
    version INTEGER NOT NULL DEFAULT 0,
    model_version TEXT,
    added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX frames_by_status ON frames (status, name);
CREATE TABLE masks (
    frame TEXT NOT NULL REFERENCES frames (name),
    class_id INTEGER NOT NULL CHECK (class_id BETWEEN 1 AND 4),
    rle TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('accepted', 'edited', 'drawn', 'imported')),
    model_version TEXT,
    saved_at TEXT NOT NULL,
    PRIMARY KEY (frame, class_id)
);
CREATE TABLE proposals (
    frame TEXT NOT NULL REFERENCES frames (name),
    class_id INTEGER NOT NULL CHECK (class_id BETWEEN 1 AND 4),
    rle TEXT NOT NULL,
    model_version TEXT NOT NULL,
    made_at TEXT NOT NULL,
    PRIMARY KEY (frame, class_id)
);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    frame TEXT NOT NULL REFERENCES frames (name),
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    masks TEXT NOT NULL,
    origins TEXT NOT NULL,
    model_version TEXT,
    source TEXT NOT NULL,
    saved_at TEXT NOT NULL
);
CREATE INDEX history_by_frame ON history (frame, id);
CREATE TRIGGER history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'the history of saves is append-only'); END;
CREATE TRIGGER history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'the history of saves is append-only'); END;
CREATE TABLE queue (
    frame TEXT PRIMARY KEY REFERENCES frames (name),
    rank INTEGER NOT NULL UNIQUE,
    score REAL NOT NULL,
    detail TEXT NOT NULL,
    model_version TEXT NOT NULL,
    scored_at TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0  -- the frame is confirmed or skipped: kept in step by every save
);
CREATE INDEX queue_to_do ON queue (done, rank);
"""
# schema version reached -> the statements that reach it from the one before
MIGRATIONS = {1: _SCHEMA_V1}


class LabelStoreError(RuntimeError):
    """The database cannot be used: locked, read-only, corrupt, not ours, or too new. Names the file."""


class DatabaseLocked(LabelStoreError):
    """Another process held the write lock for the whole busy timeout: worth trying again (503)."""


class UnknownFrame(UserError):
    """A frame name the database (or the folder) does not list."""

    def __init__(self, name: str):
        super().__init__(f"no frame {name!r} in the labels database")
        self.name = name


class InvalidMasks(UserError):
    """Masks that do not decode or do not fit their frame (the API answers 422)."""


class ImportConflict(UserError):
    """An import that would overwrite frames already labelled otherwise; nothing was written."""

    def __init__(self, names: list[str]):
        super().__init__(
            f"{len(names)} frames already hold other saved labels (first: {names[0]}); nothing was "
            "imported. Pass --replace to save the file's labels over them (the history keeps the old ones)"
        )
        self.names = names


class StaleSave(Exception):
    """A save based on an older version of the frame than the stored one (the API answers 409)."""

    def __init__(self, name: str, given: int, current: FrameState):
        super().__init__(
            f"{name} was saved elsewhere (version {current.version}, at {current.updated_at}) after "
            f"this copy (version {given}) was loaded; reload it, or save again on top of version "
            f"{current.version}"
        )
        self.current = current


@dataclass(frozen=True)
class FrameState:
    """A frame as the page opens it. ``masks``: the saved ones, or the proposal before any save."""

    name: str
    width: int
    height: int
    status: str
    version: int
    masks: list[str]
    origins: list[str | None]  # per class: how the saved mask came about; None before a save
    proposal: list[str] | None  # the model's masks, None when no model proposed any
    proposal_model: str | None
    model_version: str | None  # the model whose proposal the saved masks started from
    updated_at: str


@dataclass(frozen=True)
class Stats:
    frames: int
    by_status: dict[str, int]
    confirmed_with_class: dict[int, int]  # confirmed frames showing each class
    origins: dict[int, dict[str, int]]  # per class: accepted/edited/drawn/imported saved masks
    saves: int
    queue: dict = field(default_factory=dict)  # size, left (to do), model_version, scored_at


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_masks(masks: list[str], width: int, height: int, name: str) -> list[str]:
    """Four RLE strings that decode and fit a ``width`` x ``height`` frame, stripped; else InvalidMasks."""
    if len(masks) != NUM_CLASSES:
        raise InvalidMasks(f"{name}: {len(masks)} masks; send one RLE per class {list(CLASS_IDS)}")
    out = []
    for class_id, rle in zip(CLASS_IDS, masks, strict=True):
        if not isinstance(rle, str):
            raise InvalidMasks(
                f"{name}, class {class_id}: the RLE must be a string, got {type(rle).__name__}"
            )
        try:
            parse_rle(rle, width * height)
        except RLEError as err:
            raise InvalidMasks(f"{name}, class {class_id}: {err} (frame {width}x{height})") from None
        out.append(" ".join(rle.split()))
    return out


def _canonical(rle: str) -> str:
    """The RLE with abutting runs merged, so that equal masks compare equal."""
    values = [int(v) for v in rle.split()]
    runs: list[list[int]] = []
    for start, length in zip(values[0::2], values[1::2], strict=True):
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] += length
        else:
            runs.append([start, length])
    return " ".join(f"{s} {n}" for s, n in runs)


def origin_of(saved: str, proposed: str | None) -> str:
    """``accepted`` (what the model proposed), ``edited`` (a changed proposal) or ``drawn``."""
    if proposed is None:
        return "drawn"
    if _canonical(saved) == _canonical(proposed):
        return "accepted"
    return "edited" if proposed else "drawn"


class LabelStore:
    """One labels database. Thread-safe: the web app's request threads share one connection."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        readonly: bool,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ):
        self.path = path
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self._db = connection
        self._lock = threading.RLock()

    # ---------- opening ----------

    @classmethod
    def open(
        cls,
        path: str | Path,
        create: bool = True,
        readonly: bool = False,
        busy_timeout_ms: int | None = None,
    ) -> LabelStore:
        """Open (and with ``create`` make) the database at ``path``; migrate an older schema forward.

        Raises :class:`LabelStoreError` naming the file when it is missing (without ``create``),
        locked (:class:`DatabaseLocked`, after ``busy_timeout_ms``, default ``BUSY_TIMEOUT_MS``),
        read-only (unless ``readonly``), corrupt, another program's, or newer than this code.
        """
        path = Path(path)
        busy_timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
        if not path.exists() and (readonly or not create):
            raise LabelStoreError(
                f"{path}: no labels database there (create one with `steel-defect label` "
                "or `steel-defect labels import`)"
            )
        if path.is_dir():
            raise LabelStoreError(f"{path} is a folder; --db takes a file such as labels.sqlite")
        if not readonly and path.exists() and not os.access(path, os.W_OK):
            raise LabelStoreError(
                f"{path} is read-only; labels cannot be saved to it (check its permissions)"
            )
        if (
            not readonly
            and not path.exists()
            and not os.access(path.parent if str(path.parent) else ".", os.W_OK)
        ):
            raise LabelStoreError(f"{path}: cannot create it, its folder is not writable")
        try:
            # as_uri() percent-encodes the path: a raw ``#`` or ``?`` would end the file name there
            uri = f"{path.resolve().as_uri()}?mode=ro" if readonly else str(path)
            db = sqlite3.connect(
                uri,
                uri=readonly,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise LabelStoreError(f"{path}: cannot open it: {err}") from None
        store = cls(path, db, readonly, busy_timeout_ms)
        try:
            store._prepare()
        except sqlite3.DatabaseError as err:
            db.close()
            raise store._failure(err) from None
        except LabelStoreError:
            db.close()
            raise
        return store

    def _schema_version(self) -> int:
        """The file's schema version; LabelStoreError for another program's file or a newer schema."""
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        empty = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if not empty and app_id != APPLICATION_ID:
            raise LabelStoreError(
                f"{self.path} is an SQLite database of another program, not a labels database"
            )
        if version > SCHEMA_VERSION:
            raise LabelStoreError(
                f"{self.path} has labels schema version {version}; this steel-defect reads up to "
                f"{SCHEMA_VERSION}: upgrade steel-defect to open it"
            )
        return version

    def _prepare(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        version = self._schema_version()
        if self.readonly:
            if version < SCHEMA_VERSION:
                raise LabelStoreError(f"{self.path} has the old schema {version}; open it once to migrate it")
            return
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise LabelStoreError(f"{self.path}: cannot switch it to WAL mode (a network file system?)")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            pause_point("open:migrate")  # the race test: another process may migrate meanwhile
            with self._write():
                # read again under the write lock: a process opening the same new file at the same
                # time may have migrated it since the read above ("table meta already exists")
                version = self._schema_version()
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(MIGRATIONS[step]):
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", (now(),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _write(self):
        """One write transaction, the write lock taken first (``BEGIN IMMEDIATE``)."""
        if self.readonly:
            raise LabelStoreError(f"{self.path} was opened read-only")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as err:
                raise self._failure(err) from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(err, sqlite3.DatabaseError):
                    raise self._failure(err) from None
                raise

    def _failure(self, err: sqlite3.DatabaseError) -> LabelStoreError:
        text = str(err)
        if "locked" in text or "busy" in text:
            return DatabaseLocked(
                f"{self.path} is locked by another process (waited {self.busy_timeout_ms / 1000:g} s); "
                "close the other `steel-defect label` server or command that writes to it, or try again"
            )
        return LabelStoreError(_explain(self.path, err))

    def _read(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as err:
                raise self._failure(err) from None

    # ---------- metadata ----------

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---------- frames ----------

    def add_frames(self, frames: Iterable[tuple[str, int, int]]) -> int:
        """Register ``(name, width, height)`` frames not yet listed; returns how many were new."""
        stamp = now()
        with self._write() as db:
            before = db.execute("SELECT count(*) FROM frames").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO frames (name, width, height, added_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                ((name, width, height, stamp, stamp) for name, width, height in frames),
            )
            return db.execute("SELECT count(*) FROM frames").fetchone()[0] - before

    def names(self, status: str | None = None) -> list[str]:
        if status is None:
            return [r[0] for r in self._read("SELECT name FROM frames ORDER BY name")]
        return [r[0] for r in self._read("SELECT name FROM frames WHERE status = ? ORDER BY name", (status,))]

    def frame(self, name: str) -> FrameState:
        """The frame as the page opens it; :class:`UnknownFrame` when it is not listed."""
        with self._lock:
            return self._frame(self._db, name)

    def _frame(self, db: sqlite3.Connection, name: str) -> FrameState:
        try:
            row = db.execute(
                "SELECT width, height, status, version, model_version, updated_at FROM frames WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise UnknownFrame(name)
            width, height, status, version, model_version, updated_at = row
            saved = {
                c: (rle, origin)
                for c, rle, origin in db.execute(
                    "SELECT class_id, rle, origin FROM masks WHERE frame = ?", (name,)
                )
            }
            proposed = db.execute(
                "SELECT class_id, rle, model_version FROM proposals WHERE frame = ?", (name,)
            ).fetchall()
        except sqlite3.DatabaseError as err:
            raise self._failure(err) from None
        proposal = None
        proposal_model = None
        if proposed:
            by_class = {c: rle for c, rle, _ in proposed}
            proposal = [by_class.get(c, "") for c in CLASS_IDS]
            proposal_model = proposed[0][2]
        if version > 0:
            masks = [saved.get(c, ("", None))[0] for c in CLASS_IDS]
            origins = [saved.get(c, (None, None))[1] for c in CLASS_IDS]
        else:
            masks = list(proposal) if proposal else [""] * NUM_CLASSES
            origins = [None] * NUM_CLASSES
        return FrameState(
            name,
            width,
            height,
            status,
            version,
            masks,
            origins,
            proposal,
            proposal_model,
            model_version,
            updated_at,
        )

    def set_proposal(self, name: str, masks: list[str], model_version: str) -> FrameState:
        """Store the model's masks for ``name``; an unlabelled frame becomes ``pre-labelled``."""
        with self._write() as db:
            state = self._frame(db, name)
            masks = check_masks(masks, state.width, state.height, name)
            stamp = now()
            db.executemany(
                "INSERT OR REPLACE INTO proposals VALUES (?, ?, ?, ?, ?)",
                ((name, c, rle, model_version, stamp) for c, rle in zip(CLASS_IDS, masks, strict=True)),
            )
            if state.status == "unlabelled":
                db.execute("UPDATE frames SET status = 'pre-labelled' WHERE name = ?", (name,))
            return self._frame(db, name)

    def save_masks(
        self,
        name: str,
        masks: list[str],
        version: int,
        status: str,
        source: str = "page",
        origins: list[str] | None = None,
    ) -> FrameState:
        """Save the four masks of ``name`` on top of ``version``, in one transaction.

        Raises :class:`StaleSave` when the stored version is newer (another tab saved first; the
        stored masks are kept), :class:`InvalidMasks` for RLE that does not fit the frame, and
        :class:`UnknownFrame`. Each mask's origin is worked out against the model's proposal
        unless ``origins`` gives it (an import). Returns the saved state.
        """
        if status not in STATUSES or status == "unlabelled":
            raise InvalidMasks(f"status {status!r}; a save sets one of {list(STATUSES[1:])}")
        with self._write() as db:
            state = self._frame(db, name)
            if version != state.version:
                raise StaleSave(name, version, state)
            masks = check_masks(masks, state.width, state.height, name)
            proposal = state.proposal
            if origins is None:
                origins = [origin_of(rle, proposal[i] if proposal else None) for i, rle in enumerate(masks)]
            model = state.proposal_model if proposal else None
            stamp = now()
            db.executemany(
                "INSERT OR REPLACE INTO masks VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (name, c, rle, o, model, stamp)
                    for c, rle, o in zip(CLASS_IDS, masks, origins, strict=True)
                ),
            )
            db.execute(
                "UPDATE frames SET status = ?, version = version + 1, model_version = ?, updated_at = ? "
                "WHERE name = ?",
                (status, model, stamp, name),
            )
            db.execute("UPDATE queue SET done = ? WHERE frame = ?", (status in DONE, name))
            pause_point("save:labels")  # the kill test: written, not committed
            db.execute(
                "INSERT INTO history "
                "(frame, version, status, masks, origins, model_version, source, saved_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, version + 1, status, json.dumps(masks), json.dumps(origins), model, source, stamp),
            )
            return self._frame(db, name)

    def import_labels(
        self, entries: list[tuple[str, int, int, list[str]]], source: str, replace: bool = False
    ) -> dict[str, int]:
        """Save ``(name, width, height, four RLEs)`` as confirmed, imported labels, all in one transaction.

        A frame whose saved masks already differ is a conflict: without ``replace`` nothing is
        written and :class:`ImportConflict` lists them; with it the file's masks are saved over
        theirs (the history keeps both). Returns counts: ``added`` frames, ``saved``, ``unchanged``.
        """
        counts = {"added": 0, "saved": 0, "unchanged": 0, "replaced": 0}
        with self._write() as db:
            stamp = now()
            plan = []
            conflicts = []
            for name, width, height, masks in entries:
                masks = check_masks(masks, width, height, name)
                if db.execute("SELECT 1 FROM frames WHERE name = ?", (name,)).fetchone() is None:
                    db.execute(
                        "INSERT INTO frames (name, width, height, added_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (name, width, height, stamp, stamp),
                    )
                    counts["added"] += 1
                state = self._frame(db, name)
                same = [_canonical(a) for a in state.masks] == [_canonical(b) for b in masks]
                if state.version > 0 and same and state.status == "confirmed":
                    counts["unchanged"] += 1
                    continue
                if state.version > 0 and not same:
                    conflicts.append(name)
                plan.append((state, masks))
            if conflicts and not replace:
                raise ImportConflict(conflicts)
            counts["replaced"] = len(conflicts)
            for state, masks in plan:
                db.executemany(
                    "INSERT OR REPLACE INTO masks VALUES (?, ?, ?, 'imported', NULL, ?)",
                    ((state.name, c, rle, stamp) for c, rle in zip(CLASS_IDS, masks, strict=True)),
                )
                db.execute(
                    "UPDATE frames SET status = 'confirmed', version = version + 1, model_version = NULL, "
                    "updated_at = ? WHERE name = ?",
                    (stamp, state.name),
                )
                db.execute("UPDATE queue SET done = 1 WHERE frame = ?", (state.name,))
                db.execute(
                    "INSERT INTO history "
                    "(frame, version, status, masks, origins, model_version, source, saved_at) "
                    "VALUES (?, ?, 'confirmed', ?, ?, NULL, ?, ?)",
                    (
                        state.name,
                        state.version + 1,
                        json.dumps(masks),
                        json.dumps(["imported"] * NUM_CLASSES),
                        source,
                        stamp,
                    ),
                )
                counts["saved"] += 1
        return counts

    def history(self, name: str) -> list[dict]:
        """Every save of ``name``, oldest first: id, version, status, masks, origins, source, time."""
        if not self._read("SELECT 1 FROM frames WHERE name = ?", (name,)):
            raise UnknownFrame(name)
        rows = self._read(
            "SELECT id, version, status, masks, origins, model_version, source, saved_at FROM history "
            "WHERE frame = ? ORDER BY id",
            (name,),
        )
        return [
            {
                "id": i,
                "version": v,
                "status": s,
                "masks": json.loads(m),
                "origins": json.loads(o),
                "model_version": mv,
                "source": src,
                "saved_at": at,
            }
            for i, v, s, m, o, mv, src, at in rows
        ]

    def restore(self, name: str, history_id: int, version: int | None = None) -> FrameState:
        """Save again the state of history row ``history_id`` (a new save: nothing is rewritten)."""
        entry = next((h for h in self.history(name) if h["id"] == history_id), None)
        if entry is None:
            raise InvalidMasks(f"{name} has no saved state {history_id}; see `steel-defect labels history`")
        current = self.frame(name).version if version is None else version
        return self.save_masks(
            name,
            entry["masks"],
            current,
            entry["status"],
            source=f"restore:{history_id}",
            origins=entry["origins"],
        )

    def confirmed(self) -> Iterator[tuple[str, list[str]]]:
        """``(name, four RLEs)`` of every confirmed frame, by name."""
        rows = self._read(
            "SELECT f.name, m.class_id, m.rle FROM frames f JOIN masks m ON m.frame = f.name "
            "WHERE f.status = 'confirmed' ORDER BY f.name, m.class_id"
        )
        current, masks = None, None
        for name, class_id, rle in rows:
            if name != current:
                if current is not None:
                    yield current, masks
                current, masks = name, [""] * NUM_CLASSES
            masks[class_id - 1] = rle
        if current is not None:
            yield current, masks

    # ---------- the active-learning queue ----------

    def set_queue(self, ranked: list[tuple[str, float, dict]], model_version: str) -> None:
        """Replace the queue with ``(frame, score, detail)`` in the order given (first: label first)."""
        stamp = now()
        with self._write() as db:
            db.execute("DELETE FROM queue")
            db.executemany(
                "INSERT INTO queue SELECT ?, ?, ?, ?, ?, ?, status IN ('confirmed', 'skipped') "
                "FROM frames WHERE name = ?",
                (
                    (name, rank, float(score), json.dumps(detail), model_version, stamp, name)
                    for rank, (name, score, detail) in enumerate(ranked)
                ),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('queue_model', ?)", (model_version,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('queue_scored_at', ?)", (stamp,))

    def next_in_queue(self, after: str | None = None) -> str | None:
        """The frame to label next: the best-ranked one still unlabelled or pre-labelled after
        ``after`` (in queue order; frames the queue has not scored come last, by name), wrapping
        round to the start; None when every frame is confirmed or skipped.

        Each step is one query that walks an index in order and stops at the first frame to do:
        the queue's ``(done, rank)`` index, which every save keeps in step with the frame's
        status, or the frames' names. Joining the frames' status instead cost 14 ms a call with
        12,000 of 12,568 frames done (bench/label_page.py), walking every finished one.
        """
        todo = "f.status IN ('unlabelled', 'pre-labelled')"
        queued = "SELECT frame FROM queue WHERE done = 0 AND rank > ? AND frame != ? ORDER BY rank LIMIT 1"
        unqueued = (
            f"SELECT f.name FROM frames f WHERE {todo} AND f.name > ? AND f.name != ? "
            "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.frame = f.name) ORDER BY f.name LIMIT 1"
        )
        rank, name = -1, ""
        if after is not None:
            found = self._read("SELECT rank FROM queue WHERE frame = ?", (after,))
            if found:
                rank = found[0][0]
            else:
                rank, name = None, after  # past the whole queue, among the unscored frames
        steps = [] if rank is None else [(queued, (rank, after or ""))]
        steps += [(unqueued, (name, after or "")), (queued, (-1, after or "")), (unqueued, ("", after or ""))]
        for sql, params in steps:
            rows = self._read(sql, params)
            if rows:
                return rows[0][0]
        return None

    def queue_entry(self, name: str) -> dict | None:
        rows = self._read(
            "SELECT rank, score, detail, model_version, scored_at FROM queue WHERE frame = ?", (name,)
        )
        if not rows:
            return None
        rank, score, detail, model, at = rows[0]
        return {
            "rank": rank,
            "score": score,
            "detail": json.loads(detail),
            "model_version": model,
            "scored_at": at,
        }

    # ---------- summary ----------

    def stats(self) -> Stats:
        by_status = dict.fromkeys(STATUSES, 0)
        by_status.update(dict(self._read("SELECT status, count(*) FROM frames GROUP BY status")))
        with_class = dict.fromkeys(CLASS_IDS, 0)
        with_class.update(
            dict(
                self._read(
                    "SELECT m.class_id, count(*) FROM masks m JOIN frames f ON f.name = m.frame "
                    "WHERE f.status = 'confirmed' AND m.rle != '' GROUP BY m.class_id"
                )
            )
        )
        origins = {c: dict.fromkeys(ORIGINS, 0) for c in CLASS_IDS}
        for class_id, origin, count in self._read(
            "SELECT m.class_id, m.origin, count(*) FROM masks m JOIN frames f ON f.name = m.frame "
            "WHERE f.status = 'confirmed' GROUP BY m.class_id, m.origin"
        ):
            origins[class_id][origin] = count
        size = self._read("SELECT count(*) FROM queue")[0][0]
        queue = {
            "size": size,
            "left": self._read("SELECT count(*) FROM queue WHERE done = 0")[0][0],  # not confirmed or skipped
            "model_version": self.get_meta("queue_model"),
            "scored_at": self.get_meta("queue_scored_at"),
        }
        return Stats(
            frames=sum(by_status.values()),
            by_status=by_status,
            confirmed_with_class=with_class,
            origins=origins,
            saves=self._read("SELECT count(*) FROM history")[0][0],
            queue=queue,
        )


def _statements(script: str) -> list[str]:
    """The statements of a schema script (``executescript`` would commit the open transaction)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def _explain(path: Path, err: sqlite3.DatabaseError) -> str:
    text = str(err)
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only; labels cannot be saved to it (check its permissions): {text}"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"{path} is corrupt or not an SQLite file ({text}); restore it from a backup, or "
            "start a new one with another --db"
        )
    return f"{path}: {text}"
