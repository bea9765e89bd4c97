"""The predictor shared by ``inference.py``, the threshold search, the demo and the web app.

    predictor = Predictor(["seg_fold0.pth", "seg_fold1.pth", "cls_fold0.pth"], post, tta=("hflip",))
    result = predictor.predict(images)   # list of uint8 (256, 1600, 3) frames

Each checkpoint rebuilds its model and its validation transforms (resize + normalize) from
the file alone; the task stored in it says whether it segments or classifies. Probabilities
are averaged over checkpoints of the same task (fold or architecture ensembles; per class over
the segmenters that predict it, so per-class models mix with 4-class ones) and over flip TTA,
then brought back to full resolution. With a classifier, images whose every class
is gated off skip the segmenter entirely.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from steel_defect.config import model_classes, model_cls_head
from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.data.datasets import image_to_tensor
from steel_defect.data.eval_transforms import build_eval_transforms
from steel_defect.inference.postprocess import PostProcessing, postprocess
from steel_defect.models.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)

# Each TTA view is its own inverse: flip the input, predict, flip the output back.
TTA_DIMS = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}
# What the model learnt from, where its encoder started, its out-of-fold Dice (the web page shows them).
PROVENANCE_KEYS = ("trained_on", "weights_source", "out_of_fold")


@dataclass
class Prediction:
    """One image: probabilities (4, H, W) float32 (None if the segmenter was skipped),
    classifier probabilities (4,) for classes 1..4 (None without a classifier), masks (4, H, W) uint8."""

    probs: np.ndarray | None
    cls_probs: np.ndarray | None
    masks: np.ndarray


@dataclass
class LoadedModel:
    path: str
    task: str
    model: torch.nn.Module
    transform: Callable[..., dict]  # called as transform(image=...) like an albumentations Compose
    channels: int
    name: str
    info: dict  # epoch, validation metrics, resolved config and PROVENANCE_KEYS of the checkpoint
    classes: tuple[int, ...] = CLASS_IDS  # a segmenter's output channels, as class ids
    head_gate: str | None = None  # a segmenter's classification head: "hard", "soft" or None


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Model, task and validation transform of one checkpoint."""
    state = load_checkpoint(path)
    model, cfg = model_from_checkpoint(state)
    # Resize/Normalize only (checked there); albumentations is imported only if they need it.
    transform = build_eval_transforms(cfg.transforms.valid, f"{path}: transforms.valid")
    name = f"{cfg.model.name}-{cfg.model.encoder}"
    info = {"epoch": state["epoch"], "metrics": state["metrics"], "config": state["config"]}
    # Provenance written by newer training code; None in older checkpoints.
    info.update({key: state.get(key) for key in PROVENANCE_KEYS})
    seg = state["task"] == "seg"
    classes = model_classes(cfg) if seg else CLASS_IDS
    head = model_cls_head(cfg) if seg else None
    return LoadedModel(
        str(path),
        state["task"],
        # channels-last convolutions run about 1.3x faster on CPUs (issue 11's table); outputs
        # agree with the contiguous layout to ~1e-5 in probability
        model.to(device, memory_format=torch.channels_last),
        transform,
        cfg.data.channels,
        name,
        info,
        classes,
        head["gate"] if head else None,
    )


