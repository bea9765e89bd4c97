"""What repeats bit for bit: the same training with the same thread count, and under
``train.deterministic`` whatever the machine's thread count (README, "Reproducibility")."""

from __future__ import annotations

import pytest
import torch

from steel_defect.data.folds import split_folds
from steel_defect.training.checkpoint import load_checkpoint
from steel_defect.training.runner import train
from tests.conftest import tiny_cfg

# the demo's random augmentations at quarter size, so reseeding them is part of what is compared
AUGMENTED = (
    "transforms.train=[{name: Resize, params: {height: 64, width: 384}}, "
    "{name: RandomCrop, params: {height: 64, width: 128}}, {name: HorizontalFlip, params: {p: 0.5}}, "
    "{name: VerticalFlip, params: {p: 0.5}}, {name: Normalize}]"
)


@pytest.fixture
def torch_globals():
    """Training sets process-wide torch state; put it back for the other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _train(root, name: str, machine_threads: int, *opts: str) -> dict:
    """A 2-epoch run (2 batches each) with ``machine_threads`` as torch's ambient default."""
    torch.set_num_threads(machine_threads)
    cfg = tiny_cfg(
        root, f"paths.work_dir={root / name}", AUGMENTED, "train.epochs=2", "train.max_train_batches=2", *opts
    )
    split_folds(cfg)
    train(cfg, fold=0)
    state = load_checkpoint(root / name / "fold0" / "checkpoints" / "last.pth")
    timing = ("seconds", "finished")
    state["history"] = [{k: v for k, v in h.items() if k not in timing} for h in state["history"]]
    return state


def same_state(a, b) -> bool:
    """Nested dicts / lists of tensors and numbers equal bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _same(a: dict, b: dict) -> bool:
    return all(same_state(a[k], b[k]) for k in ("model_state", "optimizer_state", "history"))


def test_deterministic_runs_repeat_bitwise_across_thread_counts(tiny_synth, torch_globals):
    pinned = ("train.deterministic=true", "train.threads=null")  # the demo config pins 2
    one = _train(tiny_synth, "det1", 1, *pinned)
    two = _train(tiny_synth, "det2", 2, *pinned)  # a 2-core machine's default
    assert torch.get_num_threads() == 1  # pinned: train.threads is null, so 1
    assert _same(one, two)
    # without the pin, 2 threads sum a conv's weight gradient in another order: the runs part
    free = _train(tiny_synth, "free2", 2, "train.deterministic=false", "train.threads=2")
    again = _train(tiny_synth, "free2b", 2, "train.deterministic=false", "train.threads=2")
    assert _same(free, again)  # same machine, same threads: bit for bit
    assert not _same(free, one)
    first, last = free["history"][0]["train"]["loss"], one["history"][0]["train"]["loss"]
    assert first == pytest.approx(last, rel=1e-5)  # the first epoch's loss barely moves ...
    moved = [
        ((free["model_state"][k] - one["model_state"][k]).norm() / one["model_state"][k].norm()).item()
        for k in one["model_state"]
        if one["model_state"][k].is_floating_point() and one["model_state"][k].norm() > 0
    ]
    assert max(moved) > 1e-4  # ... but RAdam turns gradient noise of 1e-8 into whole steps
