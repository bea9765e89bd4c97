"""The home of injected faults for the labels database and its page's routes.

One test per fault, named after it: a database path that a URI would cut short, two processes
creating one database at once, a database locked or corrupt under the web app, a frame deleted
while the server runs, ImageIds that point outside the images folder, a model given twice to the
queue, an export killed between its renames, and an internal error passed off as a user's. Real
SQLite files in a temporary folder, real second connections and processes, the app's own test
client; races are played out in the order the test picks with the pause points of
``steel_defect/pause.py``, never with a sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steel_defect.labels.store import LabelStore
from tests.conftest import REPO


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
