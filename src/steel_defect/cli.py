"""The ``steel-defect`` command line: one subcommand per step of the pipeline.

    steel-defect synth --out data/synth --n 200 --seed 0
    steel-defect split --config configs/seg/unet_resnet18_bcedice.yml
    steel-defect train --config configs/seg/unet_resnet18_bcedice.yml [--fold K] [--resume]
    steel-defect thresholds --config SEG_CFG [--cls-config CLS_CFG]   # -> postprocessing.yml
    steel-defect predict --postprocessing WORK/postprocessing.yml --images DIR --out submission.csv
    steel-defect predict --checkpoints A.pth --untuned --images DIR --out sub.csv   # no thresholds
    steel-defect export --postprocessing WORK/postprocessing.yml --out DIR [--int8]   # ONNX files
    steel-defect evaluate --pred submission.csv --truth test_truth.csv [--json]
    steel-defect report --pred submission.csv --truth T.csv --images DIR --out report.html
    steel-defect runs [WORK_DIR ...] [--diff RUN_A RUN_B] [--csv | --json]   # leaderboard
    steel-defect serve [--checkpoints A.pth ...] [--examples DIR] [--port 8000]   # web GUI + API
    steel-defect validate submission.csv [--truth T.csv | --sample-submission S.csv]
    steel-defect config --config CFG [--opts k=v ...]    # print the resolved config
    steel-defect config --docs                            # every key with default and meaning
    steel-defect label --images DIR --db labels.sqlite [--postprocessing P.yml]   # labelling page
    steel-defect labels import|export|stats|queue|history|restore --db labels.sqlite ...
    steel-defect watch DIR --db inspection.sqlite [--postprocessing P.yml] [--archive DIR]  # line

``split_folds.py``, ``train.py`` and ``inference.py`` at the repository root call
:func:`main` with their subcommand, so both spellings behave the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from steel_defect.constants import ENGINES, HOLDOUT_PARTS
from steel_defect.errors import UserError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise calls the network

log = logging.getLogger("steel_defect")


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="experiment YAML (merged onto its base)")
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides such as train.epochs=2 paths.work_dir=work/x",
    )


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
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


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        help="default inference.backend (auto: onnx on a CPU with onnxruntime installed, else torch); "
        "onnx: ONNX Runtime on the CPU (a .pth is exported once, to <name>.onnx beside it or to the "
        "user's cache when that folder is read-only)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default inference.threads: physical cores)")


def _cmd_synth(args) -> int:
    from steel_defect.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        Path(args.out), n=args.n, seed=args.seed, test_fraction=args.test_fraction
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_split(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.data.folds import FLAG_COLUMNS, make_split, read_folds, split_digest, write_split

    cfg = load_config(args.config, args.opts, require=("paths.train_csv", "paths.train_images"))
    table = make_split(cfg)
    path = Path(cfg.paths.folds_csv)
    if path.is_file() and not args.force:
        old = split_digest(read_folds(path))
        if old != split_digest(table):
            from steel_defect.models.checkpoint import checkpoints_on_split

            used = checkpoints_on_split({Path(cfg.paths.work_dir), path.parent}, old)
            if used:
                raise UserError(
                    f"{path} would change, and {len(used)} checkpoint(s) were trained on it (e.g. "
                    f"{used[0]}): their validation folds would no longer be out of fold. Write the new "
                    "split elsewhere (--opts paths.folds_csv=...), or pass --force and retrain them"
                )
    write_split(cfg, table)
    counts = table.groupby("fold")[FLAG_COLUMNS].sum()
    counts.insert(0, "images", table.groupby("fold").size())
    print(counts.to_string())
    print(f"wrote {cfg.paths.folds_csv}")
    return 0


def _cmd_train(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.training.runner import train

    opts = list(args.opts)
    if args.engine:
        opts.append(f"train.engine={args.engine}")
    if args.deterministic:
        opts.append("train.deterministic=true")
    cfg = load_config(args.config, opts, require=("paths.train_csv", "paths.train_images", "paths.folds_csv"))
    result = train(cfg, fold=args.fold, resume=args.resume, nproc=args.nproc)
    print(json.dumps(result, indent=2))
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _tuned_path(cfg, override: str | None) -> Path | None:
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


def _predictor(cfg, args, checkpoints, post_path, device: str | None = None):
    """The predictor of predict, serve and pseudo-label, built from the tuned pipeline (or
    ``--untuned``); ``--backend``/``--threads`` override the config."""
    from steel_defect.inference.networks import resolve_backend
    from steel_defect.inference.pipeline import build_predictor

    backend = args.backend or cfg.inference.backend
    if checkpoints and all(Path(c).suffix == ".onnx" for c in checkpoints):
        backend = "onnx"  # exports run on ONNX Runtime whatever the config says
    # auto: ONNX Runtime on a CPU (asked without importing torch), else torch
    backend, device = resolve_backend(backend, device or cfg.inference.device)
    if backend == "torch":
        device = _device(device)
    threads = args.threads or cfg.inference.threads
    return build_predictor(
        post_path,
        checkpoints,
        untuned=args.untuned,
        tta=tuple(cfg.inference.tta),
        device=device,
        backend=backend,
        threads=threads,
    )


def _cmd_predict(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.run import predict_folder, summary_text

    cfg = load_config(args.config, args.opts)
    predictor = _predictor(cfg, args, args.checkpoints, _tuned_path(cfg, args.postprocessing))
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
    predictor = _predictor(cfg, args, args.checkpoints, _tuned_path(cfg, args.postprocessing))
    summary = pseudo_label(predictor, args.images, args.out, rules, batch_size=cfg.inference.batch_size)
    print(json.dumps(summary, indent=2))
    print(f"train on them with: --opts '{extra_opt(summary)}'", file=sys.stderr)
    return 0


def _cmd_serve(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.webapp.app import Limits, create_app
    from steel_defect.webapp.examples import folder_examples
    from steel_defect.webapp.security import access_token, is_loopback
    from steel_defect.webapp.server import demo_model, serve
    from steel_defect.webapp.service import InferenceService

    token = access_token(args.host, args.token, args.no_auth)  # before the model loads: fails in a second
    if token is None and not is_loopback(args.host):
        log.warning("--no-auth: anyone who can reach %s can use the model", args.host)
    cfg = load_config(args.config, args.opts)
    max_file_bytes = int(args.max_file_mb * 2**20)
    # Read before the model loads, so a wrong folder fails in a second.
    examples = folder_examples(args.examples, max_file_bytes) if args.examples else None
    checkpoints, post_path = args.checkpoints, _tuned_path(cfg, args.postprocessing)
    if not checkpoints and post_path is None:
        checkpoints, post_path = demo_model(args.demo_dir)
        log.info("serving the demo model: %s", " ".join(checkpoints))
    predictor = _predictor(cfg, args, checkpoints, post_path, device=args.device)
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


def _label_predictor(cfg, args):
    """The model that pre-labels and scores the queue: only when --postprocessing or --checkpoints
    name one (a labelling session never picks up a work folder's model by surprise)."""
    if not args.postprocessing and not args.checkpoints:
        return None
    post = Path(args.postprocessing) if args.postprocessing else None
    return _predictor(cfg, args, args.checkpoints, post, device=args.device)


def _cmd_label(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.labels.folder import FrameFolder
    from steel_defect.labels.store import LabelStore
    from steel_defect.labels.transfer import IMAGES_META
    from steel_defect.webapp.app import Limits
    from steel_defect.webapp.labelling import MAX_SAVE_BYTES, LabelService, create_label_app
    from steel_defect.webapp.security import access_token, is_loopback
    from steel_defect.webapp.server import serve

    token = access_token(args.host, args.token, args.no_auth)
    if token is None and not is_loopback(args.host):
        log.warning("--no-auth: anyone who can reach %s can edit the labels", args.host)
    max_file_bytes = int(args.max_file_mb * 2**20)
    folder = FrameFolder(args.images, max_file_bytes)
    store = LabelStore.open(args.db)
    store.set_meta(IMAGES_META, str(folder.directory.resolve()))
    cfg = load_config(args.config, args.opts)
    predictor = _label_predictor(cfg, args)
    service = LabelService(store, folder, predictor)
    log.info(
        "%d frames to label in %s (%d files skipped), labels in %s",
        len(folder.paths),
        folder.directory,
        len(folder.skipped),
        store.path,
    )
    limits = Limits(max_file_bytes=max_file_bytes, max_request_bytes=MAX_SAVE_BYTES, timeout_s=args.timeout)
    serve(create_label_app(service, limits, token=token), args.host, args.port)
    return 0


def _cmd_watch(args) -> int:
    import signal
    import threading

    from steel_defect.config import load_config
    from steel_defect.line.alarms import AlarmMonitor, parse_rule
    from steel_defect.line.log import InspectionLog
    from steel_defect.line.watch import Watcher
    from steel_defect.webapp.security import access_token, is_loopback

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder to watch (create it, or mount the share first)")
    rules = dict(parse_rule(rule) for rule in args.alarm or [])
    token = None if args.no_page else access_token(args.host, args.token, args.no_auth)
    if not args.no_page and token is None and not is_loopback(args.host):
        log.warning("--no-auth: anyone who can reach %s can read the inspection log", args.host)
    from steel_defect.webapp.server import limit_malloc_arenas

    # A long-running loop over batches from several threads (the page's, watchdog's): capped
    # malloc arenas keep its RSS flat, as for `serve` (bench/soak.py, bench/line_watch.py).
    limit_malloc_arenas()
    inspection_log = InspectionLog.open(args.db)  # before the model loads: a bad --db fails in a second
    cfg = load_config(args.config, args.opts)
    predictor = _predictor(
        cfg, args, args.checkpoints, _tuned_path(cfg, args.postprocessing), device=args.device
    )
    watcher = Watcher(
        folder,
        inspection_log,
        predictor,
        line=args.line,
        archive=args.archive,
        settle_s=args.settle,
        poll_s=args.poll_interval,
        batch_size=args.batch_size or cfg.inference.batch_size,
        events=not args.poll,
        keep_days=args.keep_days,
        keep_rows=args.keep_rows,
        alarms=AlarmMonitor(rules, args.alarm_window, args.alarm_min_frames, args.alarm_url)
        if rules
        else None,
    )
    log.info("watching %s as line %r; log in %s", watcher.folder, watcher.line, inspection_log.name)
    stop = threading.Event()

    def finish(signum, _frame):  # SIGTERM (systemd, docker stop) and Ctrl+C end the current batch, then stop
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()
        watcher.wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, finish)
    if args.no_page:
        watcher.run(stop, idle_exit_s=args.exit_when_idle)
        return 0
    from steel_defect.webapp.app import Limits
    from steel_defect.webapp.dashboard import create_dashboard_app
    from steel_defect.webapp.server import serve_in_thread

    app = create_dashboard_app(inspection_log, Limits(timeout_s=args.timeout), token=token, watcher=watcher)
    server, url = serve_in_thread(
        app, args.host, port=args.port, log_level="info", access_log=args.access_log
    )
    log.info("dashboard at %s/ (API docs at /docs)", url)
    try:
        watcher.run(stop, idle_exit_s=args.exit_when_idle)
    finally:
        server.should_exit = True
    return 0


def _print_stats(stats) -> None:
    print(f"{stats.frames} frames: " + ", ".join(f"{n} {s}" for s, n in stats.by_status.items()))
    print(f"{stats.saves} saves in the history")
    for class_id, count in stats.confirmed_with_class.items():
        origins = ", ".join(f"{n} {o}" for o, n in stats.origins[class_id].items() if n)
        print(
            f"class {class_id}: on {count} confirmed frames"
            + (f"; saved masks: {origins}" if origins else "")
        )
    queue = stats.queue
    if queue["size"]:
        print(f"queue: {queue['size']} frames, scored by {queue['model_version']} at {queue['scored_at']}")
    else:
        print("queue: not scored yet (steel-defect labels queue --db DB --postprocessing ...)")


def _cmd_labels(args) -> int:
    from steel_defect.labels import transfer
    from steel_defect.labels.store import LabelStore

    action = args.labels_command
    if action == "stats":
        with LabelStore.open(args.db, readonly=True) as store:
            stats = store.stats()
        if args.json:
            from dataclasses import asdict

            print(json.dumps(asdict(stats), indent=2))
        else:
            _print_stats(stats)
        return 0
    if action == "export":
        with LabelStore.open(args.db, readonly=True) as store:
            summary = transfer.export_folder(store, args.out, args.images)
        print(json.dumps(summary, indent=2))
        print(f"train on it with: steel-defect demo --recipe real --data-dir {args.out}", file=sys.stderr)
        return 0
    if action == "history":
        with LabelStore.open(args.db, readonly=True) as store:
            for entry in store.history(args.frame):
                drawn = [c for c, rle in enumerate(entry["masks"], 1) if rle]
                print(
                    f"{entry['id']:>6}  version {entry['version']:<4} {entry['saved_at']}  "
                    f"{entry['status']:<12} classes {drawn or 'none'}  ({entry['source']})"
                )
        return 0
    with LabelStore.open(args.db, create=action == "import") as store:
        if action == "import":
            counts = transfer.import_csv(store, args.csv, args.images, replace=args.replace)
            print(json.dumps(counts, indent=2))
        elif action == "restore":
            state = store.restore(args.frame, args.to)
            print(f"{args.frame}: saved state {args.to} again as version {state.version} ({state.status})")
        elif action == "queue":
            from steel_defect.config import load_config
            from steel_defect.labels.folder import FrameFolder
            from steel_defect.labels.queue import score_queue

            cfg = load_config(args.config, args.opts)
            predictor = _label_predictor(cfg, args)
            if predictor is None:
                raise UserError("labels queue needs the model: --postprocessing WORK/postprocessing.yml")
            images = args.images or store.get_meta(transfer.IMAGES_META)
            if images is None:
                raise UserError(f"{args.db} does not record its images folder; pass --images DIR")
            summary = score_queue(store, FrameFolder(images), predictor, cfg.inference.batch_size)
            print(json.dumps(summary, indent=2))
    return 0


def _cmd_export(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.export import export_all

    need = ("paths.train_csv", "paths.train_images") if args.int8 else ()
    cfg = load_config(args.config, args.opts, require=need)
    summary = export_all(
        args.checkpoints,
        args.out,
        cfg,
        _tuned_path(cfg, args.postprocessing),
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


def _cmd_thresholds(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.inference.networks import resolve_backend
    from steel_defect.inference.oof import search_thresholds

    need = ("paths.train_csv", "paths.train_images", "paths.folds_csv")
    seg_cfg = load_config(args.config, args.opts, require=need)
    # --opts are the segmenter's alone: a paths.work_dir there must not move the other models
    cls_cfg = load_config(args.cls_config, args.cls_opts) if args.cls_config else None
    members = [load_config(path, args.member_opts) for path in args.ensemble]
    backend, device = resolve_backend(seg_cfg.inference.backend, seg_cfg.inference.device)
    device = device if backend == "onnx" else _device(device)
    summary = search_thresholds(
        seg_cfg, cls_cfg, args.out, device=device, members=members, name=args.checkpoint_name
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_demo(args) -> int:
    from steel_defect.demo import format_summary, run_demo

    summary = run_demo(
        args.data_dir,
        args.work_dir,
        n_images=args.n,
        seed=args.seed,
        epochs=args.epochs,
        recipe=args.recipe,
        opts=args.opts,
        pseudo_images=args.pseudo_images,
        pseudo_weight=args.pseudo_weight,
        pseudo_opts=args.pseudo_opts,
        holdout=args.holdout,
        seg_config=args.seg_config,
    )
    print(format_summary(summary))
    return 0


def _cmd_evaluate(args) -> int:
    from steel_defect.evaluation.metric import evaluate_files, format_report

    result = evaluate_files(args.pred, args.truth)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _cmd_report(args) -> int:
    from steel_defect.evaluation.report import write_report

    predictor = None
    if args.probs_from:
        from steel_defect.inference.predictor import Predictor

        predictor = Predictor(args.probs_from, device=_device("auto"))
    result = write_report(
        args.pred,
        args.truth,
        args.images,
        args.out,
        worst=args.worst,
        search_report=args.search_report,
        predictor=predictor,
    )
    mean, empty = result["mean_dice"], result["empty_dice"]
    print(f"mean Dice {mean:.4f} (all-empty {empty:.4f}) on {result['images']} images")
    print(f"wrote {result['out']}")
    return 0


def _cmd_runs(args) -> int:
    from steel_defect.training import runs

    if args.diff:
        print(runs.format_diff(runs.diff_configs(*args.diff), *args.diff))
        return 0
    rows = runs.leaderboard(args.work_dirs or ["work"])
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        print(runs.to_csv(rows), end="")
    else:
        print(runs.format_table(rows))
    return 0


def _cmd_validate(args) -> int:
    from steel_defect.data.annotations import read_annotations
    from steel_defect.data.submission import read_sample_submission, read_submission

    expected = None
    if args.truth:
        truth = read_annotations(args.truth)
        expected = truth.image_ids if truth.layout == "wide" else None
    elif args.sample_submission:
        expected = read_sample_submission(args.sample_submission)
    rows = read_submission(args.submission, expected_ids=expected)
    print(f"{args.submission}: valid, {len(rows)} images")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from steel_defect.config import load_config, to_plain
    from steel_defect.config.loader import schema_table

    if args.docs:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, doc in schema_table():
            print(f"| `{key}` | `{default}` | {doc} |")
        return 0
    cfg = load_config(args.config, args.opts)
    print(yaml.safe_dump(to_plain(cfg), sort_keys=False), end="")
    return 0


def _version() -> str:
    from steel_defect import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steel-defect", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"steel-defect {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic Severstal-layout data set")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=200, help="number of images (train + test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of images held out as test")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("split", help="multilabel-stratified k-fold split -> <work_dir>/folds.csv")
    _add_config_args(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite a folds.csv that trained checkpoints were trained on (they then need retraining)",
    )
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("train", help="train the classifier or segmenter that the config names")
    _add_config_args(p)
    p.add_argument("--fold", type=int, default=None, help="validation fold (default folds.valid_fold)")
    p.add_argument(
        "--resume", action="store_true", help="continue from <work_dir>/fold<K>/checkpoints/last.pth"
    )
    p.add_argument("--engine", choices=ENGINES, help="overrides train.engine")
    p.add_argument("--nproc", type=int, default=1, help="DDP worker processes on this node")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="train.deterministic=true: fixed thread count, deterministic kernels (README, Reproducibility)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="images -> submission CSV (classifier gate, TTA, post-processing)")
    _add_config_args(p, required=False)
    p.add_argument(
        "--checkpoints",
        nargs="+",
        help="default: the tuned pipeline's; else exactly its models (checkpoints or their ONNX exports)",
    )
    p.add_argument("--images", help="folder of images (default paths.test_images)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--sample-submission", help="predict its images, in its order")
    _add_pipeline_args(p)
    _add_backend_args(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "pseudo-label", help="label unlabelled frames with an ensemble, keeping only confident ones"
    )
    _add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="the ensemble (default: the tuned pipeline's)")
    _add_pipeline_args(p)
    p.add_argument("--images", required=True, help="folder of unlabelled frames")
    p.add_argument("--out", required=True, help="folder for train.csv and pseudo_labels.csv")
    p.add_argument("--upper", type=float, default=0.8, help="a painted class needs a pixel this sure")
    p.add_argument("--lower", type=float, default=0.2, help="an empty class needs every pixel below")
    p.add_argument("--no-agree", action="store_true", help="do not require the classifier to agree")
    _add_backend_args(p)
    p.set_defaults(func=_cmd_pseudo_label)

    p = sub.add_parser("serve", help="web GUI and REST API on the predictor (http://127.0.0.1:8000)")
    _add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="default: the tuned pipeline's, or `make demo`'s")
    _add_pipeline_args(p)
    p.add_argument("--demo-dir", default="work/demo", help="where `make demo` wrote its summary.json")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="0.0.0.0 exposes it to the network, which needs a token (or --no-auth)",
    )
    p.add_argument(
        "--token",
        help="require this access token (16+ characters) from every API client; the page asks for it "
        "once. Default: $STEEL_DEFECT_TOKEN (better: a command line is visible to other users)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a non-loopback --host without a token: every client that can reach it is trusted",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (default inference.device)")
    _add_backend_args(p)
    p.add_argument("--keep", type=int, default=256, help="results kept for re-thresholding (1.6 MB each)")
    p.add_argument("--keep-mb", type=float, default=512.0, help="memory bound of the kept results, in MB")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to answer a request (else 408 or 503)"
    )
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
    p.add_argument("--access-log", action="store_true", help="log each request (default: warnings only)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("label", help="label frames in the page: pre-labels, queue, labels database")
    _add_config_args(p, required=False)
    p.add_argument("--images", required=True, help="folder of the frames to label (1600x256)")
    p.add_argument("--db", required=True, help="labels database, created when missing (labels.sqlite)")
    p.add_argument("--checkpoints", nargs="+", help="models that pre-label (default: the tuned pipeline's)")
    _add_pipeline_args(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 exposes it, which needs a token (or --no-auth)"
    )
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--token", help="require this access token (default $STEEL_DEFECT_TOKEN)")
    p.add_argument("--no-auth", action="store_true", help="a non-loopback --host without a token")
    p.add_argument("--device", help="cpu, cuda or auto (default inference.device)")
    _add_backend_args(p)
    p.add_argument("--max-file-mb", type=float, default=10.0, help="largest frame file offered")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to answer a request")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("labels", help="the labels database: import, export, stats, queue, history, restore")
    actions = p.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    q = actions.add_parser("import", help="train.csv (either layout) -> confirmed labels")
    q.add_argument("--db", required=True)
    q.add_argument("csv", help="train.csv: ImageId_ClassId,EncodedPixels or ImageId,ClassId,EncodedPixels")
    q.add_argument("--images", help="the frames' folder (checked; the long layout's defect-free frames)")
    q.add_argument("--replace", action="store_true", help="overwrite frames already labelled otherwise")
    q = actions.add_parser("export", help="confirmed frames -> DIR/train.csv + DIR/train_images/")
    q.add_argument("--db", required=True)
    q.add_argument("--out", required=True, help="a new folder, or an earlier export (replaced whole)")
    q.add_argument("--images", help="the frames' folder (default: the one the database records)")
    q = actions.add_parser("stats", help="counts per status, class and origin; the queue's model")
    q.add_argument("--db", required=True)
    q.add_argument("--json", action="store_true")
    q = actions.add_parser("queue", help="score the unlabelled frames with the model; store pre-labels")
    q.add_argument("--db", required=True)
    _add_config_args(q, required=False)
    q.add_argument("--images", help="the frames' folder (default: the one the database records)")
    q.add_argument("--checkpoints", nargs="+")
    _add_pipeline_args(q)
    _add_backend_args(q)
    q.add_argument("--device", help="cpu, cuda or auto")
    q = actions.add_parser("history", help="every save of one frame")
    q.add_argument("--db", required=True)
    q.add_argument("--frame", required=True)
    q = actions.add_parser("restore", help="save an earlier state of a frame again (see history)")
    q.add_argument("--db", required=True)
    q.add_argument("--frame", required=True)
    q.add_argument("--to", type=int, required=True, help="the history id to restore")
    p.set_defaults(func=_cmd_labels)

    p = sub.add_parser("export", help="checkpoints -> ONNX files for --backend onnx (fp32, optional int8)")
    _add_config_args(p, required=False)
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
    _add_pipeline_args(p)
    p.add_argument("--force", action="store_true", help="write the int8 model even if it loses Dice")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("thresholds", help="search per-class thresholds on out-of-fold predictions")
    _add_config_args(p)
    p.add_argument("--cls-config", help="classifier config: its folds gate the segmenter in the search")
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="CFG",
        help="more segmenter configs trained on the same folds: fold K's maps average every config's "
        "fold-K model, as the ensemble predicts",
    )
    p.add_argument("--cls-opts", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of --cls-config")
    p.add_argument(
        "--member-opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of each --ensemble config",
    )
    p.add_argument(
        "--checkpoint-name",
        metavar="NAME",
        help="which checkpoint of each segmenter fold to tune: best, swa, snapshot_K, last "
        "(default inference.search_checkpoint)",
    )
    p.add_argument(
        "--out", help="YAML to write (default paths.postprocessing or <work_dir>/postprocessing.yml)"
    )
    p.set_defaults(func=_cmd_thresholds)

    p = sub.add_parser("demo", help="the main job: data, folds, training, thresholds, submission, score")
    p.add_argument("--data-dir", help="real Severstal-layout folder (default: synthetic data)")
    p.add_argument("--work-dir", default="work/demo", help="where everything is written")
    p.add_argument("--n", type=int, default=240, help="synthetic images (train + test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the demo configs' train.epochs")
    p.add_argument(
        "--recipe",
        choices=("synthetic", "real"),
        default="synthetic",
        help="synthetic: the small demo configs, fold 0; real: ImageNet-pretrained recipe for real "
        "steel (configs/real/), every fold (use with --data-dir)",
    )
    p.add_argument("--opts", nargs="*", default=[], help="key=value overrides of the segmenter config")
    p.add_argument("--seg-config", help="a segmenter config in place of the recipe's (a variant to compare)")
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        choices=range(HOLDOUT_PARTS),
        metavar=f"{{0..{HOLDOUT_PARTS - 1}}}",
        help="with --data-dir: which stratified quarter of the labelled frames is the test set",
    )
    p.add_argument(
        "--pseudo-images",
        metavar="DIR",
        help="unlabelled frames: pseudo-label them with the first round's ensemble, train a second "
        "round with them and report both rounds",
    )
    p.add_argument("--pseudo-weight", type=float, default=1.0, help="data.extra weight of the pseudo labels")
    p.add_argument(
        "--pseudo-opts", nargs="*", default=[], help="key=value overrides of the second round only"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="score a submission with the challenge metric")
    p.add_argument("--pred", required=True, help="submission CSV (ImageId_ClassId,EncodedPixels)")
    p.add_argument("--truth", required=True, help="truth CSV, wide or long layout")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="error-analysis HTML: where a submission loses Dice, worst images")
    p.add_argument("--pred", required=True, help="submission CSV (ImageId_ClassId,EncodedPixels)")
    p.add_argument("--truth", required=True, help="truth CSV, wide or long layout")
    p.add_argument("--images", required=True, help="folder holding the frames (for the worst images)")
    p.add_argument("--out", required=True, help="HTML file to write (self-contained)")
    p.add_argument("--worst", type=int, default=6, help="worst images drawn per class")
    p.add_argument(
        "--search-report",
        help="<postprocessing>.report.json of `steel-defect thresholds`: Dice vs threshold and min area",
    )
    p.add_argument(
        "--probs-from",
        nargs="+",
        metavar="CHECKPOINT",
        help="segmenter (and classifier) checkpoints: show the drawn frames' maximum pixel and "
        "classifier probabilities (runs the models on those frames only)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("runs", help="leaderboard of the trained folds under some folders")
    p.add_argument("work_dirs", nargs="*", metavar="WORK_DIR", help="folders to search (default: work)")
    p.add_argument(
        "--diff", nargs=2, metavar=("RUN_A", "RUN_B"), help="config keys that differ (fold<K>/ folders)"
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="CSV instead of an aligned table")
    output.add_argument("--json", action="store_true", help="JSON instead of an aligned table")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("validate", help="check a submission's format, row by row")
    p.add_argument("submission")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--truth", help="every image of this truth file must be present")
    group.add_argument("--sample-submission", help="every image of this sample submission must be present")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("watch", help="judge frames as they arrive in a folder; log them; dashboard page")
    p.add_argument("folder", help="the folder the line camera writes frames into")
    p.add_argument(
        "--db", required=True, help="inspection log: a SQLite file (created) or a postgresql+psycopg:// URL"
    )
    _add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="default: the tuned pipeline's")
    _add_pipeline_args(p)
    _add_backend_args(p)
    p.add_argument("--device", help="cpu, cuda or auto (default inference.device)")
    p.add_argument("--line", help="the line's name in the log and on the page (default: the folder's name)")
    p.add_argument("--archive", metavar="DIR", help="move judged frames here (default: leave them)")
    p.add_argument(
        "--settle", type=float, default=1.0, help="seconds a frame's size must hold before it is read"
    )
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between listings of the folder")
    p.add_argument("--poll", action="store_true", help="no file events, listings only (network shares)")
    p.add_argument(
        "--batch-size", type=int, help="most frames per batch under a backlog (default inference.batch_size)"
    )
    p.add_argument("--keep-days", type=float, help="retention: drop log rows older than this")
    p.add_argument("--keep-rows", type=int, help="retention: keep at most this many frame rows")
    p.add_argument(
        "--alarm",
        action="append",
        metavar="CLASS:RATE",
        help="alarm when CLASS is on more than RATE of the window's frames (repeatable)",
    )
    p.add_argument("--alarm-window", type=float, default=300.0, help="seconds of frames an alarm rate covers")
    p.add_argument(
        "--alarm-min-frames", type=int, default=20, help="frames the window needs before it can alarm"
    )
    p.add_argument("--alarm-url", help="POST each alarm to this URL as JSON")
    p.add_argument("--no-page", action="store_true", help="no dashboard page, the loop alone")
    p.add_argument(
        "--exit-when-idle", type=float, metavar="S", help="stop after S seconds with nothing to judge"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 exposes the page, which needs a token (or --no-auth)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require this access token (default $STEEL_DEFECT_TOKEN)")
    p.add_argument("--no-auth", action="store_true", help="a non-loopback --host without a token")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to answer a request")
    p.add_argument("--access-log", action="store_true", help="log each request (default: warnings only)")
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser("config", help="print the resolved config, or document every key")
    _add_config_args(p, required=False)
    p.add_argument("--docs", action="store_true", help="print a Markdown table of every key")
    p.set_defaults(func=_cmd_config)
    return parser


def _is_user_error(err: Exception) -> bool:
    """Whether ``err`` is a problem with the user's input (one line, exit status 2)."""
    # The project's input errors (ConfigError, AnnotationError, RLEError, SubmissionError,
    # CheckpointError, PipelineError, ExportError, InvalidMasks, ImportConflict...) are UserErrors;
    # a bare ValueError is a bug and keeps its traceback. ImageReadError (an OSError) and the
    # databases' errors (RuntimeErrors) are named here, looked up only when their module was
    # imported (nothing else can raise them), so that `--help` does not import OpenCV to name one.
    images = sys.modules.get("steel_defect.data.images")
    labels = sys.modules.get("steel_defect.labels.store")
    kinds = (UserError, FileNotFoundError) + ((images.ImageReadError,) if images else ())
    kinds += (labels.LabelStoreError,) if labels else ()
    line_log = sys.modules.get("steel_defect.line.log")
    kinds += (line_log.LogError,) if line_log else ()
    return isinstance(err, kinds)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as err:
        if args.verbose or not _is_user_error(err):
            raise
        print(f"steel-defect {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
