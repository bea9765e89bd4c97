"""The labelling page's background jobs: a training, and the re-scoring that follows a promotion.

    jobs = TrainingJobs(store, images, recipe="real")
    jobs.start()           # the row first, then `steel-defect labels train ... --training-id N`
    jobs.status()          # the latest training's row; a running row whose process is gone: failed
    jobs.cancel()          # SIGTERM to its process group, then the row is cancelled

    rescorer = Rescorer(store, folder, load_predictor)
    rescorer.follow()      # a promotion not re-scored yet: pre-labels and queue from that version
    rescorer.resume(name)  # at start: an interrupted re-scoring taken up
    rescorer.status()      # {state, done, total, eta_s, version}

A training is a process with a row (the ``trainings`` table of the labels database): the command
writes its progress there and ends the row itself, the server only starts it, reaps it and
cancels it. The row is what the page polls, so a server restarted in the middle finds the job
again: a live process is still running (and can be cancelled: it is its own process group), a
row left ``running`` by a process that is gone is recorded as failed with the reason. Why not a
thread of the server: a training takes minutes to hours, would hold the server's GIL, and must
survive a restart of the page.

The re-scoring runs in the server (it swaps the page's model when done) and keeps its progress in
the database's ``meta`` table under ``rescore``, keyed on the promotion it follows, so a restart
takes up an interrupted one and never re-scores a promotion twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from steel_defect.errors import UserError
from steel_defect.labels.store import LabelStore, now

log = logging.getLogger(__name__)
ENDED = "the training process ended without finishing"
RESCORE_META = "rescore"
STARTING_S = 60.0  # a row without a pid yet: its server is between the insert and the process start


class NoTraining(UserError):
    """DELETE with nothing running (the API answers 409)."""


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _age_s(stamp: str) -> float:
    try:
        started = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return float("inf")
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - started).total_seconds()


def process_alive(pid: int, training_id: int) -> bool:
    """Whether ``pid`` is still training ``training_id``: not gone, not a zombie, and (where
    ``/proc`` says) still our command, not another program that was given the pid since."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge further
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal test is all there is
    if state in ("Z", "X"):
        return False  # exited; its parent (a server that is gone, or this one) has not reaped it
    try:
        return argv[argv.index(b"--training-id") + 1] == str(training_id).encode()
    except (ValueError, IndexError):
        return False


