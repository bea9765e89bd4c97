"""The labels database's reads: a frame as the page opens it, the history, the queue's next frame, stats.

A mixin of :class:`steel_defect.labels.store.LabelStore`, which gives it ``_read``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.labels.store.schema import (
    LABELLED,
    ORIGINS,
    STATUSES,
    FrameState,
    Stats,
    UnknownFrame,
)


class LabelReads:
    """Every read of the labels database."""

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

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

    def confirmed(self) -> Iterator[tuple[str, list[str]]]:
        """``(name, four RLEs)`` of every labelled frame (confirmed or defect-free), by name."""
        rows = self._read(
            "SELECT f.name, m.class_id, m.rle FROM frames f JOIN masks m ON m.frame = f.name "
            f"WHERE f.status IN {LABELLED} ORDER BY f.name, m.class_id"
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

    def frame_list(self, status: str | None = None) -> list[dict]:
        """Every frame (or those of ``status``) in queue order, the unscored after by name: its
        status, save version, the classes it holds (saved masks once saved, else the proposal's),
        and its queue rank, score and class in doubt (None when not queued). One query: the page's
        frame list."""
        where, params = ("WHERE f.status = ?", (status,)) if status else ("", ())
        rows = self._read(
            "SELECT f.name, f.status, f.version, q.rank, q.score, q.detail, "
            "(SELECT group_concat(class_id) FROM masks m WHERE m.frame = f.name AND m.rle != ''), "
            "(SELECT group_concat(class_id) FROM proposals p WHERE p.frame = f.name AND p.rle != ''), "
            "EXISTS (SELECT 1 FROM proposals p WHERE p.frame = f.name) "
            f"FROM frames f LEFT JOIN queue q ON q.frame = f.name {where} "
            "ORDER BY q.rank IS NULL, q.rank, f.name",
            params,
        )
        out = []
        for name, state, version, rank, score, detail, saved, proposed, has_proposal in rows:
            classes = saved if version > 0 else proposed
            doubt = (json.loads(detail).get("doubt") or {}) if detail else {}
            out.append(
                {
                    "name": name,
                    "status": state,
                    "version": version,
                    "classes": sorted(int(c) for c in classes.split(",")) if classes else [],
                    "proposed": bool(has_proposal),
                    "rank": rank,
                    "score": score,
                    "doubt_class": doubt.get("class_id"),
                }
            )
        return out

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

    def stats(self) -> Stats:
        by_status = dict.fromkeys(STATUSES, 0)
        by_status.update(dict(self._read("SELECT status, count(*) FROM frames GROUP BY status")))
        with_class = dict.fromkeys(CLASS_IDS, 0)
        with_class.update(
            dict(
                self._read(
                    "SELECT m.class_id, count(*) FROM masks m JOIN frames f ON f.name = m.frame "
                    f"WHERE f.status IN {LABELLED} AND m.rle != '' GROUP BY m.class_id"
                )
            )
        )
        origins = {c: dict.fromkeys(ORIGINS, 0) for c in CLASS_IDS}
        for class_id, origin, count in self._read(
            "SELECT m.class_id, m.origin, count(*) FROM masks m JOIN frames f ON f.name = m.frame "
            f"WHERE f.status IN {LABELLED} GROUP BY m.class_id, m.origin"
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
