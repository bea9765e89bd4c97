"""The line's dashboard: the page and the REST API over the inspection log.

``steel-defect watch`` serves it at ``/``; ``steel-defect serve --log inspection.sqlite`` adds it
at ``/line`` beside the viewer. Both go through :func:`add_log_routes`, so the page and the API
are the same wherever they run. Every read goes through :class:`~steel_defect.line.log.InspectionLog`:
no SQL here.

Routes (OpenAPI docs at ``/docs``):

    GET /api/log/status                  lines, watchers (state, backlog, lag, behind, model version),
                                         open and recent alarms
    GET /api/log/frames                  search: classes, start, end, min_area, min_probability,
                                         line, source, status, limit, before (paging), newest first
    GET /api/log/frames/{id}             one frame's record, its four classes with RLE and boxes
    GET /api/log/frames/{id}/image       the frame's image, from where the log says it lies
    GET /api/log/frames/{id}/thumbnail   400x64 JPEG of the frame with its masks drawn over it
    GET /api/log/aggregates              per class over a time range: frames, rate, mean area
    GET /api/log/rates                   frames and frames per class, per time bucket
    GET /api/log/throughput              frames judged per minute over the part of a window observed
    GET /api/log/export                  a search as a submission CSV or a per-frame summary CSV

Times are seconds since the epoch (UTC). Errors are ``{"detail": ...}`` as in the rest of the
API: 404 unknown frame or image gone, 422 a bad parameter, 503 the log cannot be read.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from steel_defect.config.defaults import SCHEMA
from steel_defect.constants import CLASS_COLORS, CLASS_IDS, CLASS_NAMES
from steel_defect.data.images import ImageReadError, encode_jpeg, read_image
from steel_defect.data.rle import rle_to_mask
from steel_defect.line.follow import version_of
from steel_defect.line.log import STATUSES, InspectionLog, LogError, Search
from steel_defect.webapp.base import MEDIA_TYPES, STATIC, Limits, new_app

SUFFIX_TYPES = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
MAX_BUCKETS = 2000  # a rates query asking for more buckets than a chart can draw is refused
THUMBNAIL_SIZE = (400, 64)
THUMBNAILS_KEPT = 256  # about 10 kB each
RATE_WINDOW_S = 300.0  # the rate tile's window, unless the page asks for another
# Below this much observed time a rate is noise: one frame judged a second after the start reads 60 a
# minute. The page shows no number until then.
MIN_OBSERVED_S = 10.0
# A watcher is behind (the page's header turns amber) when its oldest complete frame has waited
# longer than LAG_LIMIT_S, or, where its row has no lag, when more than BACKLOG_BATCHES full
# batches wait: it judges full batches under a backlog, so two of them is more than one pass clears.
LAG_LIMIT_S = 2.0
BACKLOG_BATCHES = 2
DEFAULT_BATCH = SCHEMA["inference"]["batch_size"].default  # `watch --batch-size`'s default


# Query parameters shared by the search and the export (module level: FastAPI resolves them by name).
Classes = Annotated[str | None, Query(description="comma-separated class ids: frames with any present")]
Start = Annotated[float | None, Query(description="judged at or after (epoch seconds)")]
End = Annotated[float | None, Query(description="judged before (epoch seconds)")]
MinArea = Annotated[int, Query(ge=1, description="a class counts as present from this many pixels")]
MinProb = Annotated[float, Query(ge=0, le=1, description="and from this probability")]
Status = Annotated[str | None, Query(description=f"one of {', '.join(STATUSES)}")]


def search_filters(
    classes: Classes = None,
    start: Start = None,
    end: End = None,
    min_area: MinArea = 1,
    min_probability: MinProb = 0.0,
    line: str | None = None,
    source: str | None = None,
    status: Status = None,
) -> Search:
    """The search's filters from the query string (the search and the export share them)."""
    return Search(
        class_ids=_classes(classes),
        start=start,
        end=end,
        min_area=min_area,
        min_probability=min_probability,
        line=line or None,
        source=source or None,
        status=status or None,
    )


Filters = Annotated[Search, Depends(search_filters)]


