"""Training throughput: the data loader's cost beside the bare optimisation loop, and what the knobs do.

Run: ``.venv/bin/python bench/train.py [--config CFG] [--batches 6] [--repeats 2] [--compile]``.
Builds the config's model, loss and optimizer (``model.encoder_weights=null``: speed does not
depend on the weights) and its train loader over synthetic frames, then measures images/s of

* the loop over the loader: decode, augment, collate, forward, loss, backward, step;
* the same loop over the same batches preloaded in memory (forward + backward + step alone);

and their ratio (target >= 0.9: the loader costs at most 10 %). Then the same bare loop with
each knob changed on its own: ``data.num_workers`` 0/1/2 (with the loader), ``channels_last``
model and input, bf16 autocast, and with ``--compile`` ``torch.compile``. On a GPU (when
CUDA is available) also ``pin_memory`` and fp16/bf16 AMP. Each figure is the best of
``--repeats`` rounds of ``--batches`` batches, after one warm-up batch; every round runs each
variant once, in turn.

Default config: the real-steel recipe (``configs/real/unet_effnet_lite0.yml``: batch 4, 128x400
crops of 128x800 frames), the one meant to train on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import cv2
import torch
from benchdata import REPO, print_rows

from steel_defect.config import load_config
from steel_defect.data.folds import split_folds
from steel_defect.data.loaders import build_loaders
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.losses import build_loss
from steel_defect.models import build_model
from steel_defect.training.optim import build_optimizer


def _loop(model, loss, optimizer, batches, device, channels_last=False, autocast=None) -> float:
    """Seconds for one pass of forward + loss + backward + step over ``batches``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    start = time.perf_counter()
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True, memory_format=layout)
        target = batch["mask"].to(device, non_blocking=True)
        context = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with context:
            out = model(image)
            out = out[0] if isinstance(out, tuple) else out
            value = loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _take(loader, n: int) -> list[dict]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            return batches
    raise ValueError(f"the loader gives only {len(batches)} batches; raise --frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/real/unet_effnet_lite0.yml"))
    parser.add_argument("--batches", type=int, default=6, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames", type=int, default=64, help="synthetic frames to write")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(root / "data", n=args.frames, seed=0, test_fraction=0.0)
        base = [f"paths.data_dir={root / 'data'}", f"paths.work_dir={root / 'work'}"]
        base += ["model.encoder_weights=null", "folds.n_splits=2"]
        cfg = load_config(args.config, base)
        split_folds(cfg)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        loss = build_loss(cfg.loss.name, cfg.loss.params)
        optimizer = build_optimizer(model, cfg)
        n = args.batches + 1
        loader = build_loaders(cfg, 0)["train"]
        preloaded = _take(loader, n)
        _loop(model, loss, optimizer, preloaded[:2], device)  # warm-up: allocator, kernel caches

        def with_loader(workers: int, pin: bool = False):
            cfg.data.num_workers = workers
            loaders = build_loaders(cfg, 0)
            loaders["train"].pin_memory = pin

            def run():
                batches = iter(loaders["train"])
                next(batches)  # the workers start once per epoch, not once per batch
                start = time.perf_counter()
                for _ in range(args.batches):
                    _loop(model, loss, optimizer, [next(batches)], device)
                return time.perf_counter() - start

            return run

        def single_threaded_cv2(run):
            # OpenCV's own thread pool (decode, resize) beside torch's on the same cores
            def wrapped():
                threads = cv2.getNumThreads()
                cv2.setNumThreads(1)
                try:
                    return run()
                finally:
                    cv2.setNumThreads(threads)

            return wrapped

        def layout(channels_last: bool, autocast=None):
            def run():
                model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                try:
                    return _loop(model, loss, optimizer, timed, device, channels_last, autocast)
                finally:
                    model.to(memory_format=torch.contiguous_format)

            return run

        timed = preloaded[1:]
        images = args.batches * cfg.data.batch_size
        default_workers = int(cfg.data.num_workers)
        variants = {"bare loop, preloaded batches": layout(False)}
        for workers in sorted({default_workers, 0, 1, 2}):
            variants[f"with the loader, num_workers={workers}"] = with_loader(workers)
        variants[f"with the loader, num_workers={default_workers}, OpenCV 1 thread"] = single_threaded_cv2(
            with_loader(default_workers)
        )
        variants["bare loop, channels_last"] = layout(True)
        variants["bare loop, bf16 autocast"] = lambda: _loop(
            model, loss, optimizer, timed, device, autocast=torch.bfloat16
        )
        variants["bare loop, channels_last + bf16 autocast (train.amp: bf16)"] = layout(True, torch.bfloat16)
        if device.type == "cuda":
            variants["bare loop, fp16 autocast"] = lambda: _loop(
                model, loss, optimizer, timed, device, autocast=torch.float16
            )
            variants["with the loader, pin_memory"] = with_loader(default_workers, pin=True)
        if args.compile:
            compiled = torch.compile(model)
            _loop(compiled, loss, optimizer, timed[:1], device)  # builds the graph
            variants["bare loop, torch.compile"] = lambda: _loop(compiled, loss, optimizer, timed, device)
        # Round robin: every variant once per round, so a slow spell of a shared machine (or the
        # allocator warming up) does not land on whichever variant happens to run first.
        seconds = {name: float("inf") for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                seconds[name] = min(seconds[name], run())
        rates = {name: images / value for name, value in seconds.items()}
    bare = rates["bare loop, preloaded batches"]
    default = rates[f"with the loader, num_workers={default_workers}"]
    rows = [(f"{name} (images/s)", f"{rate:.2f}") for name, rate in rates.items()]
    rows.append(
        (
            f"loader / bare at the config's num_workers={default_workers} (target >= 0.9)",
            f"{default / bare:.2f}",
        )
    )
    name = Path(args.config).name
    print(f"{name}: batch {cfg.data.batch_size}, {args.batches} batches, best of {args.repeats}, {device}")
    print_rows(rows)


if __name__ == "__main__":
    main()
