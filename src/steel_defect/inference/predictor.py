"""The predictor shared by ``inference.py``, the threshold search, the demo and the web app.

    predictor = Predictor(["seg_fold0.pth", "seg_fold1.pth", "cls_fold0.pth"], post, tta=("hflip",))
    result = predictor.predict(images)   # list of uint8 (256, 1600, 3) frames

Each checkpoint rebuilds its network and its validation transforms (resize + normalize) from
the file alone; the task stored in it says whether it segments or classifies. Probabilities
are averaged over checkpoints of the same task (fold or architecture ensembles; per class over
the segmenters that predict it, so per-class models mix with 4-class ones) and over flip TTA,
then brought back to full resolution. With a classifier, images whose every class
is gated off skip the segmenter entirely; with a clean-frame gate (``clean_gate``, tuned out of
fold: :mod:`.gate`) so do the frames whose coarse pass finds every class below its threshold.
Masks are thresholded from the maps quantised to uint8 (the levels the threshold search tunes
on), so the web app's stored maps give exactly these masks. ``stats`` counts the frames each
stage saw.

The networks run on a backend (:mod:`.networks`: ``torch``, ``onnx`` through ONNX Runtime, or
``openvino``); everything here is numpy and OpenCV, so with the CPU backends a prediction never
imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.errors import UserError
from steel_defect.inference.backend_choice import load_fastest, open_coarse, open_network
from steel_defect.inference.gate import GateSpec, classifier_absent, open_classes, peak_levels, shrink
from steel_defect.inference.networks import (
    PROVENANCE_KEYS,
    Network,
    check_backend,
    check_precision,
    default_threads,
    network_input,
    resolve_backend,
)
from steel_defect.inference.postprocess import PostProcessing, postprocess, quantise

log = logging.getLogger(__name__)

__all__ = ["PROVENANCE_KEYS", "TTA_DIMS", "Prediction", "Predictor", "load_network", "network_input"]

# Each TTA view is its own inverse: flip the input, predict, flip the output back.
TTA_DIMS = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


@dataclass
class Prediction:
    """One image: probabilities (4, H, W) float32 (None if the segmenter was skipped), the gate's
    probabilities (4,) for classes 1..4 (the classifier's, else a two-head segmenter's hard head;
    None without either), masks (4, H, W) uint8 0/1, and ``levels``: the probabilities as the
    uint8 levels the masks were thresholded from (:func:`quantise`; None when skipped)."""

    probs: np.ndarray | None
    cls_probs: np.ndarray | None
    masks: np.ndarray
    levels: np.ndarray | None = None


def load_network(
    path: str | Path,
    backend: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "fp32",
) -> Network:
    """The network of one checkpoint (``.pth``), export (``.onnx``) or OpenVINO IR (``.xml``) on
    ``backend`` (``auto``: the CPU backend measured fastest for it, :mod:`.backend_choice`) at
    ``precision`` (:data:`.networks.PRECISIONS`). A ``.pth`` on the onnx or openvino backend runs
    through its cached export (:func:`.onnx_export.load_exported`). Each backend is imported only
    when asked for: torch is never loaded for an ``.onnx`` file."""
    check_backend(backend)
    check_precision(precision)
    if backend == "auto":
        return load_fastest(path, threads, precision)
    return open_network(path, backend, device, threads, precision)


def _resize(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) -> (N, C, H, W) bilinear, half-pixel centres (torch's align_corners=False)."""
    out = np.empty((*maps.shape[:2], *shape), np.float32)
    for index in np.ndindex(*maps.shape[:2]):
        out[index] = cv2.resize(maps[index], shape[::-1], interpolation=cv2.INTER_LINEAR)
    return out


def _mean(arrays: list[np.ndarray]) -> np.ndarray:
    """The element-wise mean, summed into the first array (a network's own output, no longer
    needed as it is) instead of stacking them all into a new one."""
    total = arrays[0] if arrays[0].flags.writeable else arrays[0].copy()
    for other in arrays[1:]:
        np.add(total, other, out=total)
    if len(arrays) > 1:
        total *= np.float32(1 / len(arrays))
    return total


