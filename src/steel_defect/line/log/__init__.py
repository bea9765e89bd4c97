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

The package: :mod:`.schema` (tables, records, errors), :mod:`.writes` and :mod:`.reads` (every
query, as the two halves of :class:`InspectionLog`), and this module, which opens and migrates
the log and is the one face the rest of the code imports.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from steel_defect.line.log.reads import LogReads, Reading
from steel_defect.line.log.schema import (
    BUSY_TIMEOUT_S,
    IMMEDIATE,
    STATUSES,
    FrameRecord,
    LogError,
    Search,
    database_url,
    detections,
    display_name,
    explain_error,
    frames,
    is_migration_race,
    metadata,
    sqlite_begin,
    sqlite_pragmas,
)
from steel_defect.line.log.writes import LogWrites, bulk_fill

MIGRATIONS = Path(__file__).parent.parent / "migrations"
__all__ = [
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "STATUSES",
    "FrameRecord",
    "InspectionLog",
    "LogError",
    "Search",
    "bulk_fill",
    "database_url",
    "detections",
    "display_name",
    "frames",
    "metadata",
]


class InspectionLog(LogReads, LogWrites):
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
            sa.event.listen(engine, "connect", sqlite_pragmas)
            sa.event.listen(engine, "begin", sqlite_begin)
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
            if not is_migration_race(err):
                raise LogError(f"{self.name}: cannot open the inspection log ({explain_error(err)})") from err
            deadline = time.monotonic() + self.busy_timeout_s
            while time.monotonic() < deadline:
                try:
                    if self.revision() == scripts.get_current_head():
                        return
                except SQLAlchemyError:
                    pass
                time.sleep(0.05)
            raise LogError(f"{self.name}: cannot open the inspection log ({explain_error(err)})") from err

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

    def _reading(self):
        """A connection for reads; an unreadable log raises :class:`LogError` naming it."""
        return Reading(self)
