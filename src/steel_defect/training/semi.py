"""A semi-supervised term on unlabelled frames, beside the supervised loss: a mean teacher or FixMatch.

    train:
      semi: {name: mean_teacher, unlabelled: ../shared/data/severstal_unlabeled/test_images,
             weight: 1.0, ema: 0.99, rampup_epochs: 2, batch_size: 4, noise: 0.1}
      semi: {name: fixmatch, unlabelled: DIR, weight: 1.0, ema: 0.0, threshold: 0.95, noise: 0.2,
             cutout: 0.5, rampup_epochs: 2, batch_size: 4}

Every training step also draws ``batch_size`` unlabelled frames (the training augmentations,
without ``CopyPaste``). The teacher, an exponential moving average of the student's weights
(``ema`` per step), predicts them as they are; the student predicts them with Gaussian noise
(``noise`` in normalised units) and a random brightness shift added, in the same forward pass as
the labelled batch (one forward per backward, as DDP requires). The mean squared difference of
their probabilities, times ``weight`` ramped up over ``rampup_epochs`` (Tarvainen & Valpola,
2017), joins the loss.

``fixmatch`` (Sohn et al., 2020, weak-to-strong consistency, per pixel): the teacher (with the
default ``ema: 0``, the student's own weights of this step) predicts the clean view; every pixel
whose probability is above ``threshold`` or below ``1 - threshold`` becomes a hard target, and
the student's binary cross-entropy on a strong view of the frame (noise, a brightness shift, a
contrast scale, and with probability ``cutout`` an erased box, whose pixels carry no target) is
averaged over all pixels, so an unsure frame adds little.

The teacher's weights are saved in ``last.pth``, and the draws depend only on the seed, the
epoch and the step, so ``--resume`` continues as the uninterrupted run would.

An unlabelled frame whose name is in the fold split (a labelled frame, the scored fold's
included) is left out: the unlabelled term never sees a frame that validation scores.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import torch
from catalyst.core.callback import Callback, CallbackOrder

from steel_defect.data.datasets import ImageFolderDataset
from steel_defect.data.folds import read_folds
from steel_defect.data.images import IMAGE_SUFFIXES
from steel_defect.data.transforms import build_transforms
from steel_defect.errors import UserError

log = logging.getLogger(__name__)


def unlabelled_paths(cfg) -> list[Path]:
    """The frames of ``train.semi.unlabelled``, by name, less every frame of the fold split."""
    folder = Path(cfg.train.semi["unlabelled"])
    labelled = set(read_folds(cfg.paths.folds_csv).ImageId)
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    kept = [p for p in paths if p.name not in labelled]
    if len(kept) < len(paths):
        log.info(
            "train.semi: left out %d unlabelled frames that the fold split labels", len(paths) - len(kept)
        )
    if not kept:
        raise UserError(f"train.semi.unlabelled {folder}: no frame left once the labelled ones are left out")
    return kept


class SemiTerm:
    """The teacher, the unlabelled frames and the draws of one training run."""

    def __init__(self, cfg, student: torch.nn.Module, rank: int = 0, resume_state: dict | None = None):
        settings = cfg.train.semi  # checked and completed at load (config/loader.py::_check_semi)
        self.method = settings["name"]
        self.threshold = float(settings.get("threshold", 0.5))
        self.cutout = float(settings.get("cutout", 0.0))
        self.weight, self.ema = float(settings["weight"]), float(settings["ema"])
        self.rampup, self.batch_size = int(settings["rampup_epochs"]), int(settings["batch_size"])
        self.noise = float(settings["noise"])
        self.seed, self.rank, self.epoch, self.step = int(cfg.seed), rank, 0, 0
        specs = [s for s in cfg.transforms.train if s.get("name") != "CopyPaste"]
        self.transforms = build_transforms(specs, "transforms.train", seed=self.seed)
        self.frames = ImageFolderDataset(unlabelled_paths(cfg), self.transforms, channels=cfg.data.channels)
        self.teacher = copy.deepcopy(student).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        if resume_state is not None and resume_state.get("teacher_state") is not None:
            self.teacher.load_state_dict(resume_state["teacher_state"])
        self.order = np.arange(len(self.frames))
        self.generator = torch.Generator()

    def start_epoch(self, epoch: int) -> None:
        """Reseed every draw of ``epoch`` from the seed, the epoch and the rank alone."""
        self.epoch, self.step = epoch, 0
        seed = (self.seed * 1_000_003 + epoch) * 101 + self.rank
        self.order = np.random.default_rng(seed).permutation(len(self.frames))
        self.transforms.set_random_seed(seed)
        self.generator.manual_seed(seed)

    def factor(self) -> float:
        """``weight`` times the sigmoid ramp-up ``exp(-5 (1 - t)^2)`` over the first epochs."""
        if self.rampup <= 0:
            return self.weight
        t = min(1.0, (self.epoch - 1) / self.rampup)
        return self.weight * math.exp(-5 * (1 - t) ** 2)

    def next_batch(self, device) -> torch.Tensor:
        picks = [
            self.order[(self.step * self.batch_size + i) % len(self.order)] for i in range(self.batch_size)
        ]
        self.step += 1
        return torch.stack([self.frames[int(i)]["image"] for i in picks]).to(device)

    def perturb(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's view and, for FixMatch, where it keeps its targets (False: erased).

        Both methods add Gaussian noise and a brightness shift per frame (normalised units);
        FixMatch's strong view also scales the contrast by 1 +- 2 ``noise`` and erases, with
        probability ``cutout``, a box of up to half the frame's height and width."""
        n = len(images)
        noise = torch.randn(images.shape, generator=self.generator) * self.noise
        shift = (torch.rand((n, 1, 1, 1), generator=self.generator) - 0.5) * 2 * self.noise
        if self.method != "fixmatch":
            return images + (noise + shift).to(images.device, images.dtype), None
        scale = 1 + (torch.rand((n, 1, 1, 1), generator=self.generator) - 0.5) * 4 * self.noise
        view = images * scale.to(images.device, images.dtype) + (noise + shift).to(
            images.device, images.dtype
        )
        keep = torch.ones((n, 1, *images.shape[2:]), dtype=torch.bool)
        height, width = images.shape[2:]
        for i in range(n):
            draws = torch.rand(5, generator=self.generator).tolist()
            if draws[0] >= self.cutout:
                continue
            h, w = max(1, int(draws[1] * height / 2)), max(1, int(draws[2] * width / 2))
            top, left = int(draws[3] * (height - h)), int(draws[4] * (width - w))
            keep[i, :, top : top + h, left : left + w] = False
        keep = keep.to(images.device)
        return view * keep, keep

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The unlabelled term for the student's ``logits`` (before ``weight`` and the ramp-up)."""
        if self.method != "fixmatch":
            return torch.mean((torch.sigmoid(logits.float()) - targets) ** 2)
        confident = (targets > self.threshold) | (targets < 1 - self.threshold)
        if keep is not None:
            confident = confident & keep
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), (targets > 0.5).float(), reduction="none"
        )
        return (bce * confident).mean()

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        out = self.teacher(images)
        return torch.sigmoid((out[0] if isinstance(out, tuple) else out).float())

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """teacher <- ema * teacher + (1 - ema) * student; buffers (BatchNorm statistics) copied."""
        for t, s in zip(self.teacher.state_dict().values(), student.state_dict().values(), strict=True):
            if t.is_floating_point():
                t.mul_(self.ema).add_(s.detach().to(t.device), alpha=1 - self.ema)
            else:
                t.copy_(s)

    def state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}


