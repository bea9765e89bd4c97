"""The labels database's schema and its vocabulary: tables, statuses, errors, a frame's state.

:mod:`steel_defect.labels.store` is the face the rest of the code imports."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.data.rle import RLEError, parse_rle
from steel_defect.errors import UserError

STATUSES = ("unlabelled", "pre-labelled", "confirmed", "defect-free", "skipped")
LABELLED = ("confirmed", "defect-free")  # frames whose masks are ground truth (export, training)
DONE = ("confirmed", "defect-free", "skipped")  # statuses the queue passes over
ORIGINS = ("accepted", "edited", "drawn", "imported")
APPLICATION_ID = 0x53544C44  # "STLD": tells our file from any other SQLite database
SCHEMA_VERSION = 2
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
# 2: ``defect-free`` as its own status (SQLite cannot alter a CHECK: the frames table is rebuilt,
# with foreign keys off, as https://www.sqlite.org/lang_altertable.html prescribes); the model
# versions trained on the labels, their promotions (append-only: a rollback is a new promotion)
# and the trainings started from the page or the command line.
_SCHEMA_V2 = """
CREATE TABLE frames_v2 (
    name TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'unlabelled'
        CHECK (status IN ('unlabelled', 'pre-labelled', 'confirmed', 'defect-free', 'skipped')),
    version INTEGER NOT NULL DEFAULT 0,
    model_version TEXT,
    added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO frames_v2
    SELECT name, width, height, status, version, model_version, added_at, updated_at FROM frames;
DROP TABLE frames;
ALTER TABLE frames_v2 RENAME TO frames;
CREATE INDEX frames_by_status ON frames (status, name);
CREATE TABLE model_versions (
    name TEXT PRIMARY KEY,              -- v1, v2, ... in the order trained
    created_at TEXT NOT NULL,
    recipe TEXT NOT NULL,
    labels_digest TEXT NOT NULL,        -- sha256 of the labels snapshot it learnt (names and masks)
    counts TEXT NOT NULL,               -- JSON: frames, per class, defect-free
    out_of_fold TEXT NOT NULL,          -- JSON: mean_dice, per_class, empty, unlearnt (with why)
    spec TEXT NOT NULL,                 -- the tuned pipeline's YAML
    line_spec TEXT,                     -- the distilled line pipeline's, where the recipe distils one
    seconds REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'   -- JSON: work folder, options, frame names
);
CREATE TABLE promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL REFERENCES model_versions (name),
    promoted_at TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TRIGGER promotions_no_update BEFORE UPDATE ON promotions
    BEGIN SELECT RAISE(ABORT, 'promotions are append-only: promote again to roll back'); END;
CREATE TRIGGER promotions_no_delete BEFORE DELETE ON promotions
    BEGIN SELECT RAISE(ABORT, 'promotions are append-only: promote again to roll back'); END;
CREATE TABLE trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
    pid INTEGER,
    host TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    progress TEXT NOT NULL DEFAULT '{}',  -- JSON: stage, fold, epoch, fraction, eta_s
    version TEXT,                         -- the model version it recorded
    log TEXT,                             -- its log file
    error TEXT
);
"""
# schema version reached -> the statements that reach it from the one before
MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


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


def canonical(rle: str) -> str:
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
    if canonical(saved) == canonical(proposed):
        return "accepted"
    return "edited" if proposed else "drawn"


def statements(script: str) -> list[str]:
    """The statements of a schema script (``executescript`` would commit the open transaction)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    return statements


def explain(path: Path, err: sqlite3.DatabaseError) -> str:
    text = str(err)
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only; labels cannot be saved to it (check its permissions): {text}"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"{path} is corrupt or not an SQLite file ({text}); restore it from a backup, or "
            "start a new one with another --db"
        )
    return f"{path}: {text}"
