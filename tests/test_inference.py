"""Inference end to end: predictor, CSV format, bad images, sharding, threshold search, demo pieces."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steel_defect.cli import main
from steel_defect.config import load_config
from steel_defect.data.folds import read_folds, split_folds, write_folds
from steel_defect.data.images import read_image
from steel_defect.data.submission import read_sample_submission, read_submission
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.oof import SplitMismatchError, collect_oof, search_thresholds, unlearnt_classes
from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Predictor, network_input
from steel_defect.inference.run import predict_folder
from steel_defect.inference.search import downsample_probs
from steel_defect.training.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from steel_defect.training.runner import train, training_data
from tests.conftest import REPO, SMALL_OPTS, random_checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic set with one briefly trained segmenter and classifier (fold 0)."""
    root = tmp_path_factory.mktemp("infer")
    write_synthetic_dataset(root / "data", n=20, seed=9, test_fraction=0.3)
    common = [
        f"paths.data_dir={root / 'data'}",
        f"paths.folds_csv={root / 'folds.csv'}",
        *SMALL_OPTS,
        "train.epochs=1",
        "train.max_train_batches=2",
        "inference.backend=torch",  # the search and collect_oof as Predictor runs them; predict's CLI: auto
    ]
    seg = load_config(REPO / "configs/demo/synth_seg.yml", [*common, f"paths.work_dir={root / 'seg'}"])
    cls = load_config(REPO / "configs/demo/synth_cls.yml", [*common, f"paths.work_dir={root / 'cls'}"])
    split_folds(seg)
    train(seg, fold=0)
    train(cls, fold=0)
    search_thresholds(seg, cls, root / "postprocessing.yml")
    return {
        "root": root,
        "seg_cfg": seg,
        "cls_cfg": cls,
        "seg": root / "seg/fold0/checkpoints/best.pth",
        "cls": root / "cls/fold0/checkpoints/best.pth",
        "post": root / "postprocessing.yml",
    }


def _frames(trained, n=3):
    from steel_defect.data.images import read_image

    paths = sorted((trained["root"] / "data/test_images").glob("*.jpg"))[:n]
    return [read_image(p) for p in paths]


def test_flip_tta_is_undone_exactly(trained):
    """With a horizontally mirrored frame, hflip TTA output is the mirror of the plain output."""
    frame = _frames(trained, 1)[0]
    predictor = Predictor([trained["seg"]], tta=("hflip",))
    probs = predictor.segment([frame, frame[:, ::-1].copy()])
    assert probs.shape == (2, 4, 256, 1600) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], probs[1][:, :, ::-1], atol=1e-5)


def test_ensemble_averages_checkpoints(trained, tmp_path):
    """Two different segmenters: the ensemble is the mean of their probability maps."""
    state = load_checkpoint(trained["seg"])
    model, cfg = model_from_checkpoint(state)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    other = save_checkpoint(tmp_path / "other.pth", model, cfg, epoch=1, metrics={})
    frames = _frames(trained, 2)
    first = Predictor([trained["seg"]], tta=()).segment(frames)
    second = Predictor([other], tta=()).segment(frames)
    assert np.abs(first - second).max() > 1e-3  # the two models really differ
    both = Predictor([trained["seg"], other], tta=()).segment(frames)
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)


def test_gate_skips_the_segmenter_and_empties_masks(trained):
    frames = _frames(trained, 2)
    closed = PostProcessing(tuple(ClassParams(cls_threshold=1.0) for _ in range(4)))  # no class passes
    results = Predictor([trained["seg"], trained["cls"]], closed).predict(frames)
    assert all(r.probs is None and r.masks.sum() == 0 for r in results)
    assert all(r.cls_probs.shape == (4,) for r in results)
    open_gate = PostProcessing(tuple(ClassParams(threshold=0.0, cls_threshold=0.0) for _ in range(4)))
    results = Predictor([trained["seg"], trained["cls"]], open_gate).predict(frames)
    assert all(r.probs is not None and r.masks.all() for r in results)  # threshold 0 marks every pixel


