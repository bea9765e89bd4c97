"""The student: its config, its frames (labels and the teacher's cached maps), its loss, its run.

The student is a segmenter like any other (``task: seg``, its config saved in its checkpoints),
so ``predict``, ``serve``, ``export`` and the web page rebuild it from the file alone. It trains
in the project's runner; only the loss and the data differ:

* each frame brings its teacher's map (:mod:`.teacher`, read from the cache as labels are read
  from the CSV) beside its labels, the map scaled to the frame and moved by the same crops and
  flips as the image and the labels;
* ``loss = (1 - w) * KL(teacher || student) + w * label loss``: the per-pixel Bernoulli KL
  divergence (binary cross-entropy against the soft map, less the map's own entropy, so a
  student that matches its teacher scores 0) over every frame of the batch, and the config's
  loss against the labels over its labelled frames; ``w`` is ``distill.label_weight``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from catalyst import dl
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from steel_defect.config import save_config
from steel_defect.config.errors import ComponentError
from steel_defect.config.layout import RunPaths
from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.data.datasets import image_to_tensor, image_to_uint8_tensor
from steel_defect.data.images import read_image
from steel_defect.data.loaders import seed_worker_transforms
from steel_defect.data.rle import rles_to_hwc
from steel_defect.data.sampling import MixSampler
from steel_defect.data.transforms import build_transforms
from steel_defect.distill.teacher import Frame, read_levels
from steel_defect.errors import UserError
from steel_defect.losses import build_loss
from steel_defect.training.checks import check_components
from steel_defect.training.runner import SteelRunner

log = logging.getLogger(__name__)


def student_config(cfg, work_dir: str | Path):
    """The student's resolved config: ``cfg`` with ``distill.model`` over its model section,
    ``distill.transforms`` (or its own, less CopyPaste), ``distill.epochs`` and ``distill.tta``,
    and none of what would change the targets (mixup, cutmix, semi, extra sets, samplers).
    Its component names are checked here, before anything is written."""
    settings = cfg.distill
    student = copy.deepcopy(cfg)
    given = dict(settings.model)
    if "name" in given and given["name"] != cfg.model.name:
        student.model.params = {}  # params belong to the architecture they were written for
    for key, value in copy.deepcopy(given).items():
        student.model[key] = value
    student.model.classes, student.model.cls_head = list(CLASS_IDS), None
    for side, specs in (settings.transforms or {}).items():
        student.transforms[side] = copy.deepcopy(specs)
    student.transforms.train = [s for s in student.transforms.train if s.get("name") != "CopyPaste"]
    train = student.train
    train.epochs = settings.epochs or train.epochs
    train.mixup_alpha = train.cutmix_alpha = 0.0
    train.semi, train.swa, train.snapshots, train.early_stopping, train.save_top_k = (
        None,
        None,
        False,
        None,
        0,
    )
    student.data.extra, student.data.sampler, student.data.sampler_params = [], None, {}
    student.inference.tta = list(settings.tta)
    student.paths.work_dir, student.paths.postprocessing = str(work_dir), None
    if train.engine not in ("cpu", "gpu"):
        raise UserError(
            f"distill trains one process at a time: set train.engine to cpu or gpu, not {train.engine}"
        )
    try:
        check_components(student)
    except ComponentError as err:
        head, _, rest = err.key_path.partition(".")
        ours = (head == "model" and rest.split(".")[0] in given) or (
            head.startswith("transforms") and settings.transforms
        )
        raise (err.under("distill") if ours else err) from None
    return student


def student_shape(cfg) -> tuple[int, int]:
    """(h, w) the student's network sees a frame at: its validation transforms' output."""
    blank = np.zeros((*IMAGE_SHAPE, cfg.data.channels), np.uint8)
    return tuple(build_transforms(cfg.transforms.valid, "transforms.valid")(image=blank)["image"].shape[:2])


def _sources(stored: int, full: int) -> np.ndarray:
    """For each of ``full`` positions, the stored one that OpenCV's nearest resize from ``full``
    down to ``stored`` reads there (``floor(x * scale)``, its arithmetic), or the last before it."""
    reads = np.floor(np.arange(stored) * (1.0 / (stored / full))).astype(np.int64)
    return np.searchsorted(reads, np.arange(full), side="right") - 1


def spread(levels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(4, h, w) levels -> (4, H, W) at the frame's ``shape``, such that a nearest resize back
    to (h, w), as a config's Resize does to masks, gives the stored levels exactly (at any
    factor, 256x1600 -> 64x384 included); crops and flips move them with the image."""
    rows, cols = _sources(levels.shape[1], shape[0]), _sources(levels.shape[2], shape[1])
    return levels[:, rows][:, :, cols]


