"""Distillation: the teacher's maps are data, computed once; the students are scored out of fold;
the shipped student is a tuned pipeline like any other.

The teacher is two untrained fold segmenters (seconds, no training) saved as `train` saves
them, tuned into a spec as `thresholds` writes it; the students train one batch each.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from steel_defect.config import ConfigError, load_config
from steel_defect.config.errors import ComponentError
from steel_defect.data.folds import read_folds, split_digest, split_folds
from steel_defect.data.images import read_image
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.distill import distill
from steel_defect.distill.fit import LOOSE, fit_report
from steel_defect.distill.student import DistillFrames, DistillLoss, student_config, student_shape
from steel_defect.distill.teacher import frame, read_levels, teachers
from steel_defect.inference.onnx_export import export_onnx
from steel_defect.inference.pipeline import build_predictor, read_tuned, save_spec
from steel_defect.inference.postprocess import PostProcessing, quantise
from steel_defect.inference.predictor import Predictor, load_network
from steel_defect.losses import build_loss
from steel_defect.models import build_model
from steel_defect.models.checkpoint import load_checkpoint, save_checkpoint
from steel_defect.training.runner import training_data
from tests.conftest import REPO, SMALL_OPTS

STUDENT = "distill.model={params: {decoder_channels: [32, 16, 8, 8, 4]}}"
# an eighth of the frame's height: every network here runs in milliseconds
SIZE = "{name: Resize, params: {height: 32, width: 192}}"
FRAMES = [f"transforms.{side}=[{SIZE}, {{name: Normalize}}]" for side in ("train", "valid")]
TINY = [
    *FRAMES,
    "folds.n_splits=2",
    "train.epochs=1",
    "train.max_train_batches=1",
    "train.max_valid_batches=1",
    "inference.backend=torch",
    "inference.tta=[hflip]",
    STUDENT,
]


def _cfg(root, *opts):
    common = [f"paths.data_dir={root / 'data'}", f"paths.folds_csv={root / 'folds.csv'}", *SMALL_OPTS, *TINY]
    return load_config(
        REPO / "configs/demo/synth_seg.yml", [*common, f"paths.work_dir={root / 'seg'}", *opts]
    )


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A synthetic set, a teacher of two fold models (untrained, maps around 0.3), a folder of
    unlabelled frames (the test frames and one labelled frame) and one distillation of them."""
    root = tmp_path_factory.mktemp("distill")
    write_synthetic_dataset(root / "data", n=12, seed=5, test_fraction=0.25)
    unlabelled = root / "unlabelled"
    shutil.copytree(root / "data/test_images", unlabelled)
    cfg = _cfg(root, f"distill.unlabelled={unlabelled}", f"distill.cache_dir={root / 'cache'}")
    table = split_folds(cfg)
    labelled_copy = sorted(table.ImageId)[0]
    shutil.copy(root / "data/train_images" / labelled_copy, unlabelled / labelled_copy)
    networks = []
    for k in range(2):
        torch.manual_seed(k)
        teacher_cfg = load_config(
            REPO / "configs/demo/synth_seg.yml", [*SMALL_OPTS, *FRAMES, "model.output_prior=0.3", f"seed={k}"]
        )
        path = save_checkpoint(
            root / f"seg/fold{k}/checkpoints/best.pth",
            build_model(teacher_cfg),
            teacher_cfg,
            epoch=1,
            metrics={},
            trained_on=training_data(cfg, k),
        )
        networks.append(load_network(path, "torch"))
    spec = save_spec(
        root / "postprocessing.yml",
        PostProcessing(),
        networks,
        ("hflip",),
        "none",
        1,
        cfg.paths.folds_csv,
        split_digest(read_folds(cfg.paths.folds_csv)),
    )
    summary = distill(cfg, spec, root / "line")
    return {"root": root, "cfg": cfg, "spec": spec, "summary": summary, "copy": labelled_copy}


