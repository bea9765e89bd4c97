"""Running a watcher as a service: until SIGTERM or Ctrl+C, with its page beside it.

    stats = run_until_stopped(watcher, page=start_page)   # start_page() -> a function that stops it

``steel-defect watch`` builds the :class:`~steel_defect.line.watch.Watcher` and the dashboard
from its options and hands both here; tests call this directly. SIGTERM (systemd, ``docker
stop``) and SIGINT end the current batch, then stop: everything judged is committed, and what is
not is judged at the next start. The page is passed in as a callable because it belongs to the
web layer above this package.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from steel_defect.line.watch import Watcher, WatchStats

log = logging.getLogger(__name__)

StopPage = Callable[[], None]


def run_until_stopped(
    watcher: Watcher,
    *,
    idle_exit_s: float | None = None,
    page: Callable[[], StopPage] | None = None,
    stop: threading.Event | None = None,
) -> WatchStats:
    """Run ``watcher`` until a signal, ``stop``, or ``idle_exit_s`` without work; ``page`` starts
    the dashboard (in a thread) and returns what stops it. Signal handlers are installed only on
    the main thread, where Python allows them."""
    stop = stop or threading.Event()

    def finish(signum, _frame):
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()
        watcher.wake.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, finish)
    stop_page = page() if page is not None else None
    try:
        return watcher.run(stop, idle_exit_s=idle_exit_s)
    finally:
        if stop_page is not None:
            stop_page()
