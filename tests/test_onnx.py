"""The ONNX Runtime backend: exports that describe themselves, give torch's masks, and run without torch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e .[onnx]")

from steel_defect.cli import main
from steel_defect.config import load_config
from steel_defect.data.folds import read_folds
from steel_defect.data.images import read_image
from steel_defect.data.rle import mask_to_rle
from steel_defect.inference import export
from steel_defect.inference.onnx_backend import ExportError, cache_path, file_sha256, load_onnx
from steel_defect.inference.onnx_export import export_onnx
from steel_defect.inference.postprocess import ClassParams, PostProcessing, postprocess
from steel_defect.inference.predictor import Predictor
from steel_defect.models.checkpoint import update_checkpoint
from steel_defect.training.runner import training_data
from tests.conftest import REPO, SMALL_OPTS, random_checkpoints
from tests.test_startup_imports import loaded_modules

THRESHOLD = 0.3  # the random segmenter's maps vary around its output prior of 0.3
POST = PostProcessing(tuple(ClassParams(THRESHOLD) for _ in range(4)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return random_checkpoints(tmp_path_factory.mktemp("onnx_ckpt"))


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_export")
    return {task: export_onnx(path, out / f"{task}.onnx") for task, path in checkpoints.items()}


@pytest.fixture(scope="module")
def frames(tiny_synth):
    images = sorted((tiny_synth / "data" / "test_images").iterdir())
    return [read_image(path) for path in images]


def test_export_carries_the_checkpoint_metadata(checkpoints, exported):
    seg = load_onnx(exported["seg"], threads=1)
    assert seg.task == "seg" and seg.backend == "onnx" and seg.name == "unet-resnet18"
    assert seg.info["source_sha256"] == file_sha256(checkpoints["seg"])
    assert seg.info["config"]["model"]["encoder"] == "resnet18"
    # the transform comes from the training config: SMALL_OPTS resize to 64x384
    assert seg.transform(image=np.zeros((256, 1600, 3), np.uint8))["image"].shape == (64, 384, 3)
    assert load_onnx(exported["cls"], threads=1).task == "cls"


def test_onnx_predictor_gives_torch_probabilities_and_masks(checkpoints, exported, frames):
    paths = [checkpoints["seg"], checkpoints["cls"]]
    torch_pred = Predictor(paths, POST, tta=("hflip",), backend="torch")
    onnx_pred = Predictor([exported["seg"], exported["cls"]], POST, tta=("hflip",))
    assert onnx_pred.describe()["backend"] == "onnx"
    probs_torch, probs_onnx = torch_pred.segment(frames), onnx_pred.segment(frames)
    assert np.abs(probs_torch - probs_onnx).max() <= 1e-4
    assert np.abs(torch_pred.classify(frames) - onnx_pred.classify(frames)).max() <= 1e-4
    for p_torch, p_onnx in zip(probs_torch, probs_onnx, strict=True):
        a, b = postprocess(p_torch, POST), postprocess(p_onnx, POST)
        differ = a != b
        # a pixel may flip only where torch's probability lies within 1e-4 of the threshold
        assert (np.abs(p_torch[differ] - THRESHOLD) <= 1e-4).all()
        if not differ.any():
            assert [mask_to_rle(m) for m in a] == [mask_to_rle(m) for m in b]


def test_batched_tta_equals_one_call_per_view(exported, frames):
    batched = Predictor([exported["seg"]], tta=("hflip", "vflip"), batch_tta=True).segment(frames[:2])
    apart = Predictor([exported["seg"]], tta=("hflip", "vflip"), batch_tta=False).segment(frames[:2])
    np.testing.assert_allclose(batched, apart, atol=1e-6)


def test_backend_onnx_exports_a_checkpoint_once_beside_it(tmp_path, checkpoints):
    checkpoint = tmp_path / "seg.pth"
    checkpoint.write_bytes(checkpoints["seg"].read_bytes())
    Predictor([checkpoint], backend="onnx")
    cached = cache_path(checkpoint)
    stamp = cached.stat().st_mtime_ns
    Predictor([checkpoint], backend="onnx")
    assert cached.stat().st_mtime_ns == stamp  # reused while the checkpoint's hash matches
    other = random_checkpoints(tmp_path / "other", seg_prior=0.6)["seg"]
    checkpoint.write_bytes(other.read_bytes())  # a retrained checkpoint under the same name
    net = Predictor([checkpoint], backend="onnx").segmenters[0]
    assert net.info["source_sha256"] == file_sha256(other)


def test_missing_or_foreign_onnx_files_are_named(tmp_path):
    with pytest.raises(ExportError, match=r"missing\.onnx does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"junk\.onnx cannot be loaded"):
        load_onnx(junk)


def test_a_two_head_segmenter_exports_both_outputs(tmp_path, frames):
    import torch

    from steel_defect.config import load_config
    from steel_defect.models import build_model
    from steel_defect.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    opts = [*SMALL_OPTS, "model.cls_head={gate: hard}"]
    cfg = load_config(REPO / "configs/demo/synth_seg.yml", opts)
    path = save_checkpoint(tmp_path / "two_head.pth", build_model(cfg), cfg, epoch=0, metrics={})
    onnx_path = export_onnx(path, tmp_path / "two_head.onnx")
    maps_t, heads_t = Predictor([path], tta=()).segment_with_heads(frames[:2])
    maps_o, heads_o = Predictor([onnx_path], tta=()).segment_with_heads(frames[:2])
    assert heads_o is not None and np.abs(heads_t - heads_o).max() <= 1e-4
    assert np.abs(maps_t - maps_o).max() <= 1e-4


def test_predict_with_onnx_files_never_imports_torch(tmp_path, exported, tiny_synth):
    frame = sorted((tiny_synth / "data" / "test_images").iterdir())[0]
    images = tmp_path / "images"
    images.mkdir()
    (images / frame.name).write_bytes(frame.read_bytes())
    out = tmp_path / "submission.csv"
    argv = ["predict", "--untuned", "--checkpoints", str(exported["seg"]), str(exported["cls"])]
    loaded = loaded_modules(tmp_path, *argv, "--images", str(images), "--out", str(out))
    assert out.read_text().count(frame.name) == 4
    assert "torch" not in loaded and "catalyst" not in loaded, sorted(loaded)


def _split(root):
    assert main(["split", "--config", str(REPO / "configs/demo/synth_seg.yml"), "--opts", *_opts(root)]) == 0


def _trained_on_fold(checkpoint, root, out: Path, fold: int = 1) -> Path:
    """A copy of ``checkpoint`` that records fold ``fold`` of ``root``'s split as its validation."""
    cfg = load_config(REPO / "configs/demo/synth_seg.yml", _opts(root))
    out = Path(shutil.copy(checkpoint, out))
    update_checkpoint(out, trained_on=training_data(cfg, fold))
    return out


