"""Losses made of other registered losses: a weighted sum, and a schedule over epochs.

The strong 2019 Severstal solutions mixed losses (``0.75 * BCE + 0.25 * Lovasz hinge``) or
switched them during training (BCE first, Lovasz to fine-tune)::

    loss:
      name: combo
      params: {terms: [{name: bce, weight: 0.75}, {name: lovasz_hinge, weight: 0.25}]}

    loss:
      name: scheduled
      params: {stages: [{epoch: 1, name: bce_dice}, {epoch: 15, name: lovasz_hinge}]}

Each part is built by name through :func:`steel_defect.losses.build_loss`, so its params are
checked as if it stood alone. The runner calls ``set_epoch`` at every epoch start
(:class:`steel_defect.training.callbacks.LossEpochCallback`), so a resumed run picks the stage
of the epoch it resumes at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch
from torch import nn

from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params
from steel_defect.losses.registry import build_loss


def _build(spec, where: str, allowed: set[str]) -> tuple[nn.Module, dict]:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ComponentError(where, f"must be a mapping with a 'name' (and optional params), got {spec!r}")
    check_params(sorted(allowed), spec, where)
    return build_loss(spec["name"], spec.get("params") or {}, key_path=where), dict(spec)


def _build_all(items, kind: str, key: str) -> list[tuple[nn.Module, dict]]:
    """Each ``{name, params, <key>}`` of the list ``kind`` built, with its spec."""
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise ValueError(f"{kind} must be a non-empty list of {{name, {key}, params}}, got {items!r}")
    return [_build(item, f"{kind}[{k}]", {"name", key, "params"}) for k, item in enumerate(items)]


class ComboLoss(nn.Module):
    """``sum(weight_k * loss_k)`` over ``terms`` = ``[{name, weight (default 1), params}]``."""

    def __init__(self, terms: Sequence[Mapping]):
        super().__init__()
        losses, weights = [], []
        for k, (loss, spec) in enumerate(_build_all(terms, "terms", "weight")):
            weight = spec.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"terms[{k}].weight must be a number >= 0, got {weight!r}")
            losses.append(loss)
            weights.append(float(weight))
        self.terms = nn.ModuleList(losses)
        self.weights = weights

    def set_epoch(self, epoch: int) -> None:
        for term in self.terms:
            if hasattr(term, "set_epoch"):
                term.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, targets) for w, term in zip(self.weights, self.terms, strict=True))

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


class ScheduledLoss(nn.Module):
    """The loss of the last stage whose ``epoch`` (1-based) has been reached.

    ``stages`` = ``[{epoch, name, params}]``; the first starts at epoch 1 and the epochs rise.
    """

    def __init__(self, stages: Sequence[Mapping]):
        super().__init__()
        losses, starts = [], []
        for k, (loss, spec) in enumerate(_build_all(stages, "stages", "epoch")):
            epoch = spec.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise ValueError(f"stages[{k}].epoch must be a whole epoch number >= 1, got {epoch!r}")
            losses.append(loss)
            starts.append(epoch)
        if starts[0] != 1 or any(b <= a for a, b in pairwise(starts)):
            raise ValueError(f"stage epochs must start at 1 and rise, got {starts}")
        self.stages = nn.ModuleList(losses)
        self.starts = starts
        self.current = 0

    def set_epoch(self, epoch: int) -> None:
        self.current = max(k for k, start in enumerate(self.starts) if start <= epoch)
        if hasattr(self.stages[self.current], "set_epoch"):
            self.stages[self.current].set_epoch(epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.stages[self.current](logits, targets)

    def extra_repr(self) -> str:
        return f"starts={self.starts}, current={self.current}"
