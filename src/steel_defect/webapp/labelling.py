"""``steel-defect label``: the labelling page and its API, on the labels database.

    store = LabelStore.open("labels.sqlite"); folder = FrameFolder("test_images")
    app = create_label_app(LabelService(store, folder, predictor=None), Limits())

Routes (OpenAPI docs at ``/docs``):

    GET  /                                    the labelling page
    GET  /api/health                          liveness
    GET  /api/label/info                      classes, model, counts, skipped files
    GET  /api/label/next?after=NAME           the next frame of the active-learning queue
    GET  /api/label/frames?status=S           the frame list: status, classes, queue rank and score, doubt
    GET  /api/label/queue                     the queue's build in the background: state, done, total, eta_s
    POST /api/label/queue                     build (score) the queue again with the page's model
    GET  /api/label/frames/{name}/doubt.png?class_id=C   the class's probability under its threshold
    GET  /api/label/frames/{name}             masks (saved, else the model's proposal), status, version
    GET  /api/label/frames/{name}/image       the frame
    PUT  /api/label/frames/{name}             save the four masks on top of ``version``
    GET  /api/label/frames/{name}/history     every save of the frame
    POST /api/label/frames/{name}/restore     save an earlier state again

A save whose ``version`` is not the stored one answers 409 with the stored state (another tab
saved first; nothing is overwritten), RLE that does not fit the frame 422, an unknown name 404
(as is a frame whose file was deleted while the server runs, saying so).
A database that another process keeps locked past the busy timeout answers 503 with
``Retry-After``; a corrupt or unusable one 500; both ``{"detail"}`` naming the file.
Names are looked up in the folder's listing only (:mod:`steel_defect.labels.folder`).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from steel_defect.constants import CLASS_COLORS, CLASS_IDS, CLASS_NAMES
from steel_defect.data.headers import image_format
from steel_defect.data.images import ImageReadError, encode_jpeg
from steel_defect.data.rle import masks_to_rles
from steel_defect.inference.verdict import model_version
from steel_defect.labels.folder import FrameFolder, FrameRemoved
from steel_defect.labels.store import (
    STATUSES,
    DatabaseLocked,
    InvalidMasks,
    LabelStore,
    LabelStoreError,
    StaleSave,
    UnknownFrame,
)
from steel_defect.webapp.base import MEDIA_TYPES, STATIC, Limits, new_app
from steel_defect.webapp.label_queue import NO_MODEL_HINT, DoubtMaps, QueueBuild
from steel_defect.webapp.provenance import ensemble_summary
from steel_defect.webapp.training import TrainingSettings, add_training_routes

log = logging.getLogger(__name__)
BROWSER_FORMATS = ("JPEG", "PNG", "BMP")  # sent as they are; TIFF is re-encoded, browsers do not all show it
# A save carries four RLEs: a 1600x256 checkerboard, the worst case, is 5.8 MB of text a class.
MAX_SAVE_BYTES = 32 * 2**20


class Save(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, description="the version this edit started from (the GET's)")
    status: Literal["pre-labelled", "confirmed", "defect-free", "skipped"] = "pre-labelled"
    masks: list[str] = Field(
        min_length=4, max_length=4, description="RLE of classes 1..4 (Severstal encoding)"
    )


class Restore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(description="the history entry to save again")
    version: int = Field(ge=0)


class LabelService:
    """The database, the folder and the optional model, shared by the request threads."""

    def __init__(
        self,
        store: LabelStore,
        folder: FrameFolder,
        predictor=None,
        build_queue: bool = False,
        batch_size: int = 4,
    ):
        """``build_queue``: score the queue in the background once the server is up, when there is
        a model and the database holds no queue (``label``'s first run on a folder), ``batch_size``
        frames at a time."""
        self.store = store
        self.folder = folder
        self.batch_size = batch_size
        self._network = threading.Lock()
        self.predictor = self.model_version = self.queue_build = self.doubt = None
        if predictor is not None:
            self.use_model(predictor, model_version(predictor))
        self.build_queue = build_queue and predictor is not None
        self.rescorer = None  # the promoted version's re-scoring (webapp/training.py), when served
        store.add_frames(folder.listing())

    def use_model(self, predictor, name: str) -> None:
        """Propose, build the queue and draw heat maps with ``predictor`` from now on, naming its
        proposals and queue ``name`` (a model version's name, or the weights' digest); a request
        predicting meanwhile finishes with the model it started with."""
        with self._network:
            self.predictor, self.model_version = predictor, name
            self.queue_build = QueueBuild(
                self.store, self.folder, predictor, self._network, self.batch_size, version=name
            )
            self.doubt = DoubtMaps(predictor, self._network)

    def start_queue_build(self) -> bool:
        """Start scoring the queue unless it is stored already, or a re-scoring for a promotion not
        followed yet stores it (one scoring of the frames, not two side by side); whether it started."""
        if not self.build_queue or self.store.stats().queue["size"]:
            return False
        if self.rescorer is not None and self.rescorer.busy():
            return False
        return self.queue_build.start()

    def queue_status(self) -> dict:
        """The queue's build (``state``: none without a model, then idle, running, done, failed)
        and, without a model, the command that makes one (``hint``)."""
        if self.queue_build is None:
            return {"state": "none", "hint": NO_MODEL_HINT.format(db=self.store.path.name)}
        if self.rescorer is not None and self.rescorer.busy():  # it builds the queue meanwhile
            rescore = self.rescorer.status()
            return {"state": "running", **{k: rescore.get(k) for k in ("done", "total", "eta_s", "version")}}
        return self.queue_build.status()

    def open_frame(self, name: str) -> dict:
        """The frame's state; with a model and no save yet, its proposal is made first.

        The frame is decoded either way (about 10 ms): one whose header passed the listing but
        whose data is corrupt fails here with :class:`ImageReadError` (the API's 422), not as a
        blank image in the browser."""
        if name not in self.folder:
            raise UnknownFrame(name)
        state = self.store.frame(name)
        frame = self.folder.decode(name)
        if (
            self.predictor is not None
            and state.version == 0
            and state.status != "skipped"
            and state.proposal_model != self.model_version
        ):
            with self._network:
                prediction = self.predictor.predict([frame], skip_gated=False)[0]
            state = self.store.set_proposal(name, masks_to_rles(prediction.masks), self.model_version)
        return self.describe(state)

    def next_frame(self, after: str | None) -> str | None:
        """The queue's next frame that this folder holds (a database may list frames of another
        folder, from an earlier session or an import); None when none is left to do."""
        seen = set()
        name = self.store.next_in_queue(after)
        while name is not None and name not in self.folder and name not in seen:
            seen.add(name)
            name = self.store.next_in_queue(name)
        return name if name in self.folder else None

    def describe(self, state) -> dict:
        return {**asdict(state), "queue": self.store.queue_entry(state.name)}

    def info(self) -> dict:
        stats = self.store.stats()
        model = None
        if self.predictor is not None:
            model = {
                **self.predictor.describe(),
                "version": self.model_version,
                "summary": ensemble_summary(self.predictor),
            }
        return {
            "classes": [{"class_id": c, "name": CLASS_NAMES[c], "color": CLASS_COLORS[c]} for c in CLASS_IDS],
            "model": model,
            "database": self.store.path.name,
            "images": str(self.folder.directory),
            "frames": len(self.folder.paths),
            "skipped_files": [{"name": n, "reason": r} for n, r in self.folder.skipped],
            "stats": asdict(stats),
            "queue_build": self.queue_status(),
        }


def _not_found(name: str, err: UnknownFrame | None = None) -> HTTPException:
    if isinstance(err, FrameRemoved):
        return HTTPException(404, str(err))
    return HTTPException(404, f"no frame {name!r} in the labelling folder")


def create_label_app(
    service: LabelService,
    limits: Limits | None = None,
    token: str | None = None,
    training: TrainingSettings | None = None,
) -> FastAPI:
    app = new_app(
        "Label steel-sheet frames in the Severstal encoding.", limits or Limits(), token, queued_paths=()
    )

    @app.exception_handler(LabelStoreError)
    async def _database(request: Request, err: LabelStoreError):
        if isinstance(err, DatabaseLocked):
            retry = math.ceil(max(1.0, service.store.busy_timeout_ms / 1000))
            return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(retry)})
        log.error("%s %s: %s", request.method, request.url.path, err)
        return JSONResponse({"detail": str(err)}, status_code=500)

    def frame_or_404(name: str) -> dict:
        try:
            return service.open_frame(name)
        except UnknownFrame as err:
            raise _not_found(name, err) from None
        except ImageReadError as err:
            raise HTTPException(422, f"{name}: {err}") from None

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "label.html")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/label/info")
    def info() -> dict:
        return service.info()

    @app.get("/api/label/next")
    def next_frame(after: str | None = None) -> dict:
        """The best-ranked frame still to label after ``after`` (null when none is left)."""
        return {"name": service.next_frame(after)}

    @app.get("/api/label/frames")
    def frames(status: str | None = None) -> list[dict]:
        """The frames of the folder (of ``status``), in queue order: what the page's list shows."""
        if status is not None and status not in STATUSES:
            raise HTTPException(422, f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        return [f for f in service.store.frame_list(status) if f["name"] in service.folder]

    @app.get("/api/label/queue")
    def queue_build() -> dict:
        return service.queue_status()

    @app.post("/api/label/queue", status_code=202)
    def rebuild_queue() -> dict:
        if service.queue_build is None:
            raise HTTPException(409, service.queue_status()["hint"])
        if not service.queue_build.start():
            raise HTTPException(409, "the queue is being built already: GET /api/label/queue says how far")
        return service.queue_status()

    @app.get("/api/label/frames/{name}/doubt.png", response_class=Response)
    def doubt_png(name: str, class_id: int) -> Response:
        """The class's probability on the frame, under its threshold, as a faint RGBA PNG at half size."""
        if service.doubt is None:
            raise HTTPException(409, "no model: no probability to show (start with --postprocessing)")
        if class_id not in CLASS_IDS:
            raise HTTPException(422, f"unknown class_id {class_id}; valid: {list(CLASS_IDS)}")
        try:
            frame = service.folder.decode(name)
        except UnknownFrame as err:
            raise _not_found(name, err) from None
        except ImageReadError as err:
            raise HTTPException(422, f"{name}: {err}") from None
        data = service.doubt.png(name, frame, class_id)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/label/frames/{name}")
    def frame(name: str) -> dict:
        return frame_or_404(name)

    @app.get("/api/label/frames/{name}/image", response_class=Response)
    def image(name: str) -> Response:
        try:
            data = service.folder.read(name)
        except UnknownFrame as err:
            raise _not_found(name, err) from None
        kind = image_format(data)
        if kind not in BROWSER_FORMATS:
            try:
                data, kind = encode_jpeg(service.folder.decode(name), 95, name, rgb=True), "JPEG"
            except ImageReadError as err:
                raise HTTPException(422, f"{name}: {err}") from None
        return Response(data, media_type=MEDIA_TYPES[kind], headers={"Cache-Control": "no-cache"})

    @app.put("/api/label/frames/{name}")
    def save(name: str, body: Save):
        if name not in service.folder:
            raise _not_found(name)
        try:
            state = service.store.save_masks(name, body.masks, body.version, body.status)
        except StaleSave as err:
            return JSONResponse(
                {"detail": str(err), "current": service.describe(err.current)}, status_code=409
            )
        except InvalidMasks as err:
            raise HTTPException(422, str(err)) from None
        except UnknownFrame:
            raise _not_found(name) from None
        return service.describe(state)

    @app.get("/api/label/frames/{name}/history")
    def history(name: str) -> list[dict]:
        try:
            service.folder.check(name)  # as every frame route: only the folder's frames are answered
            return service.store.history(name)
        except UnknownFrame as err:
            raise _not_found(name, err) from None

    @app.post("/api/label/frames/{name}/restore")
    def restore(name: str, body: Restore):
        if name not in service.folder:
            raise _not_found(name)
        try:
            state = service.store.restore(name, body.id, body.version)
        except StaleSave as err:
            return JSONResponse(
                {"detail": str(err), "current": service.describe(err.current)}, status_code=409
            )
        except InvalidMasks as err:
            raise HTTPException(422, str(err)) from None
        return service.describe(state)

    add_training_routes(app, service, training)  # POST/GET/DELETE /api/label/train, versions, rescore
    service.rescorer = app.state.rescorer
    # after the server is up, so the page opens at once and shows the build's progress
    app.router.on_startup.append(service.start_queue_build)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


__all__ = ["LabelService", "create_label_app"]
