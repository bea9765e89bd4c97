"""Optimizers and schedules: encoder/decoder groups, hand-computed warm-up cosine, errors."""

import math

import pytest
import torch
from torch import nn

from steel_defect.config import ConfigError, load_config
from steel_defect.config.errors import ComponentError
from steel_defect.training.checks import check_components
from steel_defect.training.optim import (
    build_optimizer,
    build_scheduler,
    cosine_restarts,
    cycle_ends,
    noam,
    param_groups,
    warmup_cosine,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)


def test_encoder_and_decoder_get_their_own_rates():
    cfg = load_config(
        None,
        [
            "optimizer.name=adamw",
            "optimizer.lr=0.01",
            "optimizer.encoder_lr=0.001",
            "optimizer.params={weight_decay: 0.1}",
        ],
    )
    optimizer = build_optimizer(Tiny(), cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        ("encoder", 0.001, 2),
        ("decoder", 0.01, 2),
    ]
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert [g["name"] for g in param_groups(Tiny(), 0.01, None)] == ["all"]


def test_default_is_radam():
    assert isinstance(build_optimizer(Tiny(), load_config(None)), torch.optim.RAdam)


def test_warmup_cosine_values():
    factor = warmup_cosine(epochs=6, warmup_epochs=2, min_factor=0.1)
    # warm-up: 1/3, 2/3; then cosine over 4 epochs from 1 down towards 0.1
    expected = [1 / 3, 2 / 3, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55]
    assert [factor(e) for e in range(5)] == pytest.approx(expected)


def test_schedulers_step_the_rate():
    model = Tiny()
    cfg = load_config(None, ["scheduler.name=step", "scheduler.params={step_size: 1, gamma: 0.5}"])
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0005)
    cfg = load_config(None, ["scheduler.name=plateau", "scheduler.params={patience: 0, factor: 0.1}"])
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scheduler.step(0.5)
    scheduler.step(0.4)  # worse (the monitored metric is maximised): the rate drops
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert build_scheduler(optimizer, load_config(None)) is None


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (
            ["optimizer.name=lion"],
            r"'optimizer.name': unknown optimizer 'lion'; valid: radam, adam, adamw, sgd",
        ),
        (["optimizer.params={momentum_x: 1}"], r"'optimizer.params.momentum_x': not a parameter"),
        (["scheduler.name=cyclic"], r"'scheduler.name': unknown scheduler 'cyclic'"),
        (["scheduler.name=cosine", "scheduler.params={warmup: 1}"], r"'scheduler.params.warmup': not a"),
        (["scheduler.name=cosine_restarts", "scheduler.params={cycles: 3}"], r"cycles must divide"),
    ],
)
def test_errors_name_the_key_before_training(opts, message):
    cfg = load_config(None, opts)
    with pytest.raises(ComponentError, match=message):
        check_components(cfg)  # what train() runs first
    with pytest.raises(ComponentError, match=message):
        build_scheduler(build_optimizer(Tiny(), cfg), cfg)


def test_restart_and_noam_factors():
    factor = cosine_restarts(epochs=6, cycles=2, min_factor=0.1)
    assert [factor(e) for e in range(6)] == pytest.approx([1.0, 0.775, 0.325] * 2)
    cfg = load_config(
        None, ["train.epochs=6", "scheduler.name=cosine_restarts", "scheduler.params={cycles: 2}"]
    )
    assert cycle_ends(cfg) == [3, 6]  # 1-based: the epochs at each cycle's minimum
    warm = noam(warmup_epochs=4)
    assert [warm(e) for e in (0, 3, 15)] == pytest.approx([0.25, 1.0, 0.5])


def test_every_schedule_keeps_the_encoder_to_decoder_ratio():
    for name, params in (("noam", "{warmup_epochs: 2}"), ("multistep", "{milestones: [1], gamma: 0.1}")):
        cfg = load_config(
            None,
            [
                "optimizer.lr=0.01",
                "optimizer.encoder_lr=0.001",
                f"scheduler.name={name}",
                f"scheduler.params={params}",
            ],
        )
        optimizer = build_optimizer(Tiny(), cfg)
        scheduler = build_scheduler(optimizer, cfg)
        for _ in range(3):
            optimizer.step()
            scheduler.step()
            encoder, decoder = (g["lr"] for g in optimizer.param_groups)
            assert decoder == pytest.approx(10 * encoder)
        assert decoder < 0.01  # and the schedule did lower it


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (["train.swa=3", "train.save_top_k=2"], "2 <= swa <= train.save_top_k"),
        (["train.snapshots=true", "scheduler.name=cosine"], "cosine_restarts"),
    ],
)
def test_averaging_needs_its_checkpoints_and_cycles(opts, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, opts)
