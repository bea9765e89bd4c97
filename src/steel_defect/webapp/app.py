"""The FastAPI app: the page, the JSON API and its limits.

    app = create_app(InferenceService(predictor), Limits(max_file_bytes=10 * 2**20))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what ``steel-defect serve`` does

Routes (OpenAPI docs at ``/docs``):

    GET  /                                  the page
    GET  /api/health, /api/model            liveness; models, config, device, limits
    POST /api/login                         ``{"token": ...}`` -> session cookie (with a token only)
    POST /api/predict                       multipart ``files`` -> per-image classes, RLE, boxes
    POST /api/results/{id}/postprocess      the same report under other thresholds, no network
    GET  /api/results/{id}/image.jpg        the frame the page draws under the overlay
    POST /api/results/{id}/mask.png         indexed PNG of the masks
    POST /api/submission                    submission CSV of several results
    GET  /api/examples[/{name}]             example frames: synthetic, or ``--examples DIR``'s
    GET  /line, /api/log/*                  the line's dashboard and log API (``serve --log``)

Every error is ``{"detail": "<message>"}`` with its status: 400 malformed request, 401 no or
wrong access token (when the server has one, see :mod:`.security`), 404 unknown result, 408
request body too slow, 413 too large, 415 not an image, 422 corrupt image or invalid value, 500
a bug (its traceback in the server's log), 503 busy or too slow (with ``Retry-After``; see
:mod:`.limits`). In a batch, a bad file fails only its own item (``"error"`` in its entry,
status 200 overall); when no file of a request could be predicted the request fails with their
status.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from steel_defect.data.headers import image_format
from steel_defect.errors import UserError
from steel_defect.webapp.base import MEDIA_TYPES, STATIC, Limits, attachment, error_response, new_app
from steel_defect.webapp.examples import example_images
from steel_defect.webapp.service import InferenceService, ResultNotFound
from steel_defect.webapp.uploads import UploadError, decode_upload, display_name


class ClassOverride(BaseModel):
    """Fields of one class's post-processing to replace for this request only."""

    model_config = ConfigDict(extra="forbid")
    threshold: float | None = Field(None, ge=0, le=1, description="pixel probability threshold")
    min_component: int | None = Field(None, ge=0, description="drop components with fewer pixels")
    min_area: int | None = Field(None, ge=0, description="empty the mask below this many pixels")
    cls_threshold: float | None = Field(
        None, ge=0, le=1, description="classifier gate; send null explicitly to disable it"
    )
    top_threshold: float | None = Field(
        None, ge=0, le=1, description="keep the mask only if a pixel reaches it; null disables it"
    )


class PostOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: dict[int, ClassOverride] = Field(default_factory=dict, examples=[{"3": {"threshold": 0.3}}])


class SubmissionRequest(PostOverrides):
    ids: list[str] = Field(
        min_length=1, description="result ids from /api/predict, in CSV order (at most the server's --keep)"
    )


