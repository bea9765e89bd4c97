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

from collections.abc import Mapping
from typing import Any

from torch import nn

from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params, lookup

from .combo import ComboLoss, ScheduledLoss
from .modules import (
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    WeightedBCELoss,
)

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "weighted_bce": WeightedBCELoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "focal": FocalLoss,
    "lovasz_hinge": LovaszHingeLoss,
    "lovasz_softmax": LovaszSoftmaxLoss,
    "jaccard": JaccardLoss,
    "combo": ComboLoss,
    "scheduled": ScheduledLoss,
}


def build_loss(name: str, params: Mapping[str, Any] | None = None, key_path: str = "loss") -> nn.Module:
    """Build the loss registered as ``name`` with constructor keywords ``params``.

    Raises :class:`ComponentError` for an unknown name, an unknown or missing parameter, or a
    bad value, naming ``<key_path>.name`` or ``<key_path>.params`` and the valid choices.
    """
    cls = lookup("loss", name, LOSSES, f"{key_path}.name")
    params = check_params(cls, params, f"{key_path}.params")
    try:
        return cls(**params)
    except ComponentError as err:  # a part of combo / scheduled
        raise err.under(f"{key_path}.params") from None
    except (TypeError, ValueError) as err:
        raise ComponentError(f"{key_path}.params", f"loss '{name}': {err}") from None


__all__ = ["LOSSES", "build_loss"]
