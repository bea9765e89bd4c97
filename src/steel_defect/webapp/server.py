"""``steel-defect serve``: pick the model, build the app, run it under uvicorn.

    steel-defect serve                                   # the model `make demo` trained
    steel-defect serve --checkpoints seg.pth cls.pth --postprocessing post.yml --port 8000

Bound to 127.0.0.1 unless ``--host`` says otherwise (the Docker image passes 0.0.0.0); any
other address needs an access token or ``--no-auth`` (see :mod:`.security`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from steel_defect.config.layout import demo_summary

log = logging.getLogger(__name__)
DEMO_DIR = Path("work/demo")


class NoModelError(FileNotFoundError):
    """No checkpoints given and none left by ``make demo``."""


def demo_model(demo_dir: str | Path = DEMO_DIR) -> tuple[list[str], str | None]:
    """Checkpoints and post-processing YAML that ``make demo`` recorded in its summary.json."""
    summary_path = demo_summary(demo_dir)
    if not summary_path.is_file():
        raise NoModelError(
            f"no --postprocessing given and no trained demo model at {summary_path}: run `make demo` "
            "(about 6 minutes on a CPU), pass --postprocessing <work_dir>/postprocessing.yml (the tuned "
            "pipeline `steel-defect thresholds` wrote), or --untuned --checkpoints SEG.pth [CLS.pth ...]"
        )
    summary = json.loads(summary_path.read_text())
    checkpoints = [str(c) for c in summary["checkpoints"]]
    missing = [c for c in checkpoints if not Path(c).is_file()]
    if missing:
        raise NoModelError(f"{summary_path} names checkpoints that do not exist: {missing}; run `make demo`")
    post = summary.get("postprocessing")
    return checkpoints, post if post and Path(post).is_file() else None


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (unless ``MALLOC_ARENA_MAX`` is set); False off glibc.

    Each request thread would otherwise get its own arena, and memory freed in one is not
    reused by the others: under bench/soak.py's 4 clients the server's idle RSS grew from 1399
    to 1761 MB (+26%) between warm-up and the end of 5 minutes with glibc's default arenas, and
    went from 1478 to 1403 MB (-5%) with 2 (README, Benchmarks).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl, macOS, Windows
        return False


def _config(app, host: str, port: int, log_level: str, access_log: bool):
    """uvicorn's config; its access log (a line per request) at WARNING unless ``access_log``:
    the dashboard polls every 5 s, and its lines were 93 of a watcher's 115."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)  # configures the loggers
    if not access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return config


def serve(app, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    import uvicorn

    limit_malloc_arenas()  # before uvicorn starts the request threads
    log.info("open http://%s:%d/ in a browser (API docs at /docs)", host, port)
    uvicorn.Server(_config(app, host, port, "info", access_log)).run()


def serve_in_thread(
    app,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    port: int = 0,
    log_level="warning",
    access_log: bool = False,
):
    """Run ``app`` in a daemon thread, on ``port`` (0: a free one), once it listens (tests,
    benchmarks, notebooks, and ``watch``, whose loop keeps the main thread).

    Returns ``(server, url)``; ``server.should_exit = True`` stops it.
    """
    import uvicorn

    if not port:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(_config(app, host, port, log_level, access_log))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start (is the port taken?)")
        time.sleep(0.05)
    return server, f"http://{host}:{port}"
