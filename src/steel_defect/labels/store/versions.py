"""The labels database's model versions, their promotions and the trainings that make them.

A mixin of :class:`steel_defect.labels.store.LabelStore` (``_write``, ``_read``). A version is
what one training on the labels produced: the digest of the labels it learnt, its frames per
class, its out-of-fold Dice beside empty masks and the tuned pipeline's path. Promotions are
append-only: the promoted version is the latest promotion's, and a rollback is one more
promotion of an older version, so the record says who judged the line when.

    name = store.record_version(recipe="real", labels_digest=d, counts=c, out_of_fold=o,
                                spec="work/postprocessing.yml", seconds=812.0)
    store.promote(name, "first version")
    store.promoted()["spec"]               # what label, queue, serve and watch load

A training is one row from start to end (``running`` -> ``done``, ``failed`` or ``cancelled``)
with its progress, so the page and a restarted server read the same record.
"""

from __future__ import annotations

import hashlib
import json

from steel_defect.errors import UserError
from steel_defect.labels.store.schema import now

TRAINING_STATES = ("running", "done", "failed", "cancelled")


class UnknownVersion(UserError):
    def __init__(self, name: str, known: list[str]):
        listed = ", ".join(known) if known else "none yet: train one with `steel-defect labels train`"
        super().__init__(f"no model version {name!r} in the labels database (versions: {listed})")
        self.name = name


class TrainingRunning(UserError):
    """One training at a time: another is running (the API answers 409)."""

    def __init__(self, training: dict):
        super().__init__(
            f"training {training['id']} is running (pid {training['pid']}, since {training['started_at']}); "
            "wait for it or cancel it"
        )
        self.training = training


def _version(row) -> dict:
    name, created, recipe, digest, counts, oof, spec, line_spec, seconds, detail = row
    return {
        "name": name,
        "created_at": created,
        "recipe": recipe,
        "labels_digest": digest,
        "counts": json.loads(counts),
        "out_of_fold": json.loads(oof),
        "spec": spec,
        "line_spec": line_spec,
        "seconds": seconds,
        "detail": json.loads(detail),
    }


def _training(row) -> dict:
    id_, state, pid, host, started, finished, progress, version, log, error = row
    return {
        "id": id_,
        "state": state,
        "pid": pid,
        "host": host,
        "started_at": started,
        "finished_at": finished,
        "progress": json.loads(progress),
        "version": version,
        "log": log,
        "error": error,
    }


_VERSION_COLUMNS = (
    "name, created_at, recipe, labels_digest, counts, out_of_fold, spec, line_spec, seconds, detail"
)
_TRAINING_COLUMNS = "id, state, pid, host, started_at, finished_at, progress, version, log, error"


def labels_digest_of(labelled) -> str:
    """sha256 of ``(name, four RLEs)`` pairs in name order (:meth:`LabelVersions.labels_digest`)."""
    digest = hashlib.sha256()
    for name, masks in labelled:
        digest.update(json.dumps([name, masks]).encode())
    return digest.hexdigest()


def counts_of(labelled) -> dict:
    """``frames``, ``defect_free`` and ``per_class`` of ``(name, four RLEs)`` pairs."""
    per_class = dict.fromkeys(range(1, 5), 0)
    frames = defect_free = 0
    for _, masks in labelled:
        frames += 1
        defect_free += not any(masks)
        for c, rle in enumerate(masks, start=1):
            per_class[c] += bool(rle)
    return {
        "frames": frames,
        "defect_free": defect_free,
        "per_class": {str(c): n for c, n in per_class.items()},
    }


