"""Test-only pause points: stop a process at a named step so a test can SIGKILL it right there.

``STEEL_DEFECT_TEST_PAUSE_AT=<point>[@<n>]`` makes the n-th arrival (default the first) at
``<point>`` write ``STEEL_DEFECT_TEST_PAUSE_FILE`` (when set) and sleep until killed, or until the
test removes that file (then it goes on: a race played out in the order the test picks). Unset,
a pause point costs one environment lookup. Points:

    batch:train        after a training batch's forward pass (training/runner.py)
    batch:predict      after a batch of images is predicted, before the CSV (inference/run.py)
    write:<file name>  halfway through an atomic write of that file, e.g. write:last.pth: the
                       temporary file holds the first chunk, the final name is untouched (atomic.py)
    open:migrate       a labels database's schema version read, its migration not yet begun
                       (labels/store/)
    batch:queue        after a batch of the active-learning queue is scored, its progress
                       reported (labels/queue.py): the page shows a build in progress
    export:swap        a labels export swapping its new folder in, between the exchange and
                       the old folder's removal, or between the fallback's two renames
                       (labels/transfer.py)

The kill-and-resume tests (tests/test_faults.py) use them; nothing else should.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV, FILE_ENV = "STEEL_DEFECT_TEST_PAUSE_AT", "STEEL_DEFECT_TEST_PAUSE_FILE"
_arrivals: dict[str, int] = {}


def wanted(point: str) -> bool:
    """Whether this arrival at ``point`` is the one to pause at (counts arrivals)."""
    target = os.environ.get(ENV)
    if not target:
        return False
    name, _, nth = target.partition("@")
    if name != point:
        return False
    _arrivals[point] = _arrivals.get(point, 0) + 1
    return _arrivals[point] == int(nth or 1)


def pause_point(point: str) -> None:
    """Pause here when :func:`wanted` says so: signal the test through the file, then sleep."""
    if wanted(point):
        hold()


def hold() -> None:
    marker = os.environ.get(FILE_ENV)
    if marker:
        Path(marker).write_text(f"{os.getpid()}\n")
        while Path(marker).exists():  # until the test's SIGKILL, or its go-ahead
            time.sleep(0.02)
        return
    while True:  # until the test's SIGKILL
        time.sleep(60)
