"""What several commands share: their common options, the tuned pipeline's path, the predictor.

Each command group (``data``, ``predict``, ``labels``, ``line``, ``reports``) adds its parsers
with ``register(sub)`` and keeps its handlers beside them; this module holds only what two or
more of them use. Nothing heavy is imported at module level: ``steel-defect --help`` must not
load torch, pandas or OpenCV (tests/test_startup_imports.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("steel_defect")


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="experiment YAML (merged onto its base)")
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides such as train.epochs=2 paths.work_dir=work/x",
    )


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postprocessing",
        help="the tuned pipeline: postprocessing.yml of `steel-defect thresholds` (default "
        "paths.postprocessing, or <work_dir>/postprocessing.yml of --config)",
    )
    parser.add_argument(
        "--untuned",
        action="store_true",
        help="run without a tuned pipeline: --checkpoints as given, the config's TTA, threshold 0.5 "
        "(or --postprocessing's classes, unchecked); prints a warning",
    )


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "openvino"),
        help="default inference.backend (auto: on a CPU the faster of onnx and openvino, measured once "
        "per network, else torch); onnx: ONNX Runtime on the CPU (a .pth is exported once, to "
        "<name>.onnx beside it or to the user's cache when that folder is read-only); openvino: "
        "OpenVINO's CPU runtime on the same export",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "auto"),
        help="default inference.precision: bf16 on a CPU that computes it natively (openvino), int8 "
        "the twin `export --int8` wrote beside an export, auto bf16 where it is native, else fp32",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default inference.threads: physical cores)")
    parser.add_argument(
        "--no-clean-gate",
        action="store_true",
        help="run every frame through the segmenters: no clean-frame gate, even where the tuned "
        "pipeline has one (inference.clean_gate: false), e.g. to compare speed and masks",
    )


def add_page_args(parser: argparse.ArgumentParser, port: int, serves: str) -> None:
    """--host, --port, --token, --no-auth and --timeout of a command that serves a page."""
    parser.add_argument(
        "--host", default="127.0.0.1", help=f"0.0.0.0 exposes {serves}, which needs a token (or --no-auth)"
    )
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--token",
        help="require this access token (16+ characters) from every API client; the page asks for it "
        "once. Default: $STEEL_DEFECT_TOKEN (better: a command line is visible to other users)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a non-loopback --host without a token: every client that can reach it is trusted",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to answer a request (else 408 or 503)"
    )


def page_token(args, what: str) -> str | None:
    """The access token a page needs (before any model loads, so a missing one fails in a second)."""
    from steel_defect.webapp.security import access_token, is_loopback

    token = access_token(args.host, args.token, args.no_auth)
    if token is None and not is_loopback(args.host):
        log.warning("--no-auth: anyone who can reach %s can %s", args.host, what)
    return token


def torch_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def tuned_path(cfg, override: str | None) -> Path | None:
    """The tuned pipeline's YAML: ``--postprocessing``, else ``paths.postprocessing``, else
    ``<work_dir>/postprocessing.yml`` of the ``--config`` when it exists; None when there is none."""
    from steel_defect.config import layout

    path = override or cfg.paths.postprocessing
    default = layout.postprocessing(cfg.paths.work_dir)
    if path is None and default.is_file():
        path = default
    if path is not None:
        log.info("tuned pipeline from %s", path)
    return Path(path) if path is not None else None


def cli_predictor(cfg, args, checkpoints, post_path, device: str | None = None):
    """The predictor of predict, serve and pseudo-label, built from the tuned pipeline (or
    ``--untuned``); ``--backend``/``--precision``/``--threads``/``--no-clean-gate`` override the
    config."""
    from steel_defect.inference.networks import resolve_backend
    from steel_defect.inference.pipeline import build_predictor

    # auto: the faster CPU backend on a CPU (asked without importing torch), else torch
    backend, device = resolve_backend(args.backend or cfg.inference.backend, device or cfg.inference.device)
    if backend == "torch" and checkpoints and all(Path(c).suffix == ".onnx" for c in checkpoints):
        backend, device = "onnx", "cpu"  # an export has no torch model: ONNX Runtime runs it
    if backend == "torch":
        device = torch_device(device)
    threads = args.threads or cfg.inference.threads
    return build_predictor(
        post_path,
        checkpoints,
        untuned=args.untuned,
        tta=tuple(cfg.inference.tta),
        device=device,
        backend=backend,
        threads=threads,
        precision=args.precision or cfg.inference.precision,
        clean_gate=cfg.inference.clean_gate and not getattr(args, "no_clean_gate", False),
    )


def promoted_spec(store) -> Path | None:
    """The tuned pipeline of the version promoted in a labels database (``labels train``,
    ``labels promote``); None before any promotion."""
    promoted = store.promoted()
    if promoted is None:
        return None
    spec = Path(promoted["spec"])
    if not spec.is_file():
        from steel_defect.errors import UserError

        raise UserError(
            f"{store.path}: the promoted version {promoted['name']} names {spec}, which is gone; "
            "promote another (steel-defect labels versions, labels promote) or pass --postprocessing"
        )
    log.info("the promoted version %s of %s: %s", promoted["name"], store.path, spec)
    return spec


def label_predictor(cfg, args, store=None):
    """The model that pre-labels and scores the queue: --postprocessing or --checkpoints when
    given, else the version promoted in ``store`` (the labels database), else None (a labelling
    session never picks up a work folder's model by surprise)."""
    if not args.postprocessing and not args.checkpoints:
        spec = None if store is None else promoted_spec(store)
        return None if spec is None else cli_predictor(cfg, args, None, spec, device=args.device)
    post = Path(args.postprocessing) if args.postprocessing else None
    return cli_predictor(cfg, args, args.checkpoints, post, device=args.device)
