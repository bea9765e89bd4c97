"""Training end to end on tiny synthetic data: artifacts, checkpoints, DDP (kill and resume: test_faults)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from steel_defect.config import ConfigError, load_config
from steel_defect.data.annotations import read_annotations
from steel_defect.data.datasets import SegmentationDataset
from steel_defect.data.folds import read_folds, split_digest, split_folds
from steel_defect.data.loaders import build_loaders, device_normalizers, normalize_batch
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.losses import build_loss
from steel_defect.models import build_model
from steel_defect.models.checkpoint import weights_digest
from steel_defect.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from steel_defect.training.optim import build_optimizer
from steel_defect.training.runner import train
from tests.conftest import REPO, SHIPPED_EXPERIMENTS, SMALL_OPTS, each_config


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root / "data", n=24, seed=5, test_fraction=0.25)
    return root


def _cfg(synth, config="configs/demo/synth_seg.yml", *opts, work="work"):
    cfg = load_config(
        REPO / config,
        [f"paths.data_dir={synth / 'data'}", f"paths.work_dir={synth / work}", *SMALL_OPTS, *opts],
    )
    split_folds(cfg)
    return cfg


@each_config(SHIPPED_EXPERIMENTS)
def test_every_shipped_config_trains_one_batch(synth, path):
    # the ensemble members and the Unet++ are full-resolution GPU recipes: they run on small frames
    small = SMALL_OPTS[:2] if path.parent.name == "ensemble" or path.stem.startswith("unetplusplus") else []
    cfg = load_config(
        path,
        [
            f"paths.data_dir={synth / 'data'}",
            f"paths.work_dir={synth / 'cfgs' / path.stem}",
            "model.encoder_weights=null",
            "data.batch_size=2",
            "data.num_workers=0",
            "folds.n_splits=3",
            *small,
        ],
    )
    split_folds(cfg)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    loss_fn = build_loss(cfg.loss.name, cfg.loss.params)
    batch = next(iter(build_loaders(cfg)["train"]))
    target = batch["mask" if cfg.task == "seg" else "targets"]
    before = [p.detach().clone() for p in model.parameters()]
    image = batch["image"]
    if cfg.data.normalize_on_device:  # uint8 batches: the runner normalises them on the device
        assert image.dtype == torch.uint8
        image, target = normalize_batch(image, device_normalizers(cfg)["train"]), target.float()
    out = model(image)
    if isinstance(out, tuple):  # a two-head segmenter (model.cls_head): maps and presence logits
        out, head = out
        assert head.shape == (len(target), target.shape[1])
        loss = loss_fn(out, target) + F.binary_cross_entropy_with_logits(head, target.amax(dim=(2, 3)))
    else:
        loss = loss_fn(out, target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_train_leaves_checkpoints_logs_and_curves(synth):
    cfg = _cfg(
        synth,
        "configs/demo/synth_seg.yml",
        "train.epochs=2",
        "train.save_top_k=1",
        "train.max_train_batches=2",
    )
    result = train(cfg, fold=1)
    run = synth / "work" / "fold1"
    assert result["run_dir"] == str(run) and result["epochs"] == 2
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "dice", "dice_1", "iou_4"} <= set(history[-1]["valid"])
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["best.pth", result["best"]["path"], "last.pth"]  # top-1 kept, no temp files
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "logs" / "valid.csv").is_file()
    assert yaml.safe_load((run / "config.yml").read_text())["folds"]["valid_fold"] == 1

    state = load_checkpoint(run / "checkpoints" / "best.pth")
    assert state["task"] == "seg" and state["class_names"]["3"] == "scratches and streaks"
    # what it learnt from: the synthetic folder's marker, fold 1's split of the 18 train frames
    folds = read_folds(cfg.paths.folds_csv)
    assert state["trained_on"] == {
        "source": "synthetic",
        "train_frames": int((folds.fold != 1).sum()),
        "valid_frames": int((folds.fold == 1).sum()),
        "train_csv": cfg.paths.train_csv,
        "fold": 1,
        "split": {"sha256": split_digest(folds), "valid_ids": folds.ImageId[folds.fold == 1].tolist()},
    }
    assert state["weights_sha256"] == weights_digest(state["model_state"])
    assert state["weights_source"] == {"encoder": "resnet18", "kind": "random"}
    assert state["metrics"]["valid"]["iou"] == result["best"]["value"] == result["best"]["score"]
    model, model_cfg = model_from_checkpoint(run / "checkpoints" / "best.pth")
    assert model_cfg.model.name == "unet"
    image = torch.randn(1, 3, 64, 384)
    reference = build_model(cfg)
    reference.load_state_dict(state["model_state"])
    torch.testing.assert_close(model(image), reference.eval()(image))


def test_classifier_trains_on_the_same_path(synth):
    cfg = _cfg(
        synth, "configs/demo/synth_cls.yml", "train.epochs=1", "train.mixup_alpha=0.4", work="work_cls"
    )
    result = train(cfg)
    state = load_checkpoint(result["run_dir"] + "/checkpoints/last.pth")
    assert state["task"] == "cls"
    assert {"accuracy", "f1", "f1_none", "f1_4"} <= set(state["metrics"]["valid"])


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path, synth):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pth cannot be read"):
        load_checkpoint(tmp_path / "bad.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a steel-defect checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    cfg = _cfg(synth, work="work_noresume")
    with pytest.raises(CheckpointError, match="--resume: no checkpoint"):
        train(cfg, resume=True)


def _train_cmd(synth, work, *extra):
    opts = [f"paths.data_dir={synth / 'data'}", f"paths.work_dir={synth / work}", *SMALL_OPTS, *extra]
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(REPO / "configs/demo/synth_seg.yml"),
        "--opts",
        *opts,
    ]


@pytest.mark.slow  # a subprocess or the whole demo: minutes, run by `make test` after the default suite
def test_ddp_two_cpu_processes(synth):
    work = "work_ddp"
    _cfg(synth, work=work)
    done = subprocess.run(
        # with the balanced sampler: its draw must reach both ranks through accelerate's shards;
        # and with the semi-supervised term, whose unlabelled batch joins each rank's forward pass
        [
            *_train_cmd(
                synth,
                work,
                "train.epochs=1",
                "data.sampler=balanced",
                f"train.semi={{name: fixmatch, unlabelled: {synth / 'data' / 'test_images'}, batch_size: 2}}",
            ),
            "--engine",
            "ddp",
            "--nproc",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = synth / work / "fold0"
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["epoch"] == 1 and state["config"]["train"]["engine"] == "ddp"
    assert state["config"]["data"]["sampler"] == "balanced"
    assert state["history"][-1]["train"]["consistency"] > 0 and state["teacher_state"]
    model, _ = model_from_checkpoint(run / "checkpoints" / "best.pth")
    assert model(torch.zeros(1, 3, 64, 384)).shape == (1, 4, 64, 384)
    assert 0.0 <= state["metrics"]["valid"]["dice"] <= 1.0


def test_a_per_class_segmenter_learns_only_its_classes(synth, tmp_path):
    cfg = _cfg(
        synth,
        "configs/demo/synth_seg.yml",
        "model.classes=[3]",
        "train.epochs=1",
        "train.max_train_batches=1",
        work="class3",
    )
    loader = build_loaders(cfg)["valid"]
    batch = next(iter(loader))
    assert batch["mask"].shape[1] == 1  # the class-3 channel alone ...
    full = SegmentationDataset(  # all four masks, through the same (deterministic) resize
        loader.dataset.image_ids,
        cfg.paths.train_images,
        read_annotations(cfg.paths.train_csv),
        transforms=loader.dataset.transforms,
    )
    masks = torch.stack([full[i]["mask"] for i in range(len(batch["mask"]))])
    assert torch.equal(batch["mask"][:, 0], masks[:, 2])  # ... taken from the right column
    train(cfg, fold=0)
    state = load_checkpoint(synth / "class3/fold0/checkpoints/best.pth")
    assert state["config"]["model"]["classes"] == [3]
    valid = state["metrics"]["valid"]
    assert "dice_3" in valid and "dice_1" not in valid
    model, _ = model_from_checkpoint(state)
    assert model(torch.zeros(1, 3, 64, 384)).shape == (1, 1, 64, 384)
    with pytest.raises(ConfigError, match="rising order"):
        _cfg(synth, "configs/demo/synth_seg.yml", "model.classes=[3, 1]")


def test_snapshots_and_swa_leave_their_checkpoints(synth):
    cfg = _cfg(
        synth,
        "configs/demo/synth_seg.yml",
        "train.epochs=4",
        "train.max_train_batches=1",
        "scheduler.name=cosine_restarts",
        "scheduler.params={cycles: 2}",
        "train.snapshots=true",
        "train.save_top_k=2",
        "train.swa=2",
        work="averaging",
    )
    train(cfg, fold=0)
    checkpoints = synth / "averaging/fold0/checkpoints"
    assert [load_checkpoint(checkpoints / f"snapshot_{k}.pth")["epoch"] for k in (1, 2)] == [2, 4]
    swa = load_checkpoint(checkpoints / "swa.pth")
    epochs = swa["metrics"]["swa"]["epochs"]
    assert len(epochs) == 2 and swa["metrics"]["swa"]["bn_batches"] > 0
    tops = [load_checkpoint(checkpoints / f"epoch_{e:03d}.pth")["model_state"] for e in epochs]
    weights = [k for k, v in swa["model_state"].items() if k.endswith("weight") and v.dim() == 4]
    assert any(not torch.equal(tops[0][k], tops[1][k]) for k in weights)
    for key in weights:  # the weights are the mean of the top-2 epochs' ...
        torch.testing.assert_close(swa["model_state"][key], (tops[0][key] + tops[1][key]) / 2)
    stats = [k for k in swa["model_state"] if k.endswith("running_var")]
    mean_var = {k: (tops[0][k] + tops[1][k]) / 2 for k in stats}
    # ... while the BatchNorm statistics were measured again for them
    assert any(not torch.allclose(swa["model_state"][k], mean_var[k]) for k in stats)
    model, _ = model_from_checkpoint(checkpoints / "swa.pth")
    assert model(torch.zeros(1, 3, 64, 384)).shape == (1, 4, 64, 384)


def test_two_head_model_trains_its_head_and_logs_both_metrics(synth):
    cfg = _cfg(
        synth,
        "configs/demo/synth_seg.yml",
        "model.cls_head={weight: 1.0}",
        "train.epochs=1",
        "train.max_train_batches=2",
        work="twohead",
    )
    torch.manual_seed(0)
    initial = build_model(cfg)
    masks, labels = initial(torch.zeros(2, 3, 64, 384))
    assert masks.shape == (2, 4, 64, 384) and labels.shape == (2, 4)
    train(cfg, fold=0)
    state = load_checkpoint(synth / "twohead/fold0/checkpoints/last.pth")
    assert state["config"]["model"]["cls_head"] == {"weight": 1.0, "dropout": 0.2, "gate": "hard"}
    valid = state["metrics"]["valid"]
    assert {"iou", "dice_3", "head_acc", "head_acc_3", "head_loss"} <= set(valid)
    assert "head_loss" in state["metrics"]["train"]
    head = {k: v for k, v in state["model_state"].items() if k.startswith("classification_head")}
    start = initial.state_dict()
    assert head and any(not torch.equal(v, start[k]) for k, v in head.items())  # the joint loss reached it
    with pytest.raises(ConfigError, match=r"cls_head\.gate"):
        _cfg(synth, "configs/demo/synth_seg.yml", "model.cls_head={gate: maybe}")


def _conv_dtype(engine) -> torch.dtype:
    """The dtype a convolution computes in, inside a model prepared by ``engine``."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    out = engine.prepare(model)(torch.randn(1, 3, 8, 8))
    assert out.dtype == torch.float32  # outputs come back in fp32 for the loss
    return seen[0]


