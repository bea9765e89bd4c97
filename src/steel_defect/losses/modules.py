"""``nn.Module`` wrappers around :mod:`.functional`, built by name from a config.

Each constructor takes the config's ``params`` as keywords and validates their values;
``forward(logits, targets)`` checks that both are (N, C) or (N, C, H, W) of one shape and
returns a scalar. The maths lives in :mod:`.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import functional as LF


def _check_non_negative(**values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")


class _Loss(nn.Module):
    """Shape check in ``forward``, maths in ``_loss``."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        LF.check_shapes(logits, targets)
        return self._loss(logits, targets)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BCELoss(_Loss):
    """Binary cross-entropy with logits, mean over every element.

    ``label_smoothing`` eps in [0, 1) trains towards 1 - eps/2 and eps/2 instead of 1 and 0,
    which keeps a classifier's probabilities off the extremes its gates are tuned on.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def _loss(self, logits, targets):
        return LF.bce(logits, targets, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class WeightedBCELoss(_Loss):
    """BCE with one positive-class weight per class (dim 1), e.g. ``pos_weight: [2, 1, 1, 1]``.

    The length is checked against the input's C at forward time, since the same config
    section may serve a 4-class segmenter or a 5-output classifier.
    """

    def __init__(self, pos_weight: Sequence[float]):
        super().__init__()
        weight = torch.as_tensor(list(pos_weight), dtype=torch.float32)
        if weight.dim() != 1 or weight.numel() == 0:
            raise ValueError(f"pos_weight must be a non-empty list of numbers, got {pos_weight!r}")
        if (weight <= 0).any():
            raise ValueError(f"pos_weight values must be > 0, got {list(pos_weight)}")
        # A buffer so .to(device) moves it; not persistent, because the config rebuilds it and a
        # changed weight must not break loading a checkpoint whose module holds this loss.
        self.register_buffer("pos_weight", weight, persistent=False)

    def _loss(self, logits, targets):
        return LF.weighted_bce(logits, targets, self.pos_weight)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight.tolist()}"


class DiceLoss(_Loss):
    """Soft Dice loss; see :func:`.functional.dice` for ``per_image`` and empty pairs."""

    def __init__(self, smooth: float = 1.0, per_image: bool = True):
        super().__init__()
        _check_non_negative(smooth=smooth)
        self.smooth, self.per_image = smooth, per_image

    def _loss(self, logits, targets):
        return LF.dice(logits, targets, self.smooth, self.per_image)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}"


class BCEDiceLoss(_Loss):
    """``bce_weight * BCE + dice_weight * Dice``."""

    def __init__(
        self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0, per_image: bool = True
    ):
        super().__init__()
        _check_non_negative(bce_weight=bce_weight, dice_weight=dice_weight, smooth=smooth)
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.smooth, self.per_image = smooth, per_image

    def _loss(self, logits, targets):
        return self.bce_weight * LF.bce(logits, targets) + self.dice_weight * LF.dice(
            logits, targets, self.smooth, self.per_image
        )

    def extra_repr(self) -> str:
        return (
            f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, "
            f"smooth={self.smooth}, per_image={self.per_image}"
        )


class FocalLoss(_Loss):
    """Sigmoid focal loss; ``alpha=None`` (default) disables alpha weighting, 0.25 is the usual value."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        _check_non_negative(gamma=gamma)
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
        self.gamma, self.alpha = gamma, alpha

    def _loss(self, logits, targets):
        return LF.focal(logits, targets, self.gamma, self.alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


class LovaszHingeLoss(_Loss):
    """Binary Lovasz hinge per (image, class) map; segmentation (N, C, H, W) input only."""

    def __init__(self, per_image: bool = True):
        super().__init__()
        self.per_image = per_image

    def _loss(self, logits, targets):
        return LF.lovasz_hinge(logits, targets, self.per_image)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}"


class LovaszSoftmaxLoss(_Loss):
    """Lovasz-softmax on each class's sigmoid probability (the classes overlap); segmentation
    (N, C, H, W) input only. ``classes``: ``present`` (maps whose class is in the target) or ``all``."""

    def __init__(self, per_image: bool = False, classes: str = "present"):
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.per_image, self.classes = per_image, classes

    def _loss(self, logits, targets):
        return LF.lovasz_softmax(logits, targets, self.per_image, self.classes)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, classes={self.classes!r}"


class JaccardLoss(_Loss):
    """Soft Jaccard (IoU) loss; ``per_image`` and empty pairs as in :class:`DiceLoss`."""

    def __init__(self, smooth: float = 1.0, per_image: bool = True):
        super().__init__()
        _check_non_negative(smooth=smooth)
        self.smooth, self.per_image = smooth, per_image

    def _loss(self, logits, targets):
        return LF.jaccard(logits, targets, self.smooth, self.per_image)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}"
