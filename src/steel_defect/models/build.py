"""The model registry and the factory that turns ``cfg.task`` + ``cfg.model`` into a network.

``build_model(cfg)`` is the one way the trainer, inference and the GUI create a model:
``task: seg`` gives a segmentation architecture with four logit maps ``(N, 4, H, W)``,
``task: cls`` gives :class:`Classifier` with five logits ``(N, 5)``. ``model.params`` go
straight to the constructor and are checked against its signature first, because smp's
models swallow unknown keyword arguments and a typo would otherwise do nothing.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from steel_defect.config import ConfigError, model_classes, model_cls_head
from steel_defect.config.errors import ComponentError, did_you_mean
from steel_defect.config.registry import check_params, lookup
from steel_defect.models.classifier import NUM_CLS_OUTPUTS, Classifier
from steel_defect.models.packaged import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_packaged_weights,
    packaged_file,
    sha256,
)
from steel_defect.models.weights import check_downloadable, download_error, load_encoder_file

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,  # nested Unet, as in the efficientnet-b5 solution
    "fpn": smp.FPN,
    "pspnet": smp.PSPNet,
    "linknet": smp.Linknet,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "classifier": Classifier,
}
CLS_ARCHITECTURES = ("classifier",)
SEG_ARCHITECTURES = tuple(name for name in ARCHITECTURES if name not in CLS_ARCHITECTURES)

# Constructor arguments the factory sets from other keys; `model.params` may not override them.
_RESERVED_PARAMS = {
    "encoder_name": "it is model.encoder",
    "encoder_weights": "use model.encoder_weights or paths.encoder_weights",
    "in_channels": "it is data.channels",
    "classes": "it follows from task and model.classes (seg: one mask per class, cls: 5 labels)",
    "activation": "the losses and post-processing expect logits",
    "aux_params": "use model.cls_head for a classification head",
}


def _architecture(task: str, name: str) -> type[nn.Module]:
    cls = lookup("architecture", name, ARCHITECTURES, "model.name")
    allowed = CLS_ARCHITECTURES if task == "cls" else SEG_ARCHITECTURES
    if name not in allowed:
        raise ComponentError(
            "model.name",
            f"{name!r} does not fit task={task!r}; use one of: {', '.join(allowed)}",
        )
    return cls


def check_encoder_name(name: str) -> None:
    """Raise :class:`ComponentError` unless ``name`` is an smp encoder or ``tu-<timm model>``."""
    if name.startswith("tu-"):
        if timm.is_model(name[3:]):
            return
        raise ComponentError(
            "model.encoder",
            f"timm has no model {name[3:]!r}{did_you_mean(name[3:], timm.list_models(), 'tu-')}; "
            "see timm.list_models() for the names",
        )
    valid = smp.encoders.get_encoder_names()
    if name not in valid:
        raise ComponentError(
            "model.encoder",
            f"unknown encoder {name!r}{did_you_mean(name, valid)}; valid: {', '.join(valid)}, "
            "or 'tu-<timm model name>'",
        )


def _check_params(cls: type[nn.Module], params: dict[str, Any], encoder: str) -> dict[str, Any]:
    # smp forwards extra kwargs only to timm ("tu-") encoders; for the others they vanish
    signature = inspect.signature(cls.__init__)
    open_kwargs = encoder.startswith("tu-") and any(
        p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
    )
    return check_params(cls, params, "model.params", forbidden=_RESERVED_PARAMS, open_kwargs=open_kwargs)


def check_model(cfg: Any) -> type[nn.Module]:
    """The architecture class of ``cfg``, after checking every model key that needs no weights.

    The config loader calls it, so a typo in ``model.*`` fails before anything is written.
    """
    cls = _architecture(cfg.task, cfg.model.name)
    check_encoder_name(cfg.model.encoder)
    _check_params(cls, dict(cfg.model.params or {}), cfg.model.encoder)
    weights, weights_file = cfg.model.encoder_weights, cfg.paths.encoder_weights
    if weights is not None and weights_file is not None:
        raise ConfigError(
            f"model.encoder_weights={weights!r} and paths.encoder_weights={weights_file} are both set; "
            "keep one (set model.encoder_weights=null to use the file)"
        )
    return cls


def _instantiate(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        # a bad value (not name) in model.params; the constructor's message names the argument
        raise ConfigError(f"{cls.__name__} rejected the model settings {kwargs}: {err}") from err


def build_model(cfg: Any) -> nn.Module:
    """A randomly initialised or pretrained network for ``cfg`` (reads task, model, data, paths).

    Weights: ``model.encoder_weights`` (e.g. ``imagenet``, downloaded by smp) or
    ``paths.encoder_weights`` (a local file loaded strictly into ``model.encoder``) or
    neither (random init). Every architecture keeps its backbone at ``model.encoder``.
    """
    task, encoder = cfg.task, cfg.model.encoder
    weights, weights_file = cfg.model.encoder_weights, cfg.paths.encoder_weights
    cls = check_model(cfg)
    params = dict(cfg.model.params or {})
    packaged = weights == "imagenet" and packaged_file(encoder) is not None
    if weights is not None and not packaged:
        check_downloadable(encoder, weights)
    kwargs = {
        "encoder_name": encoder,
        "encoder_weights": None if packaged else weights,
        "in_channels": cfg.data.channels,
        "classes": NUM_CLS_OUTPUTS if task == "cls" else len(model_classes(cfg)),
        **params,
    }
    if task == "seg":
        kwargs["activation"] = None
        head = model_cls_head(cfg)
        if head is not None:  # smp's head on the deepest features: the model returns (masks, labels)
            kwargs["aux_params"] = {"classes": len(model_classes(cfg)), "dropout": head["dropout"]}
    try:
        model = _instantiate(cls, kwargs)
    except OSError as err:  # hub and urllib errors: the probe passed but the download failed
        raise download_error(encoder, weights, str(err).splitlines()[0]) from err
    if packaged:
        source = load_packaged_weights(model.encoder, encoder)
        check_normalization(cfg, source["mean"], source["std"], source["package"])
    elif weights is not None:
        source = {"kind": "hub", "weights": weights}
    elif weights_file is not None:
        load_encoder_file(model.encoder, weights_file, encoder)
        source = {"kind": "file", "path": str(weights_file), "sha256": sha256(weights_file)}
    else:
        source = {"kind": "random"}
    # read by save_checkpoint, so every checkpoint says where its encoder started from
    model.weights_source = {"encoder": encoder, **source}
    if task == "seg" and cfg.model.output_prior is not None:
        set_output_prior(model, cfg.model.output_prior)
    return model


def _normalize_specs(specs: list, key: str) -> list[tuple[str, dict]]:
    return [
        (f"{key}[{i}]", dict(spec.get("params") or {}))
        for i, spec in enumerate(specs or [])
        if isinstance(spec, dict) and spec.get("name") == "Normalize"
    ]


def check_normalization(cfg: Any, mean: list[float], std: list[float], origin: str) -> None:
    """Raise :class:`ConfigError` unless every ``Normalize`` uses the weights' own mean and std.

    Pretrained filters see inputs scaled the way they were trained; EfficientNet-Lite wants
    [-1, 1], torchvision models the ImageNet statistics. With one channel the stem's RGB
    filters are summed, so the grey input is normalised with the mean of the three values.
    """
    if cfg.data.channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    for key in ("train", "valid"):
        for where, params in _normalize_specs(cfg.transforms[key], f"transforms.{key}"):
            got_mean = params.get("mean", IMAGENET_MEAN)
            got_std = params.get("std", IMAGENET_STD)
            got_mean = [got_mean] if isinstance(got_mean, (int, float)) else list(got_mean)
            got_std = [got_std] if isinstance(got_std, (int, float)) else list(got_std)
            if _close(got_mean, mean) and _close(got_std, std) and params.get("max_pixel_value", 255) == 255:
                continue
            want = f"{{name: Normalize, params: {{mean: {_fmt(mean)}, std: {_fmt(std)}}}}}"
            raise ConfigError(
                f"{where}: Normalize uses mean {_fmt(got_mean)} std {_fmt(got_std)}, but the "
                f"ImageNet weights of model.encoder={cfg.model.encoder!r} ({origin}) were trained "
                f"with mean {_fmt(mean)} std {_fmt(std)}; set {where} to {want}"
            )


def _close(got: list[float], want: list[float]) -> bool:
    if len(got) == 1 and len(want) > 1:
        got = got * len(want)
    if len(got) != len(want) and len(want) == 1:
        got = [sum(got) / len(got)]
    return len(got) == len(want) and all(abs(a - b) < 1e-3 for a, b in zip(got, want, strict=True))


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def set_output_prior(model: nn.Module, prior: float) -> None:
    """Start the segmentation head at probability ``prior`` everywhere (bias = logit(prior)).

    Defects cover a tiny share of pixels; starting near "nothing" spares the first epochs
    from unlearning p=0.5 everywhere, which under the challenge metric (empty = 1) is the
    costliest possible prediction (Lin et al., focal loss, section 3.3).
    """
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"model.output_prior must be in (0, 1), got {prior}")
    convs = [m for m in model.segmentation_head.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    with torch.no_grad():
        convs[-1].bias.fill_(math.log(prior / (1 - prior)))