def test_training_runs_channels_last_and_bf16_on_the_cpu(synth):
    from steel_defect.training.engines import build_engine, native_bf16
    from steel_defect.training.runner import SteelRunner

    def first_conv(cfg):
        model = SteelRunner(cfg, 0, "cpu").get_model()
        return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight

    nhwc = first_conv(_cfg(synth))  # the default: 1.24-1.53x the images/s of NCHW (bench/train.py)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert first_conv(_cfg(synth, "configs/demo/synth_seg.yml", "train.channels_last=false")).is_contiguous()
    assert _conv_dtype(build_engine("cpu", amp="bf16")) == torch.bfloat16  # autocast on the CPU
    assert _conv_dtype(build_engine("cpu", amp="fp16")) == torch.float32  # fp16 needs a GPU
    assert _conv_dtype(build_engine("cpu")) == torch.float32  # and a later run may switch back
    expected = torch.bfloat16 if native_bf16(on_gpu=False) else torch.float32
    assert _conv_dtype(build_engine("cpu", amp="auto")) == expected


def test_a_bf16_cpu_run_trains(synth):
    cfg = _cfg(
        synth,
        "configs/demo/synth_seg.yml",
        "train.epochs=1",
        "train.amp=bf16",
        "train.max_train_batches=2",
        work="work_bf16",
    )
    state = load_checkpoint(train(cfg)["run_dir"] + "/checkpoints/last.pth")
    # the weights stay fp32 (autocast computes in bf16, the optimizer steps in fp32)
    assert all(v.dtype == torch.float32 for v in state["model_state"].values() if v.is_floating_point())
    assert math.isfinite(state["metrics"]["valid"]["loss"])


def test_auto_precision_follows_a_onednn_isa_cap(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 imitates an AVX2-only CPU: there oneDNN would emulate bf16, so
    ``train.amp: auto`` must mean fp32, as on the machine being imitated."""
    from steel_defect.training.engines import native_bf16

    hardware = native_bf16(on_gpu=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert native_bf16(on_gpu=False) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")  # a cap at or above bf16: the CPU decides
    assert native_bf16(on_gpu=False) is hardware
