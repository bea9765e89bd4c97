"""Catalyst callbacks of a training run: batch mixing, optimisation, metrics, limits.

Checkpointing and the curve plot live in :mod:`steel_defect.training.artifacts`.
Metrics that need binary targets run on the validation loader only; mixup and cutmix touch
training batches only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from catalyst.callbacks.misc import EarlyStoppingCallback
from catalyst.core.callback import (
    Callback,
    CallbackOrder,
    IBackwardCallback,
    IOptimizerCallback,
    ISchedulerCallback,
)

from steel_defect.constants import CLASS_IDS
from steel_defect.data.sampling import EpochSampler
from steel_defect.errors import UserError
from steel_defect.training.engines import all_gather


class MixCallback(Callback):
    """Mixup and/or cutmix on training batches (one of the two per batch when both are on).

    Mixup blends two images and their targets with ``lam ~ Beta(a, a)``. Cutmix pastes a
    box of a shuffled partner: masks take the box exactly, 1-D targets mix by the box's area.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, target_key: str, seed: int = 0):
        super().__init__(order=CallbackOrder.Internal)
        self.mixup_alpha, self.cutmix_alpha, self.target_key = mixup_alpha, cutmix_alpha, target_key
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def on_epoch_start(self, runner) -> None:
        # draws depend on the seed and the epoch only, so a resumed run mixes as an uninterrupted one
        self.rng = np.random.default_rng([self.seed, runner.epoch_step])

    def on_batch_start(self, runner) -> None:
        if not runner.is_train_loader or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return
        batch = runner.batch
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < 0.5)
        perm = torch.from_numpy(self.rng.permutation(batch["image"].shape[0]))
        if use_cutmix:
            mix_cutmix(
                batch,
                self.target_key,
                perm,
                float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha)),
                self.rng,
            )
        else:
            lam = float(self.rng.beta(self.mixup_alpha, self.mixup_alpha))
            for key in ("image", self.target_key):
                batch[key] = lam * batch[key] + (1 - lam) * batch[key][perm]


def mix_cutmix(
    batch: dict, target_key: str, perm: torch.Tensor, lam: float, rng: np.random.Generator
) -> None:
    """Paste a box covering about ``1 - lam`` of the frame from ``batch[perm]`` (in place).

    ``batch["image"]``: (N, C, H, W); targets (N, K, H, W) masks or (N, K) labels.
    """
    height, width = batch["image"].shape[-2:]
    cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
    top = int(rng.integers(0, height - cut_h + 1))
    left = int(rng.integers(0, width - cut_w + 1))
    box = (..., slice(top, top + cut_h), slice(left, left + cut_w))
    image = batch["image"].clone()
    image[box] = batch["image"][perm][box]
    batch["image"] = image
    target = batch[target_key]
    if target.ndim == 4:
        mixed = target.clone()
        mixed[box] = target[perm][box]
    else:
        area = cut_h * cut_w / (height * width)
        mixed = (1 - area) * target + area * target[perm]
    batch[target_key] = mixed


class BackwardStepCallback(IBackwardCallback, IOptimizerCallback):
    """Backward pass, gradient accumulation over ``accumulation_steps`` batches, clipping, step.

    The loss is divided by the number of accumulated batches so the summed gradient is a mean;
    clipping applies to the accumulated gradient just before the step.
    """

    def __init__(self, accumulation_steps: int = 1, grad_clip: float | None = None):
        # both interfaces, so catalyst knows the optimisation is handled; one order
        Callback.__init__(self, order=CallbackOrder.Backward)
        if accumulation_steps < 1:
            raise UserError(f"train.accumulation_steps must be at least 1, got {accumulation_steps}")
        self.accumulation_steps, self.grad_clip = accumulation_steps, grad_clip

    def on_loader_start(self, runner) -> None:
        self.pending = 0
        if runner.is_train_loader:
            runner.optimizer.zero_grad()

    def on_batch_end(self, runner) -> None:
        if not runner.is_train_loader:
            return
        runner.engine.backward(runner.batch_metrics["loss"] / self.accumulation_steps)
        self.pending += 1
        last = runner.loader_batch_step >= runner.loader_batch_len * runner.engine.num_processes
        if self.pending == self.accumulation_steps or last:
            if self.grad_clip is not None:
                runner.engine.unscale_gradients()
                norm = torch.nn.utils.clip_grad_norm_(runner.model.parameters(), self.grad_clip)
                runner.batch_metrics["grad_norm"] = float(norm)
            runner.optimizer.step()
            runner.optimizer.zero_grad()
            self.pending = 0

    def on_loader_end(self, runner) -> None:
        if runner.is_train_loader:
            for group in runner.optimizer.param_groups:
                runner.loader_metrics[f"lr/{group.get('name', 'all')}"] = group["lr"]


