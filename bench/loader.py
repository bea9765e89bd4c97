"""Loader throughput at full resolution, per CPU core, and how many cores keep one GPU fed.

Run: ``.venv/bin/python bench/loader.py [--config configs/full/unet_effnet_lite2.yml] [--n 48]
[--repeats 3] [--gpu-tflops 989] [--utilisation 0.03 0.1 0.3]``.

One process, one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``), as each
DataLoader worker is: the training dataset of ``--config`` over ``--n`` synthetic full-size
Severstal frames (half of them with defects), each stage timed on every frame in CPU seconds
(``time.process_time``: what a core spends, which other work on the machine disturbs much less
than wall time), fastest of ``--repeats`` passes:

* decode (``read_image``: libjpeg-turbo through jpeg4py where installed, else OpenCV);
* the masks (the frame's four RLEs decoded channels-last, as the dataset does);
* the train transforms of the config (crop, flips, brightness, normalise);
* the tensors (``image_to_tensor``, ``mask_to_tensor``);
* a whole item (``dataset[i]``), which should be about their sum.

The GPU side is the model's training FLOPs per image: the forward pass counted by
``torch.utils.flop_counter`` at the crop size, times 3 for forward and backward, divided into
``--gpu-tflops`` (dense bf16 peak; 989 is an H100/H200 SXM) at each ``--utilisation`` share of
it, stated assumptions where no GPU measured it (EfficientNets' depthwise convolutions keep
training well under peak). Cores needed = the GPU's images/s x one item's CPU seconds, for the
float32 items of today and for ``data.normalize_on_device`` (uint8 items, Normalize on the GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from benchdata import REPO
from torch.utils.flop_counter import FlopCounterMode

from steel_defect.config import ConfigError, load_config
from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.datasets import image_to_tensor, mask_to_tensor
from steel_defect.data.folds import split_folds
from steel_defect.data.images import read_image, turbojpeg_available
from steel_defect.data.loaders import build_datasets
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.models import build_model

try:  # the dataset's decode; an older checkout (a before-and-after run) decoded and transposed
    from steel_defect.data.rle import rles_to_hwc
except ImportError:

    def rles_to_hwc(rles, shape):
        return np.ascontiguousarray(rles_to_masks(rles, shape).transpose(1, 2, 0))


def stage_seconds(dataset, repeats: int) -> dict[str, float]:
    """CPU seconds per frame of each stage, fastest of ``repeats`` passes over the dataset."""
    ids = dataset.image_ids
    folder, annotations = dataset.images_dir, dataset.annotations
    images = [read_image(folder / i, dataset.channels, IMAGE_SHAPE) for i in ids]
    masks = [rles_to_hwc(annotations.rles(i), IMAGE_SHAPE) for i in ids]
    outs = [dataset.transforms(image=im, mask=m) for im, m in zip(images, masks, strict=True)]
    stages = {
        "decode": lambda k: read_image(folder / ids[k], dataset.channels, IMAGE_SHAPE),
        "masks from RLE": lambda k: rles_to_hwc(annotations.rles(ids[k]), IMAGE_SHAPE),
        "train transforms": lambda k: dataset.transforms(image=images[k], mask=masks[k]),
        "to tensors": lambda k: (image_to_tensor(outs[k]["image"]), mask_to_tensor(outs[k]["mask"])),
        "whole item": lambda k: dataset[k],
    }
    best = {}
    for name, fn in stages.items():
        runs = []
        for _ in range(repeats):
            start = time.process_time()
            for k in range(len(ids)):
                fn(k)
            runs.append((time.process_time() - start) / len(ids))
        best[name] = min(runs)
    return best


def train_gflops(config: str, height: int, width: int) -> float:
    """Forward and backward GFLOPs of one training image at ``height`` x ``width`` (3x forward)."""
    model = build_model(load_config(config, ["model.encoder_weights=null"])).eval()  # FLOPs need no weights
    x = torch.zeros(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 3 * counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/full/unet_effnet_lite2.yml"))
    parser.add_argument("--n", type=int, default=48, help="synthetic full-size frames")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument(
        "--utilisation",
        type=float,
        nargs="+",
        default=[0.03, 0.1, 0.3],
        help="shares of that peak training reaches",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, n=args.n, seed=0, test_fraction=0.0)
        opts = [f"paths.data_dir={data}", f"paths.work_dir={Path(tmp) / 'work'}", "folds.n_splits=2"]
        try:  # the float32 items, whatever the config says
            cfg = load_config(args.config, [*opts, "data.normalize_on_device=false"])
        except ConfigError:  # an older checkout, which has only those
            cfg = load_config(args.config, opts)
        split_folds(cfg)
        train = build_datasets(cfg, valid_fold=0)["train"]
        seconds = stage_seconds(train, args.repeats)
        try:  # an older checkout (PYTHONPATH=OLD/src) may lack the option: a before-and-after run
            on_device = load_config(args.config, [*opts, "data.normalize_on_device=true"])
        except ConfigError as err:
            print(f"no data.normalize_on_device here: {str(err).splitlines()[0][:80]}")
        else:
            dataset = build_datasets(on_device, valid_fold=0)["train"]
            seconds["item, uint8 out"] = min(item_seconds(dataset) for _ in range(args.repeats))
        crop = train[0]["image"].shape[1:]
    print(f"{Path(args.config).name}: {len(train.image_ids)} frames of 1600x256, crop {crop[0]}x{crop[1]}")
    print(f"decoder: {'libjpeg-turbo (jpeg4py)' if turbojpeg_available() else 'OpenCV'}; one thread")
    print(f"{'stage':<18}{'ms/frame':>10}{'frames/s/core':>15}")
    for name, value in seconds.items():
        print(f"{name:<18}{value * 1e3:>10.2f}{1 / value:>15.0f}")
    print(
        "whole item: the float32 item the loader hands over today; item, uint8 out: with "
        "data.normalize_on_device (Normalize on the GPU)"
    )
    gflops = train_gflops(args.config, *crop)
    print(
        f"model: {cfg.model.name} over {cfg.model.encoder}, {gflops:.1f} GFLOP a training image (3x forward)"
    )
    print(
        f"{'share of ' + format(args.gpu_tflops, '.0f') + ' TFLOP/s':<28}"
        f"{'images/s':>9}{'cores, float':>14}{'cores, uint8':>14}"
    )
    for share in args.utilisation:
        rate = args.gpu_tflops * 1e3 * share / gflops
        uint8 = seconds.get("item, uint8 out", float("nan"))
        print(f"{share:<28.0%}{rate:>9.0f}{rate * seconds['whole item']:>14.1f}{rate * uint8:>14.1f}")


def item_seconds(dataset) -> float:
    """CPU seconds per item of ``dataset``, one pass."""
    start = time.process_time()
    for k in range(len(dataset)):
        dataset[k]
    return (time.process_time() - start) / len(dataset)


if __name__ == "__main__":
    main()
