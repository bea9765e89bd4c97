"""What the clean-frame gate costs against the full pass it saves, side by side in one run.

Run: ``.venv/bin/python bench/gate.py [--pipeline NAME=SOURCE ...] [--backend onnx] [--threads 2]
[--scale 2] [--batch 4] [--rounds 7]``

For each pipeline, one predictor predicts the same batch of frames (real ones from
``../shared/data/severstal_unlabeled`` when they are there, else synthetic) three ways, in turn
within each round so that a busy moment of the shared machine slows all three:

* **full**: no gate, every frame through the segmenters (TTA included), as before the gate;
* **clean**: the gate calls every frame clean: what a skipped frame costs (its decode-side
  transform, the coarse pass, the peaks);
* **defect**: the gate holds every frame: what a frame the gate passes costs (the coarse pass on
  top of the full one; the transform is shared).

Printed per pipeline: the median over rounds of each way's time per frame, **clean / full** and
**defect / full** (the ratios are what carries over to another machine), the multiply-adds of the
coarse pass against the full pass (torch's FlopCounterMode), and the share of clean frames above
which the gate pays: ``(defect - full) / (defect - clean)``.

Pipelines (``--pipeline``, repeatable; default ``student`` and ``ensemble``):

* ``student``: the line's network as the real recipe distils it (Unet over EfficientNet-Lite0 under
  a half-width decoder, 128x800, no TTA), untrained (speed does not depend on the weights);
* ``ensemble``: the real recipe's tuned ensemble shape (four folds of Unet-Lite0, hflip);
* ``NAME=WORK/postprocessing.yml``: a tuned pipeline's models and TTA.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchdata import REPO, synthetic_images

from steel_defect.constants import CLASS_IDS
from steel_defect.data.images import read_image
from steel_defect.inference.backend_choice import cpu_name
from steel_defect.inference.gate import GateSpec
from steel_defect.inference.pipeline import read_tuned
from steel_defect.inference.predictor import Predictor

REAL_FRAMES = REPO.parent / "shared" / "data" / "severstal_unlabeled" / "test_images"
RECIPE = "configs/real/unet_effnet_lite0.yml"


def untrained(work: Path, name: str, opts: list[str], copies: int) -> list[str]:
    from steel_defect.config import load_config
    from steel_defect.models import build_model
    from steel_defect.models.checkpoint import save_checkpoint

    cfg = load_config(REPO / RECIPE, ["model.encoder_weights=null", *opts])
    model = build_model(cfg)
    paths = [save_checkpoint(work / f"{name}{k}.pth", model, cfg, epoch=0, metrics={}) for k in range(copies)]
    return [str(p) for p in paths]


def pipeline(spec: str, work: Path) -> tuple[str, list[str], tuple[str, ...]]:
    """(name, checkpoints, TTA) of one ``--pipeline`` entry."""
    name, _, source = spec.partition("=")
    source = source or name
    if source == "student":
        decoder = "model.params={decoder_channels: [128, 64, 32, 16, 8]}"
        return name, untrained(work, "student", [decoder], 1), ()
    if source == "ensemble":
        return name, untrained(work, "fold", [], 4), ("hflip",)
    _, tuned = read_tuned(source)
    return name, [str(m.path) for m in tuned.models], tuned.tta


def frames(work: Path, n: int) -> list[np.ndarray]:
    paths = sorted(REAL_FRAMES.glob("*.jpg"))[:n] if REAL_FRAMES.is_dir() else []
    if len(paths) < n:
        paths = synthetic_images(work / "frames", n, seed=1)
    return [read_image(p) for p in paths]


def gflop(predictor: Predictor, scale: int) -> tuple[float, float]:
    """(full pass, coarse pass) GFLOP of one frame: every segmenter, the full pass's TTA views."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from steel_defect.models.checkpoint import model_from_checkpoint

    def one_pass(model, channels, size) -> float:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, *size))
        return counter.get_total_flops() / 1e9

    full = coarse = 0.0
    views = 1 + len(predictor.tta)
    for network, (_, shape) in zip(predictor.segmenters, predictor._coarse_networks(scale), strict=True):
        model = model_from_checkpoint(Path(network.path).with_suffix(".pth"))[0].eval()
        probe = network.transform(image=np.zeros((256, 1600, 3), np.uint8))["image"]
        full += views * one_pass(model, network.channels, probe.shape[:2])
        coarse += one_pass(model, network.channels, shape)
    return full, coarse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", action="append", help="NAME=SOURCE (repeatable)")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "openvino", "torch"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"# {cpu_name()}, {args.threads} threads, backend {args.backend}, gate scale {args.scale}")
    header = (
        "| pipeline | full ms/frame | clean ms/frame | clean / full | defect ms/frame | defect / full "
        "| GFLOP full | GFLOP gate | gate pays above |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory(prefix="gate_bench.") as tmp:
        work = Path(tmp)
        batch = frames(work, args.batch)
        for spec in args.pipeline or ["student", "ensemble"]:
            name, checkpoints, tta = pipeline(spec, work)
            predictor = Predictor(checkpoints, tta=tta, backend=args.backend, threads=args.threads)
            ways = {
                "full": None,
                "clean": GateSpec(args.scale, (None,) * len(CLASS_IDS)),  # nothing holds a frame
                "defect": GateSpec(args.scale, (0.0,) * len(CLASS_IDS)),  # every class holds it
            }
            times: dict[str, list[float]] = {way: [] for way in ways}
            for gate in ways.values():  # warm-up: sessions, exports, first allocations
                predictor.clean_gate = gate
                predictor.predict(batch)
            for round_ in range(args.rounds):
                order = list(ways)[round_ % 3 :] + list(ways)[: round_ % 3]
                for way in order:
                    predictor.clean_gate = ways[way]
                    start = time.perf_counter()
                    predictor.predict(batch)
                    times[way].append((time.perf_counter() - start) / len(batch))
            ms = {way: 1000 * statistics.median(t) for way, t in times.items()}
            full_gflop, gate_gflop = gflop(predictor, args.scale)
            pays = (ms["defect"] - ms["full"]) / (ms["defect"] - ms["clean"])
            cells = [
                name,
                f"{ms['full']:.0f}",
                f"{ms['clean']:.0f}",
                f"{ms['clean'] / ms['full']:.2f}",
                f"{ms['defect']:.0f}",
                f"{ms['defect'] / ms['full']:.2f}",
                f"{full_gflop:.1f}",
                f"{gate_gflop:.1f}",
                f"{100 * pays:.0f}% clean",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