def test_predict_cli_writes_a_valid_submission_in_sample_order(trained, tmp_path):
    data = trained["root"] / "data"
    out = tmp_path / "sub.csv"
    code = main(
        [
            "predict",
            "--postprocessing",
            str(trained["post"]),
            "--images",
            str(data / "test_images"),
            "--out",
            str(out),
            "--sample-submission",
            str(data / "sample_submission.csv"),
        ]
    )
    assert code == 0
    expected = read_sample_submission(data / "sample_submission.csv")
    rows = read_submission(out, expected_ids=expected)
    assert list(rows) == expected
    assert main(["evaluate", "--pred", str(out), "--truth", str(data / "test_truth.csv")]) == 0


def test_unreadable_image_gets_empty_rows_and_a_nonzero_exit(trained, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(trained["root"] / "data/test_images", images)
    broken = sorted(images.iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:500])
    out = tmp_path / "sub.csv"
    argv = ["predict", "--untuned", "--checkpoints", str(trained["seg"]), "--images", str(images)]
    code = main([*argv, "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{broken.name}: " in err and "truncated JPEG" in err and "1 FAILED" in err
    rows = read_submission(out)
    assert rows[broken.name] == ["", "", "", ""]
    assert len(rows) == len(list(images.iterdir()))


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "predict",
            "--untuned",
            "--checkpoints",
            str(tmp_path / "nope.pth"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    assert code == 2 and "nope.pth does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow  # torchrun with two processes: run by `make test` after the default suite
def test_sharded_inference_equals_single_process(trained, tmp_path):
    data = trained["root"] / "data"
    single = tmp_path / "single.csv"
    predict_folder(build_predictor(trained["post"]), data / "test_images", single, progress=False)
    sharded = tmp_path / "sharded.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free local rendezvous port
            "--nproc_per_node",
            "2",
            str(REPO / "inference.py"),
            "--postprocessing",
            str(trained["post"]),  # the tuned pipeline: segmenter, classifier gate and TTA
            "--images",
            str(data / "test_images"),
            "--out",
            str(sharded),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sharded.read_text() == single.read_text()
    assert not list(tmp_path.glob("*.shard*"))


def test_oof_search_writes_yaml_that_inference_reads(trained, tmp_path):
    coarse = copy.deepcopy(trained["seg_cfg"])
    coarse.inference.search_downsample = 4  # maps kept 4x smaller per side
    oof = collect_oof(coarse, trained["cls_cfg"])
    n_valid = len(oof["ids"])
    assert oof["probs"].shape == (n_valid, 4, 64, 400) and oof["probs"].dtype == np.uint8
    assert oof["truth"].dtype == bool and oof["cls"].shape == (n_valid, 4) and oof["tables"] is None
    exact = collect_oof(trained["seg_cfg"], trained["cls_cfg"])  # the default: no map kept at all
    area, inter, truth_area = exact["tables"]
    assert exact["probs"] is None and area.shape == inter.shape == (n_valid, 4, 11, 7)
    assert truth_area.shape == (n_valid, 4) and (inter <= area).all()
    summary = search_thresholds(trained["seg_cfg"], trained["cls_cfg"], tmp_path / "pp.yml")
    params = PostProcessing.load(tmp_path / "pp.yml")
    assert (
        summary["mean"]["best_dice"]
        >= max(summary["mean"]["baseline_dice"], summary["mean"]["empty_dice"]) - 1e-9
    )
    assert len(params.classes) == 4 and (tmp_path / "pp.report.json").is_file()
    # every model the search used now carries the score its thresholds earned
    oof_score = summary["out_of_fold"]
    assert oof_score["images"] == n_valid
    for class_id, entry in summary["classes"].items():
        expected = entry["empty_dice"] if entry["disabled"] else entry["best_dice"]
        assert oof_score["per_class"][class_id] == expected
    assert oof_score["mean_dice"] >= oof_score["empty"] - 1e-9
    # what each class's maps hold: the peaks per image, split by the truth
    present = truth_area > 0
    for i, entry in enumerate(summary["classes"].values()):
        signal, top = entry["signal"], exact["top"][:, i]
        assert signal["defect_images"] == int(present[:, i].sum())
        if present[:, i].any():
            assert signal["peak_on_defects"] == pytest.approx(top[present[:, i]].max())
            assert signal["reaches_threshold"] == (top[present[:, i]].max() >= 0.3)
    assert oof_score["unlearnt"] == unlearnt_classes(summary["classes"])
    for path in (trained["seg"], trained["cls"]):
        assert load_checkpoint(path)["out_of_fold"] == oof_score
    # the JSON report names its checkpoints and slices the search through the chosen point
    written = json.loads((tmp_path / "pp.report.json").read_text())
    assert written["checkpoints"] == [str(trained["seg"]), str(trained["cls"])]
    for class_id, entry in summary["classes"].items():
        for name, curve in written["curves"][class_id].items():
            assert curve["dice"][curve["chosen"]] == pytest.approx(entry["best_dice"]), (class_id, name)
        if not entry["disabled"]:
            chosen = written["curves"][class_id]["min_area"]
            assert chosen["values"][chosen["chosen"]] == entry["params"]["min_area"]
    # per-image scores for the hard-negative sampler: the classifier's and the segmenter's
    scores = (tmp_path / "pp.oof.csv").read_text().splitlines()
    assert summary["scores"] == str(tmp_path / "pp.oof.csv") and len(scores) == n_valid + 1
    first = dict(zip(scores[0].split(","), scores[1].split(","), strict=True))
    assert float(first["cls_3"]) == pytest.approx(oof["cls"][0][2], abs=1e-4)
    # the top gate is tuned on full-resolution maxima (block averaging could only lower them)
    assert oof["top"].shape == (n_valid, 4)
    assert (oof["top"] >= oof["probs"].max(axis=(2, 3)) / 255 - 0.5 / 255).all()
    cfg = copy.deepcopy(trained["seg_cfg"])
    cfg.inference.search_top_threshold = True
    topped = search_thresholds(cfg, trained["cls_cfg"], tmp_path / "top.yml")
    assert topped["top_threshold_searched"] and not summary["top_threshold_searched"]
    for class_id, entry in topped["classes"].items():  # a larger grid never scores lower
        assert entry["best_dice"] >= summary["classes"][class_id]["best_dice"] - 1e-12


@pytest.mark.gpu
def test_predictor_gives_the_same_on_gpu(trained):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    frames = _frames(trained, 1)
    cpu = Predictor([trained["seg"]], tta=()).segment(frames)
    gpu = Predictor([trained["seg"]], tta=(), device="cuda").segment(frames)
    np.testing.assert_allclose(cpu, gpu, atol=1e-3)


def test_oof_predicts_each_fold_with_that_folds_model(trained, tmp_path):
    cfg = copy.deepcopy(trained["seg_cfg"])
    cfg.paths.work_dir = str(tmp_path / "two_folds")
    cfg.inference.search_downsample = 4
    models = {}
    for fold, prior in ((0, 0.2), (1, 0.7)):  # two networks whose maps differ everywhere
        models[fold] = random_checkpoints(tmp_path / f"prior{fold}", seg_prior=prior)["seg"]
        (tmp_path / f"two_folds/fold{fold}/checkpoints").mkdir(parents=True)
        shutil.copy(models[fold], tmp_path / f"two_folds/fold{fold}/checkpoints/best.pth")
        update_checkpoint(
            tmp_path / f"two_folds/fold{fold}/checkpoints/best.pth", trained_on=training_data(cfg, fold)
        )
    oof = collect_oof(cfg)
    folds = read_folds(cfg.paths.folds_csv).set_index("ImageId")["fold"]
    assert sorted(oof["folds"]) == [0, 1] and {int(folds[i]) for i in oof["ids"]} == {0, 1}
    for fold in (0, 1):
        rows = [k for k, image_id in enumerate(oof["ids"]) if folds[image_id] == fold]
        ids = [oof["ids"][k] for k in rows]
        assert set(ids) == set(folds.index[folds == fold])  # every validation image of the fold, once
        frames = [read_image(Path(cfg.paths.train_images) / i) for i in ids]
        expected = Predictor([models[fold]], tta=tuple(cfg.inference.tta)).segment(frames)
        expected = downsample_probs(expected, oof["factor"])
        assert np.abs(oof["probs"][rows].astype(int) - expected).max() <= 1


def test_ensemble_oof_averages_every_members_fold_model(trained, tmp_path):
    member = copy.deepcopy(trained["seg_cfg"])
    member.paths.work_dir = str(tmp_path / "member")
    other = random_checkpoints(tmp_path)["seg"]  # a different network on the same folds
    (tmp_path / "member/fold0/checkpoints").mkdir(parents=True)
    member_best = tmp_path / "member/fold0/checkpoints/best.pth"
    shutil.copy(other, member_best)
    update_checkpoint(member_best, trained_on=training_data(member, 0))
    coarse = copy.deepcopy(trained["seg_cfg"])
    coarse.inference.search_downsample = 4
    alone = collect_oof(coarse)
    both = collect_oof(coarse, members=[member])
    assert both["ids"] == alone["ids"] and len(both["checkpoints"]) == 2
    predictor = Predictor([trained["seg"], other], tta=tuple(trained["seg_cfg"].inference.tta))
    frames = [read_image(Path(trained["seg_cfg"].paths.train_images) / i) for i in both["ids"][:2]]
    expected = downsample_probs(predictor.segment(frames), both["factor"])
    assert np.abs(both["probs"][:2].astype(int) - expected).max() <= 1
    assert np.abs(both["probs"].astype(int) - alone["probs"]).max() > 5  # the member counted
    # a member trained on another split (one image in another fold): its fold-0 maps are not out of fold
    member.paths.folds_csv = str(tmp_path / "other_folds.csv")
    folds = read_folds(trained["seg_cfg"].paths.folds_csv)
    folds.loc[folds.fold == 1, "fold"] = 0  # every frame of fold 1 now validates in fold 0
    write_folds(folds, member.paths.folds_csv)
    update_checkpoint(member_best, trained_on=training_data(member, 0))
    with pytest.raises(
        SplitMismatchError, match=r"member/fold0/checkpoints/best.pth was trained on the split"
    ):
        collect_oof(trained["seg_cfg"], members=[member])


def test_predictor_averages_each_class_over_the_models_that_predict_it(tmp_path):
    torch.manual_seed(1)
    cfg = load_config(REPO / "configs/demo/synth_seg.yml", [*SMALL_OPTS, "model.classes=[3]"])
    from steel_defect.models import build_model

    class3 = save_checkpoint(tmp_path / "c3.pth", build_model(cfg), cfg, epoch=0, metrics={})
    full = random_checkpoints(tmp_path)["seg"]
    frames = [np.random.default_rng(0).integers(0, 255, (256, 1600, 3), dtype=np.uint8)]
    alone = {
        name: Predictor([path], tta=()).segment(frames) for name, path in (("c3", class3), ("full", full))
    }
    both = Predictor([full, class3], tta=()).segment(frames)
    assert not alone["c3"][:, [0, 1, 3]].any()  # a class no model predicts stays 0
    np.testing.assert_allclose(both[:, [0, 1, 3]], alone["full"][:, [0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(both[:, 2], (alone["full"][:, 2] + alone["c3"][:, 2]) / 2, atol=1e-6)


def test_a_two_head_segmenter_gates_with_its_head(tmp_path):
    from steel_defect.models import build_model

    frames = [np.random.default_rng(1).integers(0, 255, (256, 1600, 3), dtype=np.uint8)]
    paths = {}
    for gate in ("hard", "soft"):
        torch.manual_seed(2)
        cfg = load_config(
            REPO / "configs/demo/synth_seg.yml", [*SMALL_OPTS, f"model.cls_head={{gate: {gate}}}"]
        )
        paths[gate] = save_checkpoint(tmp_path / f"{gate}.pth", build_model(cfg), cfg, epoch=0, metrics={})
    model, cfg = model_from_checkpoint(paths["hard"])
    plain = Predictor([paths["hard"]], tta=())
    batch = network_input(plain.segmenters[0], frames)
    with torch.no_grad():
        _, labels = model(torch.from_numpy(batch))
    head = torch.sigmoid(labels).numpy()
    hard = Predictor(
        [paths["hard"]], PostProcessing(tuple(ClassParams(0.0, cls_threshold=0.5) for _ in range(4))), tta=()
    )
    maps_hard, heads = hard.segment_with_heads(frames)
    np.testing.assert_allclose(heads, head, atol=1e-6)  # the head's probabilities, one forward pass
    prediction = hard.predict(frames)[0]
    np.testing.assert_allclose(prediction.cls_probs, head[0], atol=1e-6)
    painted = prediction.masks.any(axis=(1, 2))
    assert (painted == (head[0] >= 0.5)).all()  # threshold 0 paints all, the head gates
    soft, _ = Predictor([paths["soft"]], tta=()).segment_with_heads(frames)
    np.testing.assert_allclose(soft, maps_hard * head[:, :, None, None], atol=1e-5)  # mask * cls
