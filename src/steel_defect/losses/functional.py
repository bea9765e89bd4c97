"""Pure loss functions on raw logits; the ``nn.Module`` wrappers in :mod:`.modules` call these.

Every function takes ``logits`` and float ``targets`` of the same shape, (N, C, H, W) for
segmentation or (N, C) for the multi-label classifier, and returns a scalar (mean reduction).
Dim 1 is always the class dimension.

Soft losses (Dice, Jaccard, Lovasz) are computed in float32: a full-resolution Severstal
map has 256 * 1600 = 409,600 pixels, and a sum of probabilities over it overflows float16
(max 65,504) under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``ValueError`` unless logits and targets are both (N, C) or (N, C, H, W) of one shape."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    if logits.dim() not in (2, 4):
        raise ValueError(f"expected (N, C) or (N, C, H, W) logits, got shape {tuple(logits.shape)}")


def _sum_dims(x: torch.Tensor, per_image: bool) -> tuple[int, ...]:
    """Dims summed into one score: the spatial dims per (image, class), plus the batch dim if not."""
    spatial = tuple(range(2, x.dim()))
    return spatial if per_image else (0, *spatial)


def smooth_labels(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Binary label smoothing: 1 -> 1 - eps / 2, 0 -> eps / 2."""
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def bce(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy with logits over every element; any shape, scalar out.

    ``label_smoothing`` eps pulls the targets towards 1/2 (see :func:`smooth_labels`).
    """
    targets = targets.to(logits.dtype)
    if label_smoothing:
        targets = smooth_labels(targets, label_smoothing)
    return F.binary_cross_entropy_with_logits(logits, targets)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE whose positive term for class c is scaled by ``pos_weight[c]``.

    ``logits``, ``targets``: (N, C) or (N, C, H, W); ``pos_weight``: (C,). torch broadcasts
    ``pos_weight`` against the *last* dim, so for 4-D input it is reshaped to (C, 1, 1) to
    land on the class dim. Raises ``ValueError`` if its length is not C.
    """
    num_classes = logits.shape[1]
    if pos_weight.dim() != 1 or pos_weight.numel() != num_classes:
        raise ValueError(
            f"weighted_bce: pos_weight has {pos_weight.numel()} value(s) but the input has "
            f"{num_classes} classes (dim 1 of shape {tuple(logits.shape)}); give one weight per class"
        )
    weight = pos_weight.to(logits).view(num_classes, *([1] * (logits.dim() - 2)))
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=weight)


