"""Data and training: ``synth``, ``split``, ``train``, ``thresholds`` and ``demo``, the main job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from steel_defect.cli.common import add_config_args, torch_device
from steel_defect.constants import ENGINES, HOLDOUT_PARTS
from steel_defect.errors import UserError


def register(sub) -> None:
    """Add the data and training commands."""
    p = sub.add_parser("synth", help="write a synthetic Severstal-layout data set")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=200, help="number of images (train + test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of images held out as test")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("split", help="multilabel-stratified k-fold split -> <work_dir>/folds.csv")
    add_config_args(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite a folds.csv that trained checkpoints were trained on (they then need retraining)",
    )
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("train", help="train the classifier or segmenter that the config names")
    add_config_args(p)
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

    p = sub.add_parser("thresholds", help="search per-class thresholds on out-of-fold predictions")
    add_config_args(p)
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

    p = sub.add_parser(
        "distill", help="one student network learns a tuned ensemble's maps (the line's pipeline)"
    )
    add_config_args(p)
    p.add_argument(
        "--teacher",
        help="the tuned ensemble to distil: its postprocessing.yml (default <work_dir>/postprocessing.yml)",
    )
    p.add_argument(
        "--out", required=True, help="folder for the students, their maps cache and postprocessing.yml"
    )
    p.add_argument(
        "--unlabelled", metavar="DIR", help="unlabelled frames the student also learns the maps of"
    )
    p.set_defaults(func=_cmd_distill)

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
    device = device if backend == "onnx" else torch_device(device)
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


def _cmd_distill(args) -> int:
    from steel_defect.config import layout, load_config
    from steel_defect.distill import distill

    cfg = load_config(args.config, args.opts, require=("paths.train_csv", "paths.train_images"))
    teacher = args.teacher or layout.postprocessing(cfg.paths.work_dir)
    summary = distill(cfg, teacher, args.out, unlabelled=args.unlabelled)
    print(json.dumps(summary, indent=2, default=str))
    print(f"the line's pipeline: --postprocessing {Path(args.out) / 'postprocessing.yml'}", file=sys.stderr)
    return 0
