"""The web app's model: one :class:`Predictor` behind a lock, and the recent results.

The page re-thresholds without running the network again, so each prediction keeps its
probability maps (uint8, p * 255, 1.6 MB a frame: the quantisation the threshold search
tunes on, and the levels every mask is thresholded from) in a store bounded in count and in
MB, oldest dropped first. Masks, reports, the submission CSV and the mask PNGs are computed from
those maps and the gate's probabilities (classifier or hard head) with the same
:func:`postprocess` as ``steel-defect predict``, so under the server's post-processing they are
predict's masks; per-request overrides never change the server's defaults.

    service = InferenceService(build_predictor("work/postprocessing.yml"), keep=256)
    results = service.predict([("a.jpg", frame), ...])   # serialised across threads
    service.report(results[0].id, service.post_with({3: {"threshold": 0.3}}))
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from steel_defect.constants import CLASS_IDS, CLASS_NAMES
from steel_defect.data.annotations import write_rows
from steel_defect.data.images import encode_jpeg
from steel_defect.data.rle import masks_to_rles
from steel_defect.errors import UserError
from steel_defect.inference.postprocess import PostProcessing, postprocess, removals
from steel_defect.inference.predictor import Predictor
from steel_defect.webapp.provenance import (
    ensemble_summary,
    network_title,
    out_of_fold_text,
    provenance_line,
    server_warning,
    training_warning,
    validation_text,
)
from steel_defect.webapp.reports import CLASS_COLORS, class_report, mask_png


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats suffixed (``a.jpg, a-2.jpg, a-3.jpg``), in one pass: each name's next
    suffix is remembered, and a suffixed name that is taken already moves on to the next."""
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}
    out = []
    for original in names:
        name = original
        while name in taken:
            n = next_suffix.get(original, 2)
            next_suffix[original] = n + 1
            stem, dot, suffix = original.rpartition(".")
            name = f"{stem}-{n}.{suffix}" if dot else f"{original}-{n}"
        taken.add(name)
        out.append(name)
    return out


class ResultNotFound(KeyError):
    """A result id that never existed or was dropped from the store to make room."""


@dataclass(frozen=True)
class StoredResult:
    id: str
    file_name: str
    probs: np.ndarray  # uint8 (4, H, W): probability * 255
    cls_probs: np.ndarray | None  # (4,) the gate's (classifier or hard head), None without one
    seconds: float  # network time per image of its batch
    preview: bytes  # the frame as JPEG, for the page (browsers do not all show TIFF or BMP)


def _without_ids(trained_on: dict | None) -> dict | None:
    if not isinstance(trained_on, dict) or not isinstance(trained_on.get("split"), dict):
        return trained_on
    split = {k: v for k, v in trained_on["split"].items() if k != "valid_ids"}
    return {**trained_on, "split": split}


def _size(result: StoredResult) -> int:
    return result.probs.nbytes + len(result.preview)


def _jpeg(frame: np.ndarray) -> bytes:
    return encode_jpeg(frame, 90, "the preview", rgb=True)


