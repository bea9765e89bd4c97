"""The trainer's view of the checkpoint format, which :mod:`steel_defect.models.checkpoint` owns.

Kept so that training code and older imports keep working; new code imports from ``models``.
"""

from steel_defect.models.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    unwrap,
    update_checkpoint,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "unwrap",
    "update_checkpoint",
]
