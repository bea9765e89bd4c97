"""The inspection log's reads: what is done, searches, rates, aggregates, watchers, alarms.

A mixin of :class:`steel_defect.line.log.InspectionLog`, which gives it ``_reading`` and ``name``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from steel_defect.constants import CLASS_IDS
from steel_defect.line.log.schema import (
    COUNTS,
    IN_CHUNK,
    STATUSES,
    LogError,
    Search,
    alarms,
    detections,
    explain_error,
    frames,
    minutes,
    pruned,
    watchers,
)


class LogReads:
    """Every read of the log, behind functions named after what they answer."""

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


class Reading:
    def __init__(self, log: LogReads):
        self.log, self.connection = log, None

    def __enter__(self):
        try:
            self.connection = self.log.engine.connect()
        except SQLAlchemyError as err:
            raise LogError(f"{self.log.name}: cannot read the inspection log ({explain_error(err)})") from err
        return self.connection

    def __exit__(self, kind, error, _traceback):
        self.connection.close()
        if isinstance(error, SQLAlchemyError):
            raise LogError(
                f"{self.log.name}: cannot read the inspection log ({explain_error(error)})"
            ) from error
        return False