class Predictor:
    """Ensemble of segmenters (and optional classifiers) with flip TTA and post-processing.

    ``backend``: ``torch``, ``onnx`` (``.onnx`` files given to torch run on ONNX Runtime),
    ``openvino`` or ``auto`` (on a CPU the faster of onnx and openvino, measured per network;
    else torch: :func:`.networks.resolve_backend`); ``precision``: fp32, bf16 (openvino on a CPU
    with native bf16), int8 (the ``export --int8`` twins) or auto (:data:`.networks.PRECISIONS`);
    ``threads``: CPU threads of the networks (default: the physical cores);
    ``batch_tta``: run the TTA views as one batch (one call per network) instead of one call
    per view; the same numbers, and on the CPU measured slightly faster (README, "Benchmarks");
    ``clean_gate``: the tuned clean-frame gate (:mod:`.gate`), None for none; ``sources``: the
    checkpoint (``.pth``) of each model by its weights' SHA-256, which the coarse pass is exported
    from when a model is given as an export (default: the model's own file).
    """

    def __init__(
        self,
        checkpoints: list[str | Path],
        postprocessing: PostProcessing | None = None,
        tta: tuple[str, ...] = ("hflip",),
        device: str = "cpu",
        backend: str = "torch",
        threads: int | None = None,
        batch_tta: bool = True,
        precision: str = "fp32",
        clean_gate: GateSpec | None = None,
        sources: dict[str, str | Path] | None = None,
    ):
        unknown = [t for t in tta if t not in TTA_DIMS]
        if unknown:
            raise UserError(f"unknown TTA {unknown}; valid: {', '.join(TTA_DIMS)}")
        if not checkpoints:
            raise UserError("no checkpoints given; pass at least one segmentation checkpoint")
        backend, device = resolve_backend(backend, str(device))
        if device == "auto":  # torch, which is loaded for the networks anyway, knows the GPUs
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device, self.backend = device, backend
        self.threads = threads or default_threads()
        check_precision(precision)
        self.precision = precision
        networks = [load_network(path, backend, self.device, self.threads, precision) for path in checkpoints]
        self.segmenters = [n for n in networks if n.task == "seg"]
        self.classifiers = [n for n in networks if n.task == "cls"]
        if not self.segmenters:
            raise UserError(f"none of {[str(c) for c in checkpoints]} is a segmentation checkpoint")
        covered = {c for n in self.segmenters for c in n.classes}
        for class_id in CLASS_IDS:
            if class_id not in covered:
                log.warning("no segmenter predicts class %d: its masks stay empty", class_id)
        self.post = postprocessing or PostProcessing()
        self.pipeline: str | None = None  # the tuned pipeline's YAML, set by build_predictor
        self.tta = tuple(tta)
        self.batch_tta = batch_tta
        gates = [c.cls_threshold for c in self.post.classes]
        # Skip the segmenter only when every class has a gate to consult.
        self.can_skip = bool(self.classifiers) and all(g is not None for g in gates)
        # Frames each stage saw, counted as they pass: what the gates spared is read from here.
        stages = ("frames", "segmented", "gate_frames", "skipped_classifier", "skipped_clean")
        self.stats = dict.fromkeys(stages, 0)
        self._sources = {k: Path(v) for k, v in (sources or {}).items()}
        self._coarse: dict[int, list] = {}  # scale -> (network, input shape) per segmenter
        self.clean_gate = clean_gate
        if clean_gate is not None:
            self._coarse_networks(clean_gate.scale)  # exported and opened now, not on the first frame

    def describe(self) -> dict:
        return {
            "segmenters": [n.name for n in self.segmenters],
            "classifiers": [n.name for n in self.classifiers],
            "heads": [f"{n.name} ({n.head_gate} gate)" for n in self.segmenters if n.head_gate],
            "tta": list(self.tta),
            "device": self.device,
            "backend": ",".join(sorted({n.backend for n in self.segmenters + self.classifiers})),
            "threads": self.threads,
            "precision": self.precision,
            "clean_gate": self.clean_gate.to_dict() if self.clean_gate else None,
        }

    def _views(self, network: Network, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Sigmoid outputs averaged over the identity view and the TTA views: (main, head or None).

        A segmenter's maps are flipped back; a classifier's and a head's labels need no undoing.
        """
        views = [None, *(TTA_DIMS[view] for view in self.tta)]
        inputs = [batch if dims is None else np.flip(batch, dims) for dims in views]
        if self.batch_tta and len(views) > 1:
            main, head = network.run(np.concatenate(inputs))
            outputs = list(
                zip(
                    np.split(main, len(views)),
                    np.split(head, len(views)) if head is not None else [None] * len(views),
                    strict=True,
                )
            )
        else:
            outputs = [network.run(np.ascontiguousarray(x)) for x in inputs]
        mains = [
            m if dims is None or network.task != "seg" else np.flip(m, dims)
            for (m, _), dims in zip(outputs, views, strict=True)
        ]
        heads = [h for _, h in outputs if h is not None]
        return _mean(mains), (_mean(heads) if heads else None)

    def classify(self, images: list[np.ndarray]) -> np.ndarray | None:
        """Probabilities of classes 1..4, (N, 4), averaged over classifiers; None without one."""
        if not self.classifiers:
            return None
        probs = sum(self._views(n, network_input(n, images))[0] for n in self.classifiers)
        return probs[:, 1:] / np.float32(len(self.classifiers))  # output 0 is "no defect"

    def segment(self, images: list[np.ndarray], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
        """Probabilities (N, 4, H, W) float32 at ``shape``: per class, the mean over the
        segmenters that predict it (0 where none does)."""
        return self.segment_with_heads(images, shape)[0]

    def segment_with_heads(
        self, images: list[np.ndarray], shape: tuple[int, int] = IMAGE_SHAPE, inputs=None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(maps as :meth:`segment`, the hard-gating heads' probabilities (N, 4) or None).

        ``inputs``: each segmenter's :func:`network_input` of ``images``, when already made.

        A two-head segmenter's encoder runs once for both. With a soft gate its maps are
        multiplied by its head's probability of the class (the 2019 ``mask * cls`` gating); hard
        heads are averaged per class and gate like a classifier (``cls_threshold``). A class no
        hard head predicts gets probability 1 (it is never gated).
        """
        total = None  # the first network covering every class is taken as it is, not copied
        count = np.zeros(NUM_CLASSES, np.float32)
        head_total = np.zeros((len(images), NUM_CLASSES), np.float32)
        head_count = np.zeros(NUM_CLASSES, np.float32)
        self.stats["segmented"] += len(images)
        for k, network in enumerate(self.segmenters):
            batch = inputs[k] if inputs is not None else network_input(network, images)
            probs, head = self._views(network, batch)
            if probs.shape[-2:] != tuple(shape):
                probs = _resize(probs, tuple(shape))
            channels = [CLASS_IDS.index(c) for c in network.classes]
            if head is not None and network.head_gate == "soft":
                probs = probs * head[:, :, None, None]
            elif head is not None:
                head_total[:, channels] += head
                head_count[channels] += 1
            if total is None and channels == list(range(NUM_CLASSES)):
                total = probs
            else:
                if total is None:
                    total = np.zeros((len(images), NUM_CLASSES, *shape), np.float32)
                total[:, channels] += probs
            count[channels] += 1
        maps = total
        for channel in np.flatnonzero(count > 1):  # in place: a full-size copy costs ~10 ms a frame
            maps[:, channel] *= np.float32(1 / count[channel])
        if not head_count.any():
            return maps, None
        heads = np.where(head_count > 0, head_total / np.maximum(head_count, 1), np.float32(1))
        return maps, heads.astype(np.float32)

    def _coarse_networks(self, scale: int) -> list:
        """(network, input shape) of each segmenter's coarse pass at ``scale``, opened once."""
        if scale not in self._coarse:
            sources = [self._sources.get(n.info.get("weights_sha256"), n.path) for n in self.segmenters]
            self._coarse[scale] = [
                open_coarse(n, source, scale, self.threads, self.precision)
                for n, source in zip(self.segmenters, sources, strict=True)
            ]
        return self._coarse[scale]

    def coarse_levels(self, images: list[np.ndarray] | None, scale: int, inputs=None) -> np.ndarray:
        """(N, 4) uint8: each class's peak on the segmenters' coarse pass at ``scale``: one view,
        per class the mean over the segmenters that predict it (a soft head multiplies, as in the
        full pass), quantised as masks are. ``inputs``: each segmenter's :func:`network_input`
        of the frames, when already made (``images`` may then be None)."""
        total, count = None, np.zeros(NUM_CLASSES, np.float32)
        coarse = self._coarse_networks(scale)
        for k, (network, (twin, shape)) in enumerate(zip(self.segmenters, coarse, strict=True)):
            batch = inputs[k] if inputs is not None else network_input(network, images)
            probs, head = twin.run(shrink(batch, shape))
            if head is not None and network.head_gate == "soft":
                probs = probs * head[:, :, None, None]
            if total is None:
                total = np.zeros((len(probs), NUM_CLASSES, *probs.shape[-2:]), np.float32)
            elif probs.shape[-2:] != total.shape[-2:]:  # members of another input size
                probs = _resize(probs, total.shape[-2:])
            total[:, [CLASS_IDS.index(c) for c in network.classes]] += probs
            count[[CLASS_IDS.index(c) for c in network.classes]] += 1
        total *= (1 / np.maximum(count, 1)).astype(np.float32)[None, :, None, None]
        self.stats["gate_frames"] += len(total)
        return peak_levels(total)

    @property
    def gate(self) -> str:
        """What ``cls_threshold`` gates on: ``classifier``, ``head`` (a two-head segmenter's hard
        head) or ``none``. The classifier wins when both are there, as :meth:`predict` does."""
        if self.classifiers:
            return "classifier"
        if any(n.head_gate == "hard" for n in self.segmenters):
            return "head"
        return "none"

    def predict(self, images: list[np.ndarray], skip_gated: bool = True) -> list[Prediction]:
        """Predict a batch of uint8 (H, W, C) frames of one size.

        ``skip_gated``: frames whose every class the classifier gates off skip the segmenter
        (their ``probs`` are None), and so do those the clean-frame gate calls clean (empty
        masks). The web app, the labelling queue and pseudo-labelling pass False: they need the
        maps of every frame, and run neither gate's skip; the classifier's masks are the same
        either way, and the clean gate's differ at most on the pairs its tuning gave up.
        """
        if not images:
            return []
        shape = images[0].shape[:2]
        cls_probs = self.classify(images)
        absent = np.zeros((len(images), NUM_CLASSES), bool)
        if skip_gated and self.can_skip:
            absent |= classifier_absent(cls_probs, self.post, self.gate)
        by_classifier = absent.all(axis=1)
        rows, inputs = np.flatnonzero(~by_classifier), None
        if skip_gated and self.clean_gate is not None and len(rows):
            # the full pass's inputs, made once: the coarse pass shrinks them, survivors reuse them
            inputs = [network_input(n, [images[i] for i in rows]) for n in self.segmenters]
            levels = self.coarse_levels(None, self.clean_gate.scale, inputs)
            absent[rows] |= ~open_classes(levels, self.clean_gate)
        run = [int(i) for i in np.flatnonzero(~absent.all(axis=1))]
        self.stats["frames"] += len(images)
        self.stats["skipped_classifier"] += int(by_classifier.sum())
        self.stats["skipped_clean"] += len(rows) - len(run)
        if inputs is not None and len(run) < len(rows):
            kept = np.searchsorted(rows, run)
            inputs = [batch[kept] for batch in inputs]
        batch = [images[i] for i in run]
        probs, heads = self.segment_with_heads(batch, shape, inputs) if run else (None, None)
        position = {image_index: row for row, image_index in enumerate(run)}
        results = []
        for i in range(len(images)):
            image_cls = None if cls_probs is None else cls_probs[i]
            if image_cls is None and heads is not None and i in position:
                image_cls = heads[position[i]]  # no classifier: the segmenters' heads gate
            if i in position:
                p = probs[position[i]]
                levels = quantise(p)
                results.append(Prediction(p, image_cls, postprocess(levels, self.post, image_cls), levels))
            else:
                results.append(Prediction(None, image_cls, np.zeros((NUM_CLASSES, *shape), np.uint8)))
        return results
