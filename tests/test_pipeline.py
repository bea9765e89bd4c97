"""One tuned pipeline: the search's spec is what predict, serve, pseudo-label and export run, or refuse.

The spec (``pipeline:`` in postprocessing.yml) names the models by their weights' SHA-256, the
TTA, the gate and the split; every command builds its predictor from it (``build_predictor``)
and refuses what differs; out of fold is checked against the split each model was trained on.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from steel_defect.cli import main
from steel_defect.config import load_config
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import read_folds, split_folds
from steel_defect.data.images import decode_image, read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.submission import read_submission
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.evaluation.metric import dice_pairs
from steel_defect.inference.onnx_export import export_onnx
from steel_defect.inference.oof import SplitMismatchError, search_thresholds
from steel_defect.inference.pipeline import PipelineError, build_predictor, read_tuned, save_spec
from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Predictor
from steel_defect.models import build_model
from steel_defect.models.checkpoint import save_checkpoint
from steel_defect.training.runner import train
from steel_defect.webapp.app import Limits, create_app
from steel_defect.webapp.examples import example_images
from steel_defect.webapp.service import InferenceService
from tests.conftest import REPO, SMALL_OPTS, random_checkpoints

TINY_TRAIN = ["train.epochs=1", "train.max_train_batches=1", "train.max_valid_batches=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic set, a segmenter and a classifier trained on fold 0 and 1, and their search."""
    root = tmp_path_factory.mktemp("pipeline")
    write_synthetic_dataset(root / "data", n=18, seed=4, test_fraction=0.2)
    common = [
        f"paths.data_dir={root / 'data'}",
        f"paths.folds_csv={root / 'folds.csv'}",
        *SMALL_OPTS,
        *TINY_TRAIN,
        "inference.backend=torch",  # what the spec checks is the same on every backend; no exports
    ]
    seg = load_config(REPO / "configs/demo/synth_seg.yml", [*common, f"paths.work_dir={root / 'seg'}"])
    cls = load_config(REPO / "configs/demo/synth_cls.yml", [*common, f"paths.work_dir={root / 'cls'}"])
    split_folds(seg)
    for fold in (0, 1):
        train(seg, fold=fold)
        train(cls, fold=fold)
    summary = search_thresholds(seg, cls, root / "postprocessing.yml")
    return {
        "root": root,
        "seg_cfg": seg,
        "cls_cfg": cls,
        "post": root / "postprocessing.yml",
        "summary": summary,
    }


