"""Predicting, serving and exporting: ``predict``, ``pseudo-label``, ``serve``, ``export``."""

from __future__ import annotations

import json
import sys

from steel_defect.cli.common import (
    add_backend_args,
    add_config_args,
    add_page_args,
    add_pipeline_args,
    cli_predictor,
    log,
    page_token,
    tuned_path,
)
from steel_defect.errors import UserError


def register(sub) -> None:
    """Add the prediction, serving and export commands."""
    p = sub.add_parser("predict", help="images -> submission CSV (classifier gate, TTA, post-processing)")
    add_config_args(p, required=False)
    p.add_argument(
        "--checkpoints",
        nargs="+",
        help="default: the tuned pipeline's; else exactly its models (checkpoints or their ONNX exports)",
    )
    p.add_argument("--images", help="folder of images (default paths.test_images)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--sample-submission", help="predict its images, in its order")
    add_pipeline_args(p)
    add_backend_args(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "pseudo-label", help="label unlabelled frames with an ensemble, keeping only confident ones"
    )
    add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="the ensemble (default: the tuned pipeline's)")
    add_pipeline_args(p)
    p.add_argument("--images", required=True, help="folder of unlabelled frames")
    p.add_argument("--out", required=True, help="folder for train.csv and pseudo_labels.csv")
    p.add_argument("--upper", type=float, default=0.8, help="a painted class needs a pixel this sure")
    p.add_argument("--lower", type=float, default=0.2, help="an empty class needs every pixel below")
    p.add_argument("--no-agree", action="store_true", help="do not require the classifier to agree")
    add_backend_args(p)
    p.set_defaults(func=_cmd_pseudo_label)

    p = sub.add_parser("serve", help="web GUI and REST API on the predictor (http://127.0.0.1:8000)")
    add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="default: the tuned pipeline's, or `make demo`'s")
    add_pipeline_args(p)
    p.add_argument("--demo-dir", default="work/demo", help="where `make demo` wrote its summary.json")
    add_page_args(p, port=8000, serves="it to the network")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (default inference.device)")
    add_backend_args(p)
    p.add_argument("--keep", type=int, default=256, help="results kept for re-thresholding (1.6 MB each)")
    p.add_argument("--keep-mb", type=float, default=512.0, help="memory bound of the kept results, in MB")
    p.add_argument(
        "--max-queued",
        type=int,
        default=8,
        help="predictions in progress at once; more get 503 + Retry-After",
    )
    p.add_argument("--max-file-mb", type=float, default=10.0, help="largest accepted upload")
    p.add_argument("--max-files", type=int, default=32, help="most images in one request")
    p.add_argument(
        "--examples",
        metavar="DIR",
        help="offer the first 12 frames of DIR (jpg/png/bmp/tif, 1600x256, by name) as the page's "
        "examples instead of the synthetic ones; other files are skipped with a warning",
    )
    p.add_argument("--log", metavar="DB", help="an inspection log (`watch --db`): its dashboard at /line")
    p.add_argument(
        "--labels-db",
        metavar="DB",
        help="serve the model version promoted in this labels database (`labels train`, `labels "
        "promote`) when no --postprocessing or --checkpoints is given",
    )
    p.add_argument("--access-log", action="store_true", help="log each request (default: warnings only)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("export", help="checkpoints -> ONNX files for --backend onnx (fp32, optional int8)")
    add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="checkpoints to export (default: the tuned pipeline's)")
    p.add_argument("--out", required=True, help="folder for <fold>_<name>.onnx (and .int8.onnx)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write a static int8 model, calibrated on training frames (paths.train_csv) and "
        "refused if it loses more than 0.005 mean Dice on held-out frames",
    )
    p.add_argument("--calib-images", type=int, default=16, help="int8 calibration frames (training folds)")
    p.add_argument(
        "--holdout-images", type=int, default=16, help="frames of the validation fold for the int8 Dice check"
    )
    add_pipeline_args(p)
    p.add_argument("--force", action="store_true", help="write the int8 model even if it loses Dice")
    p.set_defaults(func=_cmd_export)


