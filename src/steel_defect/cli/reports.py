"""Scores, reports and the config: ``evaluate``, ``report``, ``runs``, ``validate``, ``config``."""

from __future__ import annotations

import json

from steel_defect.cli.common import add_config_args, torch_device


def register(sub) -> None:
    """Add the scoring, report and config commands."""
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

    p = sub.add_parser("config", help="print the resolved config, or document every key")
    add_config_args(p, required=False)
    p.add_argument(
        "--docs",
        action="store_true",
        help="print every key (default, meaning) and every registry's names, as Markdown",
    )
    p.set_defaults(func=_cmd_config)


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

        predictor = Predictor(args.probs_from, device=torch_device("auto"))
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
    if args.docs:
        from steel_defect.cli.reference import reference

        print(reference(), end="")
        return 0
    import yaml

    from steel_defect.config import load_config, to_plain

    cfg = load_config(args.config, args.opts)
    print(yaml.safe_dump(to_plain(cfg), sort_keys=False), end="")
    return 0