class Predictor:
    """Ensemble of segmenters (and optional classifiers) with flip TTA and post-processing."""

    def __init__(
        self,
        checkpoints: list[str | Path],
        postprocessing: PostProcessing | None = None,
        tta: tuple[str, ...] = ("hflip",),
        device: str | torch.device = "cpu",
    ):
        unknown = [t for t in tta if t not in TTA_DIMS]
        if unknown:
            raise ValueError(f"unknown TTA {unknown}; valid: {', '.join(TTA_DIMS)}")
        if not checkpoints:
            raise ValueError("no checkpoints given; pass at least one segmentation checkpoint")
        self.device = torch.device(device)
        models = [load_model(path, self.device) for path in checkpoints]
        self.segmenters = [m for m in models if m.task == "seg"]
        self.classifiers = [m for m in models if m.task == "cls"]
        if not self.segmenters:
            raise ValueError(f"none of {[str(c) for c in checkpoints]} is a segmentation checkpoint")
        covered = {c for m in self.segmenters for c in m.classes}
        for class_id in CLASS_IDS:
            if class_id not in covered:
                log.warning("no segmenter predicts class %d: its masks stay empty", class_id)
        self.post = postprocessing or PostProcessing()
        self.tta = tuple(tta)
        gates = [c.cls_threshold for c in self.post.classes]
        # Skip the segmenter only when every class has a gate to consult.
        self.can_skip = bool(self.classifiers) and all(g is not None for g in gates)

    def describe(self) -> dict:
        return {
            "segmenters": [m.name for m in self.segmenters],
            "classifiers": [m.name for m in self.classifiers],
            "heads": [f"{m.name} ({m.head_gate} gate)" for m in self.segmenters if m.head_gate],
            "tta": list(self.tta),
            "device": str(self.device),
        }

    def _batch(self, loaded: LoadedModel, images: list[np.ndarray]) -> torch.Tensor:
        tensors = []
        for image in images:
            if loaded.channels == 1 and image.shape[-1] == 3:
                image = image[..., :1]
            tensors.append(image_to_tensor(loaded.transform(image=image)["image"]))
        return torch.stack(tensors).to(self.device, memory_format=torch.channels_last)

    @torch.no_grad()
    def _views(self, loaded: LoadedModel, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sigmoid outputs averaged over the identity view and the TTA views: (main, head or None).

        A segmenter's maps are flipped back; a classifier's and a head's labels need no undoing.
        """
        outputs = []
        for dims in (None, *(TTA_DIMS[view] for view in self.tta)):
            out = loaded.model(batch if dims is None else batch.flip(dims))
            main, head = out if isinstance(out, tuple) else (out, None)
            main = torch.sigmoid(main.float())
            if dims is not None and loaded.task == "seg":
                main = main.flip(dims)
            outputs.append((main, None if head is None else torch.sigmoid(head.float())))
        main = sum(o[0] for o in outputs) / len(outputs)
        heads = [o[1] for o in outputs if o[1] is not None]
        return main, (sum(heads) / len(heads) if heads else None)

    def _forward(self, loaded: LoadedModel, batch: torch.Tensor) -> torch.Tensor:
        return self._views(loaded, batch)[0]

    def classify(self, images: list[np.ndarray]) -> np.ndarray | None:
        """Probabilities of classes 1..4, (N, 4), averaged over classifiers; None without one."""
        if not self.classifiers:
            return None
        probs = sum(self._forward(m, self._batch(m, images)) for m in self.classifiers) / len(
            self.classifiers
        )
        return probs[:, 1:].cpu().numpy()  # output 0 is "no defect"

    def segment(self, images: list[np.ndarray], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
        """Probabilities (N, 4, H, W) float32 at ``shape``: per class, the mean over the
        segmenters that predict it (0 where none does)."""
        return self.segment_with_heads(images, shape)[0]

    def segment_with_heads(
        self, images: list[np.ndarray], shape: tuple[int, int] = IMAGE_SHAPE
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(maps as :meth:`segment`, the hard-gating heads' probabilities (N, 4) or None).

        A two-head segmenter's encoder runs once for both. With a soft gate its maps are
        multiplied by its head's probability of the class (the 2019 ``mask * cls`` gating); hard
        heads are averaged per class and gate like a classifier (``cls_threshold``). A class no
        hard head predicts gets probability 1 (it is never gated).
        """
        total = torch.zeros((len(images), NUM_CLASSES, *shape), device=self.device)
        count = torch.zeros(NUM_CLASSES, device=self.device)
        head_total = torch.zeros((len(images), NUM_CLASSES), device=self.device)
        head_count = torch.zeros(NUM_CLASSES, device=self.device)
        for loaded in self.segmenters:
            probs, head = self._views(loaded, self._batch(loaded, images))
            if probs.shape[-2:] != shape:
                probs = F.interpolate(probs, size=shape, mode="bilinear", align_corners=False)
            channels = [CLASS_IDS.index(c) for c in loaded.classes]
            if head is not None and loaded.head_gate == "soft":
                probs = probs * head[:, :, None, None]
            elif head is not None:
                head_total[:, channels] += head
                head_count[channels] += 1
            total[:, channels] += probs
            count[channels] += 1
        maps = (total / count.clamp(min=1)[:, None, None]).cpu().numpy()
        if not head_count.any():
            return maps, None
        heads = torch.where(head_count > 0, head_total / head_count.clamp(min=1), torch.ones_like(head_total))
        return maps, heads.cpu().numpy()

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict a batch of uint8 (H, W, C) frames of one size."""
        if not images:
            return []
        shape = images[0].shape[:2]
        cls_probs = self.classify(images)
        run = list(range(len(images)))
        if self.can_skip:
            gates = np.array([c.cls_threshold for c in self.post.classes])
            run = [i for i in run if (cls_probs[i] >= gates).any()]
        probs, heads = self.segment_with_heads([images[i] for i in run], shape) if run else (None, None)
        if cls_probs is None and heads is not None:  # no classifier: the segmenters' heads gate
            cls_probs = heads
        position = {image_index: row for row, image_index in enumerate(run)}
        results = []
        for i in range(len(images)):
            image_cls = None if cls_probs is None else cls_probs[i]
            if i in position:
                p = probs[position[i]]
                results.append(Prediction(p, image_cls, postprocess(p, self.post, image_cls)))
            else:
                results.append(Prediction(None, image_cls, np.zeros((NUM_CLASSES, *shape), np.uint8)))
        return results
