"""Optimizers and learning-rate schedules from config.

The encoder (pretrained features) and the decoder / head get separate learning rates
(``optimizer.encoder_lr`` and ``optimizer.lr``), as fine-tuning usually wants a smaller
rate for the encoder. Schedulers are stepped once per epoch by the runner.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

OPTIMIZERS = {
    "radam": torch.optim.RAdam,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def _check_params(kind: str, name: str, cls, params: dict, skip: tuple[str, ...] = ()) -> None:
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", *skip)]
    for key in params:
        if key not in accepted:
            raise ValueError(
                f"{kind}.params.{key}: {name} does not accept '{key}'; valid: {', '.join(accepted)}"
            )


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
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name '{opt.name}' is unknown; valid: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[opt.name]
    params = dict(opt.params)
    _check_params("optimizer", opt.name, cls, params, skip=("params", "lr"))
    return cls(param_groups(model, opt.lr, opt.encoder_lr), lr=opt.lr, **params)


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
    name, params = cfg.scheduler.name, dict(cfg.scheduler.params)
    if name is None:
        return None
    if name == "plateau":
        cls = torch.optim.lr_scheduler.ReduceLROnPlateau
        _check_params("scheduler", name, cls, params, skip=("optimizer", "mode"))
        return cls(optimizer, mode="max", **params)
    if name == "step":
        cls = torch.optim.lr_scheduler.StepLR
        _check_params("scheduler", name, cls, params, skip=("optimizer",))
        return cls(optimizer, **params)
    if name == "multistep":
        cls = torch.optim.lr_scheduler.MultiStepLR
        _check_params("scheduler", name, cls, params, skip=("optimizer",))
        return cls(optimizer, **params)
    factors = {"cosine": warmup_cosine, "cosine_restarts": cosine_restarts, "noam": noam}
    if name in factors:
        function = factors[name]
        takes_epochs = "epochs" in inspect.signature(function).parameters
        _check_params("scheduler", name, function, params, skip=("epochs",))
        try:
            factor = function(cfg.train.epochs, **params) if takes_epochs else function(**params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"scheduler {name}: {err}") from None
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    valid = "plateau, cosine, cosine_restarts, noam, step, multistep, null"
    raise ValueError(f"scheduler.name '{name}' is unknown; valid: {valid}")
