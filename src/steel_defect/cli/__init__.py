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
    steel-defect labels train --db labels.sqlite [--recipe real]   # a model version, promoted if not worse
    steel-defect labels versions|promote --db labels.sqlite [VERSION]   # the versions; roll back
    steel-defect watch DIR --db inspection.sqlite [--postprocessing P.yml] [--archive DIR]  # line
    steel-defect watch DIR --db inspection.sqlite --labels-db labels.sqlite   # the promoted version
    steel-defect distill --config SEG_CFG --out DIR [--unlabelled DIR]   # the line's one network

``split_folds.py``, ``train.py`` and ``inference.py`` at the repository root call
:func:`main` with their subcommand, so both spellings behave the same.

One module per command group, each with ``register(sub)`` beside its handlers: :mod:`.data`
(synth, split, train, thresholds, demo), :mod:`.predict` (predict, pseudo-label, serve,
export), :mod:`.labels`, :mod:`.line` (watch), :mod:`.reports` (evaluate, report, runs,
validate, config); :mod:`.common` holds what several share. This module parses, runs the
command and maps errors: a user's mistake is one line and exit status 2, a bug its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from steel_defect.cli import data, labels, line, predict, reports
from steel_defect.errors import UserError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise calls the network

GROUPS = (data, predict, labels, line, reports)


def _version() -> str:
    from steel_defect import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steel-defect", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"steel-defect {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def is_user_error(err: Exception) -> bool:
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
        if args.verbose or not is_user_error(err):
            raise
        print(f"steel-defect {args.command}: error: {err}", file=sys.stderr)
        return 2
