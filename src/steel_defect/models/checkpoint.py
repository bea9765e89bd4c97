"""The checkpoint format: weights, resolved config, class names, metrics, and (for resuming)
optimizer, scheduler and epoch, in one file that rebuilds its model alone.

It lives in ``models/`` so that inference and the web app load models without importing the
training stack (Catalyst); ``steel_defect.training.checkpoint`` re-exports it for the trainer.

Files are written atomically (temporary file + rename): a run killed mid-save leaves the
previous checkpoint intact. ``model_from_checkpoint`` rebuilds a model from the file alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from easydict import EasyDict
from torch import nn

from steel_defect.atomic import atomic_write
from steel_defect.config import to_plain
from steel_defect.constants import CLASS_NAMES
from steel_defect.errors import UserError
from steel_defect.models import build_model

FORMAT = "steel-defect-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable or not ours."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / accelerate wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def weights_digest(model_state: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: the identity of the weights.

    Saved in every checkpoint (``weights_sha256``) and copied into its ONNX exports, it names the
    model that a tuned pipeline was tuned for (``inference.pipeline``): rewriting the file's other
    entries (``update_checkpoint``) keeps it, retraining changes it.
    """
    digest = hashlib.sha256()
    for name, tensor in model_state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, cfg, epoch: int, metrics: dict, **extra: Any) -> Path:
    """Write a checkpoint atomically. ``extra`` may hold optimizer/scheduler states, history."""
    model_state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    state = {
        "format": FORMAT,
        "version": VERSION,
        "task": cfg.task,
        "config": to_plain(cfg),
        "class_names": {str(k): v for k, v in CLASS_NAMES.items()},
        "epoch": int(epoch),
        "metrics": to_plain(metrics),
        "model_state": model_state,
        "weights_sha256": weights_digest(model_state),
        # where the encoder's starting weights came from (package, hub, file or random)
        "weights_source": getattr(unwrap(model), "weights_source", None),
        **extra,
    }
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


def update_checkpoint(path: str | Path, **keys: Any) -> None:
    """Add or replace top-level entries of a checkpoint, atomically (e.g. its out-of-fold score)."""
    state = load_checkpoint(path)
    state.update(keys)
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a checkpoint; errors name the file and say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, unsafe pickle
        raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a steel-defect checkpoint (no '{FORMAT}' marker)")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has format version {state['version']}; this code reads up to {VERSION}"
        )
    return state


def read_entry(path: str | Path, key: str) -> Any:
    """One top-level entry of a checkpoint, read memory-mapped (its weights are never loaded);
    None for a file that is not a readable checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old, foreign or truncated file has no entry to give
        return None
    return state.get(key) if isinstance(state, dict) and state.get("format") == FORMAT else None


def checkpoints_on_split(roots, digest: str) -> list[Path]:
    """Checkpoints under ``roots`` (``<root>/[<name>/]fold<K>/checkpoints/*.pth``) whose
    ``trained_on`` records the split ``digest``: what a re-split would leave out of fold no more."""
    found = set()
    for root in map(Path, roots):
        for pattern in ("fold*/checkpoints/*.pth", "*/fold*/checkpoints/*.pth"):
            for path in root.glob(pattern):
                split = (read_entry(path, "trained_on") or {}).get("split") or {}
                if split.get("sha256") == digest:
                    found.add(path)
    return sorted(found)


def model_from_checkpoint(path_or_state: str | Path | dict) -> tuple[nn.Module, EasyDict]:
    """Rebuild the model (in eval mode, on CPU) and its config from a checkpoint alone.

    The model adopts the tensors of ``state["model_state"]`` (no copy): changing one changes
    the other.
    """
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    cfg = EasyDict(state["config"])
    # The weights come from the checkpoint: do not ask for pretrained encoder files again.
    cfg.model.encoder_weights = None
    cfg.paths.encoder_weights = None
    # Built on the meta device, the model has shapes but no storage, so its random
    # initialisation costs nothing (0.1-0.2 s per full-size Unet-resnet18 on the CPU at every
    # predict and serve start); assign=True then takes the loaded tensors instead of copying them.
    with torch.device("meta"):
        model = build_model(cfg)
    model.load_state_dict(state["model_state"], assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # a tensor the state dict does not hold (a non-persistent buffer): build it for real
        model = build_model(cfg)
        model.load_state_dict(state["model_state"], assign=True)
    return model.eval(), cfg
