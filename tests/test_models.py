"""Model factory: output shapes per task, local encoder weights, offline 'imagenet', config errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from steel_defect.config import ConfigError, load_config
from steel_defect.models import (
    ARCHITECTURES,
    SEG_ARCHITECTURES,
    Classifier,
    EncoderWeightsError,
    build_model,
)
from steel_defect.models import weights as weights_module

BATCH = (2, 3, 64, 128)  # H and W divisible by 32, as smp's decoders need


def cfg_for(*overrides: str):
    return load_config(None, list(overrides))


def seg_cfg(*overrides: str):
    return cfg_for("task=seg", "model.name=unet", "model.encoder=resnet18", *overrides)


def cls_cfg(*overrides: str):
    return cfg_for("task=cls", "model.name=classifier", "model.encoder=resnet18", *overrides)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 state dict (random, seeded) as an offline 'pretrained' file."""
    torch.manual_seed(1234)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


# ---- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEG_ARCHITECTURES)
def test_segmenters_give_four_logit_maps(name):
    model = build_model(seg_cfg(f"model.name={name}")).eval()
    with torch.no_grad():
        out = model(torch.randn(*BATCH))
    assert out.shape == (2, 4, 64, 128)
    assert (out < 0).any(), "expected raw logits, not sigmoid/softmax probabilities"


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
def test_classifier_gives_five_logits(encoder):
    model = build_model(cls_cfg(f"model.encoder={encoder}")).eval()
    assert isinstance(model, Classifier)
    with torch.no_grad():
        assert model(torch.randn(*BATCH)).shape == (2, 5)


def test_single_channel_input():
    for cfg in (seg_cfg("data.channels=1"), cls_cfg("data.channels=1")):
        model = build_model(cfg).eval()
        assert model.encoder.conv1.weight.shape[1] == 1
        with torch.no_grad():
            out = model(torch.randn(2, 1, 64, 128))
        assert out.shape[:2] == ((2, 4) if cfg.task == "seg" else (2, 5))


def test_classifier_pooling_and_dropout_params():
    model = build_model(cls_cfg("model.params={pooling: avgmax, dropout: 0.3}"))
    assert model.fc.in_features == 2 * 512  # avg and max of resnet18's 512 channels
    assert model.dropout.p == 0.3
    assert build_model(cls_cfg()).fc.in_features == 512


def test_classifier_pools_the_deepest_feature_map():
    model = Classifier("resnet18", pooling="avgmax").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
        expected = model.fc(torch.cat([deepest.mean((2, 3)), deepest.amax((2, 3))], 1))
        assert torch.allclose(model(x), expected)


def test_segmenter_params_reach_the_constructor():
    model = build_model(seg_cfg("model.params={decoder_channels: [64, 32, 16, 8, 4]}"))
    assert model.segmentation_head[0].in_channels == 4


# ---- local weights file ---------------------------------------------------------------------


@pytest.mark.parametrize("make_cfg", [cls_cfg, seg_cfg])
def test_local_weights_file_loads_exactly(make_cfg, resnet18_file):
    path, state = resnet18_file
    model = build_model(make_cfg(f"paths.encoder_weights={path}"))
    encoder = model.encoder.state_dict()
    assert torch.equal(encoder["conv1.weight"], state["conv1.weight"])
    assert torch.equal(encoder["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_wrapped_and_prefixed_file(tmp_path, resnet18_file):
    _, state = resnet18_file
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = build_model(cls_cfg(f"paths.encoder_weights={path}"))
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])


def test_our_checkpoint_seeds_another_model(tmp_path):
    """A classifier checkpoint's encoder.* part initialises a segmenter's encoder."""
    classifier = build_model(cls_cfg())
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict()}, path)
    segmenter = build_model(seg_cfg(f"paths.encoder_weights={path}"))
    assert torch.equal(segmenter.encoder.layer2[0].conv1.weight, classifier.encoder.layer2[0].conv1.weight)


