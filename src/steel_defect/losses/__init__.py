"""Losses by name: the :data:`LOSSES` registry and :func:`build_loss`.

A config names a loss and its constructor parameters::

    loss:
      name: bce_dice
      params: {bce_weight: 1.0, dice_weight: 1.0, smooth: 1.0}

``build_loss(cfg.loss.name, cfg.loss.params)`` returns the ``nn.Module``; an unknown name or
parameter raises ``ValueError`` listing the valid ones, so a typo never falls back to a
default. Every loss takes raw logits and float targets of one shape, (N, C, H, W) or (N, C),
and returns a scalar. The pure functions are in :mod:`.functional`; ``combo`` (a weighted sum)
and ``scheduled`` (a loss per epoch range) are built from other registered losses
(:mod:`.combo`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from .combo import ComboLoss, ScheduledLoss
from .modules import (
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszHingeLoss,
    WeightedBCELoss,
)

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "weighted_bce": WeightedBCELoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "focal": FocalLoss,
    "lovasz_hinge": LovaszHingeLoss,
    "jaccard": JaccardLoss,
    "combo": ComboLoss,
    "scheduled": ScheduledLoss,
}


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_loss(name: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the loss registered as ``name`` with constructor keywords ``params``.

    Raises ``ValueError`` for an unknown name, an unknown or missing parameter, or a bad value,
    naming the valid choices.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'{_hint(str(name), list(LOSSES))}; valid: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    params = dict(params or {})
    # Keyword parameters only: a loss without its own __init__ shows nn.Module's *args, **kwargs.
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p for p in inspect.signature(cls).parameters.values() if p.kind in kinds]
    valid = [p.name for p in accepted]
    for key in params:
        if key not in valid:
            raise ValueError(
                f"loss '{name}' does not accept parameter '{key}'{_hint(str(key), valid)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
    missing = [p.name for p in accepted if p.default is p.empty and p.name not in params]
    if missing:
        raise ValueError(f"loss '{name}' requires parameter(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"loss '{name}': {err}") from None


__all__ = ["LOSSES", "build_loss"]
