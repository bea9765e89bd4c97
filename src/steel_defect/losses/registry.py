"""The loss registry: :data:`LOSSES` by name and :func:`build_loss`, which every loss is built by.

Import it as ``steel_defect.losses``; :mod:`.combo` builds its parts through :func:`build_loss`
here, and the package adds its two losses to :data:`LOSSES`, so no module imports back up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from steel_defect.config.errors import ComponentError
from steel_defect.config.registry import check_params, lookup
from steel_defect.losses.modules import (
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    WeightedBCELoss,
)

# The losses of one term; steel_defect.losses adds ``combo`` and ``scheduled`` (built from these
# by name, so they live in :mod:`.combo`, which imports this module).
LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "weighted_bce": WeightedBCELoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "focal": FocalLoss,
    "lovasz_hinge": LovaszHingeLoss,
    "lovasz_softmax": LovaszSoftmaxLoss,
    "jaccard": JaccardLoss,
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