def _cmd_predict(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.run import predict_folder, summary_text

    cfg = load_config(args.config, args.opts)
    predictor = cli_predictor(cfg, args, args.checkpoints, tuned_path(cfg, args.postprocessing))
    summary = predict_folder(
        predictor,
        args.images or cfg.paths.test_images,
        args.out,
        args.sample_submission or cfg.paths.sample_submission,
        batch_size=cfg.inference.batch_size,
        num_workers=cfg.inference.num_workers,
    )
    print(summary_text(summary), file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if summary.failed else 0


def _cmd_pseudo_label(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.pseudo import PseudoRules, extra_opt, pseudo_label

    cfg = load_config(args.config, args.opts)
    rules = PseudoRules(upper=args.upper, lower=args.lower, agree=not args.no_agree)
    predictor = cli_predictor(cfg, args, args.checkpoints, tuned_path(cfg, args.postprocessing))
    summary = pseudo_label(predictor, args.images, args.out, rules, batch_size=cfg.inference.batch_size)
    print(json.dumps(summary, indent=2))
    print(f"train on them with: --opts '{extra_opt(summary)}'", file=sys.stderr)
    return 0


def _cmd_serve(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.webapp.app import Limits, create_app
    from steel_defect.webapp.examples import folder_examples
    from steel_defect.webapp.server import demo_model, serve
    from steel_defect.webapp.service import InferenceService

    token = page_token(args, "use the model")
    cfg = load_config(args.config, args.opts)
    max_file_bytes = int(args.max_file_mb * 2**20)
    # Read before the model loads, so a wrong folder fails in a second.
    examples = folder_examples(args.examples, max_file_bytes) if args.examples else None
    checkpoints, post_path = served_model(cfg, args)
    if not checkpoints and post_path is None:
        checkpoints, post_path = demo_model(args.demo_dir)
        log.info("serving the demo model: %s", " ".join(checkpoints))
    predictor = cli_predictor(cfg, args, checkpoints, post_path, device=args.device)
    limits = Limits(
        max_file_bytes=max_file_bytes,
        max_files=args.max_files,
        max_request_bytes=max_file_bytes * args.max_files + 2**20,
        timeout_s=args.timeout,
        max_queued=args.max_queued,
    )
    service = InferenceService(
        predictor, keep=args.keep, batch_size=cfg.inference.batch_size, keep_mb=args.keep_mb
    )
    inspection_log = None
    if args.log:
        from steel_defect.line.log import InspectionLog

        inspection_log = InspectionLog.open(args.log, create=False)
        log.info("the line's dashboard: http://%s:%d/line", args.host, args.port)
    serve(
        create_app(service, limits, examples, token=token, inspection_log=inspection_log),
        args.host,
        args.port,
        access_log=args.access_log,
    )
    return 0


def served_model(cfg, args) -> tuple:
    """(checkpoints, tuned pipeline) that ``serve`` names: --checkpoints and --postprocessing,
    else the version promoted in --labels-db, else the config's tuned pipeline (or nothing: the
    demo's model)."""
    checkpoints, override = args.checkpoints, args.postprocessing
    if not checkpoints and not override and args.labels_db:
        from steel_defect.cli.common import promoted_spec
        from steel_defect.labels.store import LabelStore

        with LabelStore.open(args.labels_db, readonly=True) as store:
            spec = promoted_spec(store)
        if spec is not None:
            return None, spec
        log.warning("%s has no promoted model version yet (steel-defect labels train)", args.labels_db)
    return checkpoints, tuned_path(cfg, override)


def _cmd_export(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.export import export_all

    need = ("paths.train_csv", "paths.train_images") if args.int8 else ()
    cfg = load_config(args.config, args.opts, require=need)
    summary = export_all(
        args.checkpoints,
        args.out,
        cfg,
        tuned_path(cfg, args.postprocessing),
        untuned=args.untuned,
        int8=args.int8,
        n_calib=args.calib_images,
        n_holdout=args.holdout_images,
        force=args.force,
    )
    print(json.dumps(summary, indent=2))
    refused = [e["int8"]["refused"] for e in summary if "refused" in e.get("int8", {})]
    if refused:
        raise UserError("; ".join(refused))
    return 0