def test_the_teacher_maps_are_what_the_tuned_pipeline_averages(taught):
    """Cached levels equal the tuned predictor's quantised maps to the last level: the ensemble's
    for the shipped student, fold K's models alone for out-of-fold student K."""
    cfg, summary = taught["cfg"], taught["summary"]
    _, spec = read_tuned(taught["spec"])
    shape = tuple(summary["shape"])
    assert shape == (32, 192)  # the student's validation resize, not the frame
    ensemble, by_fold = teachers(spec, shape)
    cache = taught["root"] / "cache"
    image_id = read_folds(cfg.paths.folds_csv).ImageId[0]
    item = frame(taught["root"] / "data/train_images" / image_id, True)
    image = read_image(item.path)
    expected = quantise(build_predictor(taught["spec"], backend="torch").segment([image], shape)[0])
    cached = read_levels(ensemble.map_path(cache, item))
    assert cached.dtype == np.uint8 and cached.shape == (4, *shape)
    np.testing.assert_array_equal(cached, expected)
    one = Predictor([by_fold[1].models[0].path], tta=("hflip",), backend="torch")
    np.testing.assert_array_equal(
        read_levels(by_fold[1].map_path(cache, item)), quantise(one.segment([image], shape)[0])
    )
    assert not np.array_equal(read_levels(by_fold[1].map_path(cache, item)), cached)  # a fold is not the mean
    # every frame (9 labelled, 3 unlabelled; the labelled copy left out) once per teacher
    assert summary["frames"] == {"labelled": 9, "unlabelled": 3}
    assert summary["teacher"]["computed"] == 12 and summary["teacher"]["cached"] == 0
    assert summary["teacher"]["passes"] == 12 * 2 * 2  # two networks, plain + hflip
    for teacher in (ensemble, *by_fold.values()):
        assert len(list(teacher.folder(cache).glob("*.png"))) == 12


def test_the_fit_report_measures_the_student_against_its_teachers_maps(taught):
    """distill.json's ``fit`` compares the shipped student's maps with the ensemble's cached ones on
    every frame it learnt from. A network measured against its own maps scores a gap of at most
    half a level (the maps are the same pixels at the same resolution), a different one does not."""
    summary, cache = taught["summary"], taught["root"] / "cache"
    fit = summary["fit"]
    assert fit["frames"] == 12 and fit["loose_above"] == LOOSE
    assert set(fit["classes"]) == {"1", "2", "3", "4"} and len(fit["worst"]) == 8
    gaps = [w["gap"] for w in fit["worst"]]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] == max(c["max"] for c in fit["classes"].values())
    # the student trained one batch: it is not its untrained teacher (maps around 0.3)
    assert gaps[0] > 0.01
    _, spec = read_tuned(taught["spec"])
    _, by_fold = teachers(spec, tuple(summary["shape"]))
    items = [frame(taught["root"] / "data/train_images" / i, True) for i in summary["folds"]["1"]["scored"]]
    teacher = by_fold[1]
    own = fit_report(teacher.models[0].path, teacher, items, cache, teacher.tta)
    assert own["frames"] == len(items) and max(c["max"] for c in own["classes"].values()) <= 0.5 / 255
    assert own["loose"] == 0
    other = fit_report(by_fold[0].models[0].path, teacher, items, cache, teacher.tta)
    assert max(c["max"] for c in other["classes"].values()) > 1 / 255


@pytest.fixture(scope="module")
def again(taught, tmp_path_factory):
    """A second distillation of the same teacher, as the demo's last round runs it: from a copy
    of the teacher's folder (moved whole, spec and split with it), into a new folder, with the
    teacher's thresholds, then the line pipeline scored on the test frames (under both schemes)
    and timed beside the ensemble."""
    from steel_defect.demo import DemoData, line_round

    root, work = taught["root"], tmp_path_factory.mktemp("again")
    shutil.copytree(root / "seg", work / "seg")
    for name in ("postprocessing.yml", "folds.csv", "data/test_truth.csv"):
        shutil.copy(root / name, work / Path(name).name)
    data = DemoData(
        root / "data/train.csv",
        root / "data/train_images",
        root / "data/test_images",
        root / "data/sample_submission.csv",
    )
    cache = root / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    ensemble = build_predictor(work / "postprocessing.yml", backend="torch", threads=1)
    timings: dict = {}
    cfg = copy.deepcopy(taught["cfg"])
    cfg.distill.thresholds = "teacher"  # the other scheme ships; the first run's is written beside it
    line = line_round(cfg, ensemble, data, work, timings)
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    return {"work": work, "line": line, "timings": timings, "before": before, "after": after}


