"""The labelling page's model-side helpers: the queue built in the background, the doubt heat maps.

    job = QueueBuild(store, folder, predictor, network_lock)
    job.start()                      # False when one already runs
    job.status()                     # {"state", "done", "total", "eta_s", ...}: GET /api/label/queue
    maps = DoubtMaps(predictor, network_lock)
    maps.png(name, frame, class_id)  # the class's probability under its threshold, a faint RGBA PNG

The queue build is a thread of the page's server, not a process with a row: it writes only the
queue and proposals (each in its own transaction, as ``labels queue`` does), a server stopped
mid-way leaves the database as it was, and the next ``label`` builds it again. The first run of
a database has no queue to show, so the page says how far the build is instead of "no queue".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import cv2
import numpy as np

from steel_defect.constants import CLASS_COLORS, CLASS_IDS
from steel_defect.labels.queue import score_queue

log = logging.getLogger(__name__)
HEAT_SCALE = 2  # the heat map is sent at half the frame's size: a faint guide, a quarter of the bytes
HEAT_ALPHA = 200  # opacity (of 255) of a pixel at the threshold; the page dims the layer further
CACHED_FRAMES = 16  # probability maps kept, 1.6 MB each: the frames a labeller goes back and forth on
NO_MODEL_HINT = (
    "No model yet, so no pre-labels and no queue: train a version on the labels (Train on the "
    "labels, below, or `steel-defect labels train --db {db}`), or start the page with "
    "`--postprocessing WORK/postprocessing.yml`. The queue is then built in the background."
)


class QueueBuild:
    """Score the queue in a background thread of the page, with its progress for the page to poll."""

    def __init__(
        self, store, folder, predictor, network_lock: threading.Lock, batch_size: int = 4, version=None
    ):
        """``version``: the name its proposals and queue take (default: the weights' digest)."""
        self.store, self.folder, self.predictor = store, folder, predictor
        self.network_lock, self.batch_size, self.version = network_lock, batch_size, version
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = {"state": "idle", "done": 0, "total": None, "started": None, "error": None}

    def start(self) -> bool:
        """Start a build; False when one is running already (one at a time)."""
        with self._lock:
            if self._state["state"] == "running":
                return False
            self._state = {
                "state": "running",
                "done": 0,
                "total": None,
                "started": time.monotonic(),
                "error": None,
                "summary": None,
            }
        self.thread = threading.Thread(target=self._run, name="label-queue", daemon=True)
        self.thread.start()
        return True

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._state.update(done=done, total=total)

    def _run(self) -> None:
        try:
            summary = score_queue(
                self.store,
                self.folder,
                self.predictor,
                self.batch_size,
                progress=self._progress,
                network_lock=self.network_lock,
                version=self.version,
            )
        except Exception as err:  # the page must say the build failed, not poll a "running" for ever
            log.exception("building the queue failed")
            with self._lock:
                self._state.update(state="failed", error=f"{type(err).__name__}: {err}")
            return
        log.info("queue built: %d frames scored by %s", summary["scored"], summary["model_version"])
        with self._lock:
            self._state.update(state="done", summary=summary)

    def status(self) -> dict:
        """``{"state": idle|running|done|failed, "done", "total", "seconds", "eta_s", "error"}``."""
        with self._lock:
            state = dict(self._state)
        started = state.pop("started")
        seconds = None if started is None else time.monotonic() - started
        done, total = state["done"], state["total"]
        eta = None
        if state["state"] == "running" and done and total:
            eta = round(seconds / done * (total - done), 1)
        return {**state, "seconds": None if seconds is None else round(seconds, 1), "eta_s": eta}


def heat_png(levels: np.ndarray, threshold: float, color: str, scale: int = HEAT_SCALE) -> bytes:
    """A class's probability ``levels`` (uint8 (H, W), p * 255) as an RGBA PNG of size (H/scale,
    W/scale): the class's colour, opacity rising with p up to the threshold (``HEAT_ALPHA``
    there, and above it, where the mask is anyway), so the doubt under the threshold shows."""
    height, width = levels.shape
    small = cv2.resize(levels, (width // scale, height // scale), interpolation=cv2.INTER_AREA)
    ratio = np.clip(small.astype(np.float32) / max(1.0, threshold * 255.0), 0.0, 1.0)
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    bgra = np.empty((*small.shape, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = blue, green, red
    bgra[..., 3] = np.rint(ratio * HEAT_ALPHA).astype(np.uint8)
    ok, data = cv2.imencode(".png", bgra)
    if not ok:
        raise RuntimeError("PNG encoding of the heat map failed")
    return data.tobytes()


class DoubtMaps:
    """Each frame's probability maps from the page's predictor, computed on demand and cached."""

    def __init__(self, predictor, network_lock: threading.Lock, cached: int = CACHED_FRAMES):
        self.predictor, self.network_lock, self.cached = predictor, network_lock, cached
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def levels(self, name: str, frame: np.ndarray) -> np.ndarray:
        """(4, H, W) uint8: the pipeline's probability levels of ``frame`` (the segmenter runs
        even where a gate is closed: the doubt is what is shown)."""
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
        with self.network_lock:
            levels = self.predictor.predict([frame], skip_gated=False)[0].levels
        with self._lock:
            self._cache[name] = levels
            while len(self._cache) > self.cached:
                self._cache.popitem(last=False)
        return levels

    def png(self, name: str, frame: np.ndarray, class_id: int) -> bytes:
        index = CLASS_IDS.index(class_id)
        threshold = self.predictor.post.classes[index].threshold
        return heat_png(self.levels(name, frame)[index], threshold, CLASS_COLORS[class_id])