class SchedulerCallback(ISchedulerCallback):
    """Steps the scheduler once per epoch; ReduceLROnPlateau gets the monitored valid metric."""

    def __init__(self, monitor: str, minimize: bool = False):
        super().__init__()
        self.monitor, self.sign = monitor, -1.0 if minimize else 1.0

    def on_epoch_end(self, runner) -> None:
        if runner.scheduler is None:
            return
        if isinstance(runner.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            runner.scheduler.step(self.sign * runner.epoch_metrics["valid"][self.monitor])  # mode="max"
        else:
            runner.scheduler.step()


def gather_sum(*values):
    """Each value summed over all processes (itself when not distributed)."""
    return tuple(sum(parts) for parts in zip(*all_gather(values), strict=True))


class SegmentationMetricsCallback(Callback):
    """Validation Dice and IoU at a 0.5 probability threshold, per class and mean.

    ``dice`` is the challenge metric: the mean over (image, class) pairs, 1 when both the
    prediction and the truth are empty. ``iou`` is intersection over union summed over the
    validation set per class (an empty class counts 1).
    """

    def __init__(self, threshold: float = 0.5, classes: tuple[int, ...] = CLASS_IDS):
        super().__init__(order=CallbackOrder.Metric)
        self.threshold = threshold
        self.classes = tuple(classes)  # the class id of each output channel

    def on_loader_start(self, runner) -> None:
        self.dice_sum = np.zeros(len(self.classes))
        self.pairs = 0
        self.inter = np.zeros(len(self.classes))
        self.union = np.zeros(len(self.classes))

    @torch.no_grad()
    def on_batch_end(self, runner) -> None:
        if runner.is_train_loader:
            return
        pred = torch.sigmoid(runner.batch["logits"].float()) > self.threshold
        truth = runner.batch["mask"] > 0.5
        inter = (pred & truth).sum(dim=(-2, -1)).double()
        total = pred.sum(dim=(-2, -1)).double() + truth.sum(dim=(-2, -1)).double()
        dice = torch.where(total == 0, torch.ones_like(total), 2 * inter / total.clamp(min=1))
        self.dice_sum += dice.sum(dim=0).cpu().numpy()
        self.pairs += dice.shape[0]
        self.inter += inter.sum(dim=0).cpu().numpy()
        self.union += (total - inter).sum(dim=0).cpu().numpy()

    def on_loader_end(self, runner) -> None:
        if runner.is_train_loader:
            return
        dice_sum, pairs, inter, union = gather_sum(self.dice_sum, self.pairs, self.inter, self.union)
        dice = dice_sum / max(pairs, 1)
        iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        runner.loader_metrics["dice"] = float(dice.mean())
        runner.loader_metrics["iou"] = float(iou.mean())
        for i, class_id in enumerate(self.classes):
            runner.loader_metrics[f"dice_{class_id}"] = float(dice[i])
            runner.loader_metrics[f"iou_{class_id}"] = float(iou[i])


class ClassificationMetricsCallback(Callback):
    """Validation accuracy and F1 of the 5 multi-label outputs (no-defect, classes 1..4).

    ``accuracy`` is the share of correct labels; ``f1`` the macro F1 over the four defect
    classes (a class with no positives and no predictions scores 1).
    """

    NAMES = ("none", *map(str, CLASS_IDS))

    def __init__(self, threshold: float = 0.5):
        super().__init__(order=CallbackOrder.Metric)
        self.threshold = threshold

    def on_loader_start(self, runner) -> None:
        self.counts = np.zeros((3, len(self.NAMES)))  # tp, fp, fn
        self.correct = 0.0
        self.labels = 0

    @torch.no_grad()
    def on_batch_end(self, runner) -> None:
        if runner.is_train_loader:
            return
        pred = torch.sigmoid(runner.batch["logits"].float()) > self.threshold
        truth = runner.batch["targets"] > 0.5
        self.counts[0] += (pred & truth).sum(dim=0).cpu().numpy()
        self.counts[1] += (pred & ~truth).sum(dim=0).cpu().numpy()
        self.counts[2] += (~pred & truth).sum(dim=0).cpu().numpy()
        self.correct += float((pred == truth).sum())
        self.labels += truth.numel()

    def on_loader_end(self, runner) -> None:
        if runner.is_train_loader:
            return
        counts, correct, labels = gather_sum(self.counts, self.correct, self.labels)
        tp, fp, fn = counts
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator == 0, 1.0, 2 * tp / np.maximum(denominator, 1))
        runner.loader_metrics["accuracy"] = correct / max(labels, 1)
        runner.loader_metrics["f1"] = float(f1[1:].mean())
        for name, value in zip(self.NAMES, f1, strict=True):
            runner.loader_metrics[f"f1_{name}"] = float(value)