def test_a_second_run_reads_the_maps_and_never_runs_the_teacher(taught, again):
    maps = again["line"]["teacher_maps"]
    assert maps["computed"] == 0 and maps["cached"] == 12 and maps["passes"] == 0
    assert again["after"] == again["before"] and len(again["before"]) == 12 * 3  # not one rewritten
    # the same maps and the same seed give the same student
    first = load_checkpoint(taught["summary"]["student"])["weights_sha256"]
    assert load_checkpoint(again["work"] / "line/student/checkpoints/last.pth")["weights_sha256"] == first


def test_no_frame_is_scored_by_a_student_or_a_teacher_that_saw_it(taught):
    summary, cfg = taught["summary"], taught["cfg"]
    table = read_folds(cfg.paths.folds_csv)
    folds = summary["folds"]
    assert sorted(folds) == ["0", "1"]
    scored_all = []
    for k, entry in folds.items():
        scored, learnt = set(entry["scored"]), set(entry["learnt_from"])
        assert scored == set(table.ImageId[table.fold == int(k)])
        assert not scored & learnt  # the student never learnt from a frame it scores
        assert set(table.ImageId) - scored <= learnt  # ... and learnt from every other labelled one
        assert taught["copy"] not in learnt - set(table.ImageId[table.fold != int(k)])  # not via the folder
        assert len(entry["teacher"]) == 1
        for model in entry["teacher"]:  # its teacher held exactly these frames out
            assert model["fold"] == int(k) and scored <= set(model["valid_ids"])
        trained_on = load_checkpoint(entry["student"])["trained_on"]
        assert trained_on["fold"] == int(k) and set(trained_on["split"]["valid_ids"]) == scored
        scored_all += entry["scored"]
    assert sorted(scored_all) == sorted(table.ImageId)  # each labelled frame scored exactly once
    assert summary["out_of_fold"]["images"] == 9
    shipped = load_checkpoint(summary["student"])["trained_on"]
    assert shipped["fold"] is None and shipped["split"]["valid_ids"] == []
    assert shipped["distilled_from"] == {"teacher": summary["teacher"]["ensemble"], "unlabelled_frames": 3}


def test_the_student_is_a_tuned_pipeline_that_predicts_masks(taught, tmp_path):
    summary = taught["summary"]
    predictor = build_predictor(summary["postprocessing"], backend="torch")  # the one-pipeline checks
    _, spec = read_tuned(summary["postprocessing"])
    assert [m.path.resolve() for m in spec.models] == [
        taught["root"].joinpath("line/student/checkpoints/last.pth")
    ]
    assert spec.models[0].fold is None and spec.tta == () and spec.gate == "none"
    assert spec.folds_sha256 == summary["split"]
    # the student's gate is tuned as its thresholds are, on the out-of-fold students' coarse peaks
    assert spec.clean_gate is not None and spec.clean_gate.scale == summary["clean_gate"]["scale"]
    assert summary["clean_gate"]["frames"] == summary["frames"]["labelled"]
    state = load_checkpoint(summary["student"])
    assert state["config"]["model"]["params"]["decoder_channels"] == [32, 16, 8, 8, 4]
    assert state["config"]["model"]["encoder"] == "resnet18" and state["epoch"] == 1
    assert state["out_of_fold"] == summary["out_of_fold"]  # the page shows the score it earned
    frames = [read_image(p) for p in sorted((taught["root"] / "data/test_images").iterdir())[:2]]
    predictions = predictor.predict(frames)
    assert [p.masks.shape for p in predictions] == [(4, 256, 1600)] * 2
    assert all(p.masks.dtype == np.uint8 and set(np.unique(p.masks)) <= {0, 1} for p in predictions)
    # its ONNX export stands in for it, as any model's does (`export`, then `predict --checkpoints`)
    exported = export_onnx(summary["student"], tmp_path / "student.onnx")
    onnx = build_predictor(summary["postprocessing"], [exported]).predict(frames)
    for a, b in zip(predictions, onnx, strict=True):
        assert np.mean(a.levels != b.levels) < 1e-3  # the graphs agree to ~1e-5 in probability


