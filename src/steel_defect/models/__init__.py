"""Models: the architecture registry, the 5-label classifier and pretrained encoder weights.

``build_model(cfg)`` creates the network named by ``model.name`` for ``task`` (``seg``:
smp segmenters giving ``(N, 4, H, W)`` logits; ``cls``: :class:`Classifier` giving
``(N, 5)`` logits) with the ``model.encoder`` backbone at ``model.encoder``.
"""

from steel_defect.models.build import (
    ARCHITECTURES,
    CLS_ARCHITECTURES,
    SEG_ARCHITECTURES,
    build_model,
    check_encoder_name,
)
from steel_defect.models.classifier import NUM_CLS_OUTPUTS, Classifier
from steel_defect.models.weights import EncoderWeightsError, load_encoder_file, read_state_dict

__all__ = [
    "ARCHITECTURES",
    "CLS_ARCHITECTURES",
    "NUM_CLS_OUTPUTS",
    "SEG_ARCHITECTURES",
    "Classifier",
    "EncoderWeightsError",
    "build_model",
    "check_encoder_name",
    "load_encoder_file",
    "read_state_dict",
]
