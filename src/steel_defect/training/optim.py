"""Optimizers and learning-rate schedules from config.

The encoder (pretrained features) and the decoder / head get separate learning rates
(``optimizer.encoder_lr`` and ``optimizer.lr``), as fine-tuning usually wants a smaller
rate for the encoder. Schedulers are stepped once per epoch by the runner.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params, lookup

OPTIMIZERS = {
    "radam": torch.optim.RAdam,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def param_groups(model: nn.Module, lr: float, encoder_lr: float | None) -> list[dict]:
    """Two groups when the model has an ``encoder`` (encoder at ``encoder_lr``), else one."""
    encoder = getattr(model, "encoder", None)
    if encoder is None or encoder_lr is None or encoder_lr == lr:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "name": "all"}]
    encoder_ids = {id(p) for p in encoder.parameters()}
    enc = [p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    return [
        {"params": enc, "lr": encoder_lr, "name": "encoder"},
        {"params": rest, "lr": lr, "name": "decoder"},
    ]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Optimizer named by ``cfg.optimizer.name`` over the encoder/decoder parameter groups."""
    opt = cfg.optimizer
    cls, params = check_optimizer(cfg)
    return cls(param_groups(model, opt.lr, opt.encoder_lr), lr=opt.lr, **params)


def check_optimizer(cfg) -> tuple[type[torch.optim.Optimizer], dict]:
    """The class and checked params of ``cfg.optimizer`` (the config loader calls it)."""
    cls = lookup("optimizer", cfg.optimizer.name, OPTIMIZERS, "optimizer.name")
    return cls, check_params(cls, cfg.optimizer.params, "optimizer.params", skip=("params", "lr"))


def warmup_cosine(epochs: int, warmup_epochs: int = 0, min_factor: float = 0.0):
    """Factor of the base rate per epoch: linear warm-up, then half a cosine down to ``min_factor``."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        span = max(1, epochs - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def cosine_restarts(epochs: int, cycles: int, min_factor: float = 0.0):
    """Factor per epoch: ``cycles`` equal cosine cycles, each from 1 down to ``min_factor``.

    The snapshot ensembles' schedule: each cycle ends in a minimum worth keeping
    (``train.snapshots``), then the rate jumps back up to leave it.
    """
    if cycles < 1 or epochs % cycles:
        raise ValueError(f"cycles must divide train.epochs ({epochs}) into equal cycles, got {cycles}")
    length = epochs // cycles

    def factor(epoch: int) -> float:
        # SGDR: epoch i of a cycle of L trains at cos(pi * i / L), so the last epoch still learns
        progress = (epoch % length) / length
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def noam(warmup_epochs: int = 1):
    """Factor per epoch: linear warm-up to 1 at ``warmup_epochs``, then ``sqrt(warmup / epoch)``."""
    if warmup_epochs < 1:
        raise ValueError(f"warmup_epochs must be at least 1, got {warmup_epochs}")

    def factor(epoch: int) -> float:
        step = epoch + 1
        return min(step / warmup_epochs, math.sqrt(warmup_epochs / step))

    return factor


def cycle_ends(cfg) -> list[int]:
    """1-based epochs that end a ``cosine_restarts`` cycle (where snapshots are taken)."""
    if cfg.scheduler.name != "cosine_restarts":
        return []
    length = cfg.train.epochs // cfg.scheduler.params["cycles"]
    return list(range(length, cfg.train.epochs + 1, length))


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: a torch scheduler class, or a per-epoch factor of the base rate
    (``factor``: a function of ``params`` and, if it takes them, ``epochs``) run by LambdaLR."""

    target: Callable
    factor: bool = False
    fixed: tuple[tuple[str, object], ...] = ()  # arguments the runner sets, not the config

    def skip(self) -> tuple[str, ...]:
        return ("epochs",) if self.factor else ("optimizer", *(k for k, _ in self.fixed))


# ReduceLROnPlateau steps on the monitored metric, which SchedulerCallback makes higher-is-better.
SCHEDULERS: dict[str, Schedule] = {
    "plateau": Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau, fixed=(("mode", "max"),)),
    "cosine": Schedule(warmup_cosine, factor=True),
    "cosine_restarts": Schedule(cosine_restarts, factor=True),
    "noam": Schedule(noam, factor=True),
    "step": Schedule(torch.optim.lr_scheduler.StepLR),
    "multistep": Schedule(torch.optim.lr_scheduler.MultiStepLR),
}


def check_scheduler(cfg) -> Callable | None:
    """``optimizer -> scheduler`` for ``cfg.scheduler`` after checking its name and params (and,
    for the factor schedules, their values against ``train.epochs``); None when ``name`` is null.
    The config loader calls it, so a bad schedule fails before anything is written."""
    name = cfg.scheduler.name
    if name is None:
        return None
    schedule = lookup("scheduler", name, SCHEDULERS, "scheduler.name")
    params = check_params(schedule.target, cfg.scheduler.params, "scheduler.params", skip=schedule.skip())
    if not schedule.factor:
        return lambda optimizer: schedule.target(optimizer, **dict(schedule.fixed), **params)
    takes_epochs = "epochs" in inspect.signature(schedule.target).parameters
    try:
        factor = schedule.target(cfg.train.epochs, **params) if takes_epochs else schedule.target(**params)
    except (TypeError, ValueError) as err:
        raise ComponentError("scheduler.params", f"{name}: {err}") from None
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg):
    """Scheduler from ``cfg.scheduler`` (None when ``name`` is null), stepped once per epoch.

    Every schedule scales each parameter group's own rate (``optimizer.encoder_lr`` and
    ``optimizer.lr``), so the encoder keeps its ratio to the decoder throughout.

    * ``plateau``: ReduceLROnPlateau on the monitored validation metric;
    * ``cosine``: params ``warmup_epochs`` (0), ``min_factor`` (0.0) over ``train.epochs``;
    * ``cosine_restarts``: ``cycles`` equal cosine cycles (snapshot ensembles), ``min_factor``;
    * ``noam``: ``warmup_epochs`` (1) of linear warm-up, then inverse square-root decay;
    * ``step``: StepLR (``step_size``, ``gamma``); ``multistep``: MultiStepLR (``milestones``, ``gamma``).
    """
    make = check_scheduler(cfg)
    return None if make is None else make(optimizer)
