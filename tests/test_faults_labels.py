"""The home of injected faults for the labels database and its page's routes.

One test per fault, named after it: a database path that a URI would cut short, two processes
creating one database at once, a database locked or corrupt under the web app, a frame deleted
while the server runs, ImageIds that point outside the images folder, a model given twice to a
tuned pipeline, an export killed between its renames, and an internal error passed off as a
user's. Real
SQLite files in a temporary folder, real second connections and processes, the app's own test
client; races are played out in the order the test picks with the pause points of
``steel_defect/pause.py``, never with a sleep.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from steel_defect.cli import main
from steel_defect.data.annotations import AnnotationError, read_annotations, resolve_image_ids
from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.store import LabelStore
from steel_defect.labels.transfer import ExportError, export_folder, import_csv
from steel_defect.webapp.labelling import LabelService, create_label_app
from tests.conftest import REPO, random_checkpoints
from tests.test_labels import EMPTY, _frames


def start_paused(cmd: list[str], point: str, marker: Path, timeout: float = 120) -> subprocess.Popen:
    """Start ``cmd`` with the pause point ``point`` and return once it waits there; removing
    ``marker`` lets it go on."""
    env = {**os.environ, "STEEL_DEFECT_TEST_PAUSE_AT": point, "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker)}
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {point}: {process.communicate()[1][-3000:]}")
        time.sleep(0.02)
    return process


def kill_at(cmd: list[str], point: str, marker: Path) -> None:
    """Run ``cmd`` until it waits at ``point``, then SIGKILL it there."""
    process = start_paused(cmd, point, marker)
    process.kill()
    process.communicate()
    assert process.returncode == -9


# ---------- the database file ----------


@pytest.mark.parametrize("name", ["lab#1.sqlite", "lab?x=1.sqlite"])
def test_a_database_path_with_a_hash_or_question_mark_opens_that_file_read_only(tmp_path, name):
    path = tmp_path / name
    with LabelStore.open(path) as store:
        store.add_frames([("a.jpg", 1600, 256)])
    with LabelStore.open(path, readonly=True) as store:
        assert store.path == path and store.stats().frames == 1
    # a URI cut at the '#' or '?' would have opened (and created) tmp_path/"lab"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(name)) == []


def test_two_processes_creating_one_database_at_once_both_open_it(tmp_path):
    path = tmp_path / "labels.sqlite"
    opener = (
        "import sys; from steel_defect.labels.store import LabelStore\n"
        "with LabelStore.open(sys.argv[1]) as store:\n"
        "    store.add_frames([('b.jpg', 1600, 256)]); print(store.stats().frames)\n"
    )
    marker = tmp_path / "paused"
    # the first has read schema version 0 of the new file and waits before migrating it ...
    first = start_paused([sys.executable, "-c", opener, str(path)], "open:migrate", marker)
    with LabelStore.open(path) as store:  # ... while the second creates the tables
        store.add_frames([("a.jpg", 1600, 256)])
    marker.unlink()  # the first goes on: it must see the tables, not create them again
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert out.strip() == "2"
    with LabelStore.open(path, readonly=True) as store:
        assert store.names() == ["a.jpg", "b.jpg"]


# ---------- the web app on a database it cannot use ----------


@pytest.fixture
def served(tmp_path):
    """A labelling app on two frames, its database waiting at most 0.1 s for a lock."""
    names = _frames(tmp_path / "frames", 2)
    path = tmp_path / "labels.sqlite"
    store = LabelStore.open(path, busy_timeout_ms=100)
    client = TestClient(create_label_app(LabelService(store, FrameFolder(tmp_path / "frames"))))
    yield client, names, store
    store.close()


def test_a_locked_database_answers_503_json_naming_it(served):
    client, names, store = served
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        answer = client.put(f"/api/label/frames/{names[0]}", json={"version": 0, "masks": EMPTY})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
    assert f"{store.path} is locked by another process" in answer.json()["detail"]
    assert int(answer.headers["retry-after"]) >= 1
    again = client.put(f"/api/label/frames/{names[0]}", json={"version": 0, "masks": EMPTY})
    assert again.status_code == 200 and again.json()["version"] == 1  # nothing was half-saved


def test_label_refuses_a_busy_timeout_that_is_not_a_positive_number_of_seconds(tmp_path, capsys):
    _frames(tmp_path / "frames", 1)
    db = tmp_path / "labels.sqlite"
    command = ["label", "--images", str(tmp_path / "frames"), "--db", str(db), "--busy-timeout", "0"]
    assert main(command) == 2
    assert "--busy-timeout must be a positive number of seconds, got 0" in capsys.readouterr().err
    assert not db.exists()  # refused before the database was created


def test_a_database_corrupted_under_the_server_answers_500_json_naming_it(served):
    client, names, store = served
    other = sqlite3.connect(store.path)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, none in the log
    other.close()
    size = store.path.stat().st_size
    store.path.write_bytes(b"garbage!" * (size // 8))  # a disk fault overwrites it
    for answer in (
        client.get(f"/api/label/frames/{names[0]}"),
        client.put(f"/api/label/frames/{names[0]}", json={"version": 0, "masks": EMPTY}),
    ):
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert f"{store.path} is corrupt" in answer.json()["detail"]


# ---------- a frame deleted while the server or the queue runs ----------


def test_a_frame_deleted_while_the_server_runs_answers_404_json_saying_so(served):
    client, names, store = served
    gone = names[1]
    (Path(store.path).parent / "frames" / gone).unlink()
    for route in ("", "/image", "/history"):
        answer = client.get(f"/api/label/frames/{gone}{route}")
        assert answer.status_code == 404, (route, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["detail"].startswith(f"{gone} is no longer in the labelling folder"), route
    assert client.get(f"/api/label/frames/{names[0]}/image").status_code == 200  # the others still open
    # the history of a frame the folder never listed (another session's) is not answered either
    store.add_frames([("elsewhere.jpg", 1600, 256)])
    store.save_masks("elsewhere.jpg", EMPTY, version=0, status="confirmed")
    assert client.get("/api/label/frames/elsewhere.jpg/history").status_code == 404


def test_labels_queue_skips_a_frame_deleted_while_it_scores_and_reports_it(tmp_path):
    from steel_defect.inference.pipeline import build_predictor
    from steel_defect.labels.queue import score_queue

    predictor = build_predictor(None, [random_checkpoints(tmp_path, exported=True)["seg"]], untuned=True)
    names = _frames(tmp_path / "frames", 3, seed=5)
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        store.add_frames([(n, 1600, 256) for n in names])
        folder = FrameFolder(tmp_path / "frames")  # listed with all three ...
        (tmp_path / "frames" / names[1]).unlink()  # ... then one is deleted
        summary = score_queue(store, folder, predictor, batch_size=2)
        assert summary["missing"] == [names[1]] and summary["scored"] == 2
        assert store.queue_entry(names[1]) is None
        assert sorted(store.queue_entry(n)["rank"] for n in (names[0], names[2])) == [0, 1]


# ---------- ImageIds that point outside the images folder ----------

TRAVERSING = ["../secret.jpg", "/etc/secret.jpg", "sub/a.jpg", "..\\secret.jpg", "C:secret.jpg", ".."]


@pytest.mark.parametrize("image_id", TRAVERSING)
def test_an_image_id_with_a_path_is_refused_at_import_naming_the_file_and_line(tmp_path, image_id):
    csv_path = tmp_path / "train.csv"
    rows = [f"ok.jpg_{c},{'1 5' if c == 1 else ''}" for c in range(1, 5)]
    rows += [f"{image_id}_{c},{'1 5' if c == 3 else ''}" for c in range(1, 5)]
    csv_path.write_text("ImageId_ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        with pytest.raises(AnnotationError) as err:
            import_csv(store, csv_path)  # no --images: nothing else checks the names
        assert str(err.value).startswith(f"{csv_path}, line 6: ImageId {image_id!r} is not a plain file")
        assert store.names() == []  # nothing imported, not even ok.jpg


def test_export_refuses_a_stored_name_with_a_path_and_writes_nothing(tmp_path):
    images = tmp_path / "data" / "images"
    names = _frames(images, 1)
    secret = tmp_path / "data" / "secret.jpg"  # beside the images folder, not in it
    secret.write_bytes((images / names[0]).read_bytes())
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        # what an older version's import stored: names straight from the CSV
        entries = [(n, 1600, 256, ["", "", "1 5", ""]) for n in (names[0], "../secret.jpg")]
        store.import_labels(entries, source="import:old.csv")
        with pytest.raises(ExportError, match=r"not a plain file name \(first: '../secret.jpg'\)"):
            export_folder(store, tmp_path / "out", images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "labels.sqlite"]  # no out, no staging


def test_the_labelling_routes_answer_404_to_a_name_with_a_path(served):
    client, names, store = served
    # the database lists them (an older import), the folder's parent holds the file: neither counts
    store.add_frames([("../frames/" + names[0], 1600, 256), ("/etc/passwd", 1600, 256)])
    for name in ("..%2Fframes%2F" + names[0], "%2Fetc%2Fpasswd", "..%5Cframes%5C" + names[0]):
        for route in ("", "/image", "/history"):
            assert client.get(f"/api/label/frames/{name}{route}").status_code == 404, (name, route)
        save = client.put(f"/api/label/frames/{name}", json={"version": 0, "masks": EMPTY})
        restore = client.post(f"/api/label/frames/{name}/restore", json={"id": 1, "version": 0})
        assert save.status_code == restore.status_code == 404, name
    assert store.frame("../frames/" + names[0]).version == 0


# ---------- a model given twice to a tuned pipeline ----------


def test_a_model_given_twice_as_export_and_int8_export_is_refused_naming_it(tmp_path):
    import shutil

    from steel_defect.inference.pipeline import PipelineError, build_predictor, save_spec
    from steel_defect.inference.postprocess import PostProcessing

    checkpoints = random_checkpoints(tmp_path, exported=True)
    single = build_predictor(None, [checkpoints["seg"]], untuned=True)
    spec = save_spec(
        tmp_path / "postprocessing.yml",
        PostProcessing(),
        single.segmenters,
        tta=[],
        gate=single.gate,
        search_downsample=1,
        folds_csv=tmp_path / "folds.csv",
        folds_sha256="0" * 64,
    )
    # as `--checkpoints export/*.onnx` finds X.onnx and X.int8.onnx: one weights digest, two files
    twin = tmp_path / "export" / "seg.int8.pth"
    twin.parent.mkdir()
    shutil.copy(checkpoints["seg"], twin)
    given_twice = r"one model \(weights \w+\) is given 2 times: .*/seg.pth, .*/seg.int8.pth; .* once"
    with pytest.raises(PipelineError, match=given_twice):
        build_predictor(spec, [checkpoints["seg"], twin])
    assert len(build_predictor(spec, [twin]).segmenters) == 1  # either file alone is that model


# ---------- an export killed while it swaps the new folder in ----------


def _exported(out: Path) -> list[str]:
    """The frames of the whole export at ``out``: its CSV and its images must agree."""
    assert (out / ".steel-defect-export.json").is_file()
    ids = resolve_image_ids(read_annotations(out / "train.csv"), out / "train_images")
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ids
    return ids


def _beside(out: Path) -> list[str]:
    """What the folder holding ``out`` holds, the database's own files left out."""
    return sorted(p.name for p in out.parent.iterdir() if not p.name.startswith("labels.sqlite"))