def create_app(
    service: InferenceService,
    limits: Limits | None = None,
    examples: dict[str, bytes] | None = None,
    token: str | None = None,
    inspection_log=None,
) -> FastAPI:
    """The app; ``examples`` (``{file name: image bytes}``, see ``folder_examples``) replaces the
    synthetic example frames; with a ``token`` the API needs it (see :mod:`.security`); with an
    ``inspection_log`` (``serve --log``) the line's dashboard is at ``/line`` and its API under
    ``/api/log`` (:mod:`.dashboard`)."""
    limits = limits or Limits()
    examples = example_images() if examples is None else dict(examples)
    app = new_app(
        "Find and classify surface defects in 1600x256 steel-sheet frames (Severstal format).", limits, token
    )

    def overrides(body: PostOverrides | None):
        if body is None:
            return None
        try:
            return service.post_with({c: o.model_dump(exclude_unset=True) for c, o in body.classes.items()})
        except UserError as err:  # a bare ValueError is a bug: 500, its traceback in the log
            raise HTTPException(422, str(err)) from None

    def stored(result_id: str):
        try:
            return service.get(result_id)
        except ResultNotFound as err:
            raise HTTPException(404, err.args[0]) from None

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "device": service.predictor.describe()["device"]}

    @app.get("/api/model")
    def model() -> dict:
        """Models, device, checkpoints (epoch, metrics, config), post-processing, classes, limits."""
        return {**service.model_info(), "limits": asdict(limits)}

    @app.post("/api/predict")
    def predict(files: Annotated[list[UploadFile], File(description="one or more images")]) -> dict:
        """Predict each uploaded image; a bad file gets an ``error`` entry and the rest go on."""
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {limits.max_files}")
        entries: list[dict] = []
        good = []
        for index, upload in enumerate(files):
            name = display_name(upload.filename, index + 1)
            try:
                data = upload.file.read(limits.max_file_bytes + 1)  # bounded whatever the client says
                frame = decode_upload(data, name, limits.max_file_bytes, declared_size=upload.size)
                good.append((len(entries), name, frame))
                entries.append({})
            except UploadError as err:
                entries.append({"file_name": name, "error": {"status": err.status, "message": err.message}})
        if not good:
            statuses = {e["error"]["status"] for e in entries}
            status = statuses.pop() if len(statuses) == 1 else 422
            message = "no image could be predicted: " + "; ".join(e["error"]["message"] for e in entries)
            return error_response(status, message, images=entries)
        # Frames of one request share a size (checked by decode_upload), so they batch together.
        results = service.predict([(name, frame) for _, name, frame in good])
        for (position, _, _), result in zip(good, results, strict=True):
            entries[position] = service.report(result)
        return {"images": entries}

    @app.post("/api/results/{result_id}/postprocess")
    def postprocess(result_id: str, body: PostOverrides | None = None) -> dict:
        """The result's masks and report again under other thresholds; the network does not run."""
        return service.report(stored(result_id), overrides(body))

    @app.get("/api/results/{result_id}/image.jpg", response_class=Response)
    def image(result_id: str) -> Response:
        """The uploaded frame as JPEG (what the page shows under the overlay)."""
        return Response(stored(result_id).preview, media_type="image/jpeg")

    @app.post("/api/results/{result_id}/mask.png", response_class=Response)
    def mask(result_id: str, body: PostOverrides | None = None) -> Response:
        """Indexed PNG: pixel value = sum of 2**(k-1) over the classes k present there."""
        result = stored(result_id)
        stem = result.file_name.rsplit(".", 1)[0]
        return Response(
            service.mask_png(result, overrides(body)),
            media_type="image/png",
            headers={"Content-Disposition": attachment(f"{stem}_mask.png")},
        )

    @app.post("/api/submission", response_class=Response)
    def submission(body: SubmissionRequest) -> Response:
        """Submission CSV (``ImageId_ClassId,EncodedPixels``, 4 rows an image) of these results."""
        if len(body.ids) > service.keep:
            raise HTTPException(
                413,
                f"{len(body.ids)} ids in one request (repeats included); the server keeps at most "
                f"{service.keep} results, so that is the limit",
            )
        post = overrides(body)
        try:
            text = service.submission_csv(body.ids, post)
        except ResultNotFound as err:
            raise HTTPException(404, err.args[0]) from None
        return Response(
            text,
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="submission.csv"'},
        )

    @app.get("/api/examples")
    def example_names() -> list[str]:
        """File names of the example frames, in the order the page shows them."""
        return list(examples)

    @app.get("/api/examples/{name}", response_class=Response)
    def example(name: str) -> Response:
        # Only ever a key of the listing, never a path: ``../x`` is simply not found.
        data = examples.get(name)
        if data is None:
            raise HTTPException(404, f"no example {name!r}; valid: {', '.join(examples)}")
        return Response(data, media_type=MEDIA_TYPES[image_format(data)])

    if inspection_log is not None:
        from steel_defect.webapp.dashboard import add_log_routes

        @app.get("/line", include_in_schema=False)
        def line_page():
            return FileResponse(STATIC / "dashboard.html")

        add_log_routes(app, inspection_log)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
