"""Post-processing variants on a finished demo run, without training again.

    python bench/search_variants.py --work-dir work/demo-real [--work-dir work/demo]

For each demo work dir (``steel-defect demo`` wrote ``summary.json`` there) this re-runs the
out-of-fold threshold search of the same checkpoints with and without the top-threshold gate
(``inference.search_top_threshold``), predicts the demo's test frames with each result and
prints mean and per-class Dice on them beside all-empty masks, in one table. The test frames
are never seen by the search, so the comparison is as honest as the demo's own figure.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from steel_defect.config import load_config
from steel_defect.evaluation.metric import evaluate_files
from steel_defect.inference.oof import search_thresholds
from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.run import predict_folder

VARIANTS = {"plain search": [], "+ top-threshold gate": ["inference.search_top_threshold=true"]}


def run_variants(work: Path) -> list[dict]:
    summary = json.loads((work / "summary.json").read_text())
    seg_dir = Path(summary["checkpoints"][0]).parents[2]  # <seg work_dir>/fold0/checkpoints/best.pth
    config = seg_dir / "fold0" / "config.yml"
    data = work / "data" if (work / "data" / "sample_submission.csv").is_file() else None
    test_images = data / "test_images" if data else Path(load_config(config).paths.train_images)
    sample = data / "sample_submission.csv" if data else work / "sample_submission.csv"
    rows = []
    for name, opts in VARIANTS.items():
        cfg = load_config(config, opts)
        out = work / "variants" / (name.strip("+ ").replace(" ", "_") + ".yml")
        search = search_thresholds(cfg, out=out, record=False)  # leave the demo's checkpoints as they are
        predictor = build_predictor(out)  # the models, TTA and gate that this search tuned
        submission = out.with_suffix(".csv")
        predict_folder(predictor, test_images, submission, sample, progress=False)
        score = evaluate_files(submission, summary["test_truth"])
        rows.append(
            {
                "run": str(work),
                "variant": name,
                "oof": search["out_of_fold"]["mean_dice"],
                "test": score["mean_dice"],
                "per_class": score["per_class"],
                "empty": summary["empty_baseline"],
                "params": {c: r["params"] for c, r in search["classes"].items()},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", action="append", required=True, help="a demo's work dir (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [row for work in args.work_dir for row in run_variants(Path(work))]
    print("| run | variant | OOF mean | test mean | test per class 1/2/3/4 | all-empty |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per_class = " / ".join(f"{v:.4f}" for v in r["per_class"].values())
        print(
            f"| {r['run']} | {r['variant']} | {r['oof']:.4f} | {r['test']:.4f} | {per_class} "
            f"| {r['empty']:.4f} |"
        )
    print(
        json.dumps([{k: v for k, v in r.items() if k == "params" or k == "variant"} for r in rows], indent=1)
    )


if __name__ == "__main__":
    main()