def test_an_export_killed_between_its_renames_leaves_or_restores_a_whole_export(tmp_path):
    images, db, out, marker = (tmp_path / name for name in ("frames", "labels.sqlite", "out", "p"))
    names = _frames(images, 3)
    with LabelStore.open(db) as store:
        store.add_frames([(n, 1600, 256) for n in names])
        store.save_masks(names[0], ["", "", "1 5", ""], version=0, status="confirmed")
        export_folder(store, out, images)  # the previous export: one frame
        store.save_masks(names[1], EMPTY, version=0, status="confirmed")  # the next one has two
    assert _exported(out) == names[:1]

    # on Linux the swap is one exchange: killed right after it, out is the new export already
    cli = [sys.executable, "-m", "steel_defect.cli", "labels", "export", "--db", str(db)]
    kill_at([*cli, "--out", str(out), "--images", str(images)], "export:swap", marker)
    assert _exported(out) == names[:2]
    assert [p.name for p in tmp_path.glob(".out.*.partial")] != []  # the old export, left aside

    # the fallback's two renames, killed between them: no out for a moment ...
    with LabelStore.open(db) as store:
        store.save_masks(names[2], EMPTY, version=0, status="confirmed")
    two_renames = (
        "import sys; from steel_defect.labels.store import LabelStore\n"
        "from steel_defect.labels.transfer import export_folder\n"
        "with LabelStore.open(sys.argv[1], readonly=True) as store:\n"
        "    export_folder(store, sys.argv[2], sys.argv[3], exchange=False)\n"
    )
    kill_at([sys.executable, "-c", two_renames, str(db), str(out), str(images)], "export:swap", marker)
    assert not out.exists() and _exported(tmp_path / ".out.old") == names[:2]
    # ... and the next export puts it back first, even one that is then refused
    with LabelStore.open(db, readonly=True) as store, pytest.raises(ExportError, match="does not exist"):
        export_folder(store, out, tmp_path / "no-such-folder")
    assert _exported(out) == names[:2]
    assert _beside(out) == ["frames", "out", "p"]
    done = subprocess.run(
        [*cli, "--out", str(out), "--images", str(images)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _exported(out) == names
    assert _beside(out) == ["frames", "out", "p"]


# ---------- an internal ValueError passed off as the user's ----------


def test_an_internal_value_error_keeps_its_traceback_and_user_errors_stay_one_line(tmp_path):
    from steel_defect.cli import is_user_error
    from steel_defect.config.errors import ConfigError
    from steel_defect.data.annotations import CSVReadError
    from steel_defect.data.images import ImageReadError
    from steel_defect.data.rle import RLEError
    from steel_defect.inference.onnx_backend import ExportError as OnnxExportError
    from steel_defect.inference.pipeline import PipelineError
    from steel_defect.labels.store import ImportConflict, InvalidMasks, LabelStoreError
    from steel_defect.models.checkpoint import CheckpointError

    mine = [ConfigError("x"), AnnotationError("x"), CSVReadError(2, "x"), RLEError("x"), ImageReadError("x")]
    mine += [PipelineError("x"), ExportError("x"), OnnxExportError("x"), CheckpointError("x")]
    mine += [InvalidMasks("x"), ImportConflict(["a.jpg"]), LabelStoreError("x")]
    assert [type(e).__name__ for e in mine if not is_user_error(e)] == []
    assert not any(is_user_error(e) for e in (ValueError("x"), KeyError("x"), TypeError("x")))

    db = tmp_path / "labels.sqlite"
    LabelStore.open(db).close()
    bad_rle = tmp_path / "train.csv"
    bad_rle.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"a.jpg_{c},5 x\n" for c in range(1, 5)))
    cli = [sys.executable, "-m", "steel_defect.cli", "labels"]
    user = subprocess.run([*cli, "import", "--db", str(db), str(bad_rle)], capture_output=True, text=True)
    assert user.returncode == 2 and "Traceback" not in user.stderr
    assert user.stderr.startswith(f"steel-defect labels: error: {bad_rle}, line 2 (a.jpg class 1): bad RLE")
    # a slip in the command's own code (injected into `labels stats`' printing): a bug, not the user's
    slip = (
        "import sys, steel_defect.cli as cli, steel_defect.cli.labels as labels\n"
        "def slip(stats): raise ValueError('an internal slip')\n"
        "labels.print_stats = slip\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    bug = subprocess.run(
        [sys.executable, "-c", slip, "labels", "stats", "--db", str(db)], capture_output=True, text=True
    )
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "ValueError: an internal slip" in bug.stderr


