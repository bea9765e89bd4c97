"""Example frames one click away on the page: synthetic ones, or a user's folder of frames.

No real data ships with the package, so by default the page offers synthetic frames;
``steel-defect serve --examples DIR`` offers the first frames of DIR instead:

    examples = folder_examples("test_images", max_bytes=10 * 2**20)   # {file name: bytes}

A folder's files are read once at start, each checked like an upload; the API only ever
looks a name up in that listing, so a request never names a path.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from steel_defect.constants import CLASS_IDS
from steel_defect.data.images import IMAGE_SUFFIXES, encode_jpeg
from steel_defect.data.synth import generate_frame
from steel_defect.errors import UserError
from steel_defect.webapp.uploads import UploadError, decode_upload, display_name

log = logging.getLogger(__name__)
EXAMPLE_SEED = 28  # its five defect frames cover all four classes
N_EXAMPLES = 6
MAX_FOLDER_EXAMPLES = 12  # buttons on one line of the page; also bounds the start-up reads


class ExamplesError(UserError):
    """An ``--examples`` folder that is missing or holds no usable frame."""


@lru_cache(maxsize=1)
def example_images() -> dict[str, bytes]:
    """``{file name: JPEG bytes}``: five frames with defects and one clean, the same every run.

    The name says which classes were drawn (``example-2-c3c4.jpg``), so a user can compare.
    """
    rng = np.random.default_rng(EXAMPLE_SEED)
    examples = {}
    for index in range(1, N_EXAMPLES + 1):
        image, masks = generate_frame(rng, defect_free=index == N_EXAMPLES)
        drawn = "".join(f"c{c}" for c in CLASS_IDS if masks[c - 1].any()) or "clean"
        examples[f"example-{index}-{drawn}.jpg"] = encode_jpeg(image, 92, "an example frame")
    return examples


def folder_examples(
    directory: str | Path, max_bytes: int, limit: int = MAX_FOLDER_EXAMPLES
) -> dict[str, bytes]:
    """``{file name: file bytes}`` of the first ``limit`` usable frames of ``directory``, by name.

    A file is usable when it passes the upload checks (at most ``max_bytes``, an image by
    content, readable, 1600x256); any other image file is skipped with a warning naming it.
    Raises :class:`ExamplesError` when ``directory`` is not a folder or has no usable frame.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ExamplesError(f"--examples {folder}: no such folder; pass a folder of 1600x256 frames")
    # Hidden files are editor and macOS leftovers (``._a.jpg``), not frames.
    paths = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    examples: dict[str, bytes] = {}
    for index, path in enumerate(paths):
        if len(examples) == limit:
            log.info(
                "--examples %s: showing the first %d frames of %d image files", folder, limit, len(paths)
            )
            break
        name = display_name(path.name, index + 1)  # the label /api/predict would give it
        if name in examples:
            log.warning("--examples: skipping %s: its name clashes with an earlier file's (%s)", path, name)
            continue
        try:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
            decode_upload(data, str(path), max_bytes, declared_size=path.stat().st_size)
        except OSError as err:
            log.warning("--examples: skipping %s: cannot read it (%s)", path, err)
            continue
        except UploadError as err:
            log.warning("--examples: skipping %s", err.message)
            continue
        examples[name] = data
    if not examples:
        if paths:
            problem = f"none of its {len(paths)} image files is a readable 1600x256 frame (see the warnings)"
        else:
            problem = f"it holds no {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} file"
        raise ExamplesError(
            f"--examples {folder}: {problem}; pass a folder of 1600x256 Severstal-format frames"
        )
    return examples