class InferenceService:
    """Thread-safe predictions and post-processing for the API."""

    def __init__(self, predictor: Predictor, keep: int = 256, batch_size: int = 4, keep_mb: float = 512.0):
        if keep < 1:
            raise UserError(f"keep must be at least 1 result, got {keep}")
        if keep_mb <= 0:
            raise UserError(f"keep_mb must be above 0 MB, got {keep_mb}")
        self.predictor = predictor
        self.keep = keep
        self.keep_bytes = int(keep_mb * 2**20)
        self._stored_bytes = 0
        self.batch_size = max(1, batch_size)
        self._network = threading.Lock()  # one forward pass at a time: CPU threads are shared anyway
        self._store_lock = threading.Lock()
        self._store: OrderedDict[str, StoredResult] = OrderedDict()

    @property
    def post(self) -> PostProcessing:
        """The server's default post-processing: the predictor's, as ``inference.py`` uses it."""
        return self.predictor.post

    def model_info(self) -> dict:
        """Names, device, checkpoints (epoch, metrics, config, provenance), post-processing, class colours.

        ``provenance`` is the first segmenter's line (it paints the masks) and the most severe
        training warning of all checkpoints; see :mod:`steel_defect.webapp.provenance`.
        """
        models = self.predictor.segmenters + self.predictor.classifiers
        checkpoints = []
        for m in models:
            trained_on, out_of_fold = m.info.get("trained_on"), m.info.get("out_of_fold")
            weights_source = m.info.get("weights_source")
            checkpoints.append(
                {
                    "path": m.path,
                    "file": Path(m.path).name,
                    "task": m.task,
                    "name": m.name,
                    "epoch": m.info["epoch"],
                    "metrics": m.info["metrics"],
                    "config": m.info["config"],
                    # the validation frame list is for the int8 check, not for every page load
                    "trained_on": _without_ids(trained_on),
                    "weights_source": weights_source,
                    "out_of_fold": out_of_fold,
                    "summary": provenance_line(
                        trained_on, out_of_fold, weights_source, config=m.info["config"]
                    ),
                    # the model panel's words: which fold, and what it scored on the frames it never saw
                    "title": network_title(m.task, m.name, m.info["config"]),
                    "validation": validation_text(m.info["metrics"], m.info["epoch"]),
                    "warning": training_warning(trained_on, out_of_fold),
                }
            )
        ensemble = ensemble_summary(self.predictor)
        first = models[0].info
        return {
            **self.predictor.describe(),
            # "4 × unet · tu-tf_efficientnet_lite0 (folds 0–3)": what the page's header names
            "ensemble": ensemble,
            "checkpoints": checkpoints,
            # the tuned pipeline the server runs (None: --untuned), and the page's warning
            "pipeline": self.predictor.pipeline,
            "provenance": {
                "summary": provenance_line(
                    first.get("trained_on"),
                    first.get("out_of_fold"),
                    first.get("weights_source"),
                    ensemble["trained_frames"],
                    config=first.get("config"),
                ),
                "warning": server_warning(checkpoints, self.predictor.pipeline is not None),
                "out_of_fold": out_of_fold_text(first.get("out_of_fold")),
            },
            "postprocessing": self.post.to_dict(),
            # a class the threshold search switched off (min_area above a frame): the page says "off"
            "switched_off": {c: p.disabled for c, p in zip(CLASS_IDS, self.post.classes, strict=True)},
            # of those, the ones the model has not learnt: no out-of-fold defect frame reached the
            # lowest threshold (steel_defect.inference.oof.unlearnt_classes); the page says so
            "unlearnt": (first.get("out_of_fold") or {}).get("unlearnt") or {},
            "classes": [{"class_id": c, "name": CLASS_NAMES[c], "color": CLASS_COLORS[c]} for c in CLASS_IDS],
        }

    def predict(self, items: list[tuple[str, np.ndarray]]) -> list[StoredResult]:
        """Run the predictor on ``(file_name, frame)`` pairs of one size and store the maps.

        The same :meth:`Predictor.predict` as ``steel-defect predict``, gate included (a
        classifier, or a two-head segmenter's hard head), except that the segmenter runs even
        where the gate is closed, so the page can still show and re-threshold those maps; the
        masks are the same.
        """
        results = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            frames = [frame for _, frame in chunk]
            with self._network:
                t0 = time.perf_counter()
                predictions = self.predictor.predict(frames, skip_gated=False)
                seconds = (time.perf_counter() - t0) / len(chunk)
            for (name, frame), prediction in zip(chunk, predictions, strict=True):
                gate = prediction.cls_probs
                results.append(
                    StoredResult(
                        uuid.uuid4().hex,
                        name,
                        prediction.levels,
                        None if gate is None else np.asarray(gate, np.float32),
                        seconds,
                        _jpeg(frame),
                    )
                )
        with self._store_lock:
            for result in results:
                self._store[result.id] = result
                self._stored_bytes += _size(result)
            # Bounded in count and in memory; the newest result always stays.
            while len(self._store) > self.keep or (
                self._stored_bytes > self.keep_bytes and len(self._store) > 1
            ):
                _, dropped = self._store.popitem(last=False)
                self._stored_bytes -= _size(dropped)
        return results

    @property
    def stored_mb(self) -> float:
        """Memory held by the stored results (maps and previews), in MB."""
        return self._stored_bytes / 2**20

    def get(self, result_id: str) -> StoredResult:
        with self._store_lock:
            result = self._store.get(result_id)
        if result is None:
            raise ResultNotFound(
                f"no result {result_id!r}: unknown, or dropped to make room (the server keeps the "
                f"last {self.keep} images, at most {self.keep_bytes / 2**20:g} MB); upload the image again"
            )
        return result

    def post_with(self, overrides: dict[int, dict] | None) -> PostProcessing:
        """The server's post-processing with some per-class fields replaced.

        ``{3: {"threshold": 0.3, "min_area": 0}}``; a bad value raises UserError naming it.
        """
        classes = list(self.post.classes)
        for class_id, fields in (overrides or {}).items():
            if class_id not in CLASS_IDS:
                raise UserError(f"unknown class {class_id!r}; valid: {list(CLASS_IDS)}")
            try:
                classes[class_id - 1] = replace(classes[class_id - 1], **fields)
            except (TypeError, ValueError) as err:
                raise UserError(f"class {class_id}: {err}") from None
        return PostProcessing(tuple(classes))

    def masks(self, result: StoredResult, post: PostProcessing | None = None) -> np.ndarray:
        return postprocess(result.probs, post or self.post, result.cls_probs)

    def report(self, result: StoredResult, post: PostProcessing | None = None) -> dict:
        height, width = result.probs.shape[1:]
        return {
            "id": result.id,
            "file_name": result.file_name,
            "width": width,
            "height": height,
            "seconds": round(result.seconds, 4),
            "classes": [
                # a mask the post-processing emptied says which step did it and with what numbers
                {**entry, "removed": why}
                for entry, why in zip(
                    class_report(self.masks(result, post), result.probs, result.cls_probs),
                    removals(result.probs, post or self.post, result.cls_probs),
                    strict=True,
                )
            ],
        }

    def mask_png(self, result: StoredResult, post: PostProcessing | None = None) -> bytes:
        return mask_png(self.masks(result, post))

    def submission_csv(self, result_ids: list[str], post: PostProcessing | None = None) -> str:
        """``ImageId_ClassId,EncodedPixels`` for these results, in order; repeated names get a suffix."""
        results = [self.get(i) for i in result_ids]
        names = unique_names([result.file_name for result in results])
        buffer = io.StringIO()
        rles = [masks_to_rles(self.masks(result, post)) for result in results]
        write_rows(buffer, names, rles, layout="wide")
        return buffer.getvalue()