def test_an_internal_value_error_in_a_request_answers_500_not_422(tmp_path):
    from steel_defect.inference.predictor import Predictor
    from steel_defect.webapp.app import create_app
    from steel_defect.webapp.examples import example_images
    from steel_defect.webapp.service import InferenceService

    service = InferenceService(Predictor([random_checkpoints(tmp_path, exported=True)["seg"]]), keep=4)
    client = TestClient(create_app(service))
    frame = next(iter(example_images().values()))
    result = client.post("/api/predict", files=[("files", ("a.jpg", frame, "image/jpeg"))]).json()
    url = f"/api/results/{result['images'][0]['id']}/postprocess"
    user = client.post(url, json={"classes": {"9": {"threshold": 0.3}}})
    assert user.status_code == 422 and "unknown class 9" in user.json()["detail"]

    def slip(overrides):
        raise ValueError("an internal slip")

    service.post_with = slip  # a bug in the service, injected
    with pytest.raises(ValueError, match="an internal slip"):  # raised on to the server, which logs it
        client.post(url, json={"classes": {"3": {"threshold": 0.3}}})
    answer = TestClient(create_app(service), raise_server_exceptions=False).post(
        url, json={"classes": {"3": {"threshold": 0.3}}}
    )
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json()["detail"].startswith("internal error (ValueError)")
