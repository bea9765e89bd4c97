"""The inspection log's writes: verdicts, heartbeats, retention, alarms, bulk fills for benches.

A mixin of :class:`steel_defect.line.log.InspectionLog`, which gives it ``_writing`` and ``name``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from steel_defect.constants import CLASS_IDS
from steel_defect.line.log.schema import (
    COUNTS,
    STATUSES,
    FrameRecord,
    LogError,
    alarms,
    detections,
    explain_error,
    frames,
    minutes,
    pruned,
    watchers,
)
from steel_defect.pause import pause_point


class LogWrites:
    """Every write of the log (each one transaction)."""

    def forget(self, source: str, identities: Iterable[tuple[str, int, int]]) -> int:
        """Drop these pruned ``identities`` of ``source`` (their files left its folder); how many went."""
        gone = sorted(set(identities))
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
            raise LogError(f"{self.name}: cannot write the inspection log ({explain_error(err)})") from err
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

    def repath(self, source: str, identity: tuple[str, int, int], path: str, reason: str) -> None:
        """Set where the logged frame of ``identity`` (name, size, mtime_ns) lies, and why."""
        name, size, mtime_ns = identity
        try:
            with self._writing() as connection:
                connection.execute(
                    frames.update()
                    .where(
                        frames.c.source == source,
                        frames.c.name == name,
                        frames.c.size == size,
                        frames.c.mtime_ns == mtime_ns,
                    )
                    .values(path=path, reason=reason)
                )
        except SQLAlchemyError as err:
            raise LogError(f"{self.name}: cannot write the inspection log ({explain_error(err)})") from err

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
            raise LogError(f"{self.name}: cannot write the inspection log ({explain_error(err)})") from err
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
            raise LogError(f"{self.name}: cannot write the inspection log ({explain_error(err)})") from err

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
            raise LogError(f"{self.name}: cannot prune the inspection log ({explain_error(err)})") from err

    def raise_alarm(self, **fields) -> int:
        with self._writing() as connection:
            return connection.execute(alarms.insert().values(**fields).returning(alarms.c.id)).scalar_one()

    def clear_alarm(self, alarm_id: int, at: float) -> None:
        with self._writing() as connection:
            connection.execute(alarms.update().where(alarms.c.id == alarm_id).values(cleared_at=at))

    def note_alarm(self, alarm_id: int, notified: str) -> None:
        with self._writing() as connection:
            connection.execute(alarms.update().where(alarms.c.id == alarm_id).values(notified=notified))


def _count(counts: dict, record: FrameRecord) -> None:
    """Add ``record`` to the per-(line, minute) counts of a batch."""
    added = counts.setdefault((record.line, math.floor(record.judged_at / 60)), {})
    added[record.status] = added.get(record.status, 0) + 1
    for c in record.classes:
        if c["area"] > 0:
            added[f"class_{c['class_id']}"] = added.get(f"class_{c['class_id']}", 0) + 1
            added[f"area_{c['class_id']}"] = added.get(f"area_{c['class_id']}", 0) + int(c["area"])


def bulk_fill(log: LogWrites, rows: int, start: float, rate_hz: float, seed: int = 0) -> None:
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