def test_the_teachers_thresholds_are_written_beside_the_students(taught):
    """By default the shipped student takes the thresholds searched on the out-of-fold students;
    the same student with the teacher's own is written beside it, with its gate, and both are
    scored out of fold on the same students' maps of their own folds."""
    summary = taught["summary"]
    assert summary["thresholds"] == "students"
    other = summary["alternatives"]["teacher"]
    assert other["postprocessing"] == str(taught["root"] / "line/postprocessing.teacher.yml")
    teacher_post, _ = read_tuned(taught["spec"])
    post, spec = read_tuned(other["postprocessing"])
    _, shipped = read_tuned(summary["postprocessing"])
    assert post == teacher_post and spec.models == shipped.models  # the teacher's classes, the same student
    assert spec.clean_gate is not None and other["clean_gate"]["frames"] == summary["frames"]["labelled"]
    build_predictor(other["postprocessing"], backend="torch")  # the one-pipeline checks pass
    for entry in (summary, other):  # each score is the mean of the pairs its scores file lists
        scores = pd.read_csv(Path(entry["postprocessing"]).with_suffix(".oof.csv"))
        dice = scores[[f"dice_{c}" for c in "1234"]].to_numpy()
        assert len(dice) == entry["out_of_fold"]["images"] == 9
        assert entry["out_of_fold"]["mean_dice"] == pytest.approx(dice.mean())
    report = json.loads(Path(summary["postprocessing"]).with_suffix(".report.json").read_text())
    assert summary["out_of_fold"]["mean_dice"] == pytest.approx(report["mean"]["best_dice"])


def test_the_teachers_thresholds_can_ship(taught, again):
    """distill.thresholds: teacher ships the teacher's thresholds and writes the students' beside
    them; a teacher gated on a classifier cannot lend its thresholds to a student, and says so."""
    from steel_defect.distill.run import teacher_thresholds
    from steel_defect.errors import UserError
    from steel_defect.inference.postprocess import ClassParams

    summary = json.loads((again["work"] / "line/distill.json").read_text())
    assert summary["thresholds"] == again["line"]["thresholds"] == "teacher"
    post, _ = read_tuned(summary["postprocessing"])
    assert post == read_tuned(taught["spec"])[0]
    assert set(summary["alternatives"]) == {"students"}
    # the same students as the first run's (same maps, same seed): the schemes have swapped places
    first = taught["summary"]
    assert summary["out_of_fold"] == first["alternatives"]["teacher"]["out_of_fold"]
    assert (
        summary["alternatives"]["students"]["out_of_fold"]["mean_dice"] == first["out_of_fold"]["mean_dice"]
    )
    students = read_tuned(summary["alternatives"]["students"]["postprocessing"])[0]
    assert students == read_tuned(first["postprocessing"])[0]
    # the demo scores both on its test frames
    scored = again["line"]["alternatives"]["students"]
    assert Path(scored["submission"]).name == "submission.students.csv" and 0 <= scored["mean_dice"] <= 1
    gated = PostProcessing(tuple(ClassParams(cls_threshold=0.5 if c == 2 else None) for c in range(4)))
    with pytest.raises(UserError, match=r"teacher.yml gates class\(es\) \[3\] on a classifier"):
        teacher_thresholds(gated, "teacher.yml", required=True)
    assert teacher_thresholds(gated, "teacher.yml", required=False) is None  # the default: not written


