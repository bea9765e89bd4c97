"""Each command imports only the stack it uses: no torch for the cheap ones, no Catalyst to predict.

Every command runs in a fresh interpreter (``sys.modules`` starts empty there) through a tiny
wrapper that writes the loaded top-level modules to a file at exit. ``serve`` is stopped just
before ``uvicorn.run``, after the model, the app and the examples are built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steel_defect.data.synth import write_synthetic_dataset
from tests.conftest import REPO, random_checkpoints

TRAINING_STACK = ("torch", "catalyst", "segmentation_models_pytorch", "timm", "albumentations")
# Predicting needs torch and the architectures, never the trainer or the augmentation library.
PREDICT_FORBIDDEN = ("catalyst", "albumentations")
WATCHED = (*TRAINING_STACK, "fastapi", "pandas", "cv2")

_CHILD = """
import atexit, json, sys
out = sys.argv[1]
watched = json.loads(sys.argv[2])
atexit.register(lambda: open(out, "w").write(json.dumps([m for m in watched if m in sys.modules])))
if sys.argv[3] == "serve":
    import steel_defect.webapp.server as server
    server.serve = lambda app, host, port, **options: print("stopped before uvicorn.run")
from steel_defect.cli import main
sys.exit(main(sys.argv[3:]))
"""


def loaded_modules(tmp_path: Path, *argv: str, env: dict | None = None) -> set[str]:
    """Run ``steel-defect argv`` in a fresh interpreter (``env`` added to this one's); the
    watched modules it imported."""
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), json.dumps(WATCHED), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("startup") / "data"
    write_synthetic_dataset(out, n=8, seed=0, test_fraction=0.5)
    return out


@pytest.mark.parametrize(
    "argv",
    [["--help"]] + [[command, "--help"] for command in ("evaluate", "validate", "config", "synth", "split")],
    ids=lambda argv: " ".join(argv),
)
def test_help_imports_no_training_stack(tmp_path, argv):
    assert loaded_modules(tmp_path, *argv).isdisjoint(TRAINING_STACK)


def test_top_level_help_imports_not_even_pandas_or_opencv(tmp_path):
    # main() names the user-error types without importing the modules that define them.
    assert loaded_modules(tmp_path, "--help") == set()


def test_cheap_commands_import_no_training_stack(tmp_path, data):
    truth, sample = data / "test_truth.csv", data / "sample_submission.csv"
    seg_config = str(REPO / "configs/demo/synth_seg.yml")
    runs = [
        ["evaluate", "--pred", str(truth), "--truth", str(truth)],
        ["validate", str(truth), "--sample-submission", str(sample)],
        ["config", "--config", seg_config],
        ["synth", "--out", str(tmp_path / "synth"), "--n", "2"],
        ["split", "--config", seg_config, "--opts", f"paths.data_dir={data}", "folds.n_splits=2"],
    ]
    for argv in runs:
        heavy = loaded_modules(tmp_path, *argv) & set(TRAINING_STACK)
        assert not heavy, f"steel-defect {argv[0]} imported {sorted(heavy)}"
    # `config --docs` lists every registry's names from the registries themselves, which import
    # torch, timm, smp and albumentations; never the trainer
    assert "catalyst" not in loaded_modules(tmp_path, "config", "--docs")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    # Their transforms.valid is Resize + Normalize, which needs no albumentations.
    paths = random_checkpoints(tmp_path_factory.mktemp("startup_checkpoints"))
    return [str(paths["seg"]), str(paths["cls"])]


def _one_frame(tmp_path: Path, data: Path) -> Path:
    frame = next((data / "test_images").iterdir())  # one full-size synthetic frame
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / frame.name).write_bytes(frame.read_bytes())
    return images / frame.name


def test_predict_imports_neither_catalyst_nor_albumentations(tmp_path, data, checkpoints):
    frame, out = _one_frame(tmp_path, data), tmp_path / "submission.csv"
    argv = ["predict", "--untuned", "--backend", "torch", "--checkpoints", *checkpoints]
    loaded = loaded_modules(tmp_path, *argv, "--images", str(frame.parent), "--out", str(out))
    assert out.read_text().count(frame.name) == 4  # it did predict (one row per class)
    assert "torch" in loaded  # the probe sees what the command really imports
    assert loaded.isdisjoint(PREDICT_FORBIDDEN), sorted(loaded)


def test_default_predict_of_a_checkpoint_imports_torch_only_to_export_it(tmp_path, data):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    # Checkpoints of their own: the export cache lands beside them.
    paths = random_checkpoints(tmp_path / "checkpoints")
    checkpoints = [str(paths["seg"]), str(paths["cls"])]
    frame, out = _one_frame(tmp_path, data), tmp_path / "submission.csv"
    argv = ["predict", "--untuned", "--checkpoints", *checkpoints, "--images", str(frame.parent)]
    env = {"CUDA_VISIBLE_DEVICES": ""}  # a CPU machine, where auto means ONNX Runtime
    cold = loaded_modules(tmp_path, *argv, "--out", str(out), env=env)
    assert "torch" in cold  # the first run exports each .pth, which needs torch
    assert sorted((tmp_path / "checkpoints").glob("*.onnx"))
    warm = loaded_modules(tmp_path, *argv, "--out", str(tmp_path / "warm.csv"), env=env)
    assert "torch" not in warm, sorted(warm)
    assert (tmp_path / "warm.csv").read_text() == out.read_text()


def test_serve_imports_neither_catalyst_nor_albumentations(tmp_path, checkpoints):
    argv = ["serve", "--untuned", "--backend", "torch", "--checkpoints", *checkpoints, "--port", "0"]
    loaded = loaded_modules(tmp_path, *argv)
    assert {"torch", "fastapi"} <= loaded
    assert loaded.isdisjoint(PREDICT_FORBIDDEN), sorted(loaded)
