"""The two-head model against a separate classifier + segmenter, at the same input size.

Run: ``.venv/bin/python bench/two_head.py [--n 8] [--repeats 3] [--size 128x800]``.
Both set-ups use the demo's Unet-ResNet-18 segmenter; the separate one adds the 5-label
ResNet-18 classifier at the same resolution, the two-head one puts a classification head on
the segmenter's encoder (``model.cls_head``), so its encoder runs once per frame. Untrained
weights (speed does not depend on them), no TTA, the same synthetic frames; the figure is the
fastest of ``--repeats`` interleaved runs of ``Predictor.predict`` (decoded frames in,
masks out), in images/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch
from benchdata import synthetic_images

from steel_defect.config import load_config
from steel_defect.inference.predictor import Predictor
from steel_defect.models import build_model
from steel_defect.models.checkpoint import save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"


def _checkpoint(out: Path, config: str, opts: list[str]) -> Path:
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / config, opts)
    return save_checkpoint(out, build_model(cfg), cfg, epoch=0, metrics={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="frames per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="128x800", help="input HxW of both networks")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    size = f"{{height: {height}, width: {width}}}"
    resize = [f"transforms.valid=[{{name: Resize, params: {size}}}, {{name: Normalize}}]"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = [cv2.imread(str(p)) for p in synthetic_images(tmp / "frames", args.n)]
        seg = _checkpoint(tmp / "seg.pth", "synth_seg.yml", resize)
        cls = _checkpoint(tmp / "cls.pth", "synth_cls.yml", resize)
        two_head = _checkpoint(
            tmp / "two_head.pth", "synth_seg.yml", [*resize, "model.cls_head={gate: hard}"]
        )
        setups = {
            "classifier + segmenter": Predictor([seg, cls], tta=()),
            "two-head segmenter": Predictor([two_head], tta=()),
        }
        best = {name: 0.0 for name in setups}
        for _ in range(args.repeats):
            for name, predictor in setups.items():
                start = time.perf_counter()
                for i in range(0, len(frames), 2):
                    predictor.predict(frames[i : i + 2])
                best[name] = max(best[name], len(frames) / (time.perf_counter() - start))
    print(f"| set-up ({args.size}, {args.n} frames, fastest of {args.repeats}) | images/s |")
    print("|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.2f} |")
    ratio = best["two-head segmenter"] / best["classifier + segmenter"]
    print(f"| two-head / separate | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