def dice(
    logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0, per_image: bool = True
) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 I + smooth) / (P + T + smooth)`` on sigmoid probabilities.

    ``logits``, ``targets``: (N, C, ...). With ``per_image`` one Dice per (image, class) over
    the spatial dims, averaged over the N * C pairs, as the challenge metric scores; otherwise
    one Dice per class over the whole batch, averaged over C. For (N, C) input ``per_image``
    scores each element alone, so the classifier wants ``per_image=False``.

    ``smooth`` in both numerator and denominator makes an empty target with a near-empty
    prediction score Dice ~1 (loss ~0), matching the metric's empty-empty = 1, while a false
    positive on an empty target costs ``1 - smooth / (P + smooth)``.
    """
    probs = torch.sigmoid(logits.float())
    targets = targets.float()
    dims = _sum_dims(probs, per_image)
    intersection = (probs * targets).sum(dims)
    cardinality = probs.sum(dims) + targets.sum(dims)
    score = (2.0 * intersection + smooth) / (cardinality + smooth)
    return 1.0 - score.mean()


def jaccard(
    logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0, per_image: bool = True
) -> torch.Tensor:
    """Soft Jaccard (IoU) loss ``1 - (I + smooth) / (U + smooth)``, ``U = P + T - I``.

    Shapes, ``per_image`` and the empty-pair behaviour are as in :func:`dice`.
    """
    probs = torch.sigmoid(logits.float())
    targets = targets.float()
    dims = _sum_dims(probs, per_image)
    intersection = (probs * targets).sum(dims)
    union = probs.sum(dims) + targets.sum(dims) - intersection
    return 1.0 - ((intersection + smooth) / (union + smooth)).mean()


def focal(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over every element; any shape, scalar out.

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE`` with ``p_t = p y + (1 - p)(1 - y)`` and
    ``alpha_t = alpha y + (1 - alpha)(1 - y)``; ``alpha=None`` drops the alpha factor, so
    ``gamma=0, alpha=None`` is plain BCE. Same formula as torchvision's ``sigmoid_focal_loss``.
    """
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    loss = (1.0 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss.mean()


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    ``gt_sorted``: (M, P) ground truth of M maps, each sorted by descending error; returns
    (M, P). Row-wise the same as ``lovasz_grad`` in bermanmaxim/LovaszSoftmax.
    """
    gts = gt_sorted.sum(dim=1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=1)
    # Never zero: with gts > 0 it is >= gts, with gts == 0 it counts the negatives so far (>= 1).
    union = gts + (1.0 - gt_sorted).cumsum(dim=1)
    jac = 1.0 - intersection / union
    return torch.cat([jac[:, :1], jac[:, 1:] - jac[:, :-1]], dim=1)


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovasz hinge of M flattened maps, ``logits``, ``labels``: (M, P) -> (M,).

    As in the reference, an all-negative map gets gradient [1, 0, ...], so its loss is the
    largest hinge error ``relu(1 + max logit)``: only the most confident false positive counts.
    """
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    # The gradient is a constant of the sort order, not differentiated through.
    grad = lovasz_grad(torch.gather(labels, 1, perm))
    return (F.relu(errors_sorted) * grad).sum(dim=1)


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """Binary Lovasz hinge (Berman et al. 2018) for (N, C, H, W) logits and binary targets.

    With ``per_image`` each (image, class) map is one Lovasz problem and the N * C losses are
    averaged; otherwise each class is one problem over the whole batch, averaged over C (the
    reference's ``per_image=False`` would mix the classes into one map). Segmentation only:
    2-D input raises ``ValueError``, as a "map" of one pixel is just a hinge loss.
    """
    if logits.dim() != 4:
        raise ValueError(
            f"lovasz_hinge is a segmentation loss: expected (N, C, H, W) logits, got shape "
            f"{tuple(logits.shape)}; use bce, focal or dice (per_image=False) for (N, C) classifier output"
        )
    flat_logits, flat_labels = _lovasz_maps(logits.float(), targets.float(), per_image)
    return lovasz_hinge_flat(flat_logits, flat_labels).mean()


def _lovasz_maps(values: torch.Tensor, targets: torch.Tensor, per_image: bool):
    """(N, C, H, W) -> (maps, pixels): one map per (image, class), or per class over the batch."""
    n, c = values.shape[:2]
    if per_image:
        return values.reshape(n * c, -1), targets.reshape(n * c, -1)
    return values.transpose(0, 1).reshape(c, -1), targets.transpose(0, 1).reshape(c, -1)


def lovasz_softmax(
    logits: torch.Tensor, targets: torch.Tensor, per_image: bool = False, classes: str = "present"
) -> torch.Tensor:
    """Lovasz-softmax (Berman et al. 2018) on each class's probability, for (N, C, H, W) input.

    Severstal's classes may overlap, so the probabilities are the channels' sigmoids, not a
    softmax across them; per class the loss is the reference's ``lovasz_softmax_flat``: the
    errors ``|target - p|`` sorted in descending order, dotted with :func:`lovasz_grad`. With
    ``classes="present"`` (the reference's default) a map whose class is absent from its target
    is left out of the mean (all-empty maps: 0); ``"all"`` averages every map. ``per_image``: one
    problem per (image, class), else one per class over the batch.
    """
    if logits.dim() != 4:
        raise ValueError(
            "lovasz_softmax is a segmentation loss: expected (N, C, H, W) logits, got shape "
            f"{tuple(logits.shape)}"
        )
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    flat_probs, flat_labels = _lovasz_maps(torch.sigmoid(logits.float()), targets.float(), per_image)
    errors = (flat_labels - flat_probs).abs()
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    losses = (errors_sorted * lovasz_grad(torch.gather(flat_labels, 1, perm))).sum(dim=1)
    if classes == "present":
        present = flat_labels.sum(dim=1) > 0
        return losses[present].mean() if present.any() else losses.sum() * 0.0
    return losses.mean()
