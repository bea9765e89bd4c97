"""The dashboard's figures are the truth: rates over the time actually observed, a watcher that
falls behind flagged, and a process log free of the page's polling.

Each check runs on a real SQLite log in tmp_path, through the app's own test client or the real
``steel-defect watch`` in a subprocess; the page's rendering of them is checked in Chromium in
``tests/test_line_e2e.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient

from steel_defect.line.log import InspectionLog, bulk_fill
from steel_defect.webapp.dashboard import behind, create_dashboard_app
from tests.conftest import random_checkpoints
from tests.test_line import record

T0 = 1_800_000_000.0  # "now" for the rate tests
PER_MINUTE = 55.0  # the line's true rate in the user's report
RATE = PER_MINUTE / 60  # frames a second


@pytest.fixture
def inspection(tmp_path) -> InspectionLog:
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    yield log
    log.close()


def _watcher(log: InspectionLog, line: str, started_at: float, **fields) -> None:
    log.heartbeat(
        f"/lines/{line}",
        line=line,
        host="test",
        pid=1,
        model="unet:test",
        started_at=started_at,
        state=fields.pop("state", "running"),
        message=None,
        backlog=fields.pop("backlog", 0),
        judged=0,
        **fields,
    )


def _throughput(log: InspectionLog, **params) -> dict:
    answer = TestClient(create_dashboard_app(log)).get("/api/log/throughput", params={"end": T0, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_fresh_log_is_rated_from_its_first_frame_not_over_the_whole_window(inspection):
    # 37 frames at 55 a minute, the first 40 s ago (t = T0 - 40 + k * 60/55): no watcher row
    bulk_fill(inspection, 37, T0 - 40, RATE)
    got = _throughput(inspection)
    assert got["since"] == pytest.approx(T0 - 40) and got["seconds"] == pytest.approx(40)
    assert got["frames"] == 37
    assert got["per_minute"] == pytest.approx(37 * 60 / 40)  # 55.5, where /5 min read 7.4


def test_a_watcher_started_inside_the_window_is_rated_from_its_start(inspection):
    # the watcher started 72 s ago; 55 frames at 55 a minute from 60 s ago
    _watcher(inspection, "bench", started_at=T0 - 72)
    bulk_fill(inspection, 55, T0 - 60, RATE)
    got = _throughput(inspection, line="bench")
    assert got["since"] == pytest.approx(T0 - 72) and got["seconds"] == pytest.approx(72)  # 1.2 min
    assert got["frames"] == 55 and got["per_minute"] == pytest.approx(55 * 60 / 72)
    # its frames from an earlier run, before this start, are not part of this run's rate
    inspection.record([record("old.jpg", T0 - 100, line="bench")])
    assert _throughput(inspection, line="bench")["frames"] == 55


def test_a_window_observed_throughout_is_rated_over_all_of_it(inspection):
    # frames before the window (one a minute, 15 to 6 min ago), then 55 frames in the last minute
    bulk_fill(inspection, 10, T0 - 900, 1 / 60)
    bulk_fill(inspection, 55, T0 - 60, RATE)
    got = _throughput(inspection, window=300)
    assert got["since"] == pytest.approx(T0 - 300) and got["frames"] == 55
    assert got["per_minute"] == pytest.approx(55 / 5)
    # a watcher of another line neither bounds nor counts for this one
    _watcher(inspection, "other", started_at=T0 - 30)
    inspection.record([record(f"o{i}.jpg", T0 - 20 + i, line="other") for i in range(5)])
    assert _throughput(inspection, line="bench")["per_minute"] == pytest.approx(11.0)
    assert _throughput(inspection, line="other")["per_minute"] == pytest.approx(5 * 60 / 30)


def test_a_rate_over_a_few_seconds_is_not_given(inspection):
    _watcher(inspection, "bench", started_at=T0 - 4)
    bulk_fill(inspection, 2, T0 - 3, 1.0)
    got = _throughput(inspection)
    assert got["frames"] == 2 and got["seconds"] == pytest.approx(4)
    assert got["per_minute"] is None  # 2 frames in 4 s would read 30 a minute


def test_a_watcher_is_behind_past_two_seconds_of_lag_or_two_batches_of_backlog(inspection):
    assert behind({"state": "running", "backlog": 9, "lag_s": None})  # 9 > 2 x 4 (no lag recorded)
    assert not behind({"state": "running", "backlog": 8})
    assert behind({"state": "running", "backlog": 1, "lag_s": 4.3})
    assert not behind({"state": "running", "backlog": 3, "lag_s": 1.5})
    assert not behind({"state": "stopped", "backlog": 50, "lag_s": 30.0})  # shown as down instead
    assert behind({"state": "running", "backlog": 9}, batch_size=8) is False
    _watcher(inspection, "line-1", started_at=time.time(), backlog=9)
    _watcher(inspection, "line-2", started_at=time.time(), backlog=2)
    rows = TestClient(create_dashboard_app(inspection)).get("/api/log/status").json()["watchers"]
    assert {r["line"]: r["behind"] for r in rows} == {"line-1": True, "line-2": False}


# -- the process log ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _watch_output(tmp_path, checkpoint, *extra: str) -> str:
    """Run ``steel-defect watch`` with its page, poll the status as the page does, stop it; its
    whole output (uvicorn writes access lines to stdout, the rest goes to stderr)."""
    folder, port = tmp_path / "in", _free_port()
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "steel_defect.cli", "watch", str(folder), "--db"]
    command += [str(tmp_path / "inspection.sqlite"), "--checkpoints", str(checkpoint), "--untuned"]
    command += ["--port", str(port), *extra]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # until the page answers: the model loads first
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/log/status") as answer:
                    assert answer.status == 200
                break
            except urllib.error.URLError:
                assert process.poll() is None, process.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the page never answered"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output.decode()[-2000:]
    return output.decode()


def test_watch_logs_the_pages_requests_only_when_asked(tmp_path):
    checkpoint = random_checkpoints(tmp_path / "model", exported=True)["seg"]
    quiet = _watch_output(tmp_path / "quiet", checkpoint)
    assert "dashboard at http://127.0.0.1" in quiet  # its own INFO lines still come
    assert "GET /api/log/status" not in quiet
    loud = _watch_output(tmp_path / "loud", checkpoint, "--access-log")
    assert '"GET /api/log/status HTTP/1.1" 200' in loud
