"""The labels database: every query of it, behind functions named after what they answer.

One SQLite file (WAL mode) holds, per frame, its four masks in the Severstal RLE, its status
(``unlabelled``, ``pre-labelled``, ``confirmed``, ``defect-free``, ``skipped``), a version
counter, the model's proposal and where each saved mask came from (``accepted`` as the model
proposed it, ``edited`` from a proposal, ``drawn`` from nothing, or ``imported``), plus an
append-only history of saves, the active-learning queue, and the model versions trained on the
labels with their promotions and trainings:

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

The package: :mod:`.schema` (tables, statuses, errors, a frame's state), :mod:`.reads` and
:mod:`.writes` (every query of the frames, two thirds of :class:`LabelStore`), :mod:`.versions`
(model versions, promotions, trainings: the third), and this module, which
opens, checks and migrates the file, and is the one face the rest of the code imports.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from steel_defect.labels.store.reads import LabelReads
from steel_defect.labels.store.schema import (
    APPLICATION_ID,
    BUSY_TIMEOUT_MS,
    DONE,
    LABELLED,
    MIGRATIONS,
    ORIGINS,
    SCHEMA_VERSION,
    STATUSES,
    DatabaseLocked,
    FrameState,
    ImportConflict,
    InvalidMasks,
    LabelStoreError,
    StaleSave,
    Stats,
    UnknownFrame,
    check_masks,
    explain,
    now,
    origin_of,
    statements,
)
from steel_defect.labels.store.versions import (
    TRAINING_STATES,
    LabelVersions,
    TrainingRunning,
    UnknownVersion,
)
from steel_defect.labels.store.writes import LabelWrites
from steel_defect.pause import pause_point

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DONE",
    "LABELLED",
    "ORIGINS",
    "STATUSES",
    "TRAINING_STATES",
    "DatabaseLocked",
    "FrameState",
    "ImportConflict",
    "InvalidMasks",
    "LabelStore",
    "LabelStoreError",
    "StaleSave",
    "Stats",
    "TrainingRunning",
    "UnknownFrame",
    "UnknownVersion",
    "check_masks",
    "now",
    "origin_of",
]


class LabelStore(LabelReads, LabelWrites, LabelVersions):
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
        if version < SCHEMA_VERSION:
            pause_point("open:migrate")  # the race test: another process may migrate meanwhile
            # foreign keys can only be switched outside a transaction; a rebuilt table is
            # dropped and replaced, which they would refuse while other tables refer to it
            db.execute("PRAGMA foreign_keys = OFF")
            with self._write():
                # read again under the write lock: a process opening the same new file at the same
                # time may have migrated it since the read above ("table meta already exists")
                start = self._schema_version()
                for step in range(start + 1, SCHEMA_VERSION + 1):
                    for statement in statements(MIGRATIONS[step]):
                        db.execute(statement)
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise LabelStoreError(
                        f"{self.path}: migrating it broke {len(broken)} references ({broken[:3]}); "
                        "nothing was changed"
                    )
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                if start == 0:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", (now(),))
        db.execute("PRAGMA foreign_keys = ON")

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
        return LabelStoreError(explain(self.path, err))

    def _read(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as err:
                raise self._failure(err) from None
