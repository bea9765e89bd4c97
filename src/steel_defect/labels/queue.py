"""The active-learning queue: which unlabelled frame would teach the model most if labelled next.

    members = member_maps(predictor, frames)          # (M, N, 4, h, w): every segmenter x flip view
    score, detail = frame_score(members[:, i], gate)  # pure numpy: the larger, the sooner
    order = diverse_order(scores, thumbnails(frames)) # near-duplicates move to the back

Each frame is scored per class from the ensemble's maps, never as a whole-frame mean (background
would dilute a small defect's doubt to nothing). Per class, three terms, each in [0, 1]:

* ``entropy``: the mean binary entropy (bits) of the mean map over the class's most uncertain
  ``TOP_FRACTION`` of pixels;
* ``disagreement``: twice the mean standard deviation between members (fold models and flip
  views) over those same pixels; fold and TTA disagreement both count, since each view is a member;
* ``presence``: ``1 - |2p - 1|`` of the probability that the class is on the frame (the gate's
  when there is one, else the highest pixel of the mean map): 1 at a coin flip, 0 when sure.

A class scores their mean, and a frame its most doubtful class: one uncertain class is enough to
be worth a label. The queue then walks the frames by score and moves any frame whose thumbnail is
a near-copy (cosine similarity above ``DUPLICATE_SIMILARITY``) of one already queued to the back,
so a run of consecutive frames of one coil does not fill the labeller's day.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS
from steel_defect.inference.predictor import TTA_DIMS, Predictor, network_input
from steel_defect.inference.verdict import model_version
from steel_defect.pause import pause_point

log = logging.getLogger(__name__)
SCORE_SHAPE = (64, 400)  # maps are scored at a quarter of the frame: the doubt is the same, 16x cheaper
TOP_FRACTION = 0.005  # the 0.5 % most uncertain pixels of a class: 128 of a 64x400 map
DUPLICATE_SIMILARITY = 0.995
DIVERSITY_WINDOW = 2000  # near-copies are looked for among the first frames queued only
THUMB_SHAPE = (16, 100)


def member_maps(predictor: Predictor, images: list[np.ndarray], shape=SCORE_SHAPE) -> np.ndarray:
    """(M, N, 4, h, w) float32: each segmenter under each view (identity and the pipeline's TTA),
    at ``shape``. A class a segmenter does not predict is NaN in its member."""
    members = []
    views = [None, *(TTA_DIMS[v] for v in predictor.tta)]
    for network in predictor.segmenters:
        batch = network_input(network, images)
        channels = [CLASS_IDS.index(c) for c in network.classes]
        for dims in views:
            x = batch if dims is None else np.ascontiguousarray(np.flip(batch, dims))
            probs, head = network.run(x)
            if dims is not None:
                probs = np.flip(probs, dims)
            if head is not None and network.head_gate == "soft":
                probs = probs * head[:, :, None, None]
            small = np.stack(
                [
                    np.stack(
                        [
                            cv2.resize(np.ascontiguousarray(m), shape[::-1], interpolation=cv2.INTER_AREA)
                            for m in frame
                        ]
                    )
                    for frame in probs
                ]
            )
            full = np.full((len(images), len(CLASS_IDS), *shape), np.nan, np.float32)
            full[:, channels] = small
            members.append(full)
    return np.stack(members)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def frame_score(
    members: np.ndarray,
    gate: np.ndarray | None = None,
    top_fraction: float = TOP_FRACTION,
    thresholds: np.ndarray | None = None,
    peaks: np.ndarray | None = None,
) -> tuple[float, dict]:
    """Score one frame from its members' maps ``(M, 4, h, w)`` (NaN: not predicted) and the
    gate's probabilities ``(4,)`` (None without one). Returns ``(score, per-class detail)``.

    The detail also holds ``doubt``, what the page says of the frame: the most doubtful class,
    its peak probability (``peaks``, the pipeline's own full-size maps, else the mean map's) beside
    its ``thresholds`` entry (NaN: the class is switched off, ``off``), and where it is: ``at``,
    the most doubtful pixel, and ``box``, the bounding box of the class's most doubtful pixels,
    both as fractions of the frame's width and height (the score runs on reduced maps)."""
    detail = {}
    where = {}
    for index, class_id in enumerate(CLASS_IDS):
        maps = members[:, index]
        maps = maps[~np.isnan(maps).all(axis=(1, 2))]
        if not len(maps):
            continue
        mean = maps.mean(0).ravel()
        spread = maps.std(0).ravel() if len(maps) > 1 else np.zeros_like(mean)
        entropy = _entropy(mean)
        k = max(1, round(top_fraction * mean.size))
        top = np.argpartition(entropy + 2 * spread, -k)[-k:]
        present = float(gate[index]) if gate is not None else float(mean.max())
        terms = {
            "entropy": float(entropy[top].mean()),
            "disagreement": float(min(1.0, 2 * spread[top].mean())),
            "presence": float(1 - abs(2 * present - 1)),
        }
        terms["score"] = float(np.mean(list(terms.values())))
        detail[str(class_id)] = {k: round(v, 4) for k, v in terms.items()}
        height, width = maps.shape[1:]
        rows, cols = np.unravel_index(top, (height, width))
        best = int(top[np.argmax((entropy + 2 * spread)[top])])
        peak = float(peaks[index]) if peaks is not None else float(mean.max())
        # NaN: the class is switched off (no threshold gives it a mask), which the page says
        off = thresholds is not None and bool(np.isnan(thresholds[index]))
        where[str(class_id)] = {
            "class_id": class_id,
            "peak": round(peak, 4),
            "threshold": None if thresholds is None or off else round(float(thresholds[index]), 4),
            "off": off,
            "at": [round((best % width + 0.5) / width, 4), round((best // width + 0.5) / height, 4)],
            "box": [
                round(cols.min() / width, 4),
                round(rows.min() / height, 4),
                round((cols.max() + 1) / width, 4),
                round((rows.max() + 1) / height, 4),
            ],
        }
    if not detail:
        return 0.0, detail
    score = max(d["score"] for d in detail.values())
    doubtful = max(detail, key=lambda c: detail[c]["score"])
    return score, {**detail, "doubt": where[doubtful]}


def thumbnails(images: list[np.ndarray]) -> np.ndarray:
    """(N, 1600) float32 unit vectors: each frame's grey levels at 16x100, mean removed."""
    out = []
    for image in images:
        grey = image.mean(axis=-1) if image.ndim == 3 else image
        small = cv2.resize(grey.astype(np.float32), THUMB_SHAPE[::-1], interpolation=cv2.INTER_AREA).ravel()
        small -= small.mean()
        out.append(small / (np.linalg.norm(small) + 1e-6))
    return np.array(out, np.float32)


def diverse_order(
    scores: np.ndarray,
    thumbs: np.ndarray,
    similarity: float = DUPLICATE_SIMILARITY,
    window: int = DIVERSITY_WINDOW,
) -> tuple[list[int], list[int]]:
    """Indices by falling score, near-copies of an earlier pick moved behind the rest.

    Returns ``(order, duplicates)``: ``duplicates`` are the indices moved back, in score order.
    """
    kept: list[int] = []
    duplicates: list[int] = []
    for index in np.argsort(-np.asarray(scores), kind="stable"):
        if len(kept) < window and kept and float((thumbs[kept] @ thumbs[index]).max()) > similarity:
            duplicates.append(int(index))
        else:
            kept.append(int(index))
    return kept + duplicates, duplicates


def progress_line(done: int, total: int, seconds: float) -> str:
    """``"37/102 frames, 2.3 s/frame, about 2 min left"``: what ``labels queue`` prints as it scores."""
    if not done:
        return f"0/{total} frames, scoring the first batch"
    rate = seconds / done
    return f"{done}/{total} frames, {rate:.1f} s/frame, {eta_text(rate * (total - done))}"


def eta_text(seconds: float) -> str:
    """``"about 2 min left"``, ``"about 40 s left"``, ``"done"``."""
    if seconds <= 0:
        return "done"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


def _peaks(prediction) -> np.ndarray | None:
    """(4,) the highest pixel probability of each class on the pipeline's full-size maps."""
    if prediction.levels is not None:
        return prediction.levels.reshape(len(CLASS_IDS), -1).max(1) / 255.0
    if prediction.probs is not None:
        return prediction.probs.reshape(len(CLASS_IDS), -1).max(1)
    return None


def score_batch(
    predictor: Predictor, frames: list[np.ndarray]
) -> tuple[list, list[float], list[dict], np.ndarray]:
    """One batch of frames: (the pipeline's predictions, scores, per-class details, thumbnails)."""
    predictions = predictor.predict(frames, skip_gated=False)
    members = member_maps(predictor, frames)
    thresholds = np.array([np.nan if p.disabled else p.threshold for p in predictor.post.classes])
    scored = [
        frame_score(members[:, i], p.cls_probs, thresholds=thresholds, peaks=_peaks(p))
        for i, p in enumerate(predictions)
    ]
    return predictions, [s for s, _ in scored], [d for _, d in scored], thumbnails(frames)


def score_queue(
    store,
    folder,
    predictor: Predictor,
    batch_size: int = 4,
    propose: bool = True,
    progress=None,
    network_lock=None,
    version: str | None = None,
) -> dict:
    """Score every unlabelled and pre-labelled frame of ``store`` found in ``folder``, rank them
    and store the queue; with ``propose`` also store each frame's pre-label (the tuned pipeline's
    masks). Frames that cannot be decoded, or whose file has gone since ``folder`` was listed, are
    left out and reported (``unreadable``, ``missing``). Returns a summary.

    ``progress(done, total)`` is called after each batch (and once with 0 before the first), so a
    command or a page can say how far it is; ``network_lock`` is held around each batch's network
    runs when the predictor is shared (the labelling page opens frames with it meanwhile).
    ``version``: the name the proposals and the queue carry (a promoted model version's, ``v3``,
    so the page says which version proposed a frame); default :func:`model_version`'s digest."""
    from steel_defect.data.images import ImageReadError
    from steel_defect.data.rle import masks_to_rles
    from steel_defect.labels.folder import FrameRemoved

    version = version or model_version(predictor)
    todo = [n for n in store.names("unlabelled") + store.names("pre-labelled") if n in folder]
    names, scores, details, thumbs, unreadable, missing = [], [], [], [], [], []
    if progress is not None:
        progress(0, len(todo))
    for start in range(0, len(todo), batch_size):
        chunk, frames = [], []
        for name in todo[start : start + batch_size]:
            try:
                frames.append(folder.decode(name))
                chunk.append(name)
            except ImageReadError as err:
                unreadable.append((name, str(err)))
            except FrameRemoved:  # deleted while the run scores the others: one frame, not the run
                log.warning("%s is no longer in %s; left out of the queue", name, folder.directory)
                missing.append(name)
        if not frames:
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
            continue
        with network_lock or nullcontext():
            predictions, chunk_scores, chunk_details, chunk_thumbs = score_batch(predictor, frames)
        for name, prediction in zip(chunk, predictions, strict=True):
            if propose and store.frame(name).version == 0:
                store.set_proposal(name, masks_to_rles(prediction.masks), version)
        names += chunk
        scores += chunk_scores
        details += chunk_details
        thumbs.append(chunk_thumbs)
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
        pause_point("batch:queue")
    order, duplicates = diverse_order(np.array(scores), np.concatenate(thumbs)) if names else ([], [])
    moved = set(duplicates)
    ranked = [(names[i], scores[i], {**details[i], "near_duplicate": i in moved}) for i in order]
    store.set_queue(ranked, version)
    return {
        "model_version": version,
        "scored": len(ranked),
        "near_duplicates": len(duplicates),
        "unreadable": unreadable,
        "missing": missing,
        "top": [n for n, _, _ in ranked[:5]],
    }