def test_the_students_frames_carry_the_stored_levels(taught):
    """Through the validation resize the teacher's map comes back level for level, beside the
    labels; an unlabelled frame has empty labels and says so."""
    cfg = student_config(taught["cfg"], taught["root"] / "x")
    _, spec = read_tuned(taught["spec"])
    ensemble, _ = teachers(spec, student_shape(cfg))
    cache = taught["root"] / "cache"
    labelled = frame(taught["root"] / "data/train_images" / taught["copy"], True)
    unlabelled = frame(
        next(p for p in sorted((taught["root"] / "unlabelled").iterdir()) if p.name != taught["copy"]), False
    )
    from steel_defect.data.annotations import read_annotations
    from steel_defect.data.transforms import build_transforms

    items = [labelled, unlabelled]
    dataset = DistillFrames(
        items,
        [ensemble.map_path(cache, f) for f in items],
        read_annotations(cfg.paths.train_csv),
        build_transforms(cfg.transforms.valid, "transforms.valid"),
        3,
    )
    for index, item in enumerate(items):
        sample = dataset[index]
        levels = read_levels(ensemble.map_path(cache, item))
        np.testing.assert_allclose(sample["soft"].numpy(), levels / 255.0, atol=1e-7)
        assert sample["labelled"].item() == float(item.labelled)
    assert dataset[1]["mask"].sum() == 0


def test_the_loss_mixes_the_teachers_map_and_the_labels():
    soft = torch.tensor([0.2, 0.9]).reshape(1, 2, 1, 1).repeat(2, 1, 1, 1)
    mask = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1).repeat(2, 1, 1, 1)
    labelled = torch.tensor([1.0, 0.0])
    logits = torch.logit(soft)
    bce = build_loss("bce")
    assert DistillLoss(bce, 0.0)(logits, mask, soft, labelled).item() == pytest.approx(0.0, abs=1e-6)  # KL 0
    zero = torch.zeros_like(logits)  # p = 0.5: KL per pixel is log 2 - H(t)
    h = lambda t: -(t * math.log(t) + (1 - t) * math.log(1 - t))  # noqa: E731
    kl = (math.log(2) - h(0.2) + math.log(2) - h(0.9)) / 2
    label = math.log(2)  # BCE of p = 0.5, only frame 0 is labelled
    got = DistillLoss(bce, 0.25)(zero, mask, soft, labelled).item()
    assert got == pytest.approx(0.75 * kl + 0.25 * label, rel=1e-5)
    # no labelled frame in the batch: the label term is absent, not NaN
    assert DistillLoss(bce, 1.0)(zero, mask, soft, torch.zeros(2)).item() == 0.0


