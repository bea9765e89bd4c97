"""The tuned pipeline: what the threshold search tuned, saved beside its thresholds, and the one
function that rebuilds it for ``predict``, ``serve``, ``pseudo-label``, ``export`` and the demo.

``steel-defect thresholds`` writes ``postprocessing.yml``::

    classes: {1: {threshold: 0.5, ...}, ...}        # the searched post-processing
    pipeline:
      checkpoints:                                   # the models whose maps were tuned
      - {path: seg/fold0/checkpoints/best.pth, weights_sha256: 3f0c..., task: seg, fold: 0}
      - {path: cls/fold0/checkpoints/best.pth, weights_sha256: 9a41..., task: cls, fold: 0}
      tta: [hflip]
      gate: classifier          # what cls_threshold gates on: classifier, head or none
      search_downsample: 4      # the resolution the search scored at (full-resolution check in
                                # postprocessing.report.json)
      folds: {path: folds.csv, sha256: 51be...}   # split_digest of the split tuned out of fold
    clean_gate:                 # optional: the clean-frame gate tuned out of fold (.gate)
      scale: 2
      thresholds: {1: 0.0745, 2: null, 3: 0.1294, 4: 0.0902}

Then::

    predictor = build_predictor("work/demo/postprocessing.yml")             # the spec's models
    predictor = build_predictor(spec, ["export/fold0_best.int8.onnx", ...])  # exports of them
    predictor = build_predictor(None, ["seg.pth"], untuned=True)            # 0.5, with a warning

A model is named by its weights' SHA-256 (``weights_sha256``, saved in every checkpoint and
copied into its ONNX exports), so an export stands in for its checkpoint and a retrained
checkpoint at the same path is refused. Paths are stored relative to the YAML's folder, so a
work directory can be moved whole.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS
from steel_defect.errors import UserError
from steel_defect.inference.gate import GateSpec
from steel_defect.inference.postprocess import PostProcessing
from steel_defect.inference.predictor import TTA_DIMS, Predictor

log = logging.getLogger(__name__)

GATES = ("classifier", "head", "none")
TASKS = ("seg", "cls")
UNTUNED_HINT = (
    "pass --postprocessing with the postprocessing.yml that `steel-defect thresholds` wrote for "
    "these models, or --untuned to run without tuned thresholds (0.5, or the YAML's, unchecked)"
)


class PipelineError(UserError):
    """A tuned pipeline that cannot be rebuilt as it was tuned: what differs is in the message."""


@dataclass(frozen=True)
class ModelRef:
    """One model of a tuned pipeline."""

    path: Path  # as resolved against the YAML's folder
    weights_sha256: str
    task: str  # "seg" or "cls"
    fold: int | None


@dataclass(frozen=True)
class PipelineSpec:
    """Everything inference needs to reproduce what the threshold search tuned."""

    post: PostProcessing
    models: tuple[ModelRef, ...]
    tta: tuple[str, ...]
    gate: str
    search_downsample: int
    folds_sha256: str
    folds_path: Path | None = None
    source: Path | None = None  # the YAML it was read from
    clean_gate: GateSpec | None = None  # None: a spec tuned without one, or older than the gate

    @property
    def checkpoints(self) -> list[Path]:
        return [m.path for m in self.models]

    def of_fold(self, fold: int) -> list[ModelRef]:
        """The models trained with ``fold`` held out (one fold's share of the ensemble)."""
        return [m for m in self.models if m.fold == fold]


def network_ref(network, base: Path | None = None) -> dict:
    """The spec entry of a loaded network (path relative to ``base`` when given)."""
    trained_on = network.info.get("trained_on") or {}
    path = Path(network.path)
    if base is not None:
        path = Path(os.path.relpath(path.resolve(), base.resolve()))
    return {
        "path": path.as_posix(),
        "weights_sha256": network.info["weights_sha256"],
        "task": network.task,
        "fold": trained_on.get("fold"),
    }


def save_spec(
    path: str | Path,
    post: PostProcessing,
    networks,
    tta,
    gate: str,
    search_downsample: int,
    folds_csv: str | Path,
    folds_sha256: str,
    clean_gate: GateSpec | None = None,
) -> Path:
    """Write the searched classes and the pipeline they were tuned on (and its clean-frame gate,
    when one was tuned), atomically, as one YAML."""
    path = Path(path)
    base = path.parent
    pipeline = {
        "checkpoints": [network_ref(n, base) for n in networks],
        "tta": list(tta),
        "gate": gate,
        "search_downsample": int(search_downsample),
        "folds": {
            "path": Path(os.path.relpath(Path(folds_csv).resolve(), base.resolve())).as_posix(),
            "sha256": folds_sha256,
        },
    }
    data = {**post.to_dict(), "pipeline": pipeline}
    if clean_gate is not None:
        data["clean_gate"] = clean_gate.to_dict()
    with atomic_write(path) as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


def _field(data: dict, key: str, kind, source: str):
    if key not in data:
        raise PipelineError(f"{source}: pipeline.{key} is missing; re-run `steel-defect thresholds`")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PipelineError(f"{source}: pipeline.{key} must be a {getattr(kind, '__name__', kind)}")
    return value


def read_tuned(path: str | Path) -> tuple[PostProcessing, PipelineSpec | None]:
    """(post-processing, its pipeline or None): None for a YAML without a ``pipeline`` entry
    (written by hand, or by a search older than the spec)."""
    path = Path(path)
    post = PostProcessing.load(path)  # checks that the file exists and its classes
    data = yaml.safe_load(path.read_text()) or {}
    pipeline = data.get("pipeline")
    if pipeline is None:
        return post, None
    source = str(path)
    if not isinstance(pipeline, dict):
        raise PipelineError(f"{source}: 'pipeline' must be a mapping")
    unknown = sorted(set(pipeline) - {"checkpoints", "tta", "gate", "search_downsample", "folds"})
    if unknown:
        raise PipelineError(f"{source}: unknown key(s) {unknown} in pipeline")
    base = path.parent
    models = []
    for index, entry in enumerate(_field(pipeline, "checkpoints", list, source)):
        where = f"{source}: pipeline.checkpoints[{index}]"
        if not isinstance(entry, dict) or not {"path", "weights_sha256", "task"} <= set(entry):
            raise PipelineError(f"{where} needs path, weights_sha256 and task")
        if entry["task"] not in TASKS:
            raise PipelineError(f"{where}: task {entry['task']!r}; valid: {', '.join(TASKS)}")
        fold = entry.get("fold")
        models.append(ModelRef(base / entry["path"], str(entry["weights_sha256"]), entry["task"], fold))
    if not any(m.task == "seg" for m in models):
        raise PipelineError(f"{source}: pipeline.checkpoints names no segmenter")
    tta = tuple(_field(pipeline, "tta", list, source))
    unknown_tta = [t for t in tta if t not in TTA_DIMS]
    if unknown_tta:
        raise PipelineError(
            f"{source}: unknown TTA {unknown_tta} in pipeline.tta; valid: {', '.join(TTA_DIMS)}"
        )
    gate = _field(pipeline, "gate", str, source)
    if gate not in GATES:
        raise PipelineError(f"{source}: pipeline.gate {gate!r}; valid: {', '.join(GATES)}")
    folds = _field(pipeline, "folds", dict, source)
    clean_gate = None
    if data.get("clean_gate") is not None:
        try:
            clean_gate = GateSpec.from_dict(data["clean_gate"], source)
        except UserError as err:
            raise PipelineError(f"{err}; re-run `steel-defect thresholds`, or delete the section") from None
    spec = PipelineSpec(
        post=post,
        models=tuple(models),
        tta=tta,
        gate=gate,
        search_downsample=_field(pipeline, "search_downsample", int, source),
        folds_sha256=str(folds.get("sha256")),
        folds_path=base / folds["path"] if folds.get("path") else None,
        source=path,
        clean_gate=clean_gate,
    )
    return post, spec


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def check_predictor(predictor: Predictor, spec: PipelineSpec) -> None:
    """Raise :class:`PipelineError` naming what differs between ``predictor`` and ``spec``."""
    where = spec.source or "the tuned pipeline"
    networks = predictor.segmenters + predictor.classifiers
    # Counts, not sets: ``export/*.onnx`` holding X.onnx and X.int8.onnx gives one model twice,
    # which would weigh it double in the ensemble's mean that the thresholds were tuned on.
    tuned = Counter(m.weights_sha256 for m in spec.models)
    given: dict[str, list] = {}
    for network in networks:
        digest = network.info.get("weights_sha256")
        if digest is None:
            raise PipelineError(
                f"{network.path} does not record its weights' SHA-256 (an export older than tuned "
                "pipelines): export it again from its checkpoint"
            )
        if digest not in tuned:
            raise PipelineError(
                f"{network.path} (weights {_short(digest)}) is not a model {where} was tuned with; "
                f"it names {', '.join(str(m.path) for m in spec.models)}. Re-run `steel-defect "
                "thresholds` for these models, or pass the ones it names"
            )
        given.setdefault(digest, []).append(network)
    for digest, copies in given.items():
        if len(copies) > tuned[digest]:
            raise PipelineError(
                f"one model (weights {_short(digest)}) is given {len(copies)} times: "
                f"{', '.join(str(n.path) for n in copies)}; {where} was tuned with it "
                f"{'once' if tuned[digest] == 1 else f'{tuned[digest]} times'}. An export and its int8 "
                "variant (X.onnx, X.int8.onnx) are the same model: pass one of them"
            )
    missing = [
        f"{m.path} (weights {_short(m.weights_sha256)})"
        for m in spec.models
        if len(given.get(m.weights_sha256, ())) < tuned[m.weights_sha256]
    ]
    if missing:
        raise PipelineError(
            f"{where} was tuned with {', '.join(missing)} too, which is not among the models given; "
            "the thresholds are only valid for the whole ensemble"
        )
    for network in networks:
        split = ((network.info.get("trained_on") or {}).get("split") or {}).get("sha256")
        if split is not None and split != spec.folds_sha256:
            raise PipelineError(
                f"{network.path} was trained on the split {_short(split)}, but {where} was tuned out of "
                f"fold on the split {_short(spec.folds_sha256)}"
            )
    if predictor.gate != spec.gate:
        raise PipelineError(
            f"{where} tuned cls_threshold on the gate '{spec.gate}', but these models gate on "
            f"'{predictor.gate}'"
        )


def check_gates(predictor: Predictor, post: PostProcessing, source: str) -> None:
    """A ``cls_threshold`` needs a classifier or a hard head to read it; refuse one without."""
    gated = [c for c, p in zip(CLASS_IDS, post.classes, strict=True) if p.cls_threshold is not None]
    if gated and predictor.gate == "none":
        raise PipelineError(
            f"{source} gates class(es) {gated} on a classifier (cls_threshold), but no classifier or "
            "two-head segmenter is given: add the classifier checkpoints, or set cls_threshold to null"
        )


def build_predictor(
    postprocessing: str | Path | None,
    checkpoints=None,
    *,
    untuned: bool = False,
    tta=("hflip",),
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    clean_gate: bool = True,
) -> Predictor:
    """The predictor of a tuned pipeline, checked against it; every command builds it here.
    ``backend`` ``auto`` is what the commands run by default: on a CPU the faster of ONNX
    Runtime and OpenVINO, measured once per network, else torch (:func:`.networks.resolve_backend`);
    ``precision``: ``inference.precision``.

    ``postprocessing``: the YAML of a tuned pipeline. ``checkpoints`` default to the spec's;
    given ones (checkpoints or their ONNX exports) must be exactly the spec's models. TTA comes
    from the spec. Without a spec ``untuned`` must be True: ``checkpoints`` are required, ``tta``
    is used and the YAML's classes (or threshold 0.5) apply, with a warning.
    ``clean_gate``: run the spec's clean-frame gate where it has one (``inference.clean_gate``);
    False runs every frame through the segmenters. An untuned predictor has no gate.
    """
    post, spec = read_tuned(postprocessing) if postprocessing is not None else (None, None)
    if spec is not None and not untuned:
        paths = list(checkpoints) if checkpoints else spec.checkpoints
        predictor = Predictor(
            paths,
            spec.post,
            tta=spec.tta,
            device=device,
            backend=backend,
            threads=threads,
            precision=precision,
            clean_gate=spec.clean_gate if clean_gate else None,
            sources={m.weights_sha256: m.path for m in spec.models},
        )
        check_predictor(predictor, spec)
        predictor.pipeline = str(spec.source)
        return predictor
    if not untuned:
        what = f"{postprocessing} has no 'pipeline' entry" if postprocessing else "no tuned pipeline given"
        raise PipelineError(f"{what}: {UNTUNED_HINT}")
    if not checkpoints:
        raise PipelineError("--untuned needs --checkpoints (there is no tuned pipeline to name them)")
    log.warning(
        "running UNTUNED: %s; no threshold search was run for these models",
        f"classes of {postprocessing}, not checked against these models"
        if post
        else "threshold 0.5, no size filters, no gates",
    )
    post = post or PostProcessing()
    predictor = Predictor(
        checkpoints,
        post,
        tta=tuple(tta),
        device=device,
        backend=backend,
        threads=threads,
        precision=precision,
    )
    check_gates(predictor, post, str(postprocessing or "the post-processing"))
    return predictor