def _images(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for name, data in list(example_images().items())[:n]:
        (folder / name).write_bytes(data)
    return folder


def test_the_search_writes_the_pipeline_it_tuned(run):
    _, spec = read_tuned(run["post"])
    seg, cls = run["root"] / "seg", run["root"] / "cls"
    expected = [seg / "fold0/checkpoints/best.pth", cls / "fold0/checkpoints/best.pth"]
    expected += [seg / "fold1/checkpoints/best.pth", cls / "fold1/checkpoints/best.pth"]
    assert [p.resolve() for p in spec.checkpoints] == [p.resolve() for p in expected]
    assert [m.fold for m in spec.models] == [0, 0, 1, 1] and [m.task for m in spec.models] == [
        "seg",
        "cls",
    ] * 2
    assert spec.tta == tuple(run["seg_cfg"].inference.tta) and spec.gate == "classifier"
    assert spec.search_downsample == 1  # scored at full resolution: no second pass needed
    assert "full_resolution" not in run["summary"]
    raw = yaml.safe_load(run["post"].read_text())["pipeline"]
    assert raw["checkpoints"][0]["path"] == "seg/fold0/checkpoints/best.pth"  # relative: the folder can move


def _inference_dice(cfg, spec) -> np.ndarray:
    """Dice per (frame, class) of each fold's share of ``spec`` on that fold's frames: what the
    tuned pipeline scores out of fold when it runs as inference runs."""
    folds = read_folds(cfg.paths.folds_csv)
    truth_file = read_annotations(cfg.paths.train_csv)
    dice = []
    for fold in sorted({m.fold for m in spec.models}):
        predictor = Predictor([m.path for m in spec.of_fold(fold)], spec.post, tta=spec.tta)
        ids = folds.ImageId[folds.fold == fold].tolist()
        frames = [read_image(Path(cfg.paths.train_images) / i) for i in ids]
        masks = np.stack([p.masks for p in predictor.predict(frames)])
        truth = np.stack([rles_to_masks(truth_file.rles(i)) for i in ids])
        dice.append(dice_pairs(masks, truth))
    return np.concatenate(dice)


def test_the_search_scores_exactly_what_inference_scores(run):
    """At full resolution the search's out-of-fold Dice is inference's, to the last pair."""
    _, spec = read_tuned(run["post"])
    dice = _inference_dice(run["seg_cfg"], spec)
    oof = run["summary"]["out_of_fold"]
    assert oof["mean_dice"] == pytest.approx(float(dice.mean()), abs=1e-12)
    for i, c in enumerate("1234"):
        assert oof["per_class"][c] == pytest.approx(float(dice[:, i].mean()), abs=1e-12)


def test_a_downsampled_search_reports_its_full_resolution_score(run, tmp_path):
    cfg = copy.deepcopy(run["seg_cfg"])
    cfg.inference.search_downsample = 4
    summary = search_thresholds(cfg, run["cls_cfg"], tmp_path / "post.yml", record=False)
    _, spec = read_tuned(tmp_path / "post.yml")
    assert spec.search_downsample == 4
    full = summary["full_resolution"]
    assert full["mean_dice"] == pytest.approx(float(_inference_dice(cfg, spec).mean()), abs=1e-12)
    assert full["difference"] == pytest.approx(full["mean_dice"] - summary["out_of_fold"]["mean_dice"])


def test_predict_without_a_spec_is_refused_and_runs_with_untuned(run, tmp_path, capsys, caplog):
    images, out = _images(tmp_path), tmp_path / "sub.csv"
    checkpoint = str(run["root"] / "seg/fold0/checkpoints/best.pth")
    code = main(["predict", "--checkpoints", checkpoint, "--images", str(images), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "--untuned" in capsys.readouterr().err
    code = main(
        ["predict", "--untuned", "--checkpoints", checkpoint, "--images", str(images), "--out", str(out)]
    )
    assert code == 0 and len(read_submission(out)) == 3
    assert any("UNTUNED" in r.message and r.levelname == "WARNING" for r in caplog.records)
    # a YAML that gates on a classifier, used without one, is refused instead of applied ungated
    gated = tmp_path / "gated.yml"
    PostProcessing(tuple(ClassParams(cls_threshold=0.5) for _ in range(4))).save(gated)
    argv = ["predict", "--untuned", "--checkpoints", checkpoint, "--postprocessing", str(gated)]
    assert main([*argv, "--images", str(images), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no classifier or two-head segmenter is given" in capsys.readouterr().err


def test_a_spec_refuses_models_it_was_not_tuned_with(run, tmp_path):
    _, spec = read_tuned(run["post"])
    # one fold's share only: the thresholds were tuned for the whole ensemble
    with pytest.raises(PipelineError, match=r"fold1/checkpoints/best.pth .* too, which is not among"):
        build_predictor(run["post"], spec.checkpoints[:2], backend="torch")
    # a model the spec never saw
    stranger = random_checkpoints(tmp_path)["seg"]
    with pytest.raises(PipelineError, match=r"seg.pth .* is not a model .* was tuned with"):
        build_predictor(run["post"], [stranger, *spec.checkpoints], backend="torch")
    # retrained in place: the same path, other weights
    moved = tmp_path / "work"
    shutil.copytree(run["root"], moved, ignore=shutil.ignore_patterns("data"))
    shutil.copy(stranger, moved / "seg/fold1/checkpoints/best.pth")
    with pytest.raises(PipelineError, match=r"work/seg/fold1/checkpoints/best.pth .* is not a model"):
        build_predictor(moved / "postprocessing.yml", backend="torch")
    shutil.copy(run["root"] / "seg/fold1/checkpoints/best.pth", moved / "seg/fold1/checkpoints/best.pth")
    moved_whole = build_predictor(moved / "postprocessing.yml", backend="torch")
    assert len(moved_whole.segmenters) == 2  # moved whole, it works


def test_onnx_exports_stand_in_for_their_checkpoints(run, tmp_path):
    _, spec = read_tuned(run["post"])
    exports = [export_onnx(p, tmp_path / f"m{k}.onnx") for k, p in enumerate(spec.checkpoints)]
    frames = [decode_image(d, channels=3) for d in list(example_images().values())[:2]]
    torch_masks = [p.masks for p in build_predictor(run["post"], backend="torch").predict(frames)]
    onnx_masks = [p.masks for p in build_predictor(run["post"], exports).predict(frames)]
    for a, b in zip(torch_masks, onnx_masks, strict=True):
        assert np.mean(a != b) < 1e-4  # exported graphs agree to ~1e-5 in probability


def test_a_re_split_is_refused_by_split_and_by_the_search(run, tmp_path, capsys):
    cfg = copy.deepcopy(run["seg_cfg"])
    work = tmp_path / "resplit"
    shutil.copytree(run["root"], work, ignore=shutil.ignore_patterns("data"))
    opts = [
        f"paths.data_dir={run['root'] / 'data'}",
        f"paths.folds_csv={work / 'folds.csv'}",
        f"paths.work_dir={work / 'seg'}",
        *SMALL_OPTS,
    ]
    argv = ["split", "--config", str(REPO / "configs/demo/synth_seg.yml"), "--opts", *opts, "seed=7"]
    before = (work / "folds.csv").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint(s) were trained on it" in err and "--force" in err
    assert (work / "folds.csv").read_bytes() == before  # nothing overwritten
    assert (
        main(["split", "--config", str(REPO / "configs/demo/synth_seg.yml"), "--opts", *opts]) == 0
    )  # same split
    assert main([*argv, "--force"]) == 0 and (work / "folds.csv").read_bytes() != before
    cfg.paths.folds_csv, cfg.paths.work_dir = str(work / "folds.csv"), str(work / "seg")
    with pytest.raises(SplitMismatchError, match=r"fold0/checkpoints/best.pth was trained on the split"):
        search_thresholds(cfg, None, tmp_path / "post.yml")
    assert not (tmp_path / "post.yml").exists()


def test_a_classifier_trained_on_another_split_is_refused(run, tmp_path):
    cls = copy.deepcopy(run["cls_cfg"])
    cls.paths.work_dir = str(tmp_path / "cls")
    cls.paths.folds_csv = str(tmp_path / "cls_folds.csv")
    cls.seed = 11
    split_folds(cls)
    assert (
        read_folds(cls.paths.folds_csv).fold.tolist()
        != read_folds(run["seg_cfg"].paths.folds_csv).fold.tolist()
    )
    for fold in (0, 1):
        train(cls, fold=fold)
    with pytest.raises(SplitMismatchError, match=r"cls/fold0/checkpoints/best.pth was trained on the split"):
        search_thresholds(run["seg_cfg"], cls, tmp_path / "post.yml", record=False)


def test_the_search_tunes_a_named_checkpoint(run, tmp_path):
    cfg = copy.deepcopy(run["seg_cfg"])
    cfg.paths.work_dir = str(tmp_path / "seg")
    for fold in (0, 1):  # an SWA average saved beside best.pth, as train.swa does
        (tmp_path / f"seg/fold{fold}/checkpoints").mkdir(parents=True)
        source = run["root"] / f"seg/fold{fold}/checkpoints/best.pth"
        shutil.copy(source, tmp_path / f"seg/fold{fold}/checkpoints/swa.pth")
    with pytest.raises(FileNotFoundError, match=r"best\.pth"):
        search_thresholds(cfg, None, tmp_path / "post.yml", record=False)
    search_thresholds(cfg, None, tmp_path / "post.yml", record=False, name="swa")
    _, spec = read_tuned(tmp_path / "post.yml")
    assert [p.name for p in spec.checkpoints] == ["swa.pth", "swa.pth"] and spec.gate == "none"
    with pytest.raises(ValueError, match="unknown checkpoint name 'swa2'"):
        search_thresholds(cfg, None, tmp_path / "post.yml", record=False, name="swa2")


def _two_head(tmp_path: Path) -> Path:
    import torch

    torch.manual_seed(3)
    opts = [*SMALL_OPTS, "model.cls_head={gate: hard}", "model.output_prior=0.6"]
    cfg = load_config(REPO / "configs/demo/synth_seg.yml", opts)
    return save_checkpoint(tmp_path / "two_head.pth", build_model(cfg), cfg, epoch=0, metrics={})


def test_a_two_head_gate_is_applied_by_predict_and_by_the_web_app_alike(tmp_path):
    checkpoint, images = _two_head(tmp_path), _images(tmp_path)
    names = sorted(p.name for p in images.iterdir())
    frames = [read_image(images / n) for n in names]
    probe = Predictor([checkpoint], tta=())
    _, heads = probe.segment_with_heads(frames)
    # class 1 gated off on every frame, class 3 on some; the maps paint all four ungated
    gates = [float(heads[:, 0].max()) + 1e-3, None, float(np.median(heads[:, 2])), None]
    post = PostProcessing(tuple(ClassParams(0.5, cls_threshold=g) for g in gates))
    spec = save_spec(
        tmp_path / "post.yml", post, probe.segmenters, (), "head", 4, tmp_path / "folds.csv", "x"
    )
    ungated = [p.masks for p in Predictor([checkpoint], tta=()).predict(frames)]
    assert all(m[0].any() and m[2].any() for m in ungated)

    out = tmp_path / "sub.csv"
    assert main(["predict", "--postprocessing", str(spec), "--images", str(images), "--out", str(out)]) == 0
    rows = read_submission(out)
    client = TestClient(create_app(InferenceService(build_predictor(spec)), Limits()))
    files = [("files", (n, (images / n).read_bytes(), "image/jpeg")) for n in names]
    answer = client.post("/api/predict", files=files).json()["images"]
    gated_off = 0
    for name, entry, plain in zip(names, answer, ungated, strict=True):
        web = [c["rle"] for c in entry["classes"]]
        assert web == rows[name]  # the page's masks are predict's, RLE for RLE
        gated_off += sum(1 for k in range(4) if plain[k].any() and not web[k])
    assert gated_off >= len(names) + 1  # class 1 everywhere and class 3 somewhere
    assert all(not rows[n][0] for n in names)


def test_thresholds_opts_apply_to_the_segmenter_config_alone(run, tmp_path, capsys):
    """A paths.work_dir in --opts must not turn the classifier's config into a second segmenter."""
    seg_yml, cls_yml = run["root"] / "seg/fold0/config.yml", run["root"] / "cls/fold0/config.yml"
    out = tmp_path / "post.yml"
    argv = ["thresholds", "--config", str(seg_yml), "--cls-config", str(cls_yml), "--out", str(out)]
    argv += ["--opts", f"paths.work_dir={run['root'] / 'seg'}", "inference.search_full_res_check=false"]
    assert main(argv) == 0
    _, spec = read_tuned(out)
    assert spec.gate == "classifier" and [m.task for m in spec.models] == ["seg", "cls", "seg", "cls"]


def test_a_damaged_spec_is_refused_naming_the_file_and_key(run, tmp_path):
    data = yaml.safe_load(run["post"].read_text())
    cases = {
        "unknown": (
            {**data["pipeline"], "tta_views": ["hflip"]},
            r"unknown key\(s\) \['tta_views'\] in pipeline",
        ),
        "gate": (
            {**data["pipeline"], "gate": "oracle"},
            r"pipeline.gate 'oracle'; valid: classifier, head, none",
        ),
        "tta": ({**data["pipeline"], "tta": ["rot90"]}, r"unknown TTA \['rot90'\] in pipeline.tta"),
        "missing": (
            {k: v for k, v in data["pipeline"].items() if k != "folds"},
            r"pipeline.folds is missing",
        ),
        "entry": ({**data["pipeline"], "checkpoints": [{"path": "x.pth"}]}, r"checkpoints\[0\] needs path"),
    }
    for name, (pipeline, message) in cases.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({**data, "pipeline": pipeline}))
        with pytest.raises(PipelineError, match=rf"{name}\.yml: .*{message}"):
            build_predictor(path)