class TrainingJobs:
    """Start, watch and cancel ``steel-defect labels train`` for one labels database.

    ``recipe``, ``opts`` and ``epochs`` are the server's (``label --train-recipe``, ``--train-opts``,
    ``--train-epochs``; the page may name another recipe and opts);
    ``on_end(row)`` is called (in a reaper thread) when a training this server started ends."""

    def __init__(
        self,
        store: LabelStore,
        images: str | Path,
        recipe: str | None = None,
        opts: tuple[str, ...] | list[str] = (),
        epochs: int | None = None,
        on_end: Callable[[dict], None] | None = None,
        python: str = sys.executable,
        grace_s: float = 60.0,
    ):
        self.store = store
        self.images = Path(images).resolve()
        self.recipe = recipe
        self.opts = tuple(opts)
        self.epochs = epochs
        self.on_end = on_end
        self.python = python
        self.grace_s = grace_s
        self.host = socket.gethostname()
        self._children: dict[int, subprocess.Popen] = {}
        self._cancelling: set[int] = set()
        self._lock = threading.RLock()

    def command(self, training_id: int, recipe: str | None, opts: tuple[str, ...]) -> list[str]:
        db = self.store.path.resolve()
        argv = [self.python, "-m", "steel_defect.cli", "labels", "train", "--db", str(db)]
        argv += ["--images", str(self.images), "--training-id", str(training_id)]
        if recipe:
            argv += ["--recipe", recipe]
        if self.epochs:
            argv += ["--epochs", str(self.epochs)]
        if opts:
            argv += ["--opts", *opts]
        return argv

    def _log_path(self) -> Path:
        db = self.store.path.resolve()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return db.with_name(f"{db.stem}.training-{stamp}.log")

    def start(self, recipe: str | None = None, opts: list[str] | None = None) -> dict:
        """Start a training (the server's recipe and opts where not given); its row.
        :class:`TrainingRunning` while another one runs, here or under another server."""
        recipe = recipe or self.recipe
        opts = self.opts if opts is None else tuple(opts)
        with self._lock:
            self.status()  # a row left running by a dead process is failed now, not a 409 forever
            log_path = self._log_path()
            training_id = self.store.start_training(None, self.host, str(log_path))
            argv = self.command(training_id, recipe, opts)
            try:
                with open(log_path, "wb") as out:
                    out.write(f"$ {' '.join(argv)}\n".encode())
                    out.flush()
                    process = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            except OSError as err:
                self.store.finish_training(training_id, "failed", error=f"could not start {argv[0]}: {err}")
                raise UserError(f"could not start the training ({argv[0]}): {err}") from None
            self.store.set_training_pid(training_id, process.pid)
            self._children[training_id] = process
        threading.Thread(
            target=self._reap, args=(training_id, process), name=f"training-{training_id}", daemon=True
        ).start()
        log.info("training %d started (pid %d, log %s)", training_id, process.pid, log_path)
        return self.store.training(training_id)

    def _reap(self, training_id: int, process: subprocess.Popen) -> None:
        """Wait for a child (no zombie left), and end its row if the command did not."""
        code = process.wait()
        with self._lock:
            self._children.pop(training_id, None)
            cancelled = training_id in self._cancelling
            row = self.store.training(training_id)
            if row["state"] == "running":
                if cancelled:
                    self.store.finish_training(training_id, "cancelled", error="cancelled")
                else:
                    self.store.finish_training(
                        training_id, "failed", error=f"{ENDED} ({_exit_text(code)}); its log: {row['log']}"
                    )
        row = self.store.training(training_id)
        log.info("training %d ended: %s (%s)", training_id, row["state"], _exit_text(code))
        if self.on_end is not None:
            try:
                self.on_end(row)
            except Exception:  # the reaper must not die with the job it reaped
                log.exception("after training %d", training_id)

    def _running(self, row: dict) -> bool | None:
        """Whether a ``running`` row's process still runs; None where this host cannot tell."""
        process = self._children.get(row["id"])
        if process is not None:
            return process.poll() is None
        if row["pid"] is None:
            return _age_s(row["started_at"]) < STARTING_S
        if row["host"] and row["host"] != self.host:
            return None
        return process_alive(row["pid"], row["id"])

    def status(self) -> dict | None:
        """The latest training's row (None before any). A ``running`` row whose process is gone
        (a server restart, a kill -9) is recorded as failed here, with the reason."""
        with self._lock:
            row = self.store.training()
            if row is None or row["state"] != "running" or self._running(row) is not False:
                return row
            if row["id"] in self._children:
                return row  # it just exited: the reaper ends the row with the exit code
            pid = "never started" if row["pid"] is None else f"pid {row['pid']} is gone"
            error = f"{ENDED} ({pid}: the server restarted or the process was killed); its log: {row['log']}"
            self.store.finish_training(row["id"], "failed", error=error)
            log.warning("training %d: %s", row["id"], error)
            return self.store.training(row["id"])

    def cancel(self) -> dict:
        """SIGTERM to the running training's process group (the command marks its row cancelled),
        SIGKILL after ``grace_s``; the row is cancelled either way. :class:`NoTraining` when none runs."""
        with self._lock:
            row = self.status()
            if row is None or row["state"] != "running":
                raise NoTraining("no training is running (start one with POST /api/label/train)")
            training_id, pid = row["id"], row["pid"]
            process = self._children.get(training_id)
            self._cancelling.add(training_id)
            alive = pid is not None and (process is not None or self._running(row))
            if alive:
                self._signal(pid, signal.SIGTERM)
        if alive and not self._ended(row, process, self.grace_s):
            log.warning("training %d ignored SIGTERM for %g s: killing it", training_id, self.grace_s)
            self._signal(pid, signal.SIGKILL)
            self._ended(row, process, 10.0)
        self.store.finish_training(training_id, "cancelled", error="cancelled")
        return self.store.training(training_id)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)  # its own session: the group is the pid, workers included
        except ProcessLookupError:
            pass

    def _ended(self, row: dict, process: subprocess.Popen | None, timeout: float) -> bool:
        if process is not None:
            try:
                process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._running(row):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


