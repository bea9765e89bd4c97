"""The torch backend: a checkpoint's model in eval mode, channels-last, under ``inference_mode``.

Channels-last convolutions run about 1.3x faster on CPUs than the contiguous layout (README,
"Benchmarks"); probabilities agree with it to ~1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from steel_defect.inference.networks import Network, describe_state
from steel_defect.models.checkpoint import load_checkpoint, model_from_checkpoint, weights_digest


def load_torch(
    path: str | Path,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    channels_last: bool = True,
) -> Network:
    """``channels_last=False`` keeps the contiguous layout (the benchmark's "eager" row)."""
    state = load_checkpoint(path)
    model, _ = model_from_checkpoint(state)
    device = torch.device(device)
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.from_numpy(batch).to(device, memory_format=layout)
        out = model(x)
        main, head = out if isinstance(out, tuple) else (out, None)
        main = torch.sigmoid(main.float()).contiguous().cpu().numpy()
        return main, None if head is None else torch.sigmoid(head.float()).cpu().numpy()

    fields = describe_state(state, path)
    if fields["info"]["weights_sha256"] is None:  # saved before checkpoints recorded it
        fields["info"]["weights_sha256"] = weights_digest(state["model_state"])
    return Network(run=run, backend="torch", **fields)