class SemiCallback(Callback):
    """Adds the consistency term to the batch loss (after the criterion) and moves the teacher
    after each optimiser step; logs ``consistency`` per loader."""

    def __init__(self):
        super().__init__(order=CallbackOrder.Metric)

    def on_epoch_start(self, runner) -> None:
        runner.semi.start_epoch(runner.epoch_step)

    def on_loader_start(self, runner) -> None:
        self.total, self.seen, self.pending = 0.0, 0, False

    def on_batch_start(self, runner) -> None:
        if runner.is_train_loader and self.pending:
            runner.semi.update(_unwrap(runner.model))  # the previous step's optimiser has run
            self.pending = False

    def on_batch_end(self, runner) -> None:
        if not runner.is_train_loader or "unlabelled_logits" not in runner.batch:
            return
        batch = runner.batch
        consistency = runner.semi.loss(
            batch["unlabelled_logits"], batch["unlabelled_targets"], batch.get("unlabelled_keep")
        )
        runner.batch_metrics["loss"] = runner.batch_metrics["loss"] + runner.semi.factor() * consistency
        runner.batch_metrics["consistency"] = float(consistency)
        self.total += float(consistency)
        self.seen += 1
        self.pending = True

    def on_loader_end(self, runner) -> None:
        if runner.is_train_loader:
            if self.pending:
                runner.semi.update(_unwrap(runner.model))
                self.pending = False
            if self.seen:
                runner.loader_metrics["consistency"] = self.total / self.seen


def _unwrap(model):
    return getattr(model, "module", model)
