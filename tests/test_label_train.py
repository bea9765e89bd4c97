"""The labelling page trains: POST/GET/DELETE /api/label/train, versions, promotion, re-scoring.

A real labels database of synthetic frames, the real app (its test client, or `steel-defect label`
in a subprocess where a server restart is played out), and a real `steel-defect labels train`
child on tiny settings. The child is held at a known point with the pause hook
(``STEEL_DEFECT_TEST_PAUSE_AT=batch:train``) instead of racing it with sleeps.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.store import LabelStore
from steel_defect.labels.transfer import import_csv
from steel_defect.pause import ENV, FILE_ENV
from steel_defect.webapp.labelling import LabelService, create_label_app
from steel_defect.webapp.training import TrainingSettings
from tests.conftest import SMALL_OPTS

# one training in well under a minute: two folds of one batch each, no TTA search to speak of
TINY = [
    *SMALL_OPTS,
    "folds.n_splits=2",
    "train.epochs=1",
    "train.max_train_batches=1",
    "train.max_valid_batches=1",
    "inference.backend=torch",
    "inference.tta=[hflip]",
]
UNLABELLED = 4  # frames in the folder that the database does not hold labels of


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory) -> Path:
    """A labels database of 12 confirmed synthetic frames, and a folder that also holds
    ``UNLABELLED`` frames without labels (what the queue scores); returns the database."""
    root = tmp_path_factory.mktemp("train")
    total = 12 + UNLABELLED
    write_synthetic_dataset(root / "data", n=total, seed=4, test_fraction=UNLABELLED / total)
    frames = root / "frames"
    shutil.copytree(root / "data/train_images", frames)
    for path in (root / "data/test_images").iterdir():
        shutil.copy(path, frames / path.name)
    with LabelStore.open(root / "labels.sqlite") as store:
        import_csv(store, root / "data/train.csv", frames)
    return root / "labels.sqlite"


def _copy(labelled_db: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the database beside the shared frames: (database, frames)."""
    db = tmp_path / "labels.sqlite"
    shutil.copy(labelled_db, db)
    return db, labelled_db.parent / "frames"


def _torch(spec: str):
    from steel_defect.inference.pipeline import build_predictor

    return build_predictor(spec, backend="torch")


def _client(db: Path, frames: Path) -> tuple[TestClient, LabelStore]:
    store = LabelStore.open(db)
    service = LabelService(store, FrameFolder(frames))
    settings = TrainingSettings("synthetic", tuple(TINY), load_predictor=_torch)
    return TestClient(create_label_app(service, training=settings)), store


def _until(check, timeout: float = 180, what: str = "the condition"):
    """Poll ``check`` (a state the test waits for, not a race) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _paused(monkeypatch, tmp_path: Path) -> Path:
    """Hold the training child at its first training batch; the marker file says it is there."""
    marker = tmp_path / "paused"
    monkeypatch.setenv(ENV, "batch:train")
    monkeypatch.setenv(FILE_ENV, str(marker))
    return marker


def test_without_a_training_the_api_says_none_and_cancel_is_a_409(labelled_db, tmp_path):
    db, frames = _copy(labelled_db, tmp_path)
    client, store = _client(db, frames)
    with client, store:
        view = client.get("/api/label/train").json()
        assert view["state"] == "none" and view["version"] is None
        refused = client.delete("/api/label/train")
        assert refused.status_code == 409
        assert "no training is running" in refused.json()["detail"]
        versions = client.get("/api/label/versions").json()
        assert versions["versions"] == [] and versions["promoted"] is None
        assert versions["labelled"]["frames"] == 12
        assert client.get("/api/label/rescore").json()["state"] == "idle"
        missing = client.post("/api/label/promote", json={"version": "v7"})
        assert missing.status_code == 404 and "no model version 'v7'" in missing.json()["detail"]
