"""Multi-label defect classifier: an smp encoder, global pooling and one linear layer.

The first stage of the two-stage pipeline: for each image it predicts five independent
logits, ``[no defect, class 1, class 2, class 3, class 4]``, trained with BCE. Building
the backbone with :func:`segmentation_models_pytorch.encoders.get_encoder` gives the
classifier and the segmenters one encoder code path, so the same ``model.encoder`` names,
pretrained weights and weight files work for both.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from steel_defect.constants import NUM_CLASSES
from steel_defect.errors import UserError

# "no defect" plus one output per defect class
NUM_CLS_OUTPUTS = NUM_CLASSES + 1

POOLINGS = ("avg", "max", "avgmax")


class Classifier(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, classes)`` logits.

    The keyword names match smp's segmentation models (``encoder_name``,
    ``encoder_weights``, ``in_channels``, ``classes``), so the model factory builds every
    architecture the same way; ``pooling`` and ``dropout`` are the head's own settings.
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        classes: int = NUM_CLS_OUTPUTS,
        pooling: str = "avg",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"Classifier pooling is {pooling!r}; valid choices: {', '.join(POOLINGS)}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"Classifier dropout must be in [0, 1), got {dropout}")
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights)
        self.pooling = pooling
        features = self.encoder.out_channels[-1]
        # avg+max concatenation doubles the width the linear layer sees
        width = 2 * features if pooling == "avgmax" else features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.encoder(x)[-1]
        if self.pooling == "avg":
            pooled = deepest.mean(dim=(2, 3))
        elif self.pooling == "max":
            pooled = deepest.amax(dim=(2, 3))
        else:
            pooled = torch.cat([deepest.mean(dim=(2, 3)), deepest.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled))
