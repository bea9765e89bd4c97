"""Losses by name: the :data:`LOSSES` registry and :func:`build_loss`.

A config names a loss and its constructor parameters::

    loss:
      name: bce_dice
      params: {bce_weight: 1.0, dice_weight: 1.0, smooth: 1.0}

``build_loss(cfg.loss.name, cfg.loss.params)`` returns the ``nn.Module``; an unknown name or
parameter raises :class:`~steel_defect.config.errors.ComponentError` (a ``ValueError``) listing
the valid ones, so a typo never falls back to a default; the config loader builds the loss once
to check it before anything is written. Every loss takes raw logits and float targets of one
shape, (N, C, H, W) or (N, C), and returns a scalar. The pure functions are in
:mod:`.functional`; ``combo`` (a weighted sum) and ``scheduled`` (a loss per epoch range) are
built from other registered losses (:mod:`.combo`).
"""

from __future__ import annotations

from steel_defect.losses.combo import ComboLoss, ScheduledLoss
from steel_defect.losses.registry import LOSSES, build_loss

LOSSES.update(combo=ComboLoss, scheduled=ScheduledLoss)

__all__ = ["LOSSES", "build_loss"]
