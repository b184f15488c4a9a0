"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy, mean class accuracy.

Convention (as scikit-learn): cm[t, p] counts pixels of target class t predicted as p; pixels whose target is the
ignore index are excluded. A class absent from both the targets and the predictions has IoU NaN and is left out
of the mean (nanmean), which matches torchmetrics' MulticlassJaccardIndex(ignore_index=...) and scikit-learn's
jaccard_score(average="macro") on the non-ignored pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        pred: integer tensor of predicted classes, any shape (e.g. (B, H, W)), values in 0..num_classes-1.
        target: integer tensor of the same shape, values in 0..num_classes-1 or ignore_index.
        num_classes: K.
        ignore_index: target value of excluded pixels (every prediction must still be a class).
    Returns:
        int64 (K, K) on pred's device; [t, p] = pixels of target t predicted as p.
    Raises:
        ValueError: shape mismatch, float/bool dtypes, devices differ, or labels out of range (the range checks
            synchronise with a CUDA device once per call).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels, got {x.dtype}; for logits (B, K, H, W) pass "
                             f"logits.argmax(1)")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape; "
                         f"for logits (B, K, H, W) pass logits.argmax(1)")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target on {target.device}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.numel():
        low, high = int(pred.min()), int(pred.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"predicted labels must be in 0..{num_classes - 1}, got values in {low}..{high}")
    valid = target != ignore_index
    target, pred = target[valid], pred[valid]
    if target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            bad = torch.unique(target[(target < 0) | (target >= num_classes)])[:10].tolist()
            raise ValueError(f"target labels {bad} are neither classes 0..{num_classes - 1} nor the ignore index "
                             f"{ignore_index}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _as_float(cm: torch.Tensor) -> torch.Tensor:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (K, K), got {tuple(cm.shape)}")
    return cm.double()


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU = TP / (TP + FP + FN), float64 (K,); NaN for classes absent in targets and predictions."""
    cm = _as_float(cm)
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def class_accuracy_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class recall = TP / (TP + FN), float64 (K,); NaN for classes absent from the targets."""
    cm = _as_float(cm)
    support = cm.sum(1)
    return torch.where(support > 0, cm.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan")))


def _nanmean(x: torch.Tensor) -> float:
    present = ~torch.isnan(x)
    return float(x[present].mean()) if bool(present.any()) else float("nan")


def summarize(cm: torch.Tensor, class_names=None) -> dict:
    """Metrics of a confusion matrix.

    Returns:
        {"miou", "pixel_accuracy", "mean_class_accuracy": float (NaN without any valid pixel),
         "iou", "class_accuracy": list[float] of length K (NaN where undefined),
         "num_pixels": int (non-ignored pixels), and "iou_per_class": {name: iou} when class_names are given}.
    """
    iou = iou_from_confusion(cm)
    accuracy = class_accuracy_from_confusion(cm)
    total = float(cm.sum())
    result = {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(cm.diagonal().sum()) / total if total > 0 else float("nan"),
        "mean_class_accuracy": _nanmean(accuracy),
        "iou": iou.tolist(),
        "class_accuracy": accuracy.tolist(),
        "num_pixels": int(cm.sum()),
    }
    if class_names is not None:
        if len(class_names) != cm.shape[0]:
            raise ValueError(f"{len(class_names)} class names for {cm.shape[0]} classes")
        result["iou_per_class"] = dict(zip(class_names, result["iou"]))
    return result


def all_reduce_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Sum a confusion matrix over all DDP ranks in place (no-op without an initialised process group); with the
    NCCL backend the tensor must be on this rank's GPU. Returns `cm`."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(cm, op=dist.ReduceOp.SUM)
    return cm


@dataclass
class ConfusionMatrix:
    """Accumulates a confusion matrix over batches.

    Example:
        metric = ConfusionMatrix(num_classes=19, device=device)
        for ...: metric.update(logits.argmax(1), masks)
        metric.all_reduce()  # under DDP
        print(metric.summary()["miou"])
    """

    num_classes: int
    ignore_index: int = 255
    device: torch.device | str = "cpu"
    matrix: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one batch (see `confusion_matrix`); returns that batch's matrix."""
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.matrix += batch.to(self.matrix.device)
        return batch

    def reset(self) -> None:
        self.matrix.zero_()

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum over DDP ranks in place (see all_reduce_confusion)."""
        all_reduce_confusion(self.matrix)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another accumulator's counts (same classes) in place."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("can only merge confusion matrices with the same num_classes and ignore_index")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def iou(self) -> torch.Tensor:
        return iou_from_confusion(self.matrix)

    def summary(self, class_names=None) -> dict:
        return summarize(self.matrix, class_names)
