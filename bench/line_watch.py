"""Line mode: watch's throughput against the bare predictor, arrival-to-row latency, a soak, and
searches of a million-row log.

Run: ``.venv/bin/python bench/line_watch.py [--frames 48] [--soak-minutes 10] [--rows 1000000]``
(``--checkpoints`` as in bench/inference.py: the demo's when present, else untrained full-size
models; ``--skip throughput latency soak search`` leaves parts out).

1. **Throughput.** The same ``--frames`` synthetic frames, already complete in a folder, judged by
   ``predict_rows`` (decode, predict, RLE: the bare predictor's job, what ``predict`` runs) and by
   a :class:`Watcher` (listing, identity checks, the same work, a log transaction per batch),
   alternately, twice each; the ratio of the faster runs' frames per second. Goal: >= 0.9.
2. **Latency.** A writer renames frames into the watched folder at half the measured rate;
   each frame's arrival (its rename) to its row's ``judged_at``: median and 95th percentile.
3. **Soak** (``--soak-minutes``, 0 to skip): ``steel-defect watch`` as its own process, frames
   arriving at 70% of the measured rate for the whole time; its RSS after a minute of warm-up
   and at the end (goal: within +-10%), frames lost or doubled (goal: none), the log's size per
   1,000 frames.
4. **Search.** A log of ``--rows`` synthetic frame rows (4 detections each), written in bulk:
   the median of 5 runs of the page's searches and aggregates. Goal: <= 200 ms each.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from benchdata import arrive, bench_checkpoints, print_rows, synthetic_images

from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.run import predict_rows
from steel_defect.line.log import InspectionLog, Search, bulk_fill
from steel_defect.line.watch import Watcher


def throughput(predictor, work: Path, frames: int, batch: int) -> tuple[float, float]:
    """(bare frames/s, watch frames/s), the faster of two alternating runs each."""
    source = work / "frames"
    names = [p.name for p in synthetic_images(source, frames, seed=1)]
    predict_rows(predictor, source, names[:batch], batch_size=batch, progress=False)  # warm-up
    bare, watched = [], []
    for attempt in range(2):
        start = time.perf_counter()
        predict_rows(predictor, source, names, batch_size=batch, progress=False)
        bare.append(frames / (time.perf_counter() - start))
        log = InspectionLog.open(work / f"throughput{attempt}.sqlite")
        watcher = Watcher(source, log, predictor, settle_s=0.0, batch_size=batch, events=False)
        start = time.perf_counter()
        stats = watcher.run(idle_exit_s=0.0)
        watched.append(stats.judged / (time.perf_counter() - start))
        assert stats.judged == frames, stats
        log.close()
    return max(bare), max(watched)


def latency(predictor, work: Path, rate_hz: float, frames: int, batch: int) -> list[float]:
    """Arrival-to-row seconds of ``frames`` frames arriving at ``rate_hz``."""
    folder = work / "latency"
    folder.mkdir()
    names = sorted(p.name for p in (work / "frames").iterdir())
    log = InspectionLog.open(work / "latency.sqlite")
    watcher = Watcher(folder, log, predictor, settle_s=1.0, poll_s=0.5, batch_size=batch, events=True)
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    loop.start()
    while watcher.state != "running":
        time.sleep(0.01)
    arrivals: dict[str, float] = {}
    arrive(folder, work / "frames", names[:frames], rate_hz, arrivals)
    deadline = time.monotonic() + 120
    while log.count() < frames and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    watcher.wake.set()
    loop.join(timeout=30)
    rows = {r["name"]: r["judged_at"] for r in log.iter_search(Search())}
    return [rows[name] - at for name, at in arrivals.items() if name in rows]


def soak(checkpoints: list[str], work: Path, rate_hz: float, minutes: float, batch: int) -> dict:
    folder, db = work / "soak", work / "soak.sqlite"
    folder.mkdir()
    command = [sys.executable, "-m", "steel_defect.cli", "watch", str(folder), "--db", str(db), "--no-page"]
    command += [
        "--checkpoints",
        *checkpoints,
        "--untuned",
        "--batch-size",
        str(batch),
        "--archive",
        str(work / "soak-archive"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(15)  # the model loads
    stop, arrivals = threading.Event(), {}
    names = sorted(p.name for p in (work / "frames").iterdir())
    writer = threading.Thread(target=arrive, args=(folder, work / "frames", names, rate_hz, arrivals, stop))
    writer.start()
    started = time.monotonic()
    samples = []
    while time.monotonic() - started < minutes * 60:
        time.sleep(5)
        samples.append((time.monotonic() - started, psutil.Process(process.pid).memory_info().rss / 2**20))
    stop.set()
    writer.join()
    time.sleep(10)  # the backlog drains
    process.terminate()
    process.wait(timeout=60)
    with sqlite3.connect(db) as connection:
        counts = dict(connection.execute("SELECT name, count(*) FROM frames GROUP BY name").fetchall())
    warm = [rss for t, rss in samples if t >= 60] or [samples[-1][1]]
    size = sum(p.stat().st_size for p in work.glob("soak.sqlite*"))
    return {
        "frames": len(arrivals),
        "rows": sum(counts.values()),
        "lost": len(set(arrivals) - set(counts)),
        "doubled": sum(1 for n in counts.values() if n > 1),
        "rss_warm_mb": warm[0],
        "rss_end_mb": warm[-1],
        "rss_max_mb": max(warm),
        "db_kb_per_1000": size / 1024 / max(1, len(counts)) * 1000,
        "rss_by_minute": [round(rss) for t, rss in samples if int(t) % 60 < 5],
    }


def search(work: Path, rows: int) -> list[tuple[str, float]]:
    log = InspectionLog.open(work / "search.sqlite")
    start = 1_800_000_000.0
    begun = time.perf_counter()
    bulk_fill(log, rows, start, rate_hz=10.0)
    filled = time.perf_counter() - begun
    end = start + rows / 10.0
    middle = start + rows / 20.0
    queries = {
        "class 4, area >= 500, newest 50": lambda: log.search(Search(class_ids=[4], min_area=500, limit=50)),
        "class 2, p >= 0.9, one hour mid-log": lambda: log.search(
            Search(class_ids=[2], min_probability=0.9, start=middle, end=middle + 3600, limit=100)
        ),
        "any frame, one line, newest 50": lambda: log.search(Search(line="bench", limit=50)),
        "class 2, area >= 39,000 (rare), 50": lambda: log.search(
            Search(class_ids=[2], min_area=39_000, limit=50)
        ),
        "rates, last 24 h by 15 min": lambda: log.rates(end - 86400, end, bucket_s=900),
        "rates, last hour by minute": lambda: log.rates(end - 3600, end, bucket_s=60),
        "aggregates, last hour": lambda: log.aggregates(end - 3600, end),
        "aggregates, last 24 h": lambda: log.aggregates(end - 86400, end),
    }
    out = [(f"bulk fill of {rows:,} rows (s)", filled)]
    for name, query in queries.items():
        times = []
        for _ in range(5):
            begin = time.perf_counter()
            query()
            times.append(1000 * (time.perf_counter() - begin))
        out.append((f"{name} (ms)", statistics.median(times)))
    size = sum(p.stat().st_size for p in work.glob("search.sqlite*"))
    out.append(("log size per 1,000 frames (kB)", size / 1024 / rows * 1000))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--checkpoints", nargs="+")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "latency", "soak", "search"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoints = bench_checkpoints(work, args.checkpoints)
        predictor = build_predictor(None, checkpoints, untuned=True)
        rows = [("model", " + ".join(Path(c).parent.parent.parent.name or Path(c).name for c in checkpoints))]
        bare = watched = None
        if "throughput" not in args.skip or {"latency", "soak"} - set(args.skip):
            bare, watched = throughput(predictor, work, args.frames, args.batch)
            rows += [
                ("bare predictor (frames/s)", f"{bare:.2f}"),
                ("watch (frames/s)", f"{watched:.2f}"),
                ("watch / bare", f"{watched / bare:.3f}"),
            ]
        if "latency" not in args.skip:
            delays = latency(predictor, work, watched / 2, min(args.frames, 40), args.batch)
            rows += [
                (f"latency at {watched / 2:.2f} frames/s, median (ms)", f"{1000 * np.median(delays):.0f}"),
                ("latency, 95th percentile (ms)", f"{1000 * np.percentile(delays, 95):.0f}"),
                ("latency, frames measured", str(len(delays))),
            ]
        print_rows(rows)
        if "soak" not in args.skip and args.soak_minutes > 0:
            result = soak(checkpoints, work, 0.7 * watched, args.soak_minutes, args.batch)
            print_rows(
                [
                    (
                        f"soak: {args.soak_minutes:g} min at {0.7 * watched:.2f} frames/s, frames",
                        str(result["frames"]),
                    ),
                    ("soak: rows, lost, doubled", f"{result['rows']}, {result['lost']}, {result['doubled']}"),
                    ("soak: RSS after warm-up (MB)", f"{result['rss_warm_mb']:.0f}"),
                    ("soak: RSS at the end (MB)", f"{result['rss_end_mb']:.0f}"),
                    ("soak: RSS end / warm-up", f"{result['rss_end_mb'] / result['rss_warm_mb']:.3f}"),
                    ("soak: log per 1,000 frames (kB)", f"{result['db_kb_per_1000']:.0f}"),
                    ("soak: RSS each minute (MB)", " ".join(map(str, result["rss_by_minute"]))),
                ]
            )
        if "search" not in args.skip:
            print_rows([(name, f"{value:.1f}") for name, value in search(work, args.rows)])


if __name__ == "__main__":
    main()