def _opts(root):
    return [f"paths.data_dir={root / 'data'}", f"paths.folds_csv={root / 'folds.csv'}", "folds.n_splits=3"]


def test_export_command_writes_int8_with_its_dice_change(tmp_path, tiny_synth, checkpoints, capsys):
    _split(tiny_synth)
    seg = _trained_on_fold(checkpoints["seg"], tiny_synth, tmp_path / "seg.pth")
    capsys.readouterr()
    out = tmp_path / "export"
    argv = ["export", "--untuned", "--checkpoints", str(seg), "--out", str(out), "--int8"]
    argv += ["--calib-images", "4", "--holdout-images", "3", "--force", "--opts", *_opts(tiny_synth)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    report = summary[0]["int8"]
    # scored on frames of the validation fold the checkpoint records, calibrated on none of them
    folds = read_folds(tiny_synth / "folds.csv")
    assert (
        set(report["holdout_ids"]) <= set(folds.ImageId[folds.fold == 1]) and len(report["holdout_ids"]) == 3
    )
    int8 = load_onnx(report["onnx"], threads=1)
    assert int8.info["precision"] == "int8" and int8.name.endswith("(int8)")
    assert int8.info["int8"]["dice_change"] == pytest.approx(report["dice_int8"] - report["dice_fp32"])
    assert int8.info["int8"]["calibration_frames"] == 4 and int8.info["int8"]["holdout_frames"] == 3
    assert summary[0]["max_abs_diff_vs_torch"] <= 1e-4


def test_export_refuses_an_int8_model_that_loses_dice(tmp_path, tiny_synth, checkpoints, monkeypatch, capsys):
    _split(tiny_synth)
    seg = _trained_on_fold(checkpoints["seg"], tiny_synth, tmp_path / "seg.pth")
    monkeypatch.setattr(export, "INT8_MAX_DICE_LOSS", -1.0)  # any int8 model "loses too much"
    out = tmp_path / "export"
    argv = ["export", "--untuned", "--checkpoints", str(seg), "--out", str(out), "--int8"]
    argv += ["--calib-images", "2", "--holdout-images", "2", "--opts", *_opts(tiny_synth)]
    assert main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["seg.onnx"]  # fp32 written, no int8, no temp files
    assert os.path.getsize(out / "seg.onnx") > 0


def test_auto_is_a_cpu_backend_on_a_cpu_and_torch_on_a_gpu(monkeypatch):
    from steel_defect.inference import networks
    from steel_defect.inference.networks import resolve_backend

    # both CPU backends installed: auto stays auto, and load_network measures them per network
    expected = "auto" if len(networks.installed_cpu_backends()) == 2 else "onnx"
    assert resolve_backend("auto", "cpu") == (expected, "cpu")
    assert resolve_backend("auto", "cuda") == ("torch", "cuda")
    assert resolve_backend("torch", "auto") == ("torch", "auto")  # torch resolves its own device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden: the CPU
    assert resolve_backend("auto", "auto") == (expected, "cpu")
    # openvino missing (a package that is not there): onnx, with nothing to measure
    monkeypatch.setitem(networks.CPU_BACKENDS, "openvino", ("openvino", "no_such_package_here"))
    assert resolve_backend("auto", "cpu") == ("onnx", "cpu")
    valid = "valid: auto, torch, onnx, openvino"
    with pytest.raises(ValueError, match=rf"inference\.backend: unknown backend 'tensorrt'; {valid}"):
        resolve_backend("tensorrt")


def test_an_export_that_cannot_sit_beside_its_checkpoint_goes_to_the_user_cache(
    tmp_path, checkpoints, monkeypatch
):
    from steel_defect.inference.onnx_export import user_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = tmp_path / "models" / "seg.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(checkpoints["seg"].read_bytes())
    cache_path(checkpoint).mkdir()  # the name beside it is taken: the export cannot be written there
    net = Predictor([checkpoint], backend="auto", device="cpu").segmenters[0]
    cached = user_cache(checkpoint)
    # auto runs whichever CPU backend it measured faster; both read the same cached export
    assert net.backend in ("onnx", "openvino") and net.path == str(checkpoint)  # names the .pth
    assert net.info["onnx"] == str(cached) and cached.is_relative_to(tmp_path / "cache" / "steel-defect")
    stamp = cached.stat().st_mtime_ns
    Predictor([checkpoint], backend="onnx")
    assert cached.stat().st_mtime_ns == stamp  # reused while the checkpoint's hash matches
    other = random_checkpoints(tmp_path / "other", seg_prior=0.6)["seg"]
    checkpoint.write_bytes(other.read_bytes())  # retrained under the same name: a new export
    net = Predictor([checkpoint], backend="onnx").segmenters[0]
    assert net.info["source_sha256"] == file_sha256(other) and net.info["onnx"] == str(user_cache(checkpoint))
