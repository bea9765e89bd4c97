"""Kill and resume: SIGKILL at points the test picks (steel_defect/pause.py), never after a sleep.

Training is killed mid-epoch, then its resume is killed halfway through writing ``last.pth``;
the second ``--resume`` must finish with the history and weights of an uninterrupted run, bit
for bit (``--deterministic``, same thread count). ``predict`` killed before or while writing its
CSV leaves no partial file under the final name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steel_defect.data.folds import split_folds
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.training.checkpoint import CheckpointError, load_checkpoint
from tests.conftest import REPO, SMALL_OPTS, random_checkpoints, tiny_cfg
from tests.test_determinism import AUGMENTED, same_state


def run_until_paused(cmd: list[str], point: str, marker: Path, timeout: float = 300) -> None:
    """Start ``cmd`` with the pause point ``point``; SIGKILL its process group once it is there."""
    env = {**os.environ, "STEEL_DEFECT_TEST_PAUSE_AT": point, "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker)}
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {point}: {process.communicate()[1].decode()[-3000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # as a pre-emption or the OOM killer would
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _train_cmd(root: Path, work: str, *extra: str) -> list[str]:
    opts = [
        f"paths.data_dir={root / 'data'}",
        f"paths.folds_csv={root / 'folds.csv'}",
        f"paths.work_dir={root / work}",
        *SMALL_OPTS,
        AUGMENTED,
        "train.epochs=3",
        "train.max_train_batches=2",
        "train.save_top_k=2",
    ]
    config = str(REPO / "configs/demo/synth_seg.yml")
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        config,
        "--deterministic",
        *extra,
        "--opts",
        *opts,
    ]


def _final(run: Path) -> dict:
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    state["history"] = [
        {k: v for k, v in h.items() if k not in ("seconds", "finished")} for h in state["history"]
    ]
    return state


@pytest.mark.slow  # four training subprocesses: minutes; `make test` (and CI) runs it after the default suite
def test_training_killed_mid_epoch_and_mid_checkpoint_resumes_to_the_uninterrupted_result(tiny_synth):
    root = tiny_synth
    split_folds(tiny_cfg(root))
    marker = root / "paused"
    reference = subprocess.run(_train_cmd(root, "whole"), capture_output=True, text=True, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = root / "killed" / "fold0"

    run_until_paused(_train_cmd(root, "killed"), "batch:train@3", marker)  # epoch 2, first batch
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 1
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1]

    # the resumed run dies halfway through writing epoch 2's last.pth
    run_until_paused([*_train_cmd(root, "killed"), "--resume"], "write:last.pth", marker)
    (partial,) = (run / "checkpoints").glob(".last.pth.*.tmp")
    assert 0 < partial.stat().st_size < (run / "checkpoints" / "last.pth").stat().st_size
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(partial)  # what a non-atomic write would have left under the real name
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 1  # untouched
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1]

    done = subprocess.run(
        [*_train_cmd(root, "killed"), "--resume"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after epoch 1 of 3" in done.stderr and "interrupted checkpoint write" in done.stderr
    assert not list((run / "checkpoints").glob(".*"))
    whole, resumed = _final(root / "whole" / "fold0"), _final(run)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for key in ("model_state", "optimizer_state", "scheduler_state", "history", "top"):
        assert same_state(resumed[key], whole[key]), key
    best = [load_checkpoint(r / "checkpoints" / "best.pth") for r in (root / "whole" / "fold0", run)]
    assert best[0]["epoch"] == best[1]["epoch"] and same_state(best[0]["model_state"], best[1]["model_state"])


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    write_synthetic_dataset(root / "data", n=8, seed=2, test_fraction=0.5)
    return root / "data" / "test_images"


@pytest.mark.slow  # three predict subprocesses
def test_predict_killed_leaves_no_partial_csv(frames, tmp_path):
    checkpoints = random_checkpoints(tmp_path)
    out = tmp_path / "submission.csv"
    cmd = [
        sys.executable,
        str(REPO / "inference.py"),
        "--untuned",
        "--checkpoints",
        str(checkpoints["seg"]),
        "--images",
        str(frames),
        "--out",
        str(out),
        "--opts",
        "inference.batch_size=2",
        "inference.tta=[]",
    ]
    marker = tmp_path / "paused"
    run_until_paused(cmd, "batch:predict", marker)  # one of two batches done
    assert list(tmp_path.glob("*submission*")) == []

    out.write_text("the previous run's CSV\n")
    run_until_paused(cmd, "write:submission.csv", marker)  # the CSV half written
    assert out.read_text() == "the previous run's CSV\n"
    (partial,) = tmp_path.glob(".submission.csv.*.tmp")
    assert partial.stat().st_size > 0

    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0] == "ImageId_ClassId,EncodedPixels" and len(rows) == 1 + 4 * len(list(frames.iterdir()))
    assert {row.split(",")[0].rsplit("_", 1)[0] for row in rows[1:]} == {p.name for p in frames.iterdir()}