class ClsHeadCallback(Callback):
    """The two-head model's joint loss and its head's validation metrics.

    Runs right after the criterion: adds ``weight * BCE(head logits, class presence)`` to the
    batch loss that the backward step uses. Presence is each mask channel's maximum, so a crop
    that cuts a defect out makes the image defect-free for the head too, and mixup's blended
    masks give blended targets. Logged: ``head_loss`` and, on validation, ``head_acc`` (mean) and
    ``head_acc_<class>``: presence accuracy at probability 0.5.
    """

    def __init__(self, weight: float, classes: tuple[int, ...] = CLASS_IDS):
        super().__init__(order=CallbackOrder.Metric)
        self.weight, self.classes = weight, tuple(classes)

    def on_loader_start(self, runner) -> None:
        self.loss_sum, self.seen, self.correct = 0.0, 0, np.zeros(len(self.classes))

    def on_batch_end(self, runner) -> None:
        logits = runner.batch["head_logits"].float()
        targets = runner.batch["mask"].float().amax(dim=(-2, -1))
        head_loss = F.binary_cross_entropy_with_logits(logits, targets)
        runner.batch_metrics["loss"] = runner.batch_metrics["loss"] + self.weight * head_loss
        runner.batch_metrics["head_loss"] = float(head_loss)
        self.loss_sum += float(head_loss) * len(logits)
        self.seen += len(logits)
        if not runner.is_train_loader:
            agree = (logits > 0) == (targets > 0.5)
            self.correct += agree.sum(dim=0).double().cpu().numpy()

    def on_loader_end(self, runner) -> None:
        loss_sum, seen, correct = gather_sum(self.loss_sum, self.seen, self.correct)
        runner.loader_metrics["head_loss"] = loss_sum / max(seen, 1)
        if not runner.is_train_loader:
            accuracy = correct / max(seen, 1)
            runner.loader_metrics["head_acc"] = float(accuracy.mean())
            for class_id, value in zip(self.classes, accuracy, strict=True):
                runner.loader_metrics[f"head_acc_{class_id}"] = float(value)


class EpochProgress(Callback):
    """Report each finished epoch as ``report(epoch, epochs)``: a caller that shows progress (the
    labels training's row, which the page polls) learns it without parsing the console."""

    def __init__(self, report):
        super().__init__(order=CallbackOrder.External)
        self.report = report

    def on_epoch_end(self, runner) -> None:
        self.report(int(runner.epoch_step), int(runner.num_epochs))


class EpochCallback(Callback):
    """Tell the loss (:mod:`steel_defect.losses.combo`), the mixing sampler and the augmentation
    pipelines which epoch starts.

    All depend on the epoch, and all must follow catalyst's epoch counter rather than count
    calls themselves, so that a resumed run continues exactly where an uninterrupted one would be.
    Augmentations are reseeded from ``seed`` and the epoch (in-process loading; DataLoader workers
    get their seeds from torch's generator, which catalyst reseeds every epoch).
    """

    def __init__(self, seed: int = 0):
        super().__init__(order=CallbackOrder.Internal)
        self.seed = seed

    def on_epoch_start(self, runner) -> None:
        if hasattr(runner.criterion, "set_epoch"):
            runner.criterion.set_epoch(runner.epoch_step)
        sampler = epoch_sampler(runner.loaders.get("train"))
        if sampler is not None:
            sampler.set_epoch(runner.epoch_step - 1)
        for loader in runner.loaders.values():
            dataset = getattr(loader, "dataset", None)
            for part in getattr(dataset, "datasets", [dataset]):  # a ConcatDataset's parts
                transforms = getattr(part, "transforms", None)
                if hasattr(transforms, "set_random_seed"):
                    transforms.set_random_seed(self.seed * 1_000_003 + runner.epoch_step)


def epoch_sampler(loader) -> EpochSampler | None:
    """The loader's :class:`EpochSampler`, also where DDP hid it: accelerate's prepared loader
    keeps a plain sampler and shards the batches of the original one
    (``loader.batch_sampler.batch_sampler.sampler``)."""
    for path in (("sampler",), ("batch_sampler", "sampler"), ("batch_sampler", "batch_sampler", "sampler")):
        found = loader
        for name in path:
            found = getattr(found, name, None)
        if isinstance(found, EpochSampler):
            return found
    return None


class BatchLimitCallback(Callback):
    """Stop a loader after ``limits[loader_key]`` batches (quick runs, smoke tests)."""

    def __init__(self, limits: dict[str, int | None]):
        super().__init__(order=CallbackOrder.External)
        self.limits = limits

    def on_batch_end(self, runner) -> None:
        limit = self.limits.get(runner.loader_key)
        if limit is not None and runner.loader_batch_step >= limit * runner.engine.num_processes:
            runner.need_early_stop = True  # catalyst breaks out of the loader on the next batch
            self.stopped = True

    def on_loader_start(self, runner) -> None:
        self.stopped = False

    def on_loader_end(self, runner) -> None:
        # a loader that ran out exactly at the limit never consumed the flag: clear it so
        # the next loader (and the epoch loop) do not stop too
        if self.stopped:
            runner.need_early_stop = False


class ResumableEarlyStopping(EarlyStoppingCallback):
    """Catalyst's early stopping, with the epochs of a resumed run's ``history`` replayed first,
    so the patience left is the same as in an uninterrupted run."""

    def __init__(self, history: list[dict], **kwargs):
        super().__init__(**kwargs)
        self.history = history

    def on_experiment_start(self, runner) -> None:
        super().on_experiment_start(runner)
        for entry in self.history:
            score = entry[self.loader_key][self.metric_key]
            if self.best_score is None or self.is_better(score, self.best_score):
                self.best_score, self.num_no_improvement_epochs = score, 0
            else:
                self.num_no_improvement_epochs += 1
