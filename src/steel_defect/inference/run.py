"""Folder of images -> submission CSV, streaming, with per-image error reporting and sharding.

``python inference.py --config CFG --checkpoints A.pth [B.pth ...] --images DIR --out sub.csv``
runs :func:`predict_folder`. Images are decoded ahead on ``num_workers`` threads (OpenCV and
libjpeg-turbo release the GIL, so decoding overlaps the network), predicted batch by batch and
reduced to RLE strings at once, so memory stays flat however many images there are. Nothing
here imports torch: with the ONNX backend a prediction runs without it. An unreadable image is
reported with its reason, gets empty rows, and the run goes on; the caller exits non-zero at
the end.

Sharding: under ``torchrun --nproc_per_node N inference.py ...`` each rank predicts every
N-th image into ``<out>.shard<R>-of-<N>.csv``; after a barrier (gloo process group) rank 0
merges them into the same CSV a single process writes and removes the shards.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.images import IMAGE_SUFFIXES, ImageReadError, read_image
from steel_defect.data.rle import mask_to_rle
from steel_defect.data.submission import read_sample_submission, read_submission, write_submission
from steel_defect.inference.predictor import Predictor
from steel_defect.pause import pause_point

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    images: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image id -> reason
    skipped_segmenter: int = 0
    seconds: float = 0.0


def _read(images_dir: Path, image_id: str) -> tuple[str, object, str | None]:
    """(id, frame, None), or (id, None, reason) for an unreadable image."""
    try:
        return image_id, read_image(images_dir / image_id, channels=3, expected_shape=IMAGE_SHAPE), None
    except ImageReadError as err:
        return image_id, None, str(err)


def _batches(images_dir: Path, image_ids: list[str], batch_size: int, workers: int) -> Iterator[list]:
    """Batches of :func:`_read` results in order; ``workers`` threads decode at most
    ``(workers + 1) * batch_size`` images ahead, so memory stays bounded."""
    if workers <= 0:
        for start in range(0, len(image_ids), batch_size):
            yield [_read(images_dir, i) for i in image_ids[start : start + batch_size]]
        return
    ahead = (workers + 1) * batch_size
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending, todo, batch = deque(), iter(image_ids), []
        for image_id in todo:
            pending.append(pool.submit(_read, images_dir, image_id))
            if len(pending) >= ahead:
                break
        while pending:
            batch.append(pending.popleft().result())
            next_id = next(todo, None)
            if next_id is not None:
                pending.append(pool.submit(_read, images_dir, next_id))
            if len(batch) == batch_size or not pending:
                yield batch
                batch = []


def list_images(images_dir: str | Path, sample_submission: str | Path | None = None) -> list[str]:
    """Image ids to predict: the sample submission's, in its order, or every image file sorted."""
    if sample_submission is not None:
        return read_sample_submission(sample_submission)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    ids = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not ids:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images_dir}")
    return ids


def predict_rows(
    predictor: Predictor,
    images_dir: str | Path,
    image_ids: list[str],
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, list[str]], RunSummary]:
    """``{image_id: [rle_1..rle_4]}`` for ``image_ids``, plus a summary of failures and timing."""
    summary = RunSummary(images=len(image_ids))
    start = time.perf_counter()
    batches = _batches(Path(images_dir), image_ids, batch_size, num_workers)
    total = -(-len(image_ids) // batch_size)
    rows: dict[str, list[str]] = {}
    for batch in tqdm(batches, total=total, desc="predict", unit="batch", disable=not progress):
        good = [(image_id, image) for image_id, image, error in batch if error is None]
        for image_id, _, error in batch:
            if error is not None:
                log.error("%s", error)
                summary.failed[image_id] = error
                rows[image_id] = [""] * len(CLASS_IDS)
        predictions = predictor.predict([image for _, image in good])
        for (image_id, _), prediction in zip(good, predictions, strict=True):
            rows[image_id] = [mask_to_rle(mask) for mask in prediction.masks]
            summary.skipped_segmenter += prediction.probs is None
        pause_point("batch:predict")  # test-only: a kill before the CSV (tests/test_faults.py)
    summary.seconds = time.perf_counter() - start
    return rows, summary


def _shard_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _shard_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.shard{rank}-of-{world}.csv")


def predict_folder(
    predictor: Predictor,
    images_dir: str | Path,
    out: str | Path,
    sample_submission: str | Path | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> RunSummary:
    """Predict every image and write the submission CSV atomically (merging shards on rank 0)."""
    out = Path(out)
    image_ids = list_images(images_dir, sample_submission)
    rank, world = _shard_env()
    mine = image_ids[rank::world]
    rows, summary = predict_rows(predictor, images_dir, mine, batch_size, num_workers, progress)
    if world == 1:
        write_submission(out, image_ids, [rows[i] for i in image_ids])
        return summary
    import torch.distributed as dist  # sharded runs only (torchrun)

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # torchrun provides MASTER_ADDR/PORT, RANK, WORLD_SIZE
    write_submission(_shard_path(out, rank, world), mine, [rows[i] for i in mine])
    dist.barrier()  # every shard is complete before rank 0 reads them
    if rank == 0:
        merged: dict[str, list[str]] = {}
        for other in range(world):
            merged.update(read_submission(_shard_path(out, other, world)))
        missing = [i for i in image_ids if i not in merged]
        if missing:
            raise RuntimeError(f"{len(missing)} images missing after merging shards, e.g. {missing[0]}")
        write_submission(out, image_ids, [merged[i] for i in image_ids])
        for other in range(world):
            _shard_path(out, other, world).unlink(missing_ok=True)
    dist.barrier()
    dist.destroy_process_group()
    return summary


def summary_text(summary: RunSummary) -> str:
    rate = summary.images / summary.seconds if summary.seconds else float("nan")
    text = f"{summary.images} images in {summary.seconds:.1f} s ({rate:.2f} images/s)"
    if summary.skipped_segmenter:
        text += f"; segmenter skipped on {summary.skipped_segmenter} (classifier or clean-frame gate)"
    if summary.failed:
        text += f"; {len(summary.failed)} FAILED (empty rows written):"
        text += "".join(f"\n  {image_id}: {reason}" for image_id, reason in summary.failed.items())
    return text
