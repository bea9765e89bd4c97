"""The line's model, following the labels database's promoted version (``watch --labels-db DB``).

    follow = PromotedModel("labels.sqlite", build=lambda spec: build_predictor(spec))
    first = follow.load()      # at start: the promoted version's predictor, or a UserError why not
    newer = follow.poll()      # between two batches: a newly promoted version, built; else None

A version judges with its distilled line pipeline (``line_spec``) where it has one, else with its
tuned pipeline (``spec``): the line wants the fast one. Each frame's row in the inspection log
names the version that judged it, as ``v2 (unet-resnet18:3f9a1c07b2)`` (:func:`versioned`): the
version, then the digest of the weights and post-processing that :func:`model_version` gives
every other model.

Why a swap happens only between batches, with the new model built beside the loop: one batch is
judged by one predictor from start to end, so no frame is judged by two versions or by none, and
the rows already handed to the log's writer thread carry the model they were judged with. The
new predictor is built (its spec read, its models checked against it, its backend chosen) in a
thread while the old one judges on, so a promotion never stalls the line for a model load; a
version whose pipeline does not build is logged with the reason and the old model judges on.

Why a read-only connection that never waits for a lock: the labelling server and ``labels
train`` write the labels database, and the loop must not stop for them. A locked or unreadable
database means the current model judges on and the next check (``check_s`` later) tries again,
logged once until it reads again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

from steel_defect.errors import UserError
from steel_defect.inference.verdict import model_version
from steel_defect.labels.store import LabelStore, LabelStoreError

log = logging.getLogger(__name__)

CHECK_S = 5.0  # how often the loop asks the labels database which version is promoted
_VERSIONED = re.compile(r"^(?P<version>\S+) \((?P<model>.*)\)$")


def versioned(version: str, predictor) -> str:
    """What the log's ``model`` column says of a frame a version judged: ``v2 (unet-...:3f9a1c07b2)``."""
    return f"{version} ({model_version(predictor)})"


def version_of(model: str | None) -> str | None:
    """The version named in a ``model`` of :func:`versioned`; None for a model given by path."""
    found = _VERSIONED.match(model or "")
    return found["version"] if found else None


def pipeline_of(version: dict) -> Path:
    """The YAML a version judges the line with: its line pipeline where it has one, else its spec."""
    return Path(version["line_spec"] or version["spec"])


@dataclass(frozen=True)
class Loaded:
    """A version's predictor, ready to judge."""

    version: str
    spec: Path
    predictor: object
    model: str  # what the log's model column says of the frames it judges


class PromotedModel:
    """The promoted version of one labels database, followed by a loop that judges frames.

    ``build(spec_path)`` makes a predictor of a tuned pipeline (the command's backend, device and
    threads); ``check_s``: seconds between two looks at the promotions; ``monotonic`` measures
    them. :meth:`poll` is called by one thread, the loop's."""

    def __init__(
        self,
        labels_db: str | Path,
        build: Callable[[Path], object],
        *,
        check_s: float = CHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.labels_db = Path(labels_db)
        self.build, self.check_s, self.monotonic = build, check_s, monotonic
        self.current: Loaded | None = None
        # Why the latest promotion is not the version judging (a pipeline that does not build),
        # for the page; None when it is.
        self.problem: str | None = None
        self._store: LabelStore | None = None
        self._seen: tuple[str, str] | None = None  # the latest promotion acted on
        self._last_check: float | None = None
        self._unreadable = False
        self._builder = ThreadPoolExecutor(1, "model-build")
        self._building: Future | None = None
        self._building_version: dict | None = None

    def load(self) -> Loaded:
        """The promoted version's predictor, built now (at start, when waiting is fine). A
        UserError naming the database when nothing is promoted or the version does not build."""
        with LabelStore.open(self.labels_db, create=False, readonly=True) as store:
            version = store.promoted()
        if version is None:
            raise UserError(
                f"{self.labels_db}: no model version is promoted yet; train one with "
                f"`steel-defect labels train --db {self.labels_db}` (or promote one with "
                f"`steel-defect labels promote --db {self.labels_db} VERSION`), or watch with "
                "--postprocessing instead of --labels-db"
            )
        self._seen = (version["name"], version["promoted_at"])
        try:
            self.current = self._build(version)
        except (UserError, OSError) as err:
            raise UserError(f"{self.labels_db}: {_cannot_build(version, err)}") from err
        log.info("judging with model version %s (%s)", self.current.version, self.current.spec)
        return self.current

    def poll(self) -> Loaded | None:
        """Between two batches: the newly promoted version once its predictor is built (judge
        the next batch with it); None to judge on with the current one. Never waits: not for a
        build, not for the database's lock."""
        if self._building is not None:
            return self._take_build()
        tick = self.monotonic()
        if self._last_check is not None and tick - self._last_check < self.check_s:
            return None
        self._last_check = tick
        version = self._promoted()
        if version is None or (version["name"], version["promoted_at"]) == self._seen:
            return None
        self._seen = (version["name"], version["promoted_at"])
        if self.current is not None and version["name"] == self.current.version:
            self.problem = None  # promoted back to the version judging: nothing to build
            return None
        log.info(
            "model version %s promoted (%s): building it while %s judges on",
            version["name"],
            version.get("promotion_reason") or "no reason given",
            self.current.version if self.current else "nothing",
        )
        self._building, self._building_version = self._builder.submit(self._build, version), version
        return None

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for a build in flight (tests; a clean stop); whether none is left."""
        building = self._building
        return building is None or not wait_for([building], timeout).not_done

    def close(self) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- inside ------------------------------------------------------------------------------

    def _build(self, version: dict) -> Loaded:
        spec = pipeline_of(version)
        predictor = self.build(spec)
        return Loaded(version["name"], spec, predictor, versioned(version["name"], predictor))

    def _take_build(self) -> Loaded | None:
        if not self._building.done():
            return None
        building, self._building = self._building, None
        try:
            loaded = building.result()
        except Exception as err:  # any failure to load a model: the line judges on with the old one
            judging = self.current.version if self.current else "nothing"
            self.problem = f"{_cannot_build(self._building_version, err)}; {judging} judges on"
            log.error("%s: %s", self.labels_db, self.problem)
            return None
        latest = self._promoted()  # None when unreadable now: the build stands
        if latest is not None and (latest["name"], latest["promoted_at"]) != self._seen:
            # Promoted away while it was built (a rollback, a newer version): it must not judge
            # a batch; the next look acts on the promotion that replaced it.
            log.info("model version %s built, but %s is promoted now", loaded.version, latest["name"])
            self._last_check = None
            return None
        self.current, self.problem = loaded, None
        log.info("model version %s judges from the next batch on (%s)", loaded.version, loaded.spec)
        return loaded

    def _promoted(self) -> dict | None:
        """The promoted version, or None when the database cannot be read now (logged once)."""
        try:
            if self._store is None:
                self._store = LabelStore.open(self.labels_db, create=False, readonly=True, busy_timeout_ms=0)
            version = self._store.promoted()
        except (LabelStoreError, UserError) as err:
            if self._store is not None:  # reopened at the next check: the file may have been replaced
                self._store.close()
                self._store = None
            if not self._unreadable:
                judging = self.current.version if self.current else "nothing"
                log.warning("%s; %s judges on, checking again every %g s", err, judging, self.check_s)
            self._unreadable = True
            return None
        if self._unreadable:
            log.info("%s: readable again, following its promotions", self.labels_db)
        self._unreadable = False
        return version


def _cannot_build(version: dict, err: Exception) -> str:
    return f"model version {version['name']} does not load from {pipeline_of(version)}: {err}"
