"""One Catalyst runner for both tasks: the 5-class classifier and the 4-mask segmenter.

``python train.py --config configs/seg/unet_resnet18_bcedice.yml [--fold K] [--resume]``
calls :func:`train`. The task (``cfg.task``) only changes which dataset, model, target key
and metrics are used; the loop, optimisation, checkpoints and logging are shared.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
from catalyst import dl
from catalyst.core.runner import IRunner

from steel_defect.config import model_classes, model_cls_head, save_config
from steel_defect.config.layout import RunPaths
from steel_defect.data.folds import read_folds, split_digest, split_ids
from steel_defect.data.loaders import build_loaders, device_normalizers, extra_image_ids, normalize_batch
from steel_defect.data.synth import images_source
from steel_defect.losses import build_loss
from steel_defect.models import build_model
from steel_defect.models.checkpoint import CheckpointError, load_checkpoint, unwrap
from steel_defect.pause import pause_point
from steel_defect.training.artifacts import CheckpointCallback
from steel_defect.training.averaging import AveragingCallback
from steel_defect.training.callbacks import (
    BackwardStepCallback,
    BatchLimitCallback,
    ClassificationMetricsCallback,
    ClsHeadCallback,
    EpochCallback,
    EpochProgress,
    MixCallback,
    ResumableEarlyStopping,
    SchedulerCallback,
    SegmentationMetricsCallback,
)
from steel_defect.training.checks import check_components
from steel_defect.training.determinism import configure as configure_determinism
from steel_defect.training.engines import build_engine, patch_catalyst_all_gather
from steel_defect.training.optim import build_optimizer, build_scheduler, cycle_ends
from steel_defect.training.semi import SemiCallback, SemiTerm

log = logging.getLogger(__name__)

# Per task: the batch key holding the targets, the metrics callback, the monitored metric and
# whether lower is better. Not the challenge Dice for seg: it is highest for a model that
# predicts nothing (empty pairs score 1), so it would keep the untrained first epoch; the
# dataset-level IoU rewards found defects and punishes false positives (thresholds are tuned
# afterwards). Not macro F1 for cls: predicting every class everywhere scores well early on;
# the validation loss measures calibrated probabilities, which the per-class gates need.
TASKS = {
    "cls": ("targets", ClassificationMetricsCallback, "loss", True),
    "seg": ("mask", SegmentationMetricsCallback, "iou", False),
}


def training_data(cfg, fold: int) -> dict:
    """What a run learns from, recorded in its checkpoints (the web page shows it).

    ``split`` identifies the fold split (:func:`split_digest`) and lists the validation frames:
    the threshold search refuses a checkpoint trained on another split, and the int8 export
    scores on exactly the frames this run never learnt from.
    """
    table = read_folds(cfg.paths.folds_csv)
    train_ids, valid_ids = split_ids(table, fold)
    found = {
        "source": images_source(cfg.paths.train_images),
        "train_frames": len(train_ids),
        "valid_frames": len(valid_ids),
        "train_csv": str(cfg.paths.train_csv),
        "fold": fold,
        "split": {"sha256": split_digest(table), "valid_ids": valid_ids},
    }
    if cfg.data.extra:
        found["extra"] = [
            {
                "train_csv": str(extra.train_csv),
                "source": images_source(extra.train_images),
                "frames": len(ids),
                "weight": extra.weight,
            }
            for extra, ids in zip(cfg.data.extra, extra_image_ids(cfg), strict=True)
        ]
    return found


def run_dir(cfg, fold: int) -> Path:
    """Where the run of ``fold`` writes: ``<work_dir>/fold<K>``."""
    return RunPaths.of(cfg.paths.work_dir, fold).run_dir


class SteelRunner(IRunner):
    """Catalyst runner built from a resolved config; ``resume_state`` is a loaded ``last.pth``;
    ``progress``: called as ``progress(epoch, epochs)`` after each epoch (:class:`EpochProgress`)."""

    def __init__(
        self,
        cfg,
        fold: int,
        engine: str,
        nproc: int = 1,
        resume_state: dict | None = None,
        progress=None,
    ):
        super().__init__()
        self.progress = progress
        self.cfg, self.fold, self.engine_name, self.nproc = cfg, fold, engine, nproc
        self.resume_state = resume_state
        self.target_key, self.metrics_callback, self.monitor, self.minimize = TASKS[cfg.task]
        self.run_dir = run_dir(cfg, fold)
        self.semi = None  # the teacher of train.semi, made once the model is on its device
        self.normalizers = device_normalizers(cfg)  # data.normalize_on_device: per side, or None

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def num_epochs(self) -> int:
        return self.cfg.train.epochs

    def get_engine(self):
        return build_engine(self.engine_name, self.nproc, self.cfg.train.amp)

    def get_loggers(self):
        logs = RunPaths(self.run_dir).logs
        return {
            "console": dl.ConsoleLogger(),
            "csv": dl.CSVLogger(logdir=str(logs)),
            "tensorboard": dl.TensorboardLogger(logdir=str(logs / "tensorboard")),
        }

    def get_loaders(self):
        return build_loaders(self.cfg, self.fold)

    def get_model(self):
        model = build_model(self.cfg)
        if self.resume_state is not None:
            model.load_state_dict(self.resume_state["model_state"])
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def get_criterion(self):
        return build_loss(self.cfg.loss.name, self.cfg.loss.params)

    def get_optimizer(self, model):
        optimizer = build_optimizer(model, self.cfg)
        if self.resume_state is not None:
            optimizer.load_state_dict(self.resume_state["optimizer_state"])
        return optimizer

    def get_scheduler(self, optimizer):
        scheduler = build_scheduler(optimizer, self.cfg)
        if (
            scheduler is not None
            and self.resume_state is not None
            and self.resume_state.get("scheduler_state")
        ):
            scheduler.load_state_dict(self.resume_state["scheduler_state"])
        return scheduler

    def loss_callback(self):
        """The callback that computes the batch loss (a distilled student's reads more keys)."""
        return dl.CriterionCallback(input_key="logits", target_key=self.target_key, metric_key="loss")

    def trained_on(self) -> dict:
        """What the checkpoints record the run learnt from (:func:`training_data`)."""
        return training_data(self.cfg, self.fold)

    def get_callbacks(self):
        train = self.cfg.train
        callbacks = OrderedDict(
            mix=MixCallback(train.mixup_alpha, train.cutmix_alpha, self.target_key, seed=self.cfg.seed),
            epoch=EpochCallback(seed=self.cfg.seed),
            loss=self.loss_callback(),
            metrics=self.metrics_callback(classes=model_classes(self.cfg))
            if self.cfg.task == "seg"
            else self.metrics_callback(),
            backward=BackwardStepCallback(train.accumulation_steps, train.grad_clip),
            scheduler=SchedulerCallback(self.monitor, self.minimize),
            checkpoint=CheckpointCallback(
                self.run_dir,
                self.cfg,
                self.monitor,
                train.save_top_k,
                self.resume_state,
                self.minimize,
                trained_on=self.trained_on(),
            ),
            limits=BatchLimitCallback({"train": train.max_train_batches, "valid": train.max_valid_batches}),
            progress=dl.TqdmCallback(),
        )
        head = model_cls_head(self.cfg) if self.cfg.task == "seg" else None
        # after the criterion, before the backward step: rebuild the order
        extra = (
            [("head", ClsHeadCallback(head["weight"], model_classes(self.cfg)))] if head is not None else []
        )
        extra += [("semi", SemiCallback())] if self.cfg.train.semi else []
        if extra:
            items = list(callbacks.items())
            at = [name for name, _ in items].index("loss") + 1
            items[at:at] = extra
            callbacks = OrderedDict(items)
        if train.swa or train.snapshots:
            callbacks["averaging"] = AveragingCallback(
                self.run_dir,
                self.cfg,
                train.swa,
                cycle_ends(self.cfg) if train.snapshots else [],
                trained_on=self.trained_on(),
            )
        if self.progress is not None:
            callbacks["epoch_progress"] = EpochProgress(self.progress)
        if train.early_stopping:
            callbacks["early_stopping"] = ResumableEarlyStopping(
                (self.resume_state or {}).get("history", []),
                patience=train.early_stopping,
                loader_key="valid",
                metric_key=self.monitor,
                minimize=self.minimize,
            )
        return callbacks

    def on_experiment_start(self, runner) -> None:
        if self.engine_name == "ddp":
            patch_catalyst_all_gather()  # again here: spawned workers start from a fresh import
        configure_determinism(self.cfg.train.deterministic, self.cfg.train.threads)  # DDP workers too
        super().on_experiment_start(runner)
        if self.resume_state is not None:
            self.epoch_step = int(self.resume_state["epoch"])  # the epoch loop continues after it
        if self.cfg.train.semi:
            rank = int(getattr(self.engine, "process_index", 0) or 0)
            self.semi = SemiTerm(self.cfg, unwrap(self.model), rank, self.resume_state)

    def on_batch_start(self, runner) -> None:
        # before the callbacks' (mixup, cutmix): they see float images, as without the option
        if self.normalizers is not None and self.batch["image"].dtype == torch.uint8:
            side = "train" if self.is_train_loader else "valid"
            self.batch["image"] = normalize_batch(self.batch["image"], self.normalizers[side])
            if self.target_key == "mask":
                self.batch["mask"] = self.batch["mask"].float()
        super().on_batch_start(runner)

    def handle_batch(self, batch) -> None:
        image = batch["image"]
        if self.cfg.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        unlabelled = None
        if self.is_train_loader and self.semi is not None:
            # the teacher's targets, and the student's noisy view in the labelled batch's forward
            # pass (one forward per backward, as DDP requires)
            unlabelled = self.semi.next_batch(image.device)
            self.batch["unlabelled_targets"] = self.semi.targets(unlabelled)
            view, keep = self.semi.perturb(unlabelled)
            if keep is not None:
                self.batch["unlabelled_keep"] = keep
            if self.cfg.train.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            image = torch.cat([image, view])
        output = self.model(image)
        logits, head = output if isinstance(output, tuple) else (output, None)
        if unlabelled is not None:
            n = len(image) - len(unlabelled)
            self.batch["unlabelled_logits"] = logits[n:]
            logits, head = logits[:n], None if head is None else head[:n]
        self.batch["logits"] = logits
        if head is not None:  # a segmenter with a classification head (model.cls_head)
            self.batch["head_logits"] = head
        if self.is_train_loader:
            pause_point("batch:train")  # test-only: a kill mid-epoch (tests/test_faults.py)


def train(cfg, fold: int | None = None, resume: bool = False, nproc: int = 1, progress=None) -> dict:
    """Train ``cfg.task`` on one fold; returns ``{"run_dir", "best", "epochs"}``.

    ``resume`` continues from ``<run_dir>/checkpoints/last.pth`` without repeating finished
    epochs. ``cfg.train.engine`` picks the engine; ddp spawns ``nproc`` workers. Every
    component name of ``cfg`` is checked first, before anything is written. ``progress``: called
    as ``progress(epoch, epochs)`` after each epoch.
    """
    check_components(cfg)
    fold = cfg.folds.valid_fold if fold is None else fold
    cfg.folds.valid_fold = fold
    engine = cfg.train.engine
    directory = run_dir(cfg, fold)
    resume_state = None
    if resume:
        last = RunPaths(directory).last
        if not last.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {last}; start the run without --resume")
        resume_state = load_checkpoint(last)
        for stale in (directory / "checkpoints").glob(".*.tmp"):  # a write the kill interrupted
            log.info("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink()
        log.info("resuming %s after epoch %d of %d", last, resume_state["epoch"], cfg.train.epochs)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(cfg, RunPaths(directory).config)
    runner = SteelRunner(cfg, fold, engine, nproc, resume_state, progress)
    runner.run()
    state = load_checkpoint(RunPaths(directory).last)
    return {
        "run_dir": str(directory),
        "best": state["top"][0] if state["top"] else None,
        "epochs": state["epoch"],
    }
