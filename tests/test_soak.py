"""The soak benchmark's short form: 40 s of valid and hostile traffic from 4 clients against a
real `steel-defect serve` process (bench/soak.py; the README has a 5-minute run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_a_short_soak_meets_its_targets(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            *("--seconds", "40", "--clients", "4", "--timeout", "60", "--warmup", "20"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.is_file(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["server_alive"] and result["server_errors"] == 0 and result["dropped"] == 0
    assert result["problems"] == []  # every answer JSON, with the status documented for its kind
    assert result["rss_mb"]["end"] <= 1.10 * result["rss_mb"]["warm"], result["rss_timeline"]
    # each client sends every kind once before drawing at random, the staller at least once
    assert sum(result["statuses"]["frames"].values()) >= 4
    assert result["statuses"]["stalled_client"] == {"408": 1}
    assert {"bomb", "corrupt", "oversize_body", "oversize_declared", "33_files", "rethreshold"} <= set(
        result["statuses"]
    )
    assert done.returncode == 0, done.stdout[-3000:]