def test_three_channel_file_into_one_channel_encoder(resnet18_file):
    path, state = resnet18_file
    model = build_model(cls_cfg("data.channels=1", f"paths.encoder_weights={path}"))
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_file_of_another_backbone_is_rejected(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(EncoderWeightsError, match=r"resnet34\.pth.*unexpected keys \(layer1\.2"):
        build_model(seg_cfg(f"paths.encoder_weights={path}"))


def test_missing_key_and_wrong_shape_are_rejected(tmp_path, resnet18_file):
    _, state = resnet18_file
    missing = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(EncoderWeightsError, match=r"missing\.pth.*missing keys \(layer1\.0\.conv1\.weight"):
        build_model(cls_cfg(f"paths.encoder_weights={tmp_path / 'missing.pth'}"))
    torch.save({**state, "bn1.weight": torch.ones(3)}, tmp_path / "shape.pth")
    with pytest.raises(EncoderWeightsError, match=r"shape\.pth.*bn1\.weight file \(3,\) vs model \(64,\)"):
        build_model(cls_cfg(f"paths.encoder_weights={tmp_path / 'shape.pth'}"))


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(EncoderWeightsError, match=r"paths\.encoder_weights.*nope\.pth"):
        build_model(seg_cfg(f"paths.encoder_weights={tmp_path / 'nope.pth'}"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(EncoderWeightsError, match=r"text\.pth could not be read"):
        build_model(seg_cfg(f"paths.encoder_weights={tmp_path / 'text.pth'}"))


def test_both_weight_sources_is_an_error(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(ConfigError, match="both set"):
        build_model(seg_cfg("model.encoder_weights=imagenet", f"paths.encoder_weights={path}"))


# ---- 'imagenet' without a network -----------------------------------------------------------


# Tests never contact the hub itself: the probe and the download are replaced.


def test_imagenet_probe_failure_is_reported(monkeypatch):
    monkeypatch.setattr(weights_module, "_hub_files_cached", lambda *args: False)
    monkeypatch.setattr(weights_module, "_hub_unreachable", lambda url: f"{url} did not answer within 3 s")
    with pytest.raises(EncoderWeightsError, match=r"did not answer.*paths\.encoder_weights"):
        build_model(cls_cfg("model.encoder_weights=imagenet"))


def test_download_error_after_probe_is_wrapped(monkeypatch):
    """Probe passes but smp's hf_hub_download fails: the same actionable error, no retries."""

    def fail(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(weights_module, "_hub_files_cached", lambda *args: False)
    monkeypatch.setattr(weights_module, "_hub_unreachable", lambda url: None)
    monkeypatch.setattr("segmentation_models_pytorch.encoders.hf_hub_download", fail)
    with pytest.raises(EncoderWeightsError, match=r"could not download.*paths\.encoder_weights"):
        build_model(seg_cfg("model.encoder_weights=imagenet"))


def test_unknown_pretrained_variant():
    with pytest.raises(EncoderWeightsError, match=r"'imagenet', 'ssl', 'swsl'"):
        build_model(seg_cfg("model.encoder_weights=imagenet21k"))


# ---- config errors --------------------------------------------------------------------------


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(
        ConfigError,
        match=r"'model\.name': unknown architecture 'unnet' \(did you mean 'unet'\?\); valid: .*deeplab",
    ):
        build_model(seg_cfg("model.name=unnet"))
    assert set(ARCHITECTURES) >= {"unet", "fpn", "classifier"}


def test_architecture_must_fit_task():
    with pytest.raises(ConfigError, match=r"task='cls'.*classifier"):
        build_model(cls_cfg("model.name=unet"))
    with pytest.raises(ConfigError, match=r"task='seg'.*unet"):
        build_model(seg_cfg("model.name=classifier"))


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(
        ConfigError, match=r"'model\.encoder'.*did you mean 'resnet18'.*valid: .*resnet34.*tu-"
    ):
        build_model(seg_cfg("model.encoder=resnet81"))
    with pytest.raises(ConfigError, match=r"timm has no model 'resnet81'"):
        build_model(cls_cfg("model.encoder=tu-resnet81"))


def test_unknown_param_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"'model\.params\.decoder_chanels'.*did you mean 'decoder_channels'"
    ):
        build_model(seg_cfg("model.params={decoder_chanels: [8, 8, 8, 8, 8]}"))
    with pytest.raises(ConfigError, match=r"'model\.params\.drop'.*valid: pooling, dropout"):
        build_model(cls_cfg("model.params={drop: 0.5}"))


def test_reserved_params_point_to_their_key():
    with pytest.raises(ConfigError, match=r"'model\.params\.classes': cannot be set.*task"):
        build_model(seg_cfg("model.params={classes: 2}"))
    with pytest.raises(ConfigError, match=r"model\.params\.in_channels.*data\.channels"):
        build_model(cls_cfg("model.params={in_channels: 1}"))


def test_bad_param_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"pooling.*valid choices: avg, max, avgmax"):
        build_model(cls_cfg("model.params={pooling: median}"))


def test_models_hold_no_device_calls():
    """Models stay on the CPU until the trainer moves them (no .cuda() inside)."""
    model = build_model(cls_cfg())
    assert isinstance(model, nn.Module)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_a_model_with_an_unsaved_buffer_is_rebuilt_for_real(monkeypatch):
    """model_from_checkpoint builds on the meta device; a tensor the state dict lacks (a
    non-persistent buffer) would stay without storage, so that model is built again for real."""
    import steel_defect.models.checkpoint as checkpoint

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

        def forward(self, x):
            return self.conv(x) * self.scale

    monkeypatch.setattr(checkpoint, "build_model", lambda cfg: Scaled())
    saved = Scaled()
    cfg = {"model": {"encoder_weights": None}, "paths": {"encoder_weights": None}}
    model, _ = checkpoint.model_from_checkpoint({"config": cfg, "model_state": saved.state_dict()})
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(model(x), saved(x))