@pytest.mark.parametrize(
    "opt, needle",
    [
        ("distill.model.clases=[1]", "distill.model.clases"),
        ("distill.model.cls_head={weight: 1}", "has no head"),
        ("distill.model.encoder=3", "distill.model.encoder"),
        ("distill.label_weight=1.5", "distill.label_weight"),
        ("distill.tta=[rot90]", "distill.tta"),
        ("distill.unlabelled=/no/such/folder", "distill.unlabelled"),
        ("distill.epochs=0", "distill.epochs"),
        ("distill.lr=0.1", "distill.lr"),
        ("distill.thresholds=teachers", "did you mean 'teacher'"),
    ],
)
def test_bad_distill_keys_fail_at_load_naming_them(tmp_path, opt, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(REPO / "configs/demo/synth_seg.yml", [opt])


def test_a_bad_student_name_fails_before_anything_is_written(taught, tmp_path):
    cfg = _cfg(taught["root"], "distill.model={name: unett}")
    with pytest.raises(ComponentError, match=r"distill\.model\.name.*unet"):
        distill(cfg, taught["spec"], tmp_path / "line")
    assert not (tmp_path / "line").exists()


def test_the_demo_scores_and_times_the_line_pipeline_beside_the_ensemble(again):
    """The demo's last round: the distilled pipeline predicts the test frames, and both pipelines
    are timed on the same frames with the same threads."""
    from steel_defect.demo import format_summary

    work, line, timings = again["work"], again["line"], again["timings"]
    assert line["postprocessing"] == str(work / "line/postprocessing.yml")
    assert (work / "line/submission.csv").is_file() and 0.0 <= line["mean_dice"] <= 1.0
    speed = line["speed"]
    assert speed["frames"] == 3 and speed["threads"] == 1
    assert speed["ensemble_frames_per_s"] > 0 and speed["line_frames_per_s"] > 0
    assert timings["distill_s"] > 0
    summary = {
        "test_images": 3,
        "mean_dice": 0.9,
        "per_class": dict.fromkeys("1234", 0.9),
        "empty_baseline": 0.8,
        "empty_per_class": dict.fromkeys("1234", 0.8),
        "out_of_fold": {"images": 9, "mean_dice": 0.85, "empty": 0.8},
        "submission": "s.csv",
        "test_truth": "t.csv",
        "report": "r.html",
        "postprocessing": "p.yml",
        "line_postprocessing": line["postprocessing"],
        "line": line,
        "timings": timings,
        "serve": "serve",
        "predict": "predict",
    }
    text = format_summary(summary)
    assert (
        f"out-of-fold {line['out_of_fold']['mean_dice']:.4f}; the ensemble: test 0.9000, out-of-fold 0.8500"
        in text
    )
    assert (
        f"ensemble {speed['ensemble_frames_per_s']:.2f} (torch), line {speed['line_frames_per_s']:.2f}"
        in text
    )
    assert "line pipeline:   " + str(work / "line/postprocessing.yml") in text
    # a student that has not learnt its frames says so, naming the worst; one that has, nothing
    fit = line["fit"]
    assert fit["frames"] == 12 and len(fit["worst"]) == 1
    loose = {**fit, "loose": 2, "worst": [{**fit["worst"][0], "frame": "rough.jpg", "class": 3}]}
    text = format_summary({**summary, "line": {**line, "fit": loose}})
    assert "the student has not learnt 2 (frame, class) pair(s) of the 12 frames" in text
    assert "worst rough.jpg class 3" in text
    assert "has not learnt" not in format_summary({**summary, "line": {**line, "fit": {**fit, "loose": 0}}})


def test_the_distill_command_writes_the_line_pipeline(taught, tmp_path, capsys):
    from steel_defect.cli import main

    root = taught["root"]
    common = [f"paths.data_dir={root / 'data'}", f"paths.folds_csv={root / 'folds.csv'}", *SMALL_OPTS, *TINY]
    opts = [*common, f"paths.work_dir={root / 'seg'}", f"distill.cache_dir={root / 'cache'}"]
    config = str(REPO / "configs/demo/synth_seg.yml")
    argv = ["distill", "--config", config, "--teacher", str(taught["spec"]), "--out", str(tmp_path / "line")]
    assert main([*argv, "--opts", *opts]) == 0
    assert "the line's pipeline: --postprocessing" in capsys.readouterr().err
    summary = json.loads((tmp_path / "line" / "distill.json").read_text())
    assert summary["teacher"]["computed"] == 0  # the maps of the first distillation, from the cache
    _, spec = read_tuned(tmp_path / "line" / "postprocessing.yml")
    assert len(spec.models) == 1 and spec.models[0].fold is None


def test_the_shipped_students_int8_twin_is_checked_on_the_out_of_fold_students(taught, tmp_path):
    """The shipped student learnt every labelled frame, so its int8 twin is judged by its
    out-of-fold students' int8 twins, each on the fold it never saw (`export --int8`)."""
    from steel_defect.inference.export import export_all

    summary = taught["summary"]
    [entry] = export_all(
        [summary["student"]],
        tmp_path / "export",
        taught["cfg"],
        postprocessing=summary["postprocessing"],
        int8=True,
        openvino=True,
    )
    int8 = entry["int8"]
    assert int8["checked_on"].startswith("the out-of-fold students")
    assert int8["holdout_frames"] == summary["frames"]["labelled"]  # every fold's frames, once
    assert math.isclose(int8["dice_change"], int8["dice_int8"] - int8["dice_fp32"])
    for report, key in ((int8, "onnx"), (int8["openvino"], "xml")):
        assert ("refused" in report) != Path(report.get(key, tmp_path / "none")).is_file()
    # the fp32 pipeline's thresholds, with the twin in place of the student, still predict
    if "refused" not in int8:
        frames = [read_image(p) for p in sorted((taught["root"] / "data/test_images").iterdir())[:1]]
        assert build_predictor(summary["postprocessing"], [int8["onnx"]]).predict(frames)[0].masks.shape == (
            4,
            256,
            1600,
        )
