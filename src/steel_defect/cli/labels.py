"""Labelling: ``label`` (the page) and ``labels`` (import, export, stats, queue, history, restore;
train, versions, promote)."""

from __future__ import annotations

import json
import sys

from steel_defect.cli.common import (
    add_backend_args,
    add_config_args,
    add_page_args,
    add_pipeline_args,
    label_predictor,
    log,
    page_token,
)
from steel_defect.errors import UserError


def register(sub) -> None:
    """Add the labelling commands."""
    p = sub.add_parser("label", help="label frames in the page: pre-labels, queue, labels database")
    add_config_args(p, required=False)
    p.add_argument("--images", required=True, help="folder of the frames to label (1600x256)")
    p.add_argument("--db", required=True, help="labels database, created when missing (labels.sqlite)")
    p.add_argument("--checkpoints", nargs="+", help="models that pre-label (default: the tuned pipeline's)")
    add_pipeline_args(p)
    add_page_args(p, port=8001, serves="the page")
    p.add_argument("--device", help="cpu, cuda or auto (default inference.device)")
    add_backend_args(p)
    p.add_argument("--max-file-mb", type=float, default=10.0, help="largest frame file offered")
    p.add_argument(
        "--busy-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a save waits for another process's write to the database before the page"
        " says it is locked (default 5)",
    )
    p.add_argument(
        "--train-recipe", choices=("real", "synthetic"), help="the page's Train (default: labels train's)"
    )
    p.add_argument(
        "--train-opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides of the Train"
    )
    p.add_argument("--train-epochs", type=int, help="epochs of every network the Train trains")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser(
        "labels",
        help="the labels database: import, export, stats, queue, history, restore; train, versions, promote",
    )
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
    add_config_args(q, required=False)
    q.add_argument("--images", help="the frames' folder (default: the one the database records)")
    q.add_argument("--checkpoints", nargs="+")
    add_pipeline_args(q)
    add_backend_args(q)
    q.add_argument("--device", help="cpu, cuda or auto")
    q = actions.add_parser("history", help="every save of one frame")
    q.add_argument("--db", required=True)
    q.add_argument("--frame", required=True)
    q = actions.add_parser("restore", help="save an earlier state of a frame again (see history)")
    q.add_argument("--db", required=True)
    q.add_argument("--frame", required=True)
    q.add_argument("--to", type=int, required=True, help="the history id to restore")
    _register_training(actions)
    p.set_defaults(func=_cmd_labels)


def _cmd_label(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.labels.folder import FrameFolder
    from steel_defect.labels.store import LabelStore
    from steel_defect.labels.transfer import IMAGES_META
    from steel_defect.webapp.app import Limits
    from steel_defect.webapp.labelling import MAX_SAVE_BYTES, LabelService, create_label_app
    from steel_defect.webapp.server import serve

    token = page_token(args, "edit the labels")
    max_file_bytes = int(args.max_file_mb * 2**20)
    folder = FrameFolder(args.images, max_file_bytes)
    if args.busy_timeout is not None and not args.busy_timeout > 0:
        raise UserError(f"--busy-timeout must be a positive number of seconds, got {args.busy_timeout:g}")
    wait = None if args.busy_timeout is None else max(1, round(args.busy_timeout * 1000))
    store = LabelStore.open(args.db, busy_timeout_ms=wait)
    store.set_meta(IMAGES_META, str(folder.directory.resolve()))
    cfg = load_config(args.config, args.opts)
    predictor = label_predictor(cfg, args, store)  # the one named, else the promoted version's
    # with a model and no stored queue, the page scores it in the background once it is up
    service = LabelService(store, folder, predictor, build_queue=True, batch_size=cfg.inference.batch_size)
    log.info(
        "%d frames to label in %s (%d files skipped), labels in %s",
        len(folder.paths),
        folder.directory,
        len(folder.skipped),
        store.path,
    )
    limits = Limits(max_file_bytes=max_file_bytes, max_request_bytes=MAX_SAVE_BYTES, timeout_s=args.timeout)
    app = create_label_app(service, limits, token=token, training=_training_settings(cfg, args))
    serve(app, args.host, args.port)
    return 0


def _training_settings(cfg, args):
    """What the page's Train runs, and how a promoted version's predictor is built to re-score."""
    from pathlib import Path

    from steel_defect.cli.common import cli_predictor
    from steel_defect.webapp.training import TrainingSettings

    def load(spec: str):
        return cli_predictor(cfg, args, None, Path(spec), device=args.device)

    return TrainingSettings(
        args.train_recipe, tuple(args.train_opts), args.train_epochs, load, cfg.inference.batch_size
    )


def print_stats(stats) -> None:
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
        left = f"{queue['left']} of {queue['size']} left" if "left" in queue else f"{queue['size']} frames"
        print(f"queue: {left}, scored by {queue['model_version']} at {queue['scored_at']}")
    else:
        print("queue: not scored yet (steel-defect labels queue --db DB --postprocessing ...)")


def _cmd_labels(args) -> int:
    from steel_defect.labels.store import LabelStore

    action = args.labels_command
    readonly = action in ("stats", "export", "history", "versions")
    with LabelStore.open(args.db, readonly=readonly, create=action == "import") as store:
        return LABEL_ACTIONS[action](store, args)


def _stats(store, args) -> int:
    stats = store.stats()
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(stats), indent=2))
    else:
        print_stats(stats)
    return 0


def _export(store, args) -> int:
    from steel_defect.labels.transfer import export_folder

    print(json.dumps(export_folder(store, args.out, args.images), indent=2))
    print(f"train on it with: steel-defect demo --recipe real --data-dir {args.out}", file=sys.stderr)
    return 0


