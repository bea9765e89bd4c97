"""The labelling loop's cost: `labels train` on a fresh labels database against the recipe alone.

Run: ``.venv/bin/python bench/label_loop.py [--data-dir ../shared/data/severstal_sample]
[--work-dir work/label_loop] [--recipe real] [--epochs N] [--opts key=value ...]``.

The 54 labelled sample frames are imported into a new labels database, then trained on twice,
one after the other, with the same configs, seed and frames:

* **recipe**: the recipe's own full-data path called directly (:mod:`steel_defect.recipes`: the
  fold split, every fold, the out-of-fold search, the distilled line network where the recipe
  has one) on the sample's ``train.csv``;
* **loop**: ``steel-defect labels train --db DB`` (in this process, as the command runs it): the
  snapshot of the database's labels, the same path, the version recorded and promoted.

It prints both times and their ratio (the target: the loop takes at most 10 % more than the
recipe) and the out-of-fold Dice per class of each beside empty masks on the same frames. The
full real recipe takes about an hour on a 2-core CPU; ``--epochs 1 --opts ...`` shortens both
runs alike (the times then measure the overhead, not the recipe). Skips, saying why, when the
sample is not there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

from steel_defect.cli import main as cli
from steel_defect.config import layout
from steel_defect.constants import CLASS_IDS
from steel_defect.data.folds import split_folds
from steel_defect.distill import distill
from steel_defect.labels.store import LabelStore
from steel_defect.recipes import RECIPES, DemoData, load_configs, train_round

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "severstal_sample"


def run_recipe(data_dir: Path, work: Path, recipe: str, epochs, opts) -> tuple[float, dict, dict | None]:
    """The recipe alone on the sample: (seconds, its out-of-fold score, the line's or None)."""
    t0 = time.perf_counter()
    steps = RECIPES[recipe]
    data = DemoData(data_dir / "train.csv", data_dir / "train_images", data_dir / "train_images")
    seg_cfg, cls_cfg, _ = load_configs(steps, data, work, 0, epochs, opts)
    split_folds(seg_cfg)
    _, search = train_round(seg_cfg, cls_cfg, range(seg_cfg.folds.n_splits), work, {})
    line = None
    if steps.distill:
        line = distill(seg_cfg, layout.postprocessing(work), work / "line")["out_of_fold"]
    return time.perf_counter() - t0, search["out_of_fold"], line


def run_loop(data_dir: Path, work: Path, recipe: str, epochs, opts) -> tuple[float, dict]:
    """Import the sample into a fresh database and `labels train` it: (seconds, the version)."""
    db = work / "labels.sqlite"
    images = str(data_dir / "train_images")
    with contextlib.redirect_stdout(io.StringIO()):
        if cli(["labels", "import", "--db", str(db), str(data_dir / "train.csv"), "--images", images]):
            raise SystemExit("labels import failed")
    command = ["labels", "train", "--db", str(db), "--recipe", recipe, "--work-dir", str(work / "models")]
    command += ["--epochs", str(epochs)] if epochs else []
    command += ["--opts", *opts] if opts else []
    t0 = time.perf_counter()
    if cli(command):
        raise SystemExit("labels train failed")
    seconds = time.perf_counter() - t0
    with LabelStore.open(db, readonly=True) as store:
        return seconds, store.versions()[-1]


def dice_table(rows: list[tuple[str, dict]]) -> str:
    """Per class, each run's out-of-fold Dice beside empty masks on the same frames."""
    header = f"{'':22}{'mean':>8}" + "".join(f"{'class ' + str(c):>9}" for c in CLASS_IDS)
    lines = [header]
    for name, oof in rows:
        lines.append(
            f"{name:22}{oof['mean_dice']:>8.4f}" + "".join(f"{d:>9.4f}" for d in oof["per_class"].values())
        )
    empty = rows[0][1]
    lines.append(
        f"{'empty masks':22}{empty['empty']:>8.4f}"
        + "".join(f"{d:>9.4f}" for d in empty["empty_per_class"].values())
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SAMPLE.resolve())
    parser.add_argument("--work-dir", type=Path, default=Path("work/label_loop"))
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="real")
    parser.add_argument(
        "--epochs", type=int, help="epochs of every network, both runs (default the recipe's)"
    )
    parser.add_argument("--opts", nargs="*", default=[], help="segmenter config overrides, both runs")
    args = parser.parse_args()
    if not (args.data_dir / "train.csv").is_file():
        print(f"skipped: no labelled sample at {args.data_dir} (only beside the team's checkout)")
        return 0
    for part in ("recipe", "loop"):  # this bench's own folders: each run starts from nothing
        shutil.rmtree(args.work_dir / part, ignore_errors=True)
        (args.work_dir / part).mkdir(parents=True)
    recipe_s, recipe_oof, recipe_line = run_recipe(
        args.data_dir, args.work_dir / "recipe", args.recipe, args.epochs, args.opts
    )
    loop_s, version = run_loop(args.data_dir, args.work_dir / "loop", args.recipe, args.epochs, args.opts)
    ratio = loop_s / recipe_s
    print(
        f"\nrecipe {args.recipe}, {version['counts']['frames']} frames, epochs {args.epochs or 'the recipe'}"
    )
    print(f"recipe alone:   {recipe_s:8.1f} s")
    promoted = "promoted" if version["promoted"] else "not promoted"
    print(f"labels train:   {loop_s:8.1f} s  ({version['name']}, {promoted})")
    verdict = "within" if ratio <= 1.10 else "OVER"
    print(f"loop / recipe:  {ratio:8.3f}  ({verdict} the target of 1.10)")
    rows = [("recipe (ensemble)", recipe_oof), (f"{version['name']} (ensemble)", version["out_of_fold"])]
    if recipe_line is not None:
        rows.append(("recipe (line)", recipe_line))
    if version["detail"].get("line_out_of_fold"):
        rows.append((f"{version['name']} (line)", version["detail"]["line_out_of_fold"]))
    print("out-of-fold Dice (thresholds tuned there), beside empty masks on the same frames:")
    print(dice_table(rows))
    summary = {
        "recipe_s": recipe_s,
        "loop_s": loop_s,
        "ratio": ratio,
        "dice": dict(rows),
        "args": sys.argv[1:],
    }
    (args.work_dir / "label_loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
