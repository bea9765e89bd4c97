"""The inspection log: one row per frame the line judged, every query of it behind named functions.

    log = InspectionLog.open("inspection.sqlite")            # or postgresql+psycopg://host/db
    log.judged("/line/in", [("a.jpg", 120_431, 1764_000_000_000_000_000)])   # identities done
    log.record([FrameRecord(...)])                            # verdicts, one transaction
    log.search(Search(class_ids=[4], min_area=500, start=t0)) # newest first
    log.rates(start, end, bucket_s=60)                        # frames and defects per minute

A frame is keyed on its identity: the watched folder, its name, its size and its mtime (ns). A
camera that reuses a name writes a new identity; a restart finds the old one done. Its verdict
(one ``frames`` row and four ``detections`` rows: probability, area, regions, boxes, RLE per
class) is written in one transaction, so a process killed mid-write
(``STEEL_DEFECT_TEST_PAUSE_AT=write:log``) leaves no half verdict, and the frame is judged again
after the restart. Images are referenced by path, never stored.

Why SQLAlchemy (Core, no ORM) here when the labels database uses ``sqlite3``: one plant server
may collect several lines, so the same queries must run on SQLite (the embedded default, WAL
mode) and on PostgreSQL. The schema is versioned with Alembic (``line/migrations``): a log is
migrated forward when it opens, and one written by a newer steel-defect is refused.

Times are seconds since the epoch (UTC), as floats: the page buckets them by minute, and the
arithmetic is the same on both databases.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from steel_defect.constants import CLASS_IDS
from steel_defect.pause import pause_point

MIGRATIONS = Path(__file__).with_name("migrations")
STATUSES = ("judged", "corrupt", "missing")
BUSY_TIMEOUT_S = 10.0  # wait this long for another process's write before "locked"
IMMEDIATE = "steel_defect.begin_immediate"  # connection.info flag read by _sqlite_begin
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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the page) never block the writer
    cursor.execute(
        "PRAGMA synchronous=NORMAL"
    )  # durable across a crash of the process, which is the fault here
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver's own transaction handling commits DDL at once and begins only before DML, so a
    # migration would land table by table. Transactions are begun here instead (_sqlite_begin).
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection) -> None:
    """BEGIN IMMEDIATE for a write (the lock taken first, so two migrations or two writers queue
    on the busy timeout instead of failing), a plain BEGIN for a read."""
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.pop(IMMEDIATE, False) else "BEGIN")


class InspectionLog:
    """The log behind one engine; open it with :meth:`open`."""

    def __init__(self, engine: Engine, name: str, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.engine, self.name, self.busy_timeout_s = engine, name, busy_timeout_s
        self.sqlite = engine.dialect.name == "sqlite"

    @classmethod
    def open(
        cls, target: str | Path, create: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> InspectionLog:
        """Open (and migrate forward) the log at ``target``, a path or a URL. ``create``: make a
        missing SQLite file; otherwise a missing one is an error. ``busy_timeout_s``: how long a
        SQLite write waits for another process's before failing as locked."""
        url = database_url(target)
        name = display_name(url)
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "")
            if not path.is_file() and not create:
                raise LogError(f"{name}: no inspection log here (start `steel-defect watch` to make one)")
            if not path.parent.is_dir():
                raise LogError(f"{name}: its folder does not exist")
            engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        log = cls(engine, name, busy_timeout_s)
        log._migrate()
        return log

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        scripts = ScriptDirectory.from_config(config)
        try:
            with self._writing() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
                if current is None:
                    tables = set(sa.inspect(connection).get_table_names())
                    if tables - {"alembic_version"}:
                        raise LogError(
                            f"{self.name}: a database with other tables ({', '.join(sorted(tables)[:4])}) "
                            "is not an inspection log; give --db a new file or an empty database"
                        )
                else:
                    try:
                        scripts.get_revision(current)
                    except CommandError:
                        raise LogError(
                            f"{self.name}: its schema ({current}) was written by a newer steel-defect; "
                            f"upgrade steel-defect (this one knows up to {scripts.get_current_head()})"
                        ) from None
                if current != scripts.get_current_head():
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
        except SQLAlchemyError as err:
            # Another process (``serve --log`` beside a starting ``watch``) may be migrating the
            # same fresh log: our change failed on its tables or its lock. Fine once it is at our
            # head, which its transaction reaches within the busy timeout. Any other error (a
            # corrupt file, a refused login) cannot clear by waiting.
            if not _racing(err):
                raise LogError(f"{self.name}: cannot open the inspection log ({_reason(err)})") from err
            deadline = time.monotonic() + self.busy_timeout_s
            while time.monotonic() < deadline:
                try:
                    if self.revision() == scripts.get_current_head():
                        return
                except SQLAlchemyError:
                    pass
                time.sleep(0.05)
            raise LogError(f"{self.name}: cannot open the inspection log ({_reason(err)})") from err

    @contextmanager
    def _writing(self):
        """A connection in a write transaction (BEGIN IMMEDIATE on SQLite), committed at the end."""
        with self.engine.connect() as connection:
            connection.info[IMMEDIATE] = True
            try:
                with connection.begin():
                    yield connection
            finally:
                connection.info.pop(IMMEDIATE, None)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------

    def judged(
        self, source: str, identities: Iterable[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], str | None]:
        """Which of these (name, size, mtime_ns) identities in ``source`` are done: {identity: the
        path its row gives for the image}, the path None for a frame whose row retention pruned."""
        wanted = set(identities)
        names = sorted({name for name, _, _ in wanted})
        found: dict[tuple[str, int, int], str | None] = {}
        with self._reading() as connection:
            for start in range(0, len(names), IN_CHUNK):
                chunk = names[start : start + IN_CHUNK]
                for table in (pruned, frames):
                    path = frames.c.path if table is frames else sa.null()
                    rows = connection.execute(
                        sa.select(table.c.name, table.c.size, table.c.mtime_ns, path).where(
                            table.c.source == source, table.c.name.in_(chunk)
                        )
                    )
                    found.update({(n, s, m): p for n, s, m, p in rows if (n, s, m) in wanted})
        return found

    def forget(self, source: str, identities: Iterable[tuple[str, int, int]] | None = None) -> int:
        """Drop these pruned ``identities`` of ``source`` (their files left its folder); how many went."""
        gone = sorted(set(identities or ()))
        if not gone:
            return 0
        removed = 0
        try:
            with self._writing() as connection:
                for name, size, mtime_ns in gone:
                    removed += connection.execute(
                        pruned.delete().where(
                            pruned.c.source == source,
                            pruned.c.name == name,
                            pruned.c.size == size,
                            pruned.c.mtime_ns == mtime_ns,
                        )
                    ).rowcount
        except SQLAlchemyError as err:
            raise LogError(f"{self.name}: cannot write the inspection log ({_reason(err)})") from err
        return removed

    def forget_absent(self, source: str, present: set[tuple[str, int, int]]) -> int:
        """Drop the pruned identities of ``source`` that are not ``present`` in its folder (files
        removed while no watcher ran); how many went."""
        with self._reading() as connection:
            rows = connection.execute(
                sa.select(pruned.c.name, pruned.c.size, pruned.c.mtime_ns).where(pruned.c.source == source)
            )
            absent = {tuple(row) for row in rows} - present
        return self.forget(source, absent)

    def record(self, records: Sequence[FrameRecord]) -> list[int]:
        """Write ``records`` in one transaction; the new rows' ids. A record whose identity is
        already logged is left as it is (its id is not returned): never two rows for one frame."""
        ids = []
        counts: dict[tuple[str, int], dict[str, int]] = {}
        try:
            with self._writing() as connection:
                for record in records:
                    if record.status not in STATUSES:
                        raise ValueError(f"status must be one of {list(STATUSES)}, got {record.status!r}")
                    row = connection.execute(
                        self._insert_new(frames)
                        .values(
                            source=record.source,
                            line=record.line,
                            name=record.name,
                            size=record.size,
                            mtime_ns=record.mtime_ns,
                            path=record.path,
                            status=record.status,
                            reason=record.reason,
                            seen_at=record.seen_at,
                            arrived_at=record.arrival,
                            judged_at=record.judged_at,
                            latency_ms=record.latency_ms,
                            model=record.model,
                            defects=record.defects,
                        )
                        .returning(frames.c.id)
                    ).first()
                    if row is None:
                        continue  # already logged (a restart racing its own earlier write)
                    ids.append(row[0])
                    _count(counts, record)
                    pause_point("write:log")  # test-only: a kill with the frame row written, not committed
                    if record.classes:
                        connection.execute(
                            detections.insert(),
                            [
                                {
                                    "frame_id": row[0],
                                    "class_id": c["class_id"],
                                    "judged_at": record.judged_at,
                                    "probability": float(c["probability"]),
                                    "area": int(c["area"]),
                                    "regions": int(c.get("regions", c.get("components", 0))),
                                    "boxes": json.dumps(c.get("boxes", [])),
                                    "rle": c["rle"],
                                }
                                for c in record.classes
                            ],
                        )
                for (line, minute), added in counts.items():
                    connection.execute(self._add_counts(line, minute, added))
        except SQLAlchemyError as err:
            raise LogError(f"{self.name}: cannot write the inspection log ({_reason(err)})") from err
        return ids

    def _add_counts(self, line: str, minute: int, added: dict[str, int]):
        """UPSERT adding ``added`` to the (line, minute) row of ``minutes``."""
        if self.sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        values = {name: added.get(name, 0) for name in COUNTS}
        statement = insert(minutes).values(line=line, minute=minute, **values)
        return statement.on_conflict_do_update(
            index_elements=["line", "minute"],
            set_={name: minutes.c[name] + statement.excluded[name] for name in COUNTS},
        )

    def _insert_new(self, table: sa.Table):
        """INSERT that skips a row whose unique key exists (both dialects spell it ON CONFLICT)."""
        if self.sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table).on_conflict_do_nothing()

    def heartbeat(self, source: str, **fields) -> None:
        """Create or update the row of the watcher of ``source`` (state, backlog, lag, judged, ...)."""
        fields = {"heartbeat_at": time.time(), **fields}
        try:
            with self._writing() as connection:
                updated = connection.execute(
                    watchers.update().where(watchers.c.source == source).values(**fields)
                ).rowcount
                if not updated:
                    connection.execute(watchers.insert().values(source=source, **fields))
        except SQLAlchemyError as err:
            raise LogError(f"{self.name}: cannot write the inspection log ({_reason(err)})") from err

    def prune(
        self, keep_days: float | None = None, keep_rows: int | None = None, now: float | None = None
    ) -> int:
        """Delete the oldest frames beyond ``keep_days`` or ``keep_rows``, and the alarms cleared
        before the oldest frame kept; how many frames went. The images are not touched (they are
        the archive's business): a frame whose image still lies in the watched folder leaves its
        identity in ``pruned``, so that the watcher does not judge it again after a restart."""
        conditions = []
        now = time.time() if now is None else now
        if keep_days is not None:
            conditions.append(frames.c.judged_at < now - keep_days * 86400.0)
        try:
            with self._writing() as connection:
                if keep_rows is not None:
                    cutoff = connection.execute(
                        sa.select(frames.c.id).order_by(frames.c.id.desc()).offset(keep_rows).limit(1)
                    ).scalar()
                    if cutoff is not None:
                        conditions.append(frames.c.id <= cutoff)
                if keep_days is not None:
                    connection.execute(
                        minutes.delete().where(
                            minutes.c.minute < math.floor((now - keep_days * 86400.0) / 60)
                        )
                    )
                if not conditions:
                    return 0
                doomed = sa.select(frames.c.id).where(sa.or_(*conditions))
                in_folder = sa.and_(
                    frames.c.status != "missing", frames.c.path == frames.c.source + "/" + frames.c.name
                )
                connection.execute(
                    self._insert_new(pruned).from_select(
                        ["source", "name", "size", "mtime_ns"],
                        sa.select(frames.c.source, frames.c.name, frames.c.size, frames.c.mtime_ns).where(
                            sa.or_(*conditions), in_folder
                        ),
                    )
                )
                doomed = doomed.scalar_subquery()
                connection.execute(detections.delete().where(detections.c.frame_id.in_(doomed)))
                count = connection.execute(frames.delete().where(frames.c.id.in_(doomed))).rowcount
                oldest = connection.execute(sa.select(sa.func.min(frames.c.judged_at))).scalar()
                connection.execute(
                    alarms.delete().where(
                        alarms.c.cleared_at.is_not(None),
                        alarms.c.cleared_at < (now if oldest is None else oldest),
                    )
                )
                return count
        except SQLAlchemyError as err:
            raise LogError(f"{self.name}: cannot prune the inspection log ({_reason(err)})") from err

    def raise_alarm(self, **fields) -> int:
        with self._writing() as connection:
            return connection.execute(alarms.insert().values(**fields).returning(alarms.c.id)).scalar_one()

    def clear_alarm(self, alarm_id: int, at: float) -> None:
        with self._writing() as connection:
            connection.execute(alarms.update().where(alarms.c.id == alarm_id).values(cleared_at=at))

    def note_alarm(self, alarm_id: int, notified: str) -> None:
        with self._writing() as connection:
            connection.execute(alarms.update().where(alarms.c.id == alarm_id).values(notified=notified))

    # -- reading ---------------------------------------------------------------------------

    def _reading(self):
        """A connection for reads; an unreadable log raises :class:`LogError` naming it."""
        return _Reading(self)

    def search(self, query: Search) -> list[dict]:
        """Frames matching ``query``, newest first (by judging time, then id), each with its four
        classes.

        Without classes, the frames are read backwards along the time index (or the line's)
        and the read stops at the limit. With classes, each class is read backwards along the
        ``detections_present`` index, which holds only present classes with their judging time,
        area and probability, so the filters are checked in the index; the classes' pages are
        merged here. Either way the cost follows the page, not the log's size."""
        query.check()
        with self._reading() as connection:
            last = None
            if query.before_id is not None:  # after the previous page's last row, in the same order
                last = connection.execute(
                    sa.select(frames.c.judged_at).where(frames.c.id == query.before_id)
                ).scalar()
                if last is None:
                    return []
            if not query.class_ids:
                statement = sa.select(frames).where(*self._frame_conditions(query, frames.c.judged_at))
                if last is not None:
                    statement = statement.where(
                        _before(frames.c.judged_at, frames.c.id, last, query.before_id)
                    )
                statement = statement.order_by(frames.c.judged_at.desc(), frames.c.id.desc()).limit(
                    query.limit
                )
                rows = [dict(row._mapping) for row in connection.execute(statement)]
            else:
                found: dict[int, dict] = {}
                for class_id in query.class_ids:
                    statement = (
                        sa.select(frames)
                        .select_from(detections.join(frames, frames.c.id == detections.c.frame_id))
                        .where(
                            detections.c.class_id == class_id,
                            # spelled out: the partial index's condition, which the planner must
                            # see to use it (neither database infers it from ``area >= n``)
                            detections.c.area > 0,
                            detections.c.area >= query.min_area,
                            detections.c.probability >= query.min_probability,
                            *self._frame_conditions(query, detections.c.judged_at),
                        )
                    )
                    if last is not None:
                        statement = statement.where(
                            _before(detections.c.judged_at, detections.c.frame_id, last, query.before_id)
                        )
                    statement = statement.order_by(
                        detections.c.judged_at.desc(), detections.c.frame_id.desc()
                    ).limit(query.limit)
                    for row in connection.execute(statement):
                        found[row.id] = dict(row._mapping)
                rows = sorted(found.values(), key=lambda r: (r["judged_at"], r["id"]), reverse=True)
                rows = rows[: query.limit]
            return self._with_classes(connection, rows)

    @staticmethod
    def _frame_conditions(query: Search, judged_at) -> list:
        """The frame-level filters; the time range on ``judged_at`` (the frame's or its copy in
        ``detections``, whichever index the search walks)."""
        conditions = []
        if query.start is not None:
            conditions.append(judged_at >= query.start)
        if query.end is not None:
            conditions.append(judged_at < query.end)
        for column, value in ((frames.c.line, query.line), (frames.c.source, query.source)):
            if value is not None:
                conditions.append(column == value)
        if query.status is not None:
            conditions.append(frames.c.status == query.status)
        return conditions

    def _with_classes(self, connection, rows: list[dict]) -> list[dict]:
        by_id = {row["id"]: row for row in rows}
        for row in rows:
            row["classes"] = []
        ids = list(by_id)
        for start in range(0, len(ids), IN_CHUNK):
            found = connection.execute(
                sa.select(detections)
                .where(detections.c.frame_id.in_(ids[start : start + IN_CHUNK]))
                .order_by(detections.c.frame_id, detections.c.class_id)
            )
            for detection in found:
                entry = dict(detection._mapping)
                entry["boxes"] = json.loads(entry["boxes"])
                del entry["judged_at"]
                by_id[entry.pop("frame_id")]["classes"].append(entry)
        return rows

    def iter_search(self, query: Search, page: int = 1000) -> Iterator[dict]:
        """Every frame matching ``query`` (its ``limit`` ignored), newest first, a page at a time."""
        before = query.before_id
        while True:
            rows = self.search(replace(query, limit=page, before_id=before))
            yield from rows
            if len(rows) < page:
                return
            before = rows[-1]["id"]

    def frame(self, frame_id: int) -> dict | None:
        """One frame's row with its classes, or None."""
        with self._reading() as connection:
            rows = [
                dict(r._mapping) for r in connection.execute(sa.select(frames).where(frames.c.id == frame_id))
            ]
            return self._with_classes(connection, rows)[0] if rows else None

    def rates(self, start: float, end: float, bucket_s: float = 60.0, line: str | None = None) -> list[dict]:
        """Per bucket of ``bucket_s`` seconds (a whole number of minutes) in [start, end), by whole
        minutes: frames judged, and frames with each class present. Empty buckets are left out."""
        if bucket_s < 60 or bucket_s % 60:
            raise ValueError(f"the bucket must be a whole number of minutes, got {bucket_s} s")
        per = int(bucket_s // 60)
        bucket = self._bucket(minutes.c.minute, per).label("bucket")  # in buckets since the epoch
        columns = [bucket, sa.func.sum(minutes.c.judged).label("frames")]
        columns += [sa.func.sum(minutes.c[f"class_{c}"]).label(f"class_{c}") for c in CLASS_IDS]
        conditions = self._minute_range(start, end, line)
        statement = sa.select(*columns).where(*conditions).group_by(bucket).order_by(bucket)
        with self._reading() as connection:
            return [
                {
                    "start": float(row.bucket) * bucket_s,
                    "frames": int(row.frames),
                    "classes": {c: int(getattr(row, f"class_{c}") or 0) for c in CLASS_IDS},
                }
                for row in connection.execute(statement)
                if row.frames
            ]

    @staticmethod
    def _minute_range(start: float | None, end: float | None, line: str | None) -> list:
        conditions = []
        if start is not None:
            conditions.append(minutes.c.minute >= math.floor(start / 60))
        if end is not None:
            conditions.append(minutes.c.minute < math.ceil(end / 60))
        if line is not None:
            conditions.append(minutes.c.line == line)
        return conditions

    @staticmethod
    def _bucket(column, size: int):
        # SQLAlchemy's // is floor division on integers on both databases.
        return column // size if size > 1 else column

    def aggregates(
        self, start: float | None = None, end: float | None = None, line: str | None = None
    ) -> dict:
        """Over [start, end), by whole minutes: the frame counts by status, and per class the
        frames with it present, its rate among judged frames and its mean area where present."""
        columns = [sa.func.coalesce(sa.func.sum(minutes.c[name]), 0) for name in COUNTS]
        with self._reading() as connection:
            totals = dict(
                zip(
                    COUNTS,
                    connection.execute(
                        sa.select(*columns).where(*self._minute_range(start, end, line))
                    ).one(),
                    strict=True,
                )
            )
        judged = int(totals["judged"])
        classes = {}
        for class_id in CLASS_IDS:
            present = int(totals[f"class_{class_id}"])
            classes[class_id] = {
                "frames": present,
                "rate": present / judged if judged else 0.0,
                "mean_area": int(totals[f"area_{class_id}"]) / present if present else 0.0,
            }
        return {"frames": {status: int(totals[status]) for status in STATUSES}, "classes": classes}

    def window_rate(self, line: str, class_id: int, since: float) -> tuple[int, int]:
        """(judged frames, frames with ``class_id`` present) of ``line`` since ``since``."""
        present = sa.case((frames.c.defects.op("&")(1 << (class_id - 1)) != 0, 1), else_=0)
        statement = sa.select(sa.func.count(), sa.func.sum(present)).where(
            frames.c.line == line, frames.c.judged_at >= since, frames.c.status == "judged"
        )
        with self._reading() as connection:
            total, hits = connection.execute(statement).one()
        return int(total), int(hits or 0)

    def open_alarms(self, line: str | None = None) -> list[dict]:
        statement = sa.select(alarms).where(alarms.c.cleared_at.is_(None))
        if line is not None:
            statement = statement.where(alarms.c.line == line)
        with self._reading() as connection:
            return [dict(r._mapping) for r in connection.execute(statement.order_by(alarms.c.id))]

    def recent_alarms(self, limit: int = 20) -> list[dict]:
        with self._reading() as connection:
            rows = connection.execute(sa.select(alarms).order_by(alarms.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def watchers(self) -> list[dict]:
        with self._reading() as connection:
            return [
                dict(r._mapping) for r in connection.execute(sa.select(watchers).order_by(watchers.c.line))
            ]

    def lines(self) -> list[str]:
        """Every line with a watcher or a frame. The page asks on every poll, so the frames' lines
        are found by hopping along the line index (one lookup per line: 0.6 ms on 300,000 frames,
        where SELECT DISTINCT read every entry, 16 ms)."""
        with self._reading() as connection:
            return sorted(
                {r[0] for r in connection.execute(sa.select(watchers.c.line))}
                | {r[0] for r in connection.execute(_LINES_BY_INDEX)}
            )

    def count(self) -> int:
        with self._reading() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(frames)).scalar_one())

    def judged_between(self, start: float, end: float, line: str | None = None) -> tuple[int, float | None]:
        """(frames judged in [start, end), the first one's judging time or None) of ``line`` or of
        every line: the page's rate over the time a window actually observed. Exact to the frame,
        where ``minutes`` counts whole minutes; a range of minutes reads a few thousand index entries."""
        conditions = [frames.c.judged_at >= start, frames.c.judged_at < end, frames.c.status == "judged"]
        if line is not None:
            conditions.append(frames.c.line == line)
        statement = sa.select(sa.func.count(), sa.func.min(frames.c.judged_at)).where(*conditions)
        with self._reading() as connection:
            count, first = connection.execute(statement).one()
        return int(count), None if first is None else float(first)


# The distinct lines of frames, one index lookup each (a "skip scan" that neither database does by
# itself for SELECT DISTINCT): the smallest line, then the smallest one after it, and so on.
_LINES_BY_INDEX = sa.text(
    "WITH RECURSIVE hop(line) AS (SELECT min(line) FROM frames UNION ALL "
    "SELECT (SELECT min(line) FROM frames WHERE line > hop.line) FROM hop WHERE hop.line IS NOT NULL) "
    "SELECT line FROM hop WHERE line IS NOT NULL"
)


def _before(judged_at, frame_id, last: float, before_id: int):
    """Rows after (``last``, ``before_id``) in newest-first order."""
    return sa.or_(judged_at < last, sa.and_(judged_at == last, frame_id < before_id))


def _count(counts: dict, record: FrameRecord) -> None:
    """Add ``record`` to the per-(line, minute) counts of a batch."""
    added = counts.setdefault((record.line, math.floor(record.judged_at / 60)), {})
    added[record.status] = added.get(record.status, 0) + 1
    for c in record.classes:
        if c["area"] > 0:
            added[f"class_{c['class_id']}"] = added.get(f"class_{c['class_id']}", 0) + 1
            added[f"area_{c['class_id']}"] = added.get(f"area_{c['class_id']}", 0) + int(c["area"])


class _Reading:
    def __init__(self, log: InspectionLog):
        self.log, self.connection = log, None

    def __enter__(self):
        try:
            self.connection = self.log.engine.connect()
        except SQLAlchemyError as err:
            raise LogError(f"{self.log.name}: cannot read the inspection log ({_reason(err)})") from err
        return self.connection

    def __exit__(self, kind, error, _traceback):
        self.connection.close()
        if isinstance(error, SQLAlchemyError):
            raise LogError(f"{self.log.name}: cannot read the inspection log ({_reason(error)})") from error
        return False


def _racing(err: SQLAlchemyError) -> bool:
    """Whether a failed migration may be another process's migration of the same log."""
    text = str(getattr(err, "orig", None) or err).lower()
    return any(
        word in text for word in ("locked", "busy", "already exists", "duplicate", "unique", "deadlock")
    )


def _reason(err: SQLAlchemyError) -> str:
    """The database's own words (``database is locked``, ``disk I/O error``), without SQLAlchemy's
    statement dump."""
    if isinstance(err, DBAPIError | OperationalError) and err.orig is not None:
        return str(err.orig).strip().splitlines()[0]
    return str(err).splitlines()[0]


def bulk_fill(log: InspectionLog, rows: int, start: float, rate_hz: float, seed: int = 0) -> None:
    """Synthetic frames, ``rows`` of them from ``start`` at ``rate_hz``, written in bulk (the
    search bench's million-row log). About a fifth carry a defect; RLEs are short."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = 20_000
    with log.engine.begin() as connection:
        first = connection.execute(sa.select(sa.func.coalesce(sa.func.max(frames.c.id), 0))).scalar_one()
    for offset in range(0, rows, chunk):
        count = min(chunk, rows - offset)
        ids = np.arange(first + offset + 1, first + offset + count + 1)
        times = start + (offset + np.arange(count)) / rate_hz
        present = rng.random((count, len(CLASS_IDS))) < np.array([0.06, 0.02, 0.12, 0.03])
        areas = np.where(present, rng.integers(50, 40_000, (count, len(CLASS_IDS))), 0)
        probs = np.where(present, rng.uniform(0.5, 1, present.shape), rng.uniform(0, 0.5, present.shape))
        defects = (present * (1 << np.arange(len(CLASS_IDS)))).sum(1)
        frame_rows = [
            {
                "id": int(i),
                "source": "/line/bench",
                "line": "bench",
                "name": f"{i:09d}.jpg",
                "size": 150_000,
                "mtime_ns": int(t * 1e9),
                "path": f"/line/bench/{i:09d}.jpg",
                "status": "judged",
                "reason": None,
                "seen_at": float(t) - 0.2,
                "arrived_at": float(t) - 0.2,
                "judged_at": float(t),
                "latency_ms": 200.0,
                "model": "bench",
                "defects": int(d),
            }
            for i, t, d in zip(ids, times, defects, strict=True)
        ]
        detection_rows = [
            {
                "frame_id": int(i),
                "class_id": c,
                "judged_at": float(times[k]),
                "probability": float(probs[k, c - 1]),
                "area": int(areas[k, c - 1]),
                "regions": int(present[k, c - 1]),
                "boxes": "[]" if not present[k, c - 1] else "[[100, 20, 200, 80]]",
                "rle": "" if not present[k, c - 1] else f"{1 + 256 * 100} {math.isqrt(int(areas[k, c - 1]))}",
            }
            for k, i in enumerate(ids)
            for c in CLASS_IDS
        ]
        counts: dict = {}
        for row, areas_of in zip(frame_rows, areas, strict=True):
            added = counts.setdefault(("bench", math.floor(row["judged_at"] / 60)), {})
            added["judged"] = added.get("judged", 0) + 1
            for c in CLASS_IDS:
                if areas_of[c - 1]:
                    added[f"class_{c}"] = added.get(f"class_{c}", 0) + 1
                    added[f"area_{c}"] = added.get(f"area_{c}", 0) + int(areas_of[c - 1])
        with log.engine.begin() as connection:
            connection.execute(frames.insert(), frame_rows)
            connection.execute(detections.insert(), detection_rows)
            for (line, minute), added in counts.items():
                connection.execute(log._add_counts(line, minute, added))