class LabelVersions:
    """Model versions, promotions and trainings, each write one transaction."""

    # ---------- the labels a version learns ----------

    def labels_digest(self) -> str:
        """sha256 of the labelled frames (confirmed or defect-free) and their masks: two
        trainings on the same digest learnt the same labels."""
        return labels_digest_of(self.confirmed())

    # ---------- versions ----------

    def record_version(
        self,
        recipe: str,
        labels_digest: str,
        counts: dict,
        out_of_fold: dict,
        spec: str,
        seconds: float,
        line_spec: str | None = None,
        detail: dict | None = None,
        promote_reason: str | None = None,
        training_id: int | None = None,
    ) -> str:
        """Record a trained version; its name (``v1``, ``v2``, ... in the order recorded).

        With ``promote_reason`` it is promoted, and with ``training_id`` that training ends as
        ``done`` with it, in the same transaction: a training cancelled at any point leaves
        either no version or a finished one, never a version its training does not name."""
        with self._write() as db:
            number = db.execute("SELECT count(*) FROM model_versions").fetchone()[0] + 1
            name = f"v{number}"
            db.execute(
                f"INSERT INTO model_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    now(),
                    recipe,
                    labels_digest,
                    json.dumps(counts),
                    json.dumps(out_of_fold),
                    str(spec),
                    None if line_spec is None else str(line_spec),
                    float(seconds),
                    json.dumps(detail or {}),
                ),
            )
            if promote_reason is not None:
                db.execute(
                    "INSERT INTO promotions (version, promoted_at, reason) VALUES (?, ?, ?)",
                    (name, now(), promote_reason),
                )
            if training_id is not None:
                db.execute(
                    "UPDATE trainings SET state = 'done', version = ?, finished_at = ? "
                    "WHERE id = ? AND state = 'running'",
                    (name, now(), training_id),
                )
        return name

    def versions(self) -> list[dict]:
        """Every version, oldest first, each with ``promoted`` (the one in use now)."""
        current = self.promoted()
        rows = self._read(f"SELECT {_VERSION_COLUMNS} FROM model_versions ORDER BY rowid")
        out = [_version(r) for r in rows]
        for v in out:
            v["promoted"] = current is not None and v["name"] == current["name"]
        return out

    def version(self, name: str) -> dict:
        rows = self._read(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = ?", (name,))
        if not rows:
            known = [r[0] for r in self._read("SELECT name FROM model_versions ORDER BY rowid")]
            raise UnknownVersion(name, known)
        return _version(rows[0])

    def promote(self, name: str, reason: str) -> dict:
        """Make ``name`` the version in use (a rollback is this, with an older one); returns it."""
        version = self.version(name)
        with self._write() as db:
            db.execute(
                "INSERT INTO promotions (version, promoted_at, reason) VALUES (?, ?, ?)",
                (name, now(), reason),
            )
        return version

    def promoted(self) -> dict | None:
        """The version in use: the latest promotion's; None before any."""
        rows = self._read("SELECT version, promoted_at, reason FROM promotions ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        version = self.version(rows[0][0])
        version["promoted_at"], version["promotion_reason"] = rows[0][1], rows[0][2]
        return version

    def promotions(self) -> list[dict]:
        rows = self._read("SELECT id, version, promoted_at, reason FROM promotions ORDER BY id")
        return [{"id": i, "version": v, "promoted_at": at, "reason": r} for i, v, at, r in rows]

    def labelled_counts(self) -> dict:
        """Frames a training would learn now: ``frames``, ``defect_free`` and ``per_class``."""
        return counts_of(self.confirmed())

    # ---------- trainings ----------

    def start_training(self, pid: int | None, host: str | None, log: str | None) -> int:
        """Record a training as running; :class:`TrainingRunning` while another one is."""
        with self._write() as db:
            rows = db.execute(f"SELECT {_TRAINING_COLUMNS} FROM trainings WHERE state = 'running'").fetchall()
            if rows:
                raise TrainingRunning(_training(rows[0]))
            cursor = db.execute(
                "INSERT INTO trainings (state, pid, host, started_at, log) VALUES ('running', ?, ?, ?, ?)",
                (pid, host, now(), log),
            )
            return cursor.lastrowid

    def set_training_pid(self, training_id: int, pid: int) -> None:
        with self._write() as db:
            db.execute("UPDATE trainings SET pid = ? WHERE id = ?", (pid, training_id))

    def training_progress(self, training_id: int, progress: dict) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE trainings SET progress = ? WHERE id = ? AND state = 'running'",
                (json.dumps(progress), training_id),
            )

    def finish_training(
        self, training_id: int, state: str, version: str | None = None, error: str | None = None
    ) -> None:
        """End a running training (a finished one keeps its first ending)."""
        if state not in TRAINING_STATES[1:]:
            raise ValueError(f"a training ends as one of {TRAINING_STATES[1:]}, not {state!r}")
        with self._write() as db:
            db.execute(
                "UPDATE trainings SET state = ?, version = ?, error = ?, finished_at = ? "
                "WHERE id = ? AND state = 'running'",
                (state, version, error, now(), training_id),
            )

    def training(self, training_id: int | None = None) -> dict | None:
        """Training ``training_id``, or the latest one; None when there is none."""
        if training_id is None:
            rows = self._read(f"SELECT {_TRAINING_COLUMNS} FROM trainings ORDER BY id DESC LIMIT 1")
        else:
            rows = self._read(f"SELECT {_TRAINING_COLUMNS} FROM trainings WHERE id = ?", (training_id,))
        return _training(rows[0]) if rows else None
