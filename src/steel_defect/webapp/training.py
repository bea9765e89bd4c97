"""The labelling page trains: its routes for trainings, model versions and the re-scoring.

    add_training_routes(app, service, TrainingSettings(recipe="real"))   # in create_label_app

Routes (behind the page's token, as every ``/api/`` route):

    POST   /api/label/train      start `steel-defect labels train` (body: optional recipe, opts);
                                 409 with the running one while one runs
    GET    /api/label/train      the latest training: {state, stage, fold, epoch, fraction, eta_s,
                                 version, error, log, ...}; state "none" before any
    DELETE /api/label/train      cancel the running one (409 when none runs)
    GET    /api/label/versions   the model versions, oldest first, the promoted one marked
    POST   /api/label/promote    {version}: promote it (a rollback is an older one)
    GET    /api/label/rescore    the pre-labels and queue re-scoring: {state, done, total, eta_s, version}

The jobs themselves (a training as a process with a row, the re-scoring thread) are
:mod:`steel_defect.labels.jobs`; this module only answers for them. A promotion, here or at the
end of a training, re-scores the pre-labels and the queue with the promoted version, after which
the page's model is that version and each frame's proposal names it (``v3``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from steel_defect.labels.jobs import NoTraining, Rescorer, TrainingJobs
from steel_defect.labels.store import TrainingRunning, UnknownVersion, now

PROGRESS_KEYS = ("stage", "fold", "epoch", "fraction", "eta_s")


@dataclass(frozen=True)
class TrainingSettings:
    """What the page's Train button runs: the recipe, config overrides and epochs of every network
    (``label --train-recipe``, ``--train-opts``, ``--train-epochs``; None: the command's), and how a promoted
    version's predictor is built for the re-scoring (``load_predictor(spec_path)``)."""

    recipe: str | None = None
    opts: tuple[str, ...] = ()
    epochs: int | None = None
    load_predictor: Callable[[str], object] | None = None
    batch_size: int = 4


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: Literal["real", "synthetic"] | None = Field(None, description="default: the server's")
    opts: list[str] | None = Field(
        None, max_length=64, description="config overrides (key=value); default: the server's"
    )


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=64, description="a version's name, e.g. v2")
    reason: str | None = Field(None, max_length=500)


def _same_file(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _default_predictor(spec: str):
    from steel_defect.inference.pipeline import build_predictor

    return build_predictor(spec, backend="torch")


def version_view(version: dict, promotions: list[dict]) -> dict:
    """A version as the page lists it: its record, whether it is in use, and its promotions."""
    mine = [p for p in promotions if p["version"] == version["name"]]
    return {**version, "promotions": mine, "promotion_reason": mine[-1]["reason"] if mine else None}


def training_view(row: dict | None, store) -> dict:
    """The row as the page reads it: the progress keys at the top, the version's record beside."""
    if row is None:
        return {"state": "none", **dict.fromkeys(PROGRESS_KEYS), "version": None, "error": None, "log": None}
    progress = row["progress"] or {}
    view = {**row, **{k: progress.get(k) for k in PROGRESS_KEYS}}
    if row["state"] == "done":
        view["fraction"] = 1.0
    view["result"] = None
    if row["version"]:
        try:
            result = version_view(store.version(row["version"]), store.promotions())
            promoted = store.promoted()
            result["in_use"] = None if promoted is None else promoted["name"]
            result["promoted"] = result["in_use"] == row["version"]
            result["was_promoted"] = bool(result["promotions"])  # by the training or later, by hand
            view["result"] = result
        except UnknownVersion:
            pass
    return view


def add_training_routes(app: FastAPI, service, settings: TrainingSettings | None = None) -> TrainingJobs:
    """Add the training, version and re-scoring routes to the labelling app of ``service``."""
    settings = settings or TrainingSettings()
    store = service.store

    promoted = store.promoted()
    current = None
    if promoted is not None and _same_file(getattr(service.predictor, "pipeline", None), promoted["spec"]):
        current = promoted["name"]  # `label` loaded the promoted version: its proposals bear its name
        service.use_model(service.predictor, current)

    def promoted_by(row: dict | None) -> bool:
        """Whether ``row`` is a finished training whose version is the latest promotion's."""
        latest = store.promotions()[-1:]
        done = row is not None and row["state"] == "done"
        return done and bool(latest) and latest[0]["version"] == row["version"]

    rescorer = Rescorer(
        store,
        service.folder,
        settings.load_predictor or _default_predictor,
        settings.batch_size,
        on_done=service.use_model,
    )
    jobs = TrainingJobs(
        store,
        service.folder.directory,
        settings.recipe,
        settings.opts,
        settings.epochs,
        on_end=lambda row: promoted_by(row) and rescorer.follow(),
    )
    app.state.training_jobs, app.state.rescorer = jobs, rescorer
    rescorer.resume(current)  # a re-scoring a restart cut off; else what the page loaded counts
    started = now()

    @app.post("/api/label/train", status_code=202)
    def start_training(body: TrainBody | None = None):
        body = body or TrainBody()
        try:
            row = jobs.start(body.recipe, body.opts)
        except TrainingRunning as err:
            return JSONResponse(
                {"detail": str(err), "training": training_view(err.training, store)}, status_code=409
            )
        return training_view(row, store)

    @app.get("/api/label/train")
    def training() -> dict:
        row = jobs.status()
        if promoted_by(row) and row["finished_at"] > started:
            rescorer.follow()  # a training another server started promoted while this one runs
        return training_view(row, store)

    @app.delete("/api/label/train")
    def cancel_training():
        try:
            return training_view(jobs.cancel(), store)
        except NoTraining as err:
            return JSONResponse({"detail": str(err), "training": training_view(jobs.status(), store)}, 409)

    @app.get("/api/label/versions")
    def versions() -> dict:
        promotions = store.promotions()
        listed = [version_view(v, promotions) for v in store.versions()]
        promoted = next((v["name"] for v in listed if v["promoted"]), None)
        return {"versions": listed, "promoted": promoted, "labelled": store.labelled_counts()}

    @app.post("/api/label/promote")
    def promote(body: PromoteBody):
        try:
            version = store.promote(body.version, body.reason or "promoted from the labelling page")
        except UnknownVersion as err:
            return JSONResponse({"detail": str(err)}, status_code=404)
        rescorer.follow()
        return {"promoted": version["name"], "rescore": rescorer.status()}

    @app.get("/api/label/rescore")
    def rescore() -> dict:
        return rescorer.status()

    return jobs


__all__ = ["TrainingSettings", "add_training_routes", "training_view"]
