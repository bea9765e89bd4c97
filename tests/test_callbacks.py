"""Training callbacks on hand-made batches: mixing, accumulation, metrics, batch limits."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steel_defect.training.callbacks import (
    BackwardStepCallback,
    BatchLimitCallback,
    ClassificationMetricsCallback,
    MixCallback,
    ResumableEarlyStopping,
    SegmentationMetricsCallback,
)


def _runner(train=True, **kwargs):
    engine = SimpleNamespace(
        backward=lambda loss: loss.backward(), num_processes=1, unscale_gradients=lambda: None
    )
    return SimpleNamespace(
        is_train_loader=train,
        engine=engine,
        loader_metrics={},
        batch_metrics={},
        need_early_stop=False,
        **kwargs,
    )


def _two_sample_batch(target):
    image = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # sample i is filled with i
    return {"image": image, "targets": target}


def test_mixup_mixes_images_and_targets_with_one_lambda():
    callback = MixCallback(mixup_alpha=0.4, cutmix_alpha=0.0, target_key="targets", seed=1)
    for _ in range(10):
        runner = _runner(batch=_two_sample_batch(torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
        callback.on_batch_start(runner)
        image, target = runner.batch["image"], runner.batch["targets"]
        for i in range(2):
            # image i = lam * i + (1 - lam) * partner, target i = lam * onehot(i) + ...
            assert image[i].unique().numel() == 1
            assert target[i, 1].item() == pytest.approx(image[i, 0, 0, 0].item())
            assert target[i].sum().item() == pytest.approx(1.0)


def test_cutmix_pastes_the_same_box_into_masks():
    callback = MixCallback(mixup_alpha=0.0, cutmix_alpha=1.0, target_key="mask", seed=0)
    changed = 0
    for _ in range(10):
        image = _two_sample_batch(None)["image"]
        batch = {"image": image, "mask": image.repeat(1, 4, 1, 1)}
        runner = _runner(batch=batch)
        callback.on_batch_start(runner)
        # the pasted box moved image and masks together: every mask channel still equals the image
        assert torch.equal(runner.batch["mask"], runner.batch["image"].repeat(1, 4, 1, 1))
        changed += int(runner.batch["image"][0].sum() > 0)
    assert changed > 0


def test_cutmix_mixes_labels_by_area():
    callback = MixCallback(mixup_alpha=0.0, cutmix_alpha=1.0, target_key="targets", seed=3)
    runner = _runner(batch=_two_sample_batch(torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
    callback.on_batch_start(runner)
    for i in range(2):
        share_of_ones = runner.batch["image"][i].mean().item()
        assert runner.batch["targets"][i, 1].item() == pytest.approx(share_of_ones)


def test_mixing_leaves_validation_batches_alone():
    callback = MixCallback(mixup_alpha=1.0, cutmix_alpha=1.0, target_key="targets", seed=0)
    batch = _two_sample_batch(torch.eye(2))
    runner = _runner(train=False, batch={k: v.clone() for k, v in batch.items()})
    callback.on_batch_start(runner)
    assert all(torch.equal(runner.batch[k], batch[k]) for k in batch)


def test_accumulating_two_half_batches_equals_one_full_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    full = torch.nn.Linear(3, 1)
    half = torch.nn.Linear(3, 1)
    half.load_state_dict(full.state_dict())
    opt_full = torch.optim.SGD(full.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(full(x), y).backward()
    opt_full.step()

    optimizer = torch.optim.SGD(half.parameters(), lr=0.1)
    runner = _runner(model=half, optimizer=optimizer, loader_batch_len=2, loader_batch_step=0)
    callback = BackwardStepCallback(accumulation_steps=2, grad_clip=None)
    callback.on_loader_start(runner)
    for part in (slice(0, 4), slice(4, 8)):
        runner.loader_batch_step += 1
        runner.batch_metrics = {"loss": torch.nn.functional.mse_loss(half(x[part]), y[part])}
        callback.on_batch_end(runner)
        if part.start == 0:
            assert not torch.equal(half.weight, full.weight)  # no step after the first half
    torch.testing.assert_close(half.weight, full.weight)
    torch.testing.assert_close(half.bias, full.bias)


def test_gradient_clipping_bounds_the_step():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    runner = _runner(model=model, optimizer=optimizer, loader_batch_len=1, loader_batch_step=1)
    callback = BackwardStepCallback(accumulation_steps=1, grad_clip=0.5)
    callback.on_loader_start(runner)
    runner.batch_metrics = {"loss": (model(torch.tensor([[100.0]])) - 1000.0).pow(2).mean()}
    callback.on_batch_end(runner)
    assert model.weight.item() == pytest.approx(0.5)  # gradient norm clipped to 0.5, lr 1
    assert runner.batch_metrics["grad_norm"] > 1000


def test_segmentation_metrics_on_known_masks():
    truth = torch.zeros(2, 4, 4, 4)
    truth[0, 0, :2, :] = 1  # 8 pixels
    logits = torch.full((2, 4, 4, 4), -10.0)
    logits[0, 0, :2, :2] = 10.0  # 4 of them -> Dice 2*4/12, IoU 4/8
    logits[1, 2, 0, 0] = 10.0  # a false positive on an empty truth -> Dice 0, IoU 0
    callback = SegmentationMetricsCallback()
    runner = _runner(train=False, batch={"logits": logits, "mask": truth})
    callback.on_loader_start(runner)
    callback.on_batch_end(runner)
    callback.on_loader_end(runner)
    metrics = runner.loader_metrics
    assert metrics["dice_1"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["dice_3"] == pytest.approx(0.5)
    assert metrics["dice_2"] == metrics["dice_4"] == 1.0
    assert metrics["dice"] == pytest.approx((5 / 6 + 1 + 0.5 + 1) / 4)
    assert metrics["iou_1"] == pytest.approx(0.5) and metrics["iou_3"] == 0.0


def test_classification_metrics_on_known_labels():
    truth = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.float32)
    pred = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float32)
    callback = ClassificationMetricsCallback()
    runner = _runner(train=False, batch={"logits": (pred * 2 - 1) * 5, "targets": truth})
    callback.on_loader_start(runner)
    callback.on_batch_end(runner)
    callback.on_loader_end(runner)
    metrics = runner.loader_metrics
    assert metrics["accuracy"] == pytest.approx(13 / 15)
    # class 1: tp 1 -> 1; class 2: nothing -> 1; class 3: tp 1, fn 1 -> 2/3; class 4: fp 1 -> 0
    assert metrics["f1"] == pytest.approx(np.mean([1, 1, 2 / 3, 0]))
    assert metrics["f1_none"] == 1.0


def test_batch_limit_stops_and_clears_the_flag():
    callback = BatchLimitCallback({"train": 2, "valid": None})
    runner = _runner(loader_key="train", loader_batch_step=1)
    callback.on_loader_start(runner)
    callback.on_batch_end(runner)
    assert not runner.need_early_stop
    runner.loader_batch_step = 2
    callback.on_batch_end(runner)
    assert runner.need_early_stop
    callback.on_loader_end(runner)
    assert not runner.need_early_stop


def test_epoch_callback_sets_the_loss_stage_and_the_sampler_draw():
    from torch.utils.data import DataLoader

    from steel_defect.data.sampling import MixSampler
    from steel_defect.losses import build_loss
    from steel_defect.training.callbacks import EpochCallback

    loss = build_loss("scheduled", {"stages": [{"epoch": 1, "name": "bce"}, {"epoch": 3, "name": "dice"}]})
    sampler = MixSampler([4, 2], [1.0, 1.0], seed=0)
    first_epoch = list(sampler)
    loader = DataLoader(list(range(6)), sampler=sampler)
    runner = SimpleNamespace(criterion=loss, loaders={"train": loader}, epoch_step=3)
    EpochCallback().on_epoch_start(runner)
    assert loss.current == 1  # epoch 3 is the second stage
    assert sampler.epoch == 2  # 0-based: a resumed run draws what an uninterrupted one would
    runner.epoch_step = 1
    EpochCallback().on_epoch_start(runner)
    assert loss.current == 0 and list(sampler) == first_epoch


def test_early_stopping_resumes_with_the_patience_it_had_left():
    history = [{"valid": {"loss": loss}} for loss in (1.0, 0.9, 0.95, 0.96)]  # 2 epochs without gain
    stopper = ResumableEarlyStopping(
        history, patience=3, loader_key="valid", metric_key="loss", minimize=True
    )
    runner = SimpleNamespace(need_early_stop=False, epoch_metrics={"valid": {"loss": 0.91}})
    stopper.on_experiment_start(runner)
    assert stopper.best_score == 0.9 and stopper.num_no_improvement_epochs == 2
    stopper.on_epoch_end(runner)  # the third epoch without gain: stop, as an uninterrupted run would
    assert runner.need_early_stop
