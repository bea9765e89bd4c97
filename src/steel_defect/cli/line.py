"""The line: ``watch``, which judges frames as they arrive, logs them and serves the dashboard."""

from __future__ import annotations

from pathlib import Path

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
    """Add the line's command."""
    p = sub.add_parser("watch", help="judge frames as they arrive in a folder; log them; dashboard page")
    p.add_argument("folder", help="the folder the line camera writes frames into")
    p.add_argument(
        "--db", required=True, help="inspection log: a SQLite file (created) or a postgresql+psycopg:// URL"
    )
    add_config_args(p, required=False)
    p.add_argument("--checkpoints", nargs="+", help="default: the tuned pipeline's")
    add_pipeline_args(p)
    p.add_argument(
        "--labels-db",
        metavar="DB",
        help="judge with the promoted model version of this labels database (its line pipeline where "
        "it has one) and swap to a newly promoted one between two batches; instead of "
        "--postprocessing, --checkpoints and --untuned",
    )
    add_backend_args(p)
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
    add_page_args(p, port=8000, serves="the page")
    p.add_argument("--access-log", action="store_true", help="log each request (default: warnings only)")
    p.set_defaults(func=_cmd_watch)


def _cmd_watch(args) -> int:
    from steel_defect.config import load_config
    from steel_defect.line.alarms import AlarmMonitor, parse_rule
    from steel_defect.line.log import InspectionLog
    from steel_defect.line.service import run_until_stopped
    from steel_defect.line.watch import Watcher
    from steel_defect.webapp.server import limit_malloc_arenas

    folder = Path(args.folder)
    if args.labels_db:
        _refuse_other_models(args)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder to watch (create it, or mount the share first)")
    rules = dict(parse_rule(rule) for rule in args.alarm or [])
    token = None if args.no_page else page_token(args, "read the inspection log")
    # A long-running loop over batches from several threads (the page's, watchdog's): capped
    # malloc arenas keep its RSS flat, as for `serve` (bench/soak.py, bench/line_watch.py).
    limit_malloc_arenas()
    inspection_log = InspectionLog.open(args.db)  # before the model loads: a bad --db fails in a second
    cfg = load_config(args.config, args.opts)
    follow = predictor = None
    if args.labels_db:
        from steel_defect.line.follow import PromotedModel

        follow = PromotedModel(
            args.labels_db, build=lambda spec: cli_predictor(cfg, args, None, spec, device=args.device)
        )
        follow.load()
    else:
        predictor = cli_predictor(
            cfg, args, args.checkpoints, tuned_path(cfg, args.postprocessing), device=args.device
        )
    alarms = AlarmMonitor(rules, args.alarm_window, args.alarm_min_frames, args.alarm_url) if rules else None
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
        alarms=alarms,
        overlap_writes=True,
        follow=follow,
    )
    log.info("watching %s as line %r; log in %s", watcher.folder, watcher.line, inspection_log.name)

    def start_page():
        from steel_defect.webapp.app import Limits
        from steel_defect.webapp.dashboard import create_dashboard_app
        from steel_defect.webapp.server import serve_in_thread

        app = create_dashboard_app(
            inspection_log, Limits(timeout_s=args.timeout), token=token, watcher=watcher
        )
        server, url = serve_in_thread(
            app, args.host, port=args.port, log_level="info", access_log=args.access_log
        )
        log.info("dashboard at %s/ (API docs at /docs)", url)
        return lambda: setattr(server, "should_exit", True)

    try:
        run_until_stopped(watcher, idle_exit_s=args.exit_when_idle, page=None if args.no_page else start_page)
    finally:
        if follow is not None:
            follow.close()
    return 0


def _refuse_other_models(args) -> None:
    """--labels-db names the model (the promoted version's pipeline): another one is a conflict."""
    for option, given in (
        ("--postprocessing", args.postprocessing),
        ("--checkpoints", args.checkpoints),
        ("--untuned", args.untuned),
    ):
        if given:
            raise UserError(
                f"{option} and --labels-db both name the model: --labels-db {args.labels_db} judges with "
                f"its promoted version's pipeline and follows its promotions; give one of them"
            )
