"""Read and write Severstal label files into one canonical table.

Two layouts of ``train.csv`` exist in the wild:

* wide (the 2019 original): ``ImageId_ClassId,EncodedPixels``, 4 rows per image, empty
  ``EncodedPixels`` when the class is absent;
* long (the later re-release): ``ImageId,ClassId,EncodedPixels``, defect rows only.

Both become :class:`Annotations`: a table of defect rows ``ImageId, ClassId,
EncodedPixels`` plus the list of images the file speaks for. Every RLE is validated on
read; a bad one is an error naming the file, the line and the problem. Every ImageId must be a
plain file name (:func:`is_plain_name`): it is joined onto an images folder, so ``../x.jpg`` or
``/etc/x.jpg`` would reach outside it. Files saved by Excel (byte-order mark, CRLF, spaces
around cells) read like any other.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, TextIO

import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.data.rle import RLEError, parse_rle
from steel_defect.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

WIDE_HEADER = ["ImageId_ClassId", "EncodedPixels"]
LONG_HEADER = ["ImageId", "ClassId", "EncodedPixels"]


class AnnotationError(UserError):
    """A label or submission file that is malformed; the message names file and line."""


@dataclass(frozen=True)
class Annotations:
    """Canonical labels.

    ``defects``: one row per (image, class) that has a defect, columns ImageId (str),
    ClassId (int 1..4), EncodedPixels (str), sorted by image then class.
    ``image_ids``: every image the file lists, in file order. For the long layout this is
    only the defective images; defect-free ones come from the image folder
    (:func:`resolve_image_ids`).
    ``layout``: ``"wide"`` or ``"long"``.
    """

    defects: pd.DataFrame
    image_ids: list[str]
    layout: str

    def rles(self, image_id: str) -> list[str]:
        """The four RLE strings (``""`` for absent classes) of one image."""
        out = [""] * NUM_CLASSES
        for class_id, rle in self._by_image().get(image_id, ()):
            out[class_id - 1] = rle
        return out

    def labels(self, image_ids) -> np.ndarray:
        """Multi-hot presence of classes 1..4, bool array of shape (N, 4)."""
        index = {image_id: i for i, image_id in enumerate(image_ids)}
        labels = np.zeros((len(index), NUM_CLASSES), dtype=bool)
        rows = self.defects[self.defects.ImageId.isin(index)]
        labels[rows.ImageId.map(index).to_numpy(), rows.ClassId.to_numpy() - 1] = True
        return labels

    def _by_image(self) -> dict[str, list[tuple[int, str]]]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {}
            for image_id, class_id, rle in self.defects.itertuples(index=False):
                cache.setdefault(image_id, []).append((int(class_id), rle))
            object.__setattr__(self, "_cache", cache)
        return cache


class CSVReadError(UserError):
    """A file that stops being UTF-8 CSV at ``line`` (1-based); the message says why."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


def read_csv_rows(path: str | Path) -> list[list[str]]:
    """Every row of a CSV file with its cells stripped; a row of blank cells is ``[]``.

    Files saved by a spreadsheet are taken as they come: Excel's "CSV UTF-8" starts with a
    byte-order mark, ends lines with CRLF and may leave spaces around cells. Blank rows stay
    in the list so that row ``i`` is still line ``i + 1`` for error messages. Raises OSError
    when the file cannot be read and :class:`CSVReadError` when it is not UTF-8 CSV.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CSVReadError(
            line, f"byte 0x{data[err.start]:02x} is not UTF-8 text; save the file as CSV UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        rows = list(reader)
    except csv.Error as err:
        raise CSVReadError(reader.line_num, f"not readable as CSV ({err})") from None
    return [[cell.strip() for cell in row] if any(cell.strip() for cell in row) else [] for row in rows]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        rows = read_csv_rows(path)
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err.strerror or err})") from err
    except CSVReadError as err:
        raise AnnotationError(f"{path}, {err}") from None
    if not rows or not rows[0]:
        raise AnnotationError(
            f"{path}, line 1: no header; expected {','.join(WIDE_HEADER)} or {','.join(LONG_HEADER)}"
        )
    return rows[0], rows[1:]


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is a file name alone, on Linux and Windows alike: no folder part (``/``,
    ``\\``, a drive), not ``.`` or ``..``; ``images_dir / name`` then stays inside ``images_dir``."""
    return (
        name not in ("", ".", "..")
        and "\0" not in name
        and PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
    )


def split_image_class(key: str) -> tuple[str, int]:
    """``"0002cc93b.jpg_3"`` -> ``("0002cc93b.jpg", 3)``; ValueError on a malformed key."""
    image_id, sep, class_text = key.rpartition("_")
    if not sep or not image_id or class_text not in {str(c) for c in CLASS_IDS}:
        raise ValueError(f"{key!r} is not '<ImageId>_<ClassId>' with ClassId in 1..4")
    return image_id, int(class_text)


