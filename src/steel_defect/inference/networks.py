"""One trained network behind the predictor, whatever runs it: torch, ONNX Runtime or OpenVINO.

    net = load_network("fold0/checkpoints/best.pth", backend="onnx", threads=2)   # .predictor
    probs, head = net.run(network_input(net, frames))   # sigmoid probabilities out

A :class:`Network` carries what the predictor needs besides the forward pass: the task, the
classes of its output channels, the validation transform rebuilt from the training config,
and the provenance the web page shows. Its ``run`` takes and returns numpy arrays, so the
predictor, the post-processing and the CSV writer never touch torch: with ``.onnx`` files
(or ``.pth`` files whose ONNX export is cached beside them) ``predict`` runs without
importing torch at all.

This module is the backends' common interface, at the bottom of the inference package: the
backends (:mod:`.torch_backend`, :mod:`.onnx_backend`, :mod:`.openvino_backend`) build a
:class:`Network`, and :func:`steel_defect.inference.predictor.load_network` picks one of them.
Backends (``inference.backend`` / ``--backend``):

* ``auto`` (the default, :func:`resolve_backend`): on a CPU, the faster of ``onnx`` and
  ``openvino`` for each network, measured once on this CPU (:mod:`.auto_backend`), or the one of
  them that is installed; on a GPU, or with neither installed, ``torch``;
* ``torch``: the checkpoint's model in eval mode, channels-last, under ``inference_mode``;
* ``onnx``: ONNX Runtime's CPU execution provider on the exported graph. A ``.pth`` is exported
  once to ``<name>.onnx`` beside it (this needs torch) and reused while the checkpoint's
  SHA-256 matches the one stored in the export; an ``.onnx`` file is loaded as it is;
* ``openvino``: OpenVINO's own CPU runtime on the same export (or on an int8 IR, ``.int8.xml``).

Precisions (``inference.precision``, :data:`PRECISIONS`): ``fp32`` runs a model as its file is
(an ``.int8.onnx`` / ``.int8.xml`` file given as a model is int8 by itself); ``bf16`` is OpenVINO
on a CPU that computes bf16 natively (AMX or AVX-512 BF16), refused elsewhere; ``int8`` runs the
int8 twin that ``steel-defect export --int8`` wrote beside an export (``X.int8.onnx`` for onnx,
``X.int8.xml`` for openvino); ``auto`` is bf16 where OpenVINO runs it natively, else fp32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steel_defect.config import model_classes, model_cls_head
from steel_defect.constants import CLASS_IDS
from steel_defect.data.eval_transforms import build_eval_transforms
from steel_defect.errors import UserError

BACKENDS = ("torch", "onnx", "openvino")
# The precisions inference.precision names; "auto" resolves per backend (:func:`resolve_precision`).
PRECISIONS = ("fp32", "bf16", "int8", "auto")
# Packages each CPU backend needs: onnx writes the export that both of them read.
CPU_BACKENDS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
# Where the kernel exposes a GPU to this process (NVIDIA's driver, or AMD's for ROCm builds of torch).
GPU_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")
# What the model learnt from, where its encoder started, its out-of-fold Dice (the web page shows them).
PROVENANCE_KEYS = ("trained_on", "weights_source", "out_of_fold")

Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class Network:
    path: str
    task: str  # "seg" or "cls"
    # (N, C, H, W) float32 -> (sigmoid of the main output, of the head or None), as fresh arrays
    # that the caller owns: the predictor averages views and networks into them in place
    run: Run
    transform: Callable[..., dict]  # called as transform(image=...) like an albumentations Compose
    channels: int
    name: str
    info: dict  # epoch, validation metrics, resolved config, PROVENANCE_KEYS and weights_sha256
    backend: str = "torch"
    classes: tuple[int, ...] = CLASS_IDS  # a segmenter's output channels, as class ids
    head_gate: str | None = None  # a segmenter's classification head: "hard", "soft" or None


def describe_state(state: dict, path: str | Path) -> dict:
    """The fields of :class:`Network` that a checkpoint's metadata decides (no weights needed)."""
    cfg = state["config"]
    seg = state["task"] == "seg"
    head = model_cls_head(cfg) if seg else None
    info = {"epoch": state["epoch"], "metrics": state["metrics"], "config": cfg}
    info.update({key: state.get(key) for key in PROVENANCE_KEYS})  # None in older checkpoints
    # the weights' identity, which a tuned pipeline names (None in files older than it)
    info["weights_sha256"] = state.get("weights_sha256")
    return {
        "path": str(path),
        "task": state["task"],
        # Resize/Normalize only (checked there); albumentations is imported only if they need it.
        "transform": build_eval_transforms(cfg["transforms"]["valid"], f"{path}: transforms.valid"),
        "channels": cfg["data"]["channels"],
        "name": f"{cfg['model']['name']}-{cfg['model']['encoder']}",
        "info": info,
        "classes": model_classes(cfg) if seg else CLASS_IDS,
        "head_gate": head["gate"] if head else None,
    }


def gpu_visible() -> bool:
    """Whether a GPU is there for this process, asked without importing torch: a driver's device
    node exists and ``CUDA_VISIBLE_DEVICES`` does not hide every device."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return any(os.path.exists(node) for node in GPU_NODES)


def installed_cpu_backends() -> list[str]:
    """The CPU backends whose packages are installed (looked up, not imported)."""
    import importlib.util

    return [
        name
        for name, packages in CPU_BACKENDS.items()
        if all(importlib.util.find_spec(package) is not None for package in packages)
    ]


def check_backend(backend: str, key: str = "inference.backend") -> None:
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"{key}: unknown backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")


def check_precision(precision: str, key: str = "inference.precision") -> None:
    if precision not in PRECISIONS:
        raise UserError(f"{key}: unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def resolve_backend(backend: str, device: str = "auto") -> tuple[str, str]:
    """(backend, device) for ``inference.backend`` / ``inference.device``, torch not imported.

    ``auto`` on the CPU (the device is, or resolves to, the CPU) is a CPU backend wherever one
    is installed, so a prediction never imports torch once the export is cached (a ``.pth`` is
    exported on first use): the one installed, or, with both onnxruntime and openvino there,
    ``auto`` still, which :func:`.predictor.load_network` settles per network by measuring them
    (:mod:`.auto_backend`). On a GPU, or with neither installed, it is torch.
    The device comes back as ``cpu`` for the CPU backends; for torch ``auto`` stays for the
    caller to resolve (that asks torch itself)."""
    check_backend(backend)
    if backend == "auto":
        on_cpu = device == "cpu" or (device == "auto" and not gpu_visible())
        installed = installed_cpu_backends() if on_cpu else []
        backend = "torch" if not installed else installed[0] if len(installed) == 1 else "auto"
    return backend, device if backend == "torch" else "cpu"


def default_threads() -> int:
    """Physical cores this process may use (hyper-threads add little to convolutions)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    return max(1, min(usable, physical))


def network_input(network: Network, images: list[np.ndarray]) -> np.ndarray:
    """(N, C, H, W) float32: each frame through the network's validation transform; uint8 / 255."""
    batch = None
    for index, image in enumerate(images):
        if network.channels == 1 and image.shape[-1] == 3:
            image = image[..., :1]
        image = network.transform(image=image)["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        if batch is None:  # filled in place: one copy per frame instead of a stack and a transpose
            height, width, channels = image.shape
            batch = np.empty((len(images), channels, height, width), np.float32)
        if image.dtype == np.uint8:
            np.multiply(image.transpose(2, 0, 1), np.float32(1 / 255), out=batch[index])
        else:
            batch[index] = image.transpose(2, 0, 1)
    return batch