class DistillFrames(Dataset):
    """Frames with their labels (none for an unlabelled frame) and their teacher's map.

    Items: ``image`` float32 (C, H, W) (uint8 with ``data.normalize_on_device``), ``mask`` float32
    0/1 (4, H, W), ``soft`` float32 (4, H, W) in [0, 1], ``labelled`` float32 (1 or 0),
    ``image_id``. ``maps``: each frame's cached map file.
    """

    def __init__(
        self, frames: list[Frame], maps: list[Path], annotations, transforms, channels: int, uint8=False
    ):
        self.frames, self.maps, self.annotations = list(frames), list(maps), annotations
        self.transforms, self.channels, self.uint8 = transforms, channels, uint8

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        item = self.frames[index]
        image = read_image(item.path, self.channels, IMAGE_SHAPE)
        if item.labelled:
            labels = rles_to_hwc(self.annotations.rles(item.image_id), IMAGE_SHAPE)
        else:
            labels = np.zeros((*IMAGE_SHAPE, NUM_CLASSES), np.uint8)
        soft = list(spread(read_levels(self.maps[index]), IMAGE_SHAPE))
        if self.transforms is not None:
            out = self.transforms(image=image, mask=labels, masks=soft)
            image, labels, soft = out["image"], out["mask"], out["masks"]
        soft = np.stack(soft).astype(np.float32) * np.float32(1 / 255)
        return {
            "image": image_to_uint8_tensor(image) if self.uint8 else image_to_tensor(image),
            "mask": torch.from_numpy(
                np.ascontiguousarray((labels > 0).transpose(2, 0, 1)).astype(np.float32)
            ),
            "soft": torch.from_numpy(soft),
            "labelled": torch.tensor(float(item.labelled)),
            "image_id": item.image_id,
        }


class DistillLoss(nn.Module):
    """``(1 - w) * KL(soft || student)`` over every frame + ``w * label_loss`` over the labelled ones."""

    def __init__(self, label_loss: nn.Module, label_weight: float):
        super().__init__()
        self.label_loss, self.weight = label_loss, float(label_weight)

    def forward(self, logits, mask, soft, labelled):
        logits = logits.float()
        with torch.no_grad():
            entropy = -(torch.special.xlogy(soft, soft) + torch.special.xlogy(1 - soft, 1 - soft))
        kl = (nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none") - entropy).mean()
        loss = (1 - self.weight) * kl
        has = labelled > 0.5
        if self.weight > 0 and bool(has.any()):
            loss = loss + self.weight * self.label_loss(logits[has], mask[has])
        return loss

    def set_epoch(self, epoch: int) -> None:  # a scheduled label loss follows the epochs too
        if hasattr(self.label_loss, "set_epoch"):
            self.label_loss.set_epoch(epoch)


def student_loaders(cfg, parts: list[Dataset], valid: Dataset) -> dict[str, DataLoader]:
    """The labelled part (once per epoch) and the unlabelled part (``distill.unlabelled_weight``
    per frame) drawn by a :class:`MixSampler`; the valid part in order."""
    weights = [1.0, float(cfg.distill.unlabelled_weight)][: len(parts)]
    sampler = MixSampler([len(p) for p in parts], weights, cfg.seed)
    common = {"num_workers": cfg.data.num_workers, "pin_memory": False}
    if cfg.data.num_workers > 0:
        common["worker_init_fn"] = seed_worker_transforms
    batch = cfg.data.batch_size
    train = ConcatDataset(parts) if len(parts) > 1 else parts[0]
    return {
        "train": DataLoader(
            train, batch_size=batch, sampler=sampler, drop_last=len(sampler) > batch, **common
        ),
        "valid": DataLoader(valid, batch_size=cfg.data.valid_batch_size or batch, shuffle=False, **common),
    }


class DistillRunner(SteelRunner):
    """The project's runner with the student's loaders, loss and record of what it learnt from."""

    def __init__(self, cfg, fold, loaders: dict, run_dir: Path, trained_on: dict, progress=None):
        super().__init__(cfg, -1 if fold is None else fold, cfg.train.engine, progress=progress)
        self.fold, self.run_dir = fold, Path(run_dir)
        self.given_loaders, self.recorded = loaders, trained_on

    def get_loaders(self):
        return self.given_loaders

    def get_criterion(self):
        return DistillLoss(
            build_loss(self.cfg.loss.name, self.cfg.loss.params), self.cfg.distill.label_weight
        )

    def loss_callback(self):
        targets = {"mask": "mask", "soft": "soft", "labelled": "labelled"}
        return dl.CriterionCallback(input_key={"logits": "logits"}, target_key=targets, metric_key="loss")

    def trained_on(self) -> dict:
        return self.recorded


def train_student(
    cfg, fold, parts: list[Dataset], valid: Dataset, run_dir: Path, trained_on: dict, progress=None
) -> Path:
    """Train one student for ``cfg.train.epochs`` into ``run_dir``; its ``last.pth``
    (``progress(epoch, epochs)`` after each epoch).

    The last epoch is what ships (the shipped student has no held-out frames to pick an epoch
    on, so the out-of-fold ones that stand in for it do not pick either)."""
    paths = RunPaths(Path(run_dir))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    loaders = student_loaders(cfg, parts, valid)
    DistillRunner(cfg, fold, loaders, paths.run_dir, trained_on, progress).run()
    return paths.last
