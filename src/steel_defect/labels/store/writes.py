"""The labels database's writes: frames, proposals, saves, imports, restores, the queue.

A mixin of :class:`steel_defect.labels.store.LabelStore`, which gives it ``_write`` (one
transaction, the write lock taken first) and ``_frame``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from steel_defect.constants import CLASS_IDS, NUM_CLASSES
from steel_defect.labels.store.schema import (
    DONE,
    LABELLED,
    STATUSES,
    FrameState,
    ImportConflict,
    InvalidMasks,
    StaleSave,
    canonical,
    check_masks,
    now,
    origin_of,
)
from steel_defect.pause import pause_point


class LabelWrites:
    """Every write of the labels database, each one transaction."""

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

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
            if status == "defect-free" and any(masks):
                raise InvalidMasks(
                    f"{name}: saved as defect-free with a mask drawn; clear the masks or confirm them"
                )
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
                same = [canonical(a) for a in state.masks] == [canonical(b) for b in masks]
                status = "confirmed" if any(masks) else "defect-free"
                if state.version > 0 and same and state.status in LABELLED:
                    counts["unchanged"] += 1
                    continue
                if state.version > 0 and not same:
                    conflicts.append(name)
                plan.append((state, masks, status))
            if conflicts and not replace:
                raise ImportConflict(conflicts)
            counts["replaced"] = len(conflicts)
            for state, masks, status in plan:
                db.executemany(
                    "INSERT OR REPLACE INTO masks VALUES (?, ?, ?, 'imported', NULL, ?)",
                    ((state.name, c, rle, stamp) for c, rle in zip(CLASS_IDS, masks, strict=True)),
                )
                db.execute(
                    "UPDATE frames SET status = ?, version = version + 1, model_version = NULL, "
                    "updated_at = ? WHERE name = ?",
                    (status, stamp, state.name),
                )
                db.execute("UPDATE queue SET done = 1 WHERE frame = ?", (state.name,))
                db.execute(
                    "INSERT INTO history "
                    "(frame, version, status, masks, origins, model_version, source, saved_at) "
                    "VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                    (
                        state.name,
                        state.version + 1,
                        status,
                        json.dumps(masks),
                        json.dumps(["imported"] * NUM_CLASSES),
                        source,
                        stamp,
                    ),
                )
                counts["saved"] += 1
        return counts

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

    def set_queue(self, ranked: list[tuple[str, float, dict]], model_version: str) -> None:
        """Replace the queue with ``(frame, score, detail)`` in the order given (first: label first)."""
        stamp = now()
        with self._write() as db:
            db.execute("DELETE FROM queue")
            db.executemany(
                f"INSERT INTO queue SELECT ?, ?, ?, ?, ?, ?, status IN {DONE} FROM frames WHERE name = ?",
                (
                    (name, rank, float(score), json.dumps(detail), model_version, stamp, name)
                    for rank, (name, score, detail) in enumerate(ranked)
                ),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('queue_model', ?)", (model_version,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('queue_scored_at', ?)", (stamp,))
