"""Decompression bombs (20000x20000 in PNG, JPEG, BMP, TIFF) are refused from their header on
every decode path: training datasets, ``predict`` on a folder, the web API and ``serve
--examples``; and refusing them costs no memory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from steel_defect.cli import main
from steel_defect.data.annotations import read_annotations
from steel_defect.data.datasets import ImageFolderDataset, SegmentationDataset
from steel_defect.data.images import ImageReadError
from steel_defect.data.submission import read_submission
from steel_defect.data.synth import generate_frame
from steel_defect.inference.predictor import Predictor
from steel_defect.webapp.app import Limits, create_app
from steel_defect.webapp.examples import folder_examples
from steel_defect.webapp.service import InferenceService
from tests.bombs import BUILDERS, bomb
from tests.conftest import REPO, random_checkpoints

SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}
REFUSED = "image is 20000x20000; expected 1600x256"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One good synthetic frame (``good.jpg``) and a bomb of each format (``bomb.png``...)."""
    folder = tmp_path_factory.mktemp("bombs")
    image, _ = generate_frame(np.random.default_rng(0))
    cv2.imwrite(str(folder / "good.jpg"), image)
    for kind, suffix in SUFFIXES.items():
        (folder / f"bomb{suffix}").write_bytes(bomb(kind))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoints(tmp_path_factory.mktemp("bomb-model"), exported=True)["seg"]


@pytest.mark.parametrize("kind", list(SUFFIXES))
def test_training_and_inference_datasets_refuse_bombs(folder, kind, tmp_path):
    name = f"bomb{SUFFIXES[kind]}"
    (tmp_path / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\n{name},1,1 5\n")
    dataset = SegmentationDataset([name], folder, read_annotations(tmp_path / "train.csv"))
    with pytest.raises(ImageReadError, match=f"{name}: {REFUSED}"):
        dataset[0]
    with pytest.raises(ImageReadError, match=f"{name}: {REFUSED}"):
        ImageFolderDataset([folder / name])[0]
    # a folder read at any size still refuses a bomb, by the pixel limit
    with pytest.raises(ImageReadError, match=f"{name}: image is 20000x20000, over the limit"):
        ImageFolderDataset([folder / name], expected_shape=None)[0]


def test_predict_on_a_folder_reports_each_bomb_and_predicts_the_rest(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    argv = ["predict", "--untuned", "--checkpoints", str(checkpoint), "--images", str(folder)]
    code = main([*argv, "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    for suffix in SUFFIXES.values():
        assert f"bomb{suffix}: {REFUSED}" in err
    assert "4 FAILED" in err
    rows = read_submission(out)
    assert sorted(rows) == sorted(p.name for p in folder.iterdir())
    assert all(rows[f"bomb{suffix}"] == ["", "", "", ""] for suffix in SUFFIXES.values())


def test_web_upload_refuses_each_bomb_with_422(folder, checkpoint):
    client = TestClient(create_app(InferenceService(Predictor([checkpoint])), Limits()))
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
    response = client.post("/api/predict", files=files)
    assert response.status_code == 200, response.text
    entries = {e["file_name"]: e for e in response.json()["images"]}
    assert entries["good.jpg"]["width"] == 1600
    for suffix in SUFFIXES.values():
        error = entries[f"bomb{suffix}"]["error"]
        assert error["status"] == 422
        assert error["message"].startswith(f"bomb{suffix}: image is 20000x20000; expected a 1600x256")


def test_examples_folder_skips_bombs(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="steel_defect.webapp.examples"):
        examples = folder_examples(folder, max_bytes=10 * 2**20)
    assert list(examples) == ["good.jpg"]
    skipped = caplog.text
    for suffix in SUFFIXES.values():
        assert f"skipping {folder / f'bomb{suffix}'}: image is 20000x20000" in skipped


# Runs in a fresh interpreter, so that its peak RSS belongs to this check alone; it calls the
# decoding behind the web upload (decode_upload) and behind training and predict (read_image).
_PEAK_SCRIPT = """
import json, resource, sys
import cv2, numpy as np
from steel_defect.data.images import ImageReadError, read_image
from steel_defect.webapp.uploads import UploadError, decode_upload
from tests.bombs import bomb

def peak_mb():
    # VmHWM belongs to this program alone; ru_maxrss on Linux keeps the peak of the forked
    # parent from before exec, which would hide a bomb under pytest's own size.
    try:
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 2**10
    except OSError:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return kb / (2**20 if sys.platform == "darwin" else 2**10)

def outcome(call, path_or_data):
    try:
        call(path_or_data)
        return "decoded"
    except (ImageReadError, UploadError) as err:
        return "refused" if "20000x20000" in str(err) else str(err)

folder, kinds = sys.argv[1], sys.argv[2].split(",")
bombs = {kind: bomb(kind) for kind in kinds}
upload = lambda data: decode_upload(data, "b", max_bytes=10 * 2**20)
# Warm up both paths on a real frame, so the baseline holds a decoded 1600x256 image.
frame = cv2.imencode(".png", np.zeros((256, 1600), np.uint8))[1].tobytes()
open(folder + "/frame.png", "wb").write(frame)
assert outcome(upload, frame) == outcome(read_image, folder + "/frame.png") == "decoded"
baseline = peak_mb()
outcomes = []
for kind, data in bombs.items():
    open(folder + "/bomb", "wb").write(data)
    outcomes += [outcome(upload, data), outcome(read_image, folder + "/bomb")]
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_mb(), "outcomes": outcomes}))
"""


def test_refusing_bombs_keeps_peak_memory_flat(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), ",".join(BUILDERS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == ["refused"] * 2 * len(BUILDERS), result
    # Decoding the 20000x20000 PNG alone would take 1.2 GB (3 bytes a pixel).
    assert result["peak_mb"] < result["baseline_mb"] + 100, result
