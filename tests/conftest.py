"""Shared fixtures: paths to the real sample data and small hand-made label files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "data" / "severstal_sample"

# Disk: a training test leaves ~0.6 GB of checkpoints and the default suite once left 24 GB,
# which filled CI's disk before the slow suite ended. pyproject's tmp_path_retention_policy
# "failed" removes a passed test's tmp_path; this removes a module fixture's tmp_path_factory
# directories when the module ends, kept (like tmp_path's) when a test failed meanwhile.
_CLAIMED: set[Path] = set()
_MADE: dict[int, tuple[set[Path], int]] = {}  # id(fixturedef) -> (its directories, failures then)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    factory = request.config._tmp_path_factory
    if fixturedef.scope != "module" or factory._retention_policy != "failed":
        return (yield)
    base = factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    try:
        return (yield)
    finally:
        made = set(base.iterdir()) - before - _CLAIMED  # a nested fixture claims its own first
        _CLAIMED.update(made)
        if made:
            _MADE[id(fixturedef)] = (made, failed)


def pytest_fixture_post_finalizer(fixturedef, request):
    """After the fixture's own teardown (a server it started has stopped)."""
    made, failed = _MADE.pop(id(fixturedef), (set(), 0))
    if made and request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


# Config overrides for quick runs: quarter-resolution frames keep a CPU step well under a second.
SMALL_OPTS = [
    "transforms.train=[{name: Resize, params: {height: 64, width: 384}}, {name: Normalize}]",
    "transforms.valid=[{name: Resize, params: {height: 64, width: 384}}, {name: Normalize}]",
    "data.batch_size=4",
    "data.num_workers=0",
    "folds.n_splits=3",
]


@pytest.fixture
def real_sample() -> Path:
    """The real Severstal frames beside the repository; skips when a fresh clone lacks them."""
    if not (REAL_SAMPLE / "train.csv").is_file():
        pytest.skip(f"real sample data not found at {REAL_SAMPLE} (only present beside the team's checkout)")
    return REAL_SAMPLE


# Every YAML shipped under configs/, and the experiments among them (all but the shared base).
SHIPPED_CONFIGS = sorted((REPO / "configs").rglob("*.yml"))
SHIPPED_EXPERIMENTS = [p for p in SHIPPED_CONFIGS if p.name != "base.yml"]


def each_config(paths: list[Path]):
    """Parametrize a test over ``paths`` as ``path``: one case per shipped config, named by it."""
    assert paths, "no configs shipped"
    ids = [str(p.relative_to(REPO / "configs")) for p in paths]
    return pytest.mark.parametrize("path", paths, ids=ids)


_RANDOM_PAIRS: dict[float, Path] = {}  # seg_prior -> the folder its pair was made in, once a session


def random_checkpoints(out_dir: Path, seg_prior: float = 0.3, exported: bool = False) -> dict[str, Path]:
    """An untrained segmenter and classifier saved as checkpoints in ``out_dir`` (no training).

    The segmenter starts at ``model.output_prior=seg_prior``, so its maps vary around it
    and moving a threshold visibly changes the masks. The pair is seeded, so every call gives
    the same bytes: it is made once a session per prior and copied. ``exported``: their ONNX
    exports are copied beside them too, as a first prediction would have left them, so a
    server or predictor over them starts without exporting (seconds each); leave it False where
    a test watches the export being made.
    """
    made = _RANDOM_PAIRS.get(seg_prior)
    if made is None:
        made = _RANDOM_PAIRS[seg_prior] = _make_random_pair(seg_prior)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task in ("seg", "cls"):
        paths[task] = Path(shutil.copyfile(made / f"{task}.pth", out_dir / f"{task}.pth"))
        if exported:
            if not (made / f"{task}.onnx").is_file():
                from steel_defect.inference.onnx_export import load_exported

                load_exported(made / f"{task}.pth")  # written beside it, keyed on its SHA-256
            shutil.copyfile(made / f"{task}.onnx", out_dir / f"{task}.onnx")
    return paths


def _make_random_pair(seg_prior: float) -> Path:
    import torch

    from steel_defect.config import load_config
    from steel_defect.models import build_model
    from steel_defect.training.checkpoint import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="random-checkpoints-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for task, config, extra in (
        ("seg", "synth_seg.yml", [f"model.output_prior={seg_prior}"]),
        ("cls", "synth_cls.yml", []),
    ):
        torch.manual_seed(0)
        cfg = load_config(REPO / "configs" / "demo" / config, [*SMALL_OPTS, *extra])
        save_checkpoint(folder / f"{task}.pth", build_model(cfg), cfg, epoch=0, metrics={})
    return folder


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory) -> Path:
    """16 synthetic frames (12 train, 4 test) in ``<root>/data``; returns the root."""
    from steel_defect.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(root / "data", n=16, seed=3, test_fraction=0.25)
    return root


def tiny_cfg(root: Path, *opts: str):
    """The small synthetic segmenter config on a ``tiny_synth`` root, with ``opts`` on top."""
    from steel_defect.config import load_config

    common = [f"paths.data_dir={root / 'data'}", f"paths.folds_csv={root / 'folds.csv'}", *SMALL_OPTS]
    return load_config(
        REPO / "configs/demo/synth_seg.yml", [*common, f"paths.work_dir={root / 'seg'}", *opts]
    )


def excel_csv(text: str) -> bytes:
    """``text`` (a plain CSV) as a spreadsheet saves it: UTF-8 byte-order mark, CRLF line ends,
    spaces around every cell and a row of empty cells after the header."""
    lines = [
        ",".join(f" {cell} " if cell else cell for cell in line.split(",")) for line in text.splitlines()
    ]
    lines.insert(1, "," * text.splitlines()[0].count(","))
    return "\ufeff".encode() + "\r\n".join(lines).encode() + b"\r\n"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module (the browser tests' fixture);
    skips, or fails under ``STEEL_DEFECT_E2E=required``, when either is missing."""
    from tests.test_webapp_e2e import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