def _history(store, args) -> int:
    for entry in store.history(args.frame):
        drawn = [c for c, rle in enumerate(entry["masks"], 1) if rle]
        print(
            f"{entry['id']:>6}  version {entry['version']:<4} {entry['saved_at']}  "
            f"{entry['status']:<12} classes {drawn or 'none'}  ({entry['source']})"
        )
    return 0


def _import(store, args) -> int:
    from steel_defect.labels.transfer import import_csv

    print(json.dumps(import_csv(store, args.csv, args.images, replace=args.replace), indent=2))
    return 0


def _restore(store, args) -> int:
    state = store.restore(args.frame, args.to)
    print(f"{args.frame}: saved state {args.to} again as version {state.version} ({state.status})")
    return 0


def _queue(store, args) -> int:
    from steel_defect.config import load_config
    from steel_defect.labels.folder import FrameFolder
    from steel_defect.labels.queue import score_queue
    from steel_defect.labels.transfer import images_dir

    cfg = load_config(args.config, args.opts)
    predictor = label_predictor(cfg, args, store)
    if predictor is None:
        raise UserError(
            "labels queue needs the model: train one (steel-defect labels train --db DB) or pass "
            "--postprocessing WORK/postprocessing.yml"
        )
    folder = FrameFolder(images_dir(store, args.images))
    summary = score_queue(store, folder, predictor, cfg.inference.batch_size, progress=ProgressPrinter())
    print(json.dumps(summary, indent=2))
    return 0


class ProgressPrinter:
    """``progress(done, total)`` for :func:`score_queue`: a line on stderr every ``every_s`` seconds
    or so (and at the end), ``37/102 frames, 2.3 s/frame, about 2 min left``, so a run of minutes is
    not silent; stdout keeps only the summary's JSON."""

    def __init__(self, every_s: float = 5.0, stream=None):
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.started = self.printed = None

    def __call__(self, done: int, total: int) -> None:
        import time

        from steel_defect.labels.queue import progress_line

        clock = time.monotonic()
        if self.started is None:
            self.started = clock
        if self.printed is None or done in (0, total) or clock - self.printed >= self.every_s:
            print(progress_line(done, total, clock - self.started), file=self.stream, flush=True)
            self.printed = clock


def _register_training(actions) -> None:
    """``labels train``, ``labels versions`` and ``labels promote``."""
    q = actions.add_parser(
        "train",
        help="train and tune on the labelled frames; record (and promote) a model version",
        description="Train the recipe on every confirmed and defect-free frame of the database (a "
        "fold split, every fold, the out-of-fold threshold search, the distilled line network for "
        "the real recipe) and record a model version. It is promoted when its out-of-fold Dice is "
        "at least the promoted version's on the frames both scored; otherwise the comparison is "
        "printed and `labels promote` decides.",
    )
    q.add_argument("--db", required=True, help="the labels database (labels.sqlite)")
    q.add_argument("--images", help="the frames' folder (default: the one the database records)")
    q.add_argument("--recipe", choices=("real", "synthetic"), default="real", help="the configs")
    q.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="segmenter config overrides")
    q.add_argument("--epochs", type=int, help="epochs of every network (default the recipe's)")
    q.add_argument("--unlabelled", help="frames the line's distilled network also learns the ensemble on")
    q.add_argument("--work-dir", help="where the training writes (default <db stem>.models/<time>-<digest>/)")
    q.add_argument(
        "--training-id", type=int, help="the trainings row to report progress to (the page's Train button)"
    )
    q = actions.add_parser("versions", help="the model versions trained on the labels; the promoted one")
    q.add_argument("--db", required=True, help="the labels database (labels.sqlite)")
    q.add_argument("--json", action="store_true", help="every version and promotion as JSON")
    q = actions.add_parser(
        "promote",
        help="use VERSION for label, labels queue and serve --labels-db; an older one is a rollback",
        description="Make VERSION the promoted model version: pre-labels, the queue and `serve "
        "--labels-db` use its tuned pipeline. Promoting an earlier version rolls back to it; "
        "every promotion stays in the record.",
    )
    q.add_argument("--db", required=True)
    q.add_argument("version", help="a version name of `labels versions`, e.g. v1")
    q.add_argument("--reason", default="promoted by hand", help="recorded with the promotion")


def _train(store, args) -> int:
    import signal

    from steel_defect.labels.train import TrainingCancelled, claim_training, result_text, train_on_labels

    training_id = claim_training(store, args.training_id)

    def cancel(signum, _frame):
        raise TrainingCancelled(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        result = train_on_labels(
            store,
            args.images,
            args.recipe,
            args.opts,
            args.unlabelled,
            args.work_dir,
            training_id,
            epochs=args.epochs,
            echo=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        print(f"training {training_id} cancelled: no version recorded", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(result_text(result))
    return 0


def _versions(store, args) -> int:
    from steel_defect.labels.train import versions_table

    versions = store.versions()
    if args.json:
        print(json.dumps({"versions": versions, "promotions": store.promotions()}, indent=2))
    else:
        print(versions_table(versions) if versions else "no versions yet: steel-defect labels train --db DB")
    return 0


def _promote(store, args) -> int:
    version = store.promote(args.version, args.reason)
    print(f"{version['name']} promoted: label, labels queue and serve --labels-db now use {version['spec']}")
    return 0


LABEL_ACTIONS = {
    "import": _import,
    "export": _export,
    "stats": _stats,
    "queue": _queue,
    "history": _history,
    "restore": _restore,
    "train": _train,
    "versions": _versions,
    "promote": _promote,
}
