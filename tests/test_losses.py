"""The loss registry: hand-computed values for each loss, gradients, and build errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from steel_defect.config.errors import ComponentError
from steel_defect.losses import LOSSES, build_loss
from steel_defect.losses import functional as LF

LOG2 = 0.693147  # -log(sigmoid(0)) = -log(1 - sigmoid(0)) = log 2


def _t(values, shape=None):
    x = torch.tensor(values, dtype=torch.float32)
    return x.reshape(shape) if shape else x


# ---- BCE -----------------------------------------------------------------------------------


def test_bce_hand_value():
    logits, targets = _t([[0.0, 2.0]]), _t([[1.0, 0.0]])
    # target 1, logit 0: -log(0.5) = 0.693147; target 0, logit 2: -log(1 - s(2)) = log(1 + e^2) = 2.126928
    # mean = (0.693147 + 2.126928) / 2 = 1.410038
    assert build_loss("bce")(logits, targets).item() == pytest.approx(1.410038, abs=1e-6)


def test_weighted_bce_applies_pos_weight_on_class_dim():
    loss = build_loss("weighted_bce", {"pos_weight": [2, 1]})
    # (N, C): both targets 1 at logit 0 -> (2 log 2 + 1 log 2) / 2 = 1.5 log 2 = 1.039721
    assert loss(_t([[0.0, 0.0]]), _t([[1.0, 1.0]])).item() == pytest.approx(1.039721, abs=1e-6)
    # (1, 2, 1, 2): class 0 targets [1, 0] -> 2 log 2 + log 2; class 1 targets [1, 1] -> log 2 + log 2.
    # mean = 5/4 log 2 = 0.866434. Weights broadcast over the last dim (W) would give 6/4 log 2.
    targets = _t([1.0, 0.0, 1.0, 1.0], (1, 2, 1, 2))
    assert loss(torch.zeros(1, 2, 1, 2), targets).item() == pytest.approx(0.866434, abs=1e-6)


def test_weighted_bce_rejects_wrong_length():
    loss = build_loss("weighted_bce", {"pos_weight": [2, 1]})
    with pytest.raises(ValueError, match=r"pos_weight has 2 value\(s\) but the input has 3 classes"):
        loss(torch.zeros(1, 3), torch.zeros(1, 3))


# ---- Dice / Jaccard ------------------------------------------------------------------------


def _binary_target():
    torch.manual_seed(0)
    target = (torch.rand(2, 4, 6, 6) > 0.5).float()
    target[0, 0] = 0.0  # an empty map among them
    return target


def test_dice_perfect_and_wrong():
    target = _binary_target()
    assert build_loss("dice")(20.0 * (2 * target - 1), target).item() == pytest.approx(0.0, abs=1e-6)
    # Every map non-empty so smooth=0 is defined: no overlap -> Dice 0 -> loss 1.
    target[0, 0, 0, 0] = 1.0
    wrong = -20.0 * (2 * target - 1)
    assert build_loss("dice", {"smooth": 0.0})(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_hand_value_at_half_probability():
    target = _t([1.0, 1.0, 0.0, 0.0], (1, 1, 2, 2))
    # p = 0.5 everywhere: I = 0.5 * 2 = 1, P = 2, T = 2, smooth 1 -> dice (2 + 1) / (4 + 1) = 0.6
    assert build_loss("dice", {"smooth": 1.0})(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(0.4)


def test_dice_empty_pairs():
    empty = torch.zeros(1, 1, 2, 2)
    # Empty target, confident empty prediction: (0 + 1) / (~0 + 1) -> loss ~0, like the metric's 1.
    assert build_loss("dice")(torch.full((1, 1, 2, 2), -20.0), empty).item() == pytest.approx(0.0, abs=1e-6)
    # Empty target, 4 confident false positives: 1 - 1 / (4 + 1) = 0.8.
    assert build_loss("dice")(torch.full((1, 1, 2, 2), 20.0), empty).item() == pytest.approx(0.8, abs=1e-6)


def test_dice_per_image_versus_per_class():
    target = torch.zeros(2, 1, 1, 2)
    target[0, 0, 0, :] = 1.0  # image 0 full, image 1 empty; logits 0 -> p 0.5
    logits = torch.zeros(2, 1, 1, 2)
    # per image: image 0 (2*1 + 1) / (1 + 2 + 1) = 0.75, image 1 (0 + 1) / (1 + 0 + 1) = 0.5 -> loss 0.375
    assert LF.dice(logits, target, per_image=True).item() == pytest.approx(0.375)
    # per class over the batch: I = 1, P = 2, T = 2 -> (2 + 1) / (4 + 1) = 0.6 -> loss 0.4
    assert LF.dice(logits, target, per_image=False).item() == pytest.approx(0.4)


def test_jaccard_perfect_and_hand_value():
    target = _binary_target()
    assert build_loss("jaccard")(20.0 * (2 * target - 1), target).item() == pytest.approx(0.0, abs=1e-6)
    half = _t([1.0, 1.0, 0.0, 0.0], (1, 1, 2, 2))
    # p = 0.5: I = 1, U = 2 + 2 - 1 = 3, smooth 1 -> (1 + 1) / (3 + 1) = 0.5
    assert build_loss("jaccard")(torch.zeros(1, 1, 2, 2), half).item() == pytest.approx(0.5)


def test_bce_dice_is_weighted_sum():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 8, 8), (torch.rand(2, 4, 8, 8) > 0.7).float()
    combo = build_loss("bce_dice", {"bce_weight": 0.5, "dice_weight": 2.0, "smooth": 1.0})
    expected = 0.5 * build_loss("bce")(logits, target) + 2.0 * build_loss("dice")(logits, target)
    torch.testing.assert_close(combo(logits, target), expected)


# ---- Focal ---------------------------------------------------------------------------------


def test_focal_gamma_zero_is_bce():
    torch.manual_seed(2)
    logits, target = torch.randn(3, 5), torch.rand(3, 5)  # soft targets too
    torch.testing.assert_close(
        build_loss("focal", {"gamma": 0.0})(logits, target), build_loss("bce")(logits, target)
    )


def test_focal_hand_values():
    focal = build_loss("focal")  # gamma 2, no alpha
    # logit 0, target 1: (1 - 0.5)^2 * log 2 = 0.173287
    assert focal(_t([[0.0]]), _t([[1.0]])).item() == pytest.approx(0.173287, abs=1e-6)
    # logit 2, target 1: p = 0.880797, (1 - p)^2 = 0.014209, BCE = log(1 + e^-2) = 0.126928 -> 0.0018036
    assert focal(_t([[2.0]]), _t([[1.0]])).item() == pytest.approx(0.0018036, abs=1e-6)
    # alpha 0.25, logits 0, targets [1, 0]: mean(0.25 * 0.25 log 2, 0.75 * 0.25 log 2) = 0.086643
    alpha = build_loss("focal", {"gamma": 2.0, "alpha": 0.25})
    assert alpha(_t([[0.0, 0.0]]), _t([[1.0, 0.0]])).item() == pytest.approx(0.086643, abs=1e-6)


# ---- Lovasz hinge --------------------------------------------------------------------------


def _reference_lovasz_hinge_flat(logits, labels):
    """bermanmaxim/LovaszSoftmax ``lovasz_hinge_flat`` + ``lovasz_grad``, one 1-D map at a time."""
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    gt_sorted = labels[perm]
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return torch.dot(F.relu(errors_sorted), jaccard)


def test_lovasz_hand_value():
    # logits [2, 0.5, -1], labels [1, 0, 1]: errors 1 - logit * sign = [-1, 1.5, 2].
    # Sorted descending [2, 1.5, -1] with gt [1, 0, 1], gts 2: intersection [1, 1, 0],
    # union [2, 3, 3], jaccard [1/2, 2/3, 1], grad [1/2, 1/6, 1/3].
    # loss = relu([2, 1.5, -1]) . grad = 1 + 0.25 + 0 = 1.25
    logits, labels = _t([2.0, 0.5, -1.0], (1, 1, 1, 3)), _t([1.0, 0.0, 1.0], (1, 1, 1, 3))
    assert build_loss("lovasz_hinge")(logits, labels).item() == pytest.approx(1.25)


def test_lovasz_all_negative_map_is_max_hinge_error():
    # gts 0 -> intersection 0, union [1, 2, 3], jaccard [1, 1, 1], grad [1, 0, 0]:
    # only the largest error counts, relu(1 + 0.5) = 1.5 (the reference's behaviour).
    logits = _t([0.5, -1.0, 0.0], (1, 1, 1, 3))
    assert build_loss("lovasz_hinge")(logits, torch.zeros(1, 1, 1, 3)).item() == pytest.approx(1.5)
    # The two maps above as two classes of one image: per-image mean (1.25 + 1.5) / 2.
    both = torch.cat([_t([2.0, 0.5, -1.0], (1, 1, 1, 3)), logits], dim=1)
    labels = torch.cat([_t([1.0, 0.0, 1.0], (1, 1, 1, 3)), torch.zeros(1, 1, 1, 3)], dim=1)
    assert build_loss("lovasz_hinge")(both, labels).item() == pytest.approx(1.375)


def test_lovasz_perfect_margin_is_zero():
    target = _binary_target()
    assert build_loss("lovasz_hinge")(5.0 * (2 * target - 1), target).item() == pytest.approx(0.0)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_matches_reference(per_image):
    torch.manual_seed(3)
    logits, target = torch.randn(2, 3, 4, 5), (torch.rand(2, 3, 4, 5) > 0.6).float()
    target[1, 2] = 0.0  # include an all-negative map
    if per_image:
        maps = [(logits[n, c].flatten(), target[n, c].flatten()) for n in range(2) for c in range(3)]
    else:
        maps = [(logits[:, c].flatten(), target[:, c].flatten()) for c in range(3)]
    expected = torch.stack([_reference_lovasz_hinge_flat(x, y) for x, y in maps]).mean()
    actual = build_loss("lovasz_hinge", {"per_image": per_image})(logits, target)
    torch.testing.assert_close(actual, expected)


def test_lovasz_rejects_classifier_input():
    with pytest.raises(ValueError, match="segmentation loss"):
        build_loss("lovasz_hinge")(torch.zeros(2, 5), torch.zeros(2, 5))


def test_lovasz_softmax_hand_value_and_absent_classes():
    # sigmoid p = [0.9, 0.2, 0.6], target [1, 0, 0]: errors |t - p| = [0.1, 0.2, 0.6].
    # Sorted descending [0.6, 0.2, 0.1] with gt [0, 0, 1], gts 1: intersection [1, 1, 0],
    # union [2, 3, 3], jaccard [1/2, 2/3, 1], grad [1/2, 1/6, 1/3].
    # loss = 0.6 / 2 + 0.2 / 6 + 0.1 / 3 = 0.3 + 1/30 + 1/30 = 11/30
    logits = torch.logit(_t([0.9, 0.2, 0.6], (1, 1, 1, 3)))
    target = _t([1.0, 0.0, 0.0], (1, 1, 1, 3))
    assert build_loss("lovasz_softmax")(logits, target).item() == pytest.approx(11 / 30)
    # a second class absent from the target: left out with classes=present, averaged with all
    # (its errors are its probabilities [0.5, 0.5, 0.5], gts 0: grad [1, 0, 0], loss 0.5)
    both = torch.cat([logits, torch.zeros(1, 1, 1, 3)], dim=1)
    labels = torch.cat([target, torch.zeros(1, 1, 1, 3)], dim=1)
    assert build_loss("lovasz_softmax")(both, labels).item() == pytest.approx(11 / 30)
    everything = build_loss("lovasz_softmax", {"classes": "all"})(both, labels).item()
    assert everything == pytest.approx((11 / 30 + 0.5) / 2)
    with pytest.raises(ValueError, match="segmentation loss"):
        build_loss("lovasz_softmax")(torch.zeros(2, 5), torch.zeros(2, 5))


# ---- Every registry loss -------------------------------------------------------------------


def _build(name, num_classes):
    params = {
        "weighted_bce": {"pos_weight": [1.0 + c for c in range(num_classes)]},
        "combo": {"terms": [{"name": "bce", "weight": 0.75}, {"name": "dice", "weight": 0.25}]},
        "scheduled": {"stages": [{"epoch": 1, "name": "bce"}, {"epoch": 3, "name": "focal"}]},
    }.get(name)
    return build_loss(name, params)


# The Lovasz losses are segmentation-only; their 2-D errors are tested above.
_CASES = [(name, (2, 4, 8, 8)) for name in LOSSES] + [
    (name, (2, 5)) for name in LOSSES if not name.startswith("lovasz")
]


# ---- Losses made of losses, label smoothing ------------------------------------------------


def test_combo_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(5)
    logits, target = torch.randn(2, 4, 8, 8), (torch.rand(2, 4, 8, 8) > 0.7).float()
    combo = build_loss(
        "combo",
        {
            "terms": [
                {"name": "bce", "weight": 0.75},
                {"name": "lovasz_hinge", "params": {"per_image": False}},
            ]
        },
    )
    expected = 0.75 * LF.bce(logits, target) + 1.0 * LF.lovasz_hinge(logits, target, per_image=False)
    assert torch.allclose(combo(logits, target), expected)
    with pytest.raises(ComponentError, match=r"'loss\.params\.terms\[1\]\.name': unknown loss 'lovasz'"):
        build_loss("combo", {"terms": [{"name": "bce"}, {"name": "lovasz"}]})
    with pytest.raises(ValueError, match=r"terms\[0\].weight must be a number >= 0"):
        build_loss("combo", {"terms": [{"name": "bce", "weight": -1}]})
    with pytest.raises(ComponentError, match=r"'loss\.params\.terms\[0\]\.wieght'.*did you mean 'weight'"):
        build_loss("combo", {"terms": [{"name": "bce", "wieght": 1}]})


def test_scheduled_loss_switches_at_its_epochs():
    torch.manual_seed(6)
    logits, target = torch.randn(2, 4, 8, 8), (torch.rand(2, 4, 8, 8) > 0.7).float()
    loss = build_loss(
        "scheduled", {"stages": [{"epoch": 1, "name": "bce"}, {"epoch": 3, "name": "lovasz_hinge"}]}
    )
    values = []
    for epoch in (1, 2, 3, 7):
        loss.set_epoch(epoch)
        values.append(loss(logits, target))
    bce, lovasz = LF.bce(logits, target), LF.lovasz_hinge(logits, target)
    assert torch.allclose(torch.stack(values), torch.stack([bce, bce, lovasz, lovasz]))
    with pytest.raises(ValueError, match="must start at 1 and rise"):
        build_loss("scheduled", {"stages": [{"epoch": 1, "name": "bce"}, {"epoch": 1, "name": "dice"}]})


def test_label_smoothing_pulls_bce_targets_towards_one_half():
    logits = torch.tensor([[3.0, -3.0]])
    target = torch.tensor([[1.0, 0.0]])
    smoothed = build_loss("bce", {"label_smoothing": 0.2})(logits, target)
    assert torch.allclose(smoothed, F.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1]])))
    assert smoothed > build_loss("bce")(logits, target)  # confident and right now costs more
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        build_loss("bce", {"label_smoothing": 1.0})


@pytest.mark.parametrize(("name", "shape"), _CASES, ids=[f"{n}-{len(s)}d" for n, s in _CASES])
def test_backward_gives_finite_gradients(name, shape):
    torch.manual_seed(4)
    logits = torch.randn(*shape, requires_grad=True)
    target = (torch.rand(*shape) > 0.7).float()
    loss_fn = _build(name, shape[1])
    loss = loss_fn(logits, target)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="must have the same shape"):
        build_loss("bce")(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 4))


# ---- build_loss errors ---------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        ComponentError, match=r"'loss\.name': unknown loss 'bce_dise' \(did you mean 'bce_dice'\?\)"
    ) as err:
        build_loss("bce_dise")
    assert all(name in str(err.value) for name in LOSSES)


def test_unknown_param_lists_valid_params():
    with pytest.raises(
        ComponentError,
        match=r"'loss\.params\.gama': not a parameter \(did you mean 'gamma'\?\); valid: gamma, alpha",
    ):
        build_loss("focal", {"gama": 2.0})


def test_missing_and_bad_params():
    with pytest.raises(ComponentError, match=r"'loss\.params': needs pos_weight"):
        build_loss("weighted_bce")
    with pytest.raises(ValueError, match=r"loss 'focal': alpha must be in \[0, 1\]"):
        build_loss("focal", {"alpha": 2.0})
    with pytest.raises(ValueError, match="loss 'dice': smooth must be >= 0"):
        build_loss("dice", {"smooth": -1.0})