class Rescorer:
    """Re-score the pre-labels and the queue with the promoted version, in a thread of the server.

    ``load_predictor(spec_path)`` builds the version's predictor; ``on_done(predictor, name)`` is
    called when the queue is stored (the page swaps its model there)."""

    def __init__(
        self,
        store: LabelStore,
        folder,
        load_predictor: Callable[[str], object],
        batch_size: int = 4,
        on_done: Callable[[object, str], None] | None = None,
        network_lock=None,
    ):
        self.store = store
        self.folder = folder
        self.load_predictor = load_predictor
        self.batch_size = batch_size
        self.on_done = on_done
        self.network_lock = network_lock
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self) -> dict | None:
        text = self.store.get_meta(RESCORE_META)
        return json.loads(text) if text else None

    def _write(self, record: dict) -> None:
        self.store.set_meta(RESCORE_META, json.dumps(record))

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def follow(self) -> bool:
        """Re-score when the latest promotion has not been (or its re-scoring was cut off by a
        restart); True when a re-scoring is running after the call."""
        with self._lock:
            if self.busy():
                return True
            promotions = self.store.promotions()
            if not promotions:
                return False
            latest = promotions[-1]
            record = self.record()
            if record and record.get("promotion") == latest["id"] and record["state"] != "running":
                return False
            self._thread = threading.Thread(
                target=self._run, args=(latest,), name=f"rescore-{latest['version']}", daemon=True
            )
            self._thread.start()
            return True

    def resume(self, current: str | None) -> bool:
        """At a server's start: take up a re-scoring that a restart cut off; and when the page
        already runs the promoted version (``current``, its name) record the promotion as followed
        instead of scoring twice, unless the stored queue is an older version's. A page started
        on another model (``label --postprocessing``) keeps it until a promotion made while it
        runs. True when a re-scoring runs after the call."""
        record = self.record()
        if record and record["state"] == "running":
            return self.follow()
        promotions = self.store.promotions()
        if current is None or not promotions or promotions[-1]["version"] != current:
            return False
        latest = promotions[-1]
        if record and record.get("promotion") == latest["id"]:
            return False
        if self.store.get_meta("queue_model") not in (None, current):
            return self.follow()  # the queue ranks frames by an older version
        # no queue yet (the page builds it) or this version's
        self._write({"promotion": latest["id"], "version": current, "state": "done", "loaded_at_start": True})
        return False

    def _run(self, promotion: dict) -> None:
        from steel_defect.labels.queue import score_queue

        name = promotion["version"]
        record = {"promotion": promotion["id"], "version": name, "state": "running", "done": 0, "total": None}
        record.update(started_at=now(), finished_at=None, eta_s=None, error=None)
        self._write(record)
        clock = time.monotonic()

        def progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - clock
            eta = elapsed / done * (total - done) if done else None
            record.update(done=done, total=total, eta_s=None if eta is None else round(eta, 1))
            self._write(record)

        try:
            predictor = self.load_predictor(self.store.version(name)["spec"])
            summary = score_queue(
                self.store,
                self.folder,
                predictor,
                self.batch_size,
                progress=progress,
                network_lock=self.network_lock,
                version=name,
            )
            if self.on_done is not None:
                self.on_done(predictor, name)
        except Exception as err:
            log.exception("re-scoring with %s failed", name)
            record.update(state="failed", error=f"re-scoring with {name} failed: {err}", finished_at=now())
            self._write(record)
            with self._lock:
                self._thread = None
            return
        record.update(state="done", eta_s=0, finished_at=now(), scored=summary["scored"])
        self._write(record)
        log.info("pre-labels and queue re-scored with %s (%d frames)", name, summary["scored"])
        with self._lock:
            self._thread = None
        self.follow()  # a promotion made meanwhile: its re-scoring starts now

    def status(self) -> dict:
        """``{state, done, total, eta_s, version, ...}``; ``idle`` before any re-scoring."""
        record = self.record()
        if record is None:
            return {"state": "idle", "done": 0, "total": None, "eta_s": None, "version": None}
        if record["state"] == "running" and not self.busy():
            record = {**record, "state": "interrupted"}  # a restart cut it off; follow() takes it up
        return {"done": 0, "total": None, "eta_s": None, "error": None, **record}