def read_annotations(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> Annotations:
    """Read ``train.csv`` (wide or long layout) and validate every row and RLE."""
    path = Path(path)
    header, rows = _read_rows(path)
    if header == WIDE_HEADER:
        layout = "wide"
    elif header == LONG_HEADER:
        layout = "long"
    else:
        raise AnnotationError(
            f"{path}, line 1: header {header} is neither {WIDE_HEADER} (4 rows per image) "
            f"nor {LONG_HEADER} (defect rows only)"
        )
    num_pixels = shape[0] * shape[1]
    image_ids: dict[str, int] = {}  # image -> its first line
    seen: set[tuple[str, int]] = set()
    records = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise AnnotationError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}: {row}")
        try:
            if layout == "wide":
                image_id, class_id = split_image_class(row[0])
            else:
                image_id, class_id = row[0], int(row[1])
                if class_id not in CLASS_IDS or not image_id:
                    raise ValueError(f"ClassId {row[1]!r} is not one of {list(CLASS_IDS)}")
        except ValueError as err:
            raise AnnotationError(f"{path}, line {line}: {err}") from None
        if not is_plain_name(image_id):
            raise AnnotationError(
                f"{path}, line {line}: ImageId {image_id!r} is not a plain file name; an ImageId "
                "names a file inside the images folder, without any folder part"
            )
        if (image_id, class_id) in seen:
            raise AnnotationError(f"{path}, line {line}: duplicate row for {image_id} class {class_id}")
        seen.add((image_id, class_id))
        image_ids.setdefault(image_id, line)
        rle = row[-1]
        try:
            starts, _ = parse_rle(rle, num_pixels)
        except RLEError as err:
            raise AnnotationError(
                f"{path}, line {line} ({image_id} class {class_id}): bad RLE: {err}"
            ) from None
        if starts.size:
            records.append((image_id, class_id, rle))
        elif layout == "long":
            raise AnnotationError(
                f"{path}, line {line}: empty EncodedPixels; the long layout lists defect rows only"
            )
    if layout == "wide":
        counts: dict[str, int] = {}
        for image_id, _ in seen:
            counts[image_id] = counts.get(image_id, 0) + 1
        incomplete = [i for i, n in counts.items() if n != NUM_CLASSES]
        if incomplete:
            first = incomplete[0]
            raise AnnotationError(
                f"{path}, line {image_ids[first]}: image {first} has {counts[first]} rows; "
                f"the wide layout needs {NUM_CLASSES} rows per image ({len(incomplete)} such images)"
            )
    import pandas as pd  # here, not at the top: predict and serve import this module, never this

    defects = pd.DataFrame(records, columns=LONG_HEADER).astype({"ClassId": int})
    defects = defects.sort_values(["ImageId", "ClassId"], kind="stable").reset_index(drop=True)
    return Annotations(defects=defects, image_ids=list(image_ids), layout=layout)


def resolve_image_ids(annotations: Annotations, images_dir: str | Path) -> list[str]:
    """The full, sorted list of training images.

    Wide layout: the images the CSV lists; each must exist in ``images_dir``. Long layout:
    every image file in ``images_dir`` (defect-free images have no rows), and every
    image with rows must exist there.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    on_disk = {p.name for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    missing = [i for i in annotations.image_ids if i not in on_disk]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} labelled images are missing from {images_dir}, e.g. {missing[0]}"
        )
    if annotations.layout == "wide":
        return sorted(annotations.image_ids)
    return sorted(on_disk)


def write_annotations(path: str | Path, image_ids, rles_per_image, layout: str = "wide") -> None:
    """Write labels atomically. ``rles_per_image[i]`` holds the 4 RLEs of ``image_ids[i]``."""
    with atomic_write(path, newline="") as handle:
        write_rows(handle, image_ids, rles_per_image, layout)


def write_rows(handle: TextIO, image_ids, rles_per_image, layout: str = "wide") -> None:
    """Write the CSV of :func:`write_annotations` to an open text handle (a file or StringIO)."""
    if layout not in ("wide", "long"):
        raise ValueError(f"layout must be 'wide' or 'long', got {layout!r}")
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(WIDE_HEADER if layout == "wide" else LONG_HEADER)
    for image_id, rles in zip(image_ids, rles_per_image, strict=True):
        for class_id, rle in zip(CLASS_IDS, rles, strict=True):
            if layout == "wide":
                writer.writerow([f"{image_id}_{class_id}", rle])
            elif rle:
                writer.writerow([image_id, class_id, rle])
