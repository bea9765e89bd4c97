"""Submission files: read, validate with row-level errors, and write atomically.

A submission is ``ImageId_ClassId,EncodedPixels`` with 4 rows per image (classes 1..4)
and RLE runs that are positive, sorted, non-overlapping and inside the 256x1600 frame.
``steel-defect validate SUB.csv [--truth T.csv | --sample-submission S.csv]`` runs
:func:`read_submission` and prints every problem (up to a limit) by line. A file saved
by Excel (byte-order mark, CRLF, spaces around cells, blank rows) reads like any other.
"""

from __future__ import annotations

from pathlib import Path

from steel_defect.constants import CLASS_IDS, IMAGE_SHAPE, NUM_CLASSES
from steel_defect.data.annotations import (
    WIDE_HEADER,
    CSVReadError,
    read_csv_rows,
    split_image_class,
    write_annotations,
)
from steel_defect.data.rle import RLEError, parse_rle
from steel_defect.errors import UserError

MAX_REPORTED = 20
_REPORTED = "<reported>"  # stands for a row whose problem is already listed


class SubmissionError(UserError):
    """An invalid submission; ``problems`` lists one message per bad row or image."""

    def __init__(self, path: Path, problems: list[str], total: int | None = None):
        self.problems = problems
        total = total if total is not None else len(problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        lines = "\n  ".join(problems)
        super().__init__(f"{path}: invalid submission ({total} problem(s)):\n  {lines}{more}")


def read_submission(
    path: str | Path,
    expected_ids: list[str] | None = None,
    shape: tuple[int, int] = IMAGE_SHAPE,
) -> dict[str, list[str]]:
    """Validate and read a submission: ``{ImageId: [rle_1, rle_2, rle_3, rle_4]}`` in file order.

    ``expected_ids``: when given, every one must be present and no other image may be.
    Raises :class:`SubmissionError` listing the problems with their line numbers.
    """
    path = Path(path)
    problems: list[str] = []
    total = 0

    def problem(message: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < MAX_REPORTED:
            problems.append(message)

    try:
        rows = read_csv_rows(path)
    except OSError as err:
        raise SubmissionError(path, [f"cannot read ({err.strerror or err})"]) from None
    except CSVReadError as err:
        raise SubmissionError(path, [str(err)]) from None
    if not rows or rows[0] != WIDE_HEADER:
        header = rows[0] if rows else "nothing (empty file)"
        raise SubmissionError(path, [f"line 1: header must be {','.join(WIDE_HEADER)}, got {header}"])
    num_pixels = shape[0] * shape[1]
    result: dict[str, list[str | None]] = {}
    first_line: dict[str, int] = {}
    # Rows already reported still count as present, so that one bad row is one problem and
    # not also "no row for class 3" or "image missing". A key with a bad class counts for
    # its image when the image part reads.
    bad_keys: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        reported = len(row) != 2
        if reported:
            problem(f"line {line}: {len(row)} fields, expected 2: {row}")
        try:
            image_id, class_id = split_image_class(row[0])
        except ValueError as err:
            if not reported:
                problem(f"line {line}: {err}")
            image_part = row[0].rpartition("_")[0]
            bad_keys[image_part] = bad_keys.get(image_part, 0) + 1
            continue
        rles = result.setdefault(image_id, [None] * NUM_CLASSES)
        first_line.setdefault(image_id, line)
        if rles[class_id - 1] is not None:
            if not reported:
                problem(f"line {line}: second row for {image_id}_{class_id}")
            continue
        rles[class_id - 1] = _REPORTED
        if not reported:
            try:
                parse_rle(row[1], num_pixels)
                rles[class_id - 1] = row[1]
            except RLEError as err:
                problem(f"line {line}: {err}")
    for image_id, rles in result.items():
        missing = [str(c) for c, rle in zip(CLASS_IDS, rles, strict=True) if rle is None]
        if len(missing) > bad_keys.get(image_id, 0):
            problem(
                f"line {first_line[image_id]}: image {image_id} has no row for class(es) {', '.join(missing)}"
            )
    if expected_ids is not None:
        expected = set(expected_ids)
        for image_id in [i for i in expected_ids if i not in result and i not in bad_keys]:
            problem(f"image {image_id} is missing (4 rows expected)")
        for image_id in [i for i in result if i not in expected]:
            problem(f"line {first_line[image_id]}: image {image_id} is not among the expected images")
    if total:
        raise SubmissionError(path, problems, total)
    return result  # type: ignore[return-value]


def read_sample_submission(path: str | Path) -> list[str]:
    """Image ids of a sample submission, in its order.

    Accepts the 2019 layout (``ImageId_ClassId,EncodedPixels``) and the later one with an
    ``ImageId`` column (``ImageId,EncodedPixels,ClassId``).
    """
    path = Path(path)
    try:
        rows = read_csv_rows(path)
        header, body = (rows[0], [row for row in rows[1:] if row]) if rows else ([], [])
        if "ImageId_ClassId" in header:
            column = header.index("ImageId_ClassId")
            ids = [split_image_class(row[column])[0] for row in body]
        elif "ImageId" in header:
            column = header.index("ImageId")
            ids = [row[column] for row in body]
        else:
            raise UserError(f"header {header} has neither ImageId_ClassId nor ImageId")
    except OSError as err:
        raise FileNotFoundError(f"sample submission {path}: cannot read ({err.strerror or err})") from err
    except IndexError:
        raise UserError(f"sample submission {path}: a row has fewer fields than the header") from None
    except ValueError as err:  # CSVReadError included
        raise UserError(f"sample submission {path}: {err}") from None
    return list(dict.fromkeys(ids))


def write_submission(path: str | Path, image_ids: list[str], rles_per_image: list[list[str]]) -> Path:
    """Write ``ImageId_ClassId,EncodedPixels``, 4 rows per image, atomically."""
    write_annotations(path, image_ids, rles_per_image, layout="wide")
    return Path(path)