def _classes(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = [0]
    bad = [c for c in ids if c not in CLASS_IDS]
    if bad:
        raise HTTPException(
            422, f"classes: expected a comma-separated list of {list(CLASS_IDS)}, got {text!r}"
        )
    return ids


def _read(call):
    """Run a read of the log; its failures become a 503 naming the log, bad values a 422."""
    try:
        return call()
    except LogError as err:
        raise HTTPException(503, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def behind(row: dict, batch_size: int = DEFAULT_BATCH) -> bool:
    """Whether a running watcher's status row says it is falling behind the line (see LAG_LIMIT_S)."""
    if row.get("state") != "running":
        return False  # a stopped or blind watcher is shown as down, not as slow
    lag = row.get("lag_s")
    return (lag is not None and lag > LAG_LIMIT_S) or row.get("backlog", 0) > BACKLOG_BATCHES * batch_size


def observed_rate(
    inspection_log: InspectionLog,
    end: float,
    window_s: float = RATE_WINDOW_S,
    line: str | None = None,
    started_at: float | None = None,
) -> dict:
    """Frames judged per minute over the last ``window_s`` seconds before ``end``, or over the part
    of the window that was observed: from the watcher's start (``started_at``, the earliest of the
    line's watchers) when that is later; without a watcher row, from the log's first frame when no
    frame came before the window. Dividing by the whole window read 3 a minute a minute after a start
    at 55 a minute. ``per_minute`` is None below MIN_OBSERVED_S seconds observed."""
    since = end - window_s
    if started_at is not None:
        since = max(since, started_at)
        frames, _ = inspection_log.judged_between(since, end, line)
    else:
        frames, first = inspection_log.judged_between(since, end, line)
        earlier = inspection_log.search(Search(line=line, status="judged", end=since, limit=1))
        if first is not None and not earlier:
            since = first
    seconds = max(0.0, end - since)
    return {
        "window": window_s,
        "end": end,
        "since": since,
        "seconds": seconds,
        "frames": frames,
        "per_minute": 60.0 * frames / seconds if seconds >= MIN_OBSERVED_S else None,
    }


def add_log_routes(app: FastAPI, inspection_log: InspectionLog, watcher=None) -> None:
    """The ``/api/log/*`` routes on ``app``; ``watcher``: the loop running in this process, whose
    backlog is live (otherwise its last heartbeat in the log is shown)."""

    @app.get("/api/log/status")
    def status() -> dict:
        """The lines, each watcher's state, backlog and lag (``behind``: past the page's limit), open
        alarms and the latest ones. A watcher following a labels database's promoted model
        (``watch --labels-db``) has its ``version``; the one in this process also says why a
        newer promotion is not judging (``model_problem``)."""

        def read():
            watchers = inspection_log.watchers()
            for row in watchers:
                batch = DEFAULT_BATCH
                if watcher is not None and row["source"] == watcher.source:
                    # One read: backlog() then lag_s() could straddle a pass of the loop.
                    published = watcher.published
                    row.update(
                        state=watcher.state,
                        message=watcher.message,
                        backlog=published["backlog"],
                        lag_s=published["lag_s"],
                        model=watcher.model,
                    )
                    follow = getattr(watcher, "follow", None)
                    row["model_problem"] = follow.problem if follow is not None else None
                    batch = watcher.batch_size
                row["behind"] = behind(row, batch)
                row["version"] = version_of(row["model"])  # watch --labels-db: the version judging
            return {
                "now": time.time(),
                "log": inspection_log.name,
                "classes": {c: {"name": CLASS_NAMES[c], "color": CLASS_COLORS[c]} for c in CLASS_IDS},
                "lines": inspection_log.lines(),
                "watchers": watchers,
                "open_alarms": inspection_log.open_alarms(),
                "recent_alarms": inspection_log.recent_alarms(),
            }

        return _read(read)

    @app.get("/api/log/frames")
    def frames(
        query: Filters,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: Annotated[int | None, Query(description="the last id of the previous page")] = None,
    ) -> dict:
        """Frames matching the search, newest first, each with its four classes."""
        query = replace(query, limit=limit, before_id=before)
        rows = _read(lambda: inspection_log.search(query))
        return {"frames": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    @app.get("/api/log/frames/{frame_id}")
    def frame(frame_id: int) -> dict:
        """One frame's record."""
        row = _read(lambda: inspection_log.frame(frame_id))
        if row is None:
            raise HTTPException(404, f"no frame {frame_id} in the inspection log")
        return row

    @app.get("/api/log/frames/{frame_id}/image")
    def image(frame_id: int):
        """The frame's image file, where the log says it lies (the source folder or the archive)."""
        row = _read(lambda: inspection_log.frame(frame_id))
        if row is None:
            raise HTTPException(404, f"no frame {frame_id} in the inspection log")
        path = Path(row["path"])
        kind = SUFFIX_TYPES.get(path.suffix.lower())
        if kind is None or not path.is_file():
            raise HTTPException(404, f"frame {frame_id}: its image is no longer at {path}")
        return FileResponse(path, media_type=MEDIA_TYPES[kind])

    @lru_cache(maxsize=THUMBNAILS_KEPT)
    def thumbnail_of(frame_id: int, path: str, rles: tuple[str, ...]) -> bytes:
        return thumbnail(Path(path), rles)

    @app.get("/api/log/frames/{frame_id}/thumbnail")
    def frame_thumbnail(frame_id: int) -> Response:
        """The frame at 400x64 with its logged masks blended over it in the class colours (the
        page's strip of the latest frames). Made once per frame, then kept."""
        row = _read(lambda: inspection_log.frame(frame_id))
        if row is None:
            raise HTTPException(404, f"no frame {frame_id} in the inspection log")
        try:
            data = thumbnail_of(frame_id, row["path"], tuple(c["rle"] for c in row["classes"]))
        except ImageReadError:
            raise HTTPException(404, f"frame {frame_id}: its image is no longer at {row['path']}") from None
        return Response(data, media_type="image/jpeg")

    @app.get("/api/log/aggregates")
    def aggregates(start: Start = None, end: End = None, line: str | None = None) -> dict:
        """Per class over [start, end): frames with it present, its rate, mean area, top probability."""
        return _read(lambda: inspection_log.aggregates(start, end, line or None))

    @app.get("/api/log/rates")
    def rates(
        start: Annotated[float, Query(description="epoch seconds")],
        end: Annotated[float | None, Query(description="epoch seconds (default now)")] = None,
        bucket: Annotated[float, Query(gt=0, description="bucket width in seconds")] = 60.0,
        line: str | None = None,
    ) -> dict:
        """Frames judged and frames with each class present, per bucket (empty buckets left out)."""
        end = time.time() if end is None else end
        if end <= start or (end - start) / bucket > MAX_BUCKETS:
            raise HTTPException(422, f"rates: need start < end and at most {MAX_BUCKETS} buckets")
        return {
            "bucket": bucket,
            "buckets": _read(lambda: inspection_log.rates(start, end, bucket, line or None)),
        }

    @app.get("/api/log/throughput")
    def throughput(
        window: Annotated[float, Query(gt=0, le=86400, description="seconds before end")] = RATE_WINDOW_S,
        end: Annotated[float | None, Query(description="epoch seconds (default now)")] = None,
        line: str | None = None,
    ) -> dict:
        """Frames judged per minute over the window, or over the part of it observed since the
        (line's) watcher started or the first frame was judged; ``seconds`` says how long that was."""
        end = time.time() if end is None else end

        def read():
            starts = [w["started_at"] for w in inspection_log.watchers() if not line or w["line"] == line]
            return observed_rate(inspection_log, end, window, line or None, min(starts, default=None))

        return _read(read)

    @app.get("/api/log/export")
    def export(
        query: Filters,
        format: Annotated[
            Literal["submission", "summary"], Query(description="the CSV to write")
        ] = "summary",
    ):
        """Every frame of the search (no limit) as a Severstal submission CSV
        (``ImageId_ClassId,EncodedPixels``, four rows per frame) or as one summary row per frame."""
        _read(query.check)
        rows = _read(lambda: inspection_log.iter_search(query))
        stream = _submission_csv(rows) if format == "submission" else _summary_csv(rows)
        name = f"inspection-{format}.csv"
        return StreamingResponse(
            stream, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )


def _csv_lines(rows: Iterator[list]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _submission_csv(frames: Iterator[dict]) -> Iterator[str]:
    def rows():
        yield ["ImageId_ClassId", "EncodedPixels"]
        for frame in frames:
            if frame["status"] != "judged":
                continue  # a corrupt or missing frame has no verdict to submit
            by_class = {c["class_id"]: c["rle"] for c in frame["classes"]}
            for class_id in CLASS_IDS:
                yield [f"{frame['name']}_{class_id}", by_class.get(class_id, "")]

    return _csv_lines(rows())


def _summary_csv(frames: Iterator[dict]) -> Iterator[str]:
    def rows():
        yield [
            "id", "line", "name", "path", "status", "reason", "seen_at", "judged_at", "latency_ms", "model",
            *(f"{field}_{c}" for c in CLASS_IDS for field in ("probability", "area", "regions")),
        ]  # fmt: skip
        for frame in frames:
            by_class = {c["class_id"]: c for c in frame["classes"]}
            per_class = []
            for class_id in CLASS_IDS:
                entry = by_class.get(class_id)
                per_class += (
                    [entry["probability"], entry["area"], entry["regions"]] if entry else ["", "", ""]
                )
            yield [
                frame["id"], frame["line"], frame["name"], frame["path"], frame["status"],
                frame["reason"] or "", _iso(frame["seen_at"]), _iso(frame["judged_at"]),
                round(frame["latency_ms"], 1), frame["model"] or "", *per_class,
            ]  # fmt: skip

    return _csv_lines(rows())


def thumbnail(path: Path, rles: tuple[str, ...], size: tuple[int, int] = THUMBNAIL_SIZE) -> bytes:
    """JPEG of the image at ``path`` shrunk to ``size`` (W, H), each class's mask blended over it
    at half opacity in its colour. ImageReadError when the image is gone or unreadable."""
    image = read_image(path, channels=3, expected_shape=None)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    for class_id, rle in zip(CLASS_IDS, rles, strict=False):
        if not rle:
            continue
        mask = rle_to_mask(rle, image.shape[:2]).astype(np.uint8)
        shown = cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0  # a thin line stays visible
        colour = np.array([int(CLASS_COLORS[class_id][i : i + 2], 16) for i in (1, 3, 5)], np.float32)
        small[shown] = 0.5 * small[shown] + 0.5 * colour
    return encode_jpeg(small.astype(np.uint8), 85, str(path), rgb=True)


def create_dashboard_app(
    inspection_log: InspectionLog, limits: Limits | None = None, token: str | None = None, watcher=None
) -> FastAPI:
    """The app ``steel-defect watch`` serves: the dashboard at ``/`` and the log API."""
    limits = limits or Limits()
    app = new_app("The inspection log of a steel line: frames judged, defect rates, alarms.", limits, token)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "log": inspection_log.name}

    add_log_routes(app, inspection_log, watcher)
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
