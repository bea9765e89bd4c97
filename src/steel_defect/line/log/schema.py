"""The inspection log's schema and records: its tables, what a frame's entry and a search hold,
and how its database's errors read. :mod:`steel_defect.line.log` is the face the rest uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from steel_defect.constants import CLASS_IDS

STATUSES = ("judged", "corrupt", "missing")
BUSY_TIMEOUT_S = 10.0  # wait this long for another process's write before "locked"
IMMEDIATE = "steel_defect.begin_immediate"  # connection.info flag read by sqlite_begin
IN_CHUNK = 500  # names per IN (...) query: far below SQLite's variable limit

metadata = sa.MetaData()
# Integer on SQLite, where only INTEGER PRIMARY KEY is the auto-incrementing row id.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

frames = sa.Table(
    "frames",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(1024), nullable=False),  # the watched folder, absolute
    sa.Column("line", sa.String(128), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
    sa.Column("path", sa.String(2048), nullable=False),  # where the image lies now (archive or source)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text()),
    sa.Column("seen_at", sa.Float(), nullable=False),  # when the watcher noticed the file
    sa.Column("judged_at", sa.Float(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),  # judged_at - arrived_at
    sa.Column("arrived_at", sa.Float()),  # when the file was complete in the folder (revision 0003)
    sa.Column("model", sa.String(128)),
    sa.Column("defects", sa.Integer(), nullable=False),  # bit k-1 set: class k present
    sa.UniqueConstraint("source", "name", "size", "mtime_ns", name="frames_identity"),
    sa.CheckConstraint("status IN ('judged', 'corrupt', 'missing')", name="frames_status"),
)
sa.Index("frames_by_time", frames.c.judged_at)
sa.Index("frames_by_line", frames.c.line, frames.c.judged_at)

detections = sa.Table(
    "detections",
    metadata,
    sa.Column("frame_id", BigId, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("class_id", sa.SmallInteger(), primary_key=True),
    sa.Column("judged_at", sa.Float(), nullable=False),  # the frame's, for the index below
    sa.Column("probability", sa.Float(), nullable=False),
    sa.Column("area", sa.Integer(), nullable=False),
    sa.Column("regions", sa.Integer(), nullable=False),
    sa.Column("boxes", sa.Text(), nullable=False),  # JSON [[x, y, w, h], ...], largest first
    sa.Column("rle", sa.Text(), nullable=False),
)
# Only present classes, newest last, covering the search's filters: a search by class walks this
# index backwards, checks area and probability in it, and stops at its page.
sa.Index(
    "detections_present",
    detections.c.class_id,
    detections.c.judged_at,
    detections.c.frame_id,
    detections.c.area,
    detections.c.probability,
    sqlite_where=detections.c.area > 0,
    postgresql_where=detections.c.area > 0,
)

# Per line and minute: frames by status, frames with each class present and their summed area.
# The page's chart and tiles read these (1,440 rows a day per line) instead of scanning frames;
# each batch's counts are added in the same transaction as its rows (revision 0002).
minutes = sa.Table(
    "minutes",
    metadata,
    sa.Column("line", sa.String(128), primary_key=True),
    sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),  # floor(judged_at / 60)
    *(sa.Column(status, sa.Integer(), nullable=False) for status in ("judged", "corrupt", "missing")),
    *(sa.Column(f"class_{c}", sa.Integer(), nullable=False) for c in (1, 2, 3, 4)),
    *(sa.Column(f"area_{c}", sa.BigInteger(), nullable=False) for c in (1, 2, 3, 4)),
)
COUNTS = (
    "judged",
    "corrupt",
    "missing",
    *(f"class_{c}" for c in CLASS_IDS),
    *(f"area_{c}" for c in CLASS_IDS),
)

watchers = sa.Table(
    "watchers",
    metadata,
    sa.Column("source", sa.String(1024), primary_key=True),
    sa.Column("line", sa.String(128), nullable=False),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("model", sa.String(128)),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("heartbeat_at", sa.Float(), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),  # running, source missing, stopped
    sa.Column("message", sa.Text()),
    sa.Column("backlog", sa.Integer(), nullable=False),
    sa.Column("judged", sa.BigInteger(), nullable=False),  # frames judged since it started
    sa.Column("lag_s", sa.Float()),  # how long the oldest complete frame not yet judged has waited
)

# Identities whose rows retention deleted while their image stayed in the watched folder: the
# watcher finds them done after a restart, and forgets them once the file has left the folder.
pruned = sa.Table(
    "pruned",
    metadata,
    sa.Column("source", sa.String(1024), primary_key=True),
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("mtime_ns", sa.BigInteger(), primary_key=True, autoincrement=False),
)

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("line", sa.String(128), nullable=False),
    sa.Column("class_id", sa.SmallInteger(), nullable=False),
    sa.Column("threshold", sa.Float(), nullable=False),
    sa.Column("window_s", sa.Float(), nullable=False),
    sa.Column("rate", sa.Float(), nullable=False),  # the rate that raised it
    sa.Column("frames", sa.Integer(), nullable=False),  # frames in the window then
    sa.Column("raised_at", sa.Float(), nullable=False),
    sa.Column("cleared_at", sa.Float()),
    sa.Column("notified", sa.Text()),  # the POST's outcome, when a URL is set
)
sa.Index("alarms_open", alarms.c.line, alarms.c.class_id, alarms.c.cleared_at)


class LogError(RuntimeError):
    """The inspection log cannot be opened, read or written; the message names it."""


@dataclass
class FrameRecord:
    """One frame's entry. ``classes``: four dicts (class_id, probability, area, regions / components,
    boxes, rle), as :func:`steel_defect.inference.verdict.class_report` makes them; empty for a
    corrupt or missing frame."""

    source: str
    line: str
    name: str
    size: int
    mtime_ns: int
    path: str
    status: str
    seen_at: float
    judged_at: float
    reason: str | None = None
    model: str | None = None
    classes: list[dict] = field(default_factory=list)
    arrived_at: float | None = None  # None: when it was seen

    @property
    def arrival(self) -> float:
        return self.seen_at if self.arrived_at is None else self.arrived_at

    @property
    def latency_ms(self) -> float:
        return max(0.0, 1000.0 * (self.judged_at - self.arrival))

    @property
    def defects(self) -> int:
        return sum(1 << (c["class_id"] - 1) for c in self.classes if c["area"] > 0)


@dataclass
class Search:
    """What the page, the API and the exports ask the log for. ``class_ids``: frames where any of
    them is present with at least ``min_area`` pixels and ``min_probability``; empty: any frame.
    Results come newest first (by ``judged_at``, then id); ``before_id`` pages on from the
    previous page's last row."""

    class_ids: Sequence[int] = ()
    start: float | None = None
    end: float | None = None
    min_area: int = 1
    min_probability: float = 0.0
    line: str | None = None
    source: str | None = None
    status: str | None = None
    limit: int = 100
    before_id: int | None = None

    def check(self) -> Search:
        bad = [c for c in self.class_ids if c not in CLASS_IDS]
        if bad:
            raise ValueError(f"class ids must be among {list(CLASS_IDS)}, got {bad}")
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, got {self.status!r}")
        if self.min_area < 1 or not 0 <= self.min_probability <= 1:
            raise ValueError("min_area must be at least 1 and min_probability in [0, 1]")
        if not 1 <= self.limit <= 10_000:
            raise ValueError(f"limit must be in [1, 10000], got {self.limit}")
        return self


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for ``target``: a URL as it is, a path as a SQLite file."""
    text = str(target)
    return text if "://" in text else f"sqlite+pysqlite:///{Path(text).resolve()}"


def display_name(url: str) -> str:
    """The log as a message names it: a SQLite file's path, else the URL without its password."""
    parsed = sa.engine.make_url(url)
    return parsed.database if parsed.get_backend_name() == "sqlite" else parsed.render_as_string()


def sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the page) never block the writer
    cursor.execute(
        "PRAGMA synchronous=NORMAL"
    )  # durable across a crash of the process, which is the fault here
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver's own transaction handling commits DDL at once and begins only before DML, so a
    # migration would land table by table. Transactions are begun here instead (sqlite_begin).
    dbapi_connection.isolation_level = None


def sqlite_begin(connection) -> None:
    """BEGIN IMMEDIATE for a write (the lock taken first, so two migrations or two writers queue
    on the busy timeout instead of failing), a plain BEGIN for a read."""
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.pop(IMMEDIATE, False) else "BEGIN")


def is_migration_race(err: SQLAlchemyError) -> bool:
    """Whether a failed migration may be another process's migration of the same log."""
    text = str(getattr(err, "orig", None) or err).lower()
    return any(
        word in text for word in ("locked", "busy", "already exists", "duplicate", "unique", "deadlock")
    )


def explain_error(err: SQLAlchemyError) -> str:
    """The database's own words (``database is locked``, ``disk I/O error``), without SQLAlchemy's
    statement dump."""
    if isinstance(err, DBAPIError | OperationalError) and err.orig is not None:
        return str(err.orig).strip().splitlines()[0]
    return str(err).splitlines()[0]
