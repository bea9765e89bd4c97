"""Labels in and out of the database, in the Severstal layout that the rest of the pipeline reads.

    import_csv(store, "train.csv", images="train_images")    # both layouts; confirmed, "imported"
    export_folder(store, "export/")                          # export/train.csv + export/train_images/

The export is a folder that ``split_folds.py``, ``train.py`` and ``demo --recipe real --data-dir``
read as they are: ``train.csv`` in the wide layout (4 rows a frame, so a confirmed defect-free
frame is listed, not merely absent) of the confirmed frames, and their images. It is built beside
the target and swapped in whole, so a killed export leaves the previous one untouched.

The swap is one step on Linux (``renameat2`` with ``RENAME_EXCHANGE``): killed anywhere, the
folder holds the old export or the new one. Where the system or the file system cannot exchange
two names, it takes two renames (``out`` -> ``.out.old``, then the new one -> ``out``); an
export killed between them leaves no ``out`` for a moment, and the next export puts
``.out.old`` back before anything else (so a refused or failed one still leaves it there).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE
from steel_defect.data.annotations import (
    is_plain_name,
    read_annotations,
    resolve_image_ids,
    write_annotations,
)
from steel_defect.errors import UserError
from steel_defect.labels.folder import FrameFolder
from steel_defect.labels.store import LabelStore, now
from steel_defect.pause import pause_point

log = logging.getLogger(__name__)

IMAGES_META = "images_dir"  # the folder `label` or `labels import --images` last used
EXPORT_MARKER = ".steel-defect-export.json"
RENAME_EXCHANGE = 2  # linux/fs.h: swap the two names in one step
_AT_FDCWD = -100


class ExportError(UserError):
    """An export that cannot be written: no confirmed frame, a missing image, a foreign folder."""


def import_csv(
    store: LabelStore, csv_path: str | Path, images: str | Path | None = None, replace: bool = False
) -> dict[str, int]:
    """Import a ``train.csv`` (wide or long layout) as confirmed labels; returns the counts.

    With ``images`` the frames are checked against the folder (every labelled one must be there;
    for the long layout its other frames are the defect-free ones) and the folder is remembered
    for ``export``. Without it, a long-layout file can only import its defective frames.
    """
    annotations = read_annotations(csv_path)
    height, width = IMAGE_SHAPE
    if images is not None:
        folder = FrameFolder(images)
        ids = resolve_image_ids(annotations, images)
        unusable = [i for i in ids if i not in folder]
        if unusable:
            reasons = dict(folder.skipped)
            raise UserError(
                f"{len(unusable)} frames of {csv_path} are unusable in {images} "
                f"(first: {unusable[0]}: {reasons.get(unusable[0], 'not an image file')})"
            )
    else:
        ids = list(annotations.image_ids)
    entries = [(name, width, height, annotations.rles(name)) for name in ids]
    counts = store.import_labels(entries, source=f"import:{Path(csv_path).name}", replace=replace)
    if images is not None:
        store.set_meta(IMAGES_META, str(Path(images).resolve()))
    counts["frames"] = len(ids)
    counts["layout"] = annotations.layout
    return counts


def images_dir(store: LabelStore, images: str | Path | None) -> Path:
    """The frames' folder: ``images``, else the one the database records; ExportError when neither is."""
    chosen = images or store.get_meta(IMAGES_META)
    if chosen is None:
        raise ExportError(
            f"{store.path} does not record its images folder; pass --images DIR (where the frames are)"
        )
    folder = Path(chosen)
    if not folder.is_dir():
        raise ExportError(f"the images folder {folder} does not exist; pass --images DIR")
    return folder


def export_folder(
    store: LabelStore, out: str | Path, images: str | Path | None = None, exchange: bool = True
) -> dict:
    """Write ``out/train.csv`` and ``out/train_images/`` of the confirmed frames; returns a summary.

    ``out`` must be new, empty or an earlier export (it is replaced whole); anything else is refused.
    ``exchange=False`` swaps with two renames even where one exchange would do (the test of the
    fallback).
    """
    out = Path(out)
    restore_interrupted(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_MARKER).is_file())):
        raise ExportError(f"{out} exists and is not an earlier export; choose a new folder")
    confirmed = list(store.confirmed())
    if not confirmed:
        raise ExportError(
            f"{store.path} has no confirmed frame to export; confirm some in `steel-defect label`"
        )
    # import refuses such names; a database an older version imported into may still hold them
    unsafe = [name for name, _ in confirmed if not is_plain_name(name)]
    if unsafe:
        raise ExportError(
            f"{store.path} lists {len(unsafe)} frames whose name is not a plain file name (first: "
            f"{unsafe[0]!r}); they would be read from and written outside the folders. Nothing was "
            "exported: import the labels again into a new --db (import now refuses such ImageIds)"
        )
    source = images_dir(store, images)
    missing = [name for name, _ in confirmed if not (source / name).is_file()]
    if missing:
        raise ExportError(f"{len(missing)} confirmed frames are missing from {source} (first: {missing[0]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        (staging / "train_images").mkdir()
        for name, _ in confirmed:
            _link_or_copy(source / name, staging / "train_images" / name)
        write_annotations(staging / "train.csv", [n for n, _ in confirmed], [m for _, m in confirmed])
        summary = {
            "database": str(store.path.resolve()),
            "images": str(source.resolve()),
            "exported_at": now(),
            "frames": len(confirmed),
            "frames_with_class": {c: sum(bool(m[c - 1]) for _, m in confirmed) for c in CLASS_IDS},
            "defect_free": sum(not any(m) for _, m in confirmed),
        }
        (staging / EXPORT_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        _swap_in(staging, out, exchange)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _old(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def restore_interrupted(out: str | Path) -> bool:
    """Put back the export that a run killed between its two renames left as ``.out.old``, and
    remove what killed runs left beside ``out``; True when an export was put back."""
    out = Path(out)
    old = _old(out)
    restored = False
    if not out.exists() and (old / EXPORT_MARKER).is_file():
        os.replace(old, out)
        log.warning("%s: put back the earlier export that an interrupted export had moved aside", out)
        restored = True
    if (out / EXPORT_MARKER).is_file():
        shutil.rmtree(old, ignore_errors=True)
    if out.parent.is_dir():
        for partial in out.parent.glob(f".{out.name}.*.partial"):
            shutil.rmtree(partial, ignore_errors=True)  # a killed export's staging (or the old one)
    return restored


def _swap_in(staging: Path, out: Path, exchange: bool) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    if exchange and _exchange(staging, out):
        pause_point("export:swap")  # the kill test: the new export in place, the old one aside
        shutil.rmtree(staging, ignore_errors=True)  # the old export, now under the staging name
        return
    old = _old(out)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    pause_point("export:swap")  # the kill test: no out until the next export puts .out.old back
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a kernel before 3.15, or a file system without exchange
    raise OSError(code, os.strerror(code), str(b))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # no copy of 12,568 frames when the export is on the same disk
    except OSError:
        shutil.copy2(source, target)
