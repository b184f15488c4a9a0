import math

import numpy as np
import pytest
import torch

from qgn.metrics import (
    ConfusionMatrix, all_reduce_confusion, class_accuracy_from_confusion, confusion_matrix, iou_from_confusion,
    summarize,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_hand_computed_example():
    # classes 0, 1, 2, 3; class 3 appears nowhere; one ignored pixel predicted as 2.
    target = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)
    iou = iou_from_confusion(cm)
    # class 0: tp 1, fp 2 (pred 0 on targets 1, 2), fn 1 -> 1/4; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: 1/2
    assert iou[:3].tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert math.isnan(iou[3])
    summary = summarize(cm, class_names=["a", "b", "c", "d"])
    assert summary["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert summary["pixel_accuracy"] == pytest.approx(4 / 7)
    assert summary["mean_class_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert summary["num_pixels"] == 7
    assert summary["iou_per_class"]["b"] == pytest.approx(0.5)


def _random_batch(seed, num_classes=6, shape=(3, 40, 50), ignore_fraction=0.1):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes - 1, size=shape)  # class num_classes-1 never in the target
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, size=shape))
    pred[..., :5] = 0  # make class 0 over-predicted
    target[rng.random(shape) < ignore_fraction] = 255
    return torch.from_numpy(pred), torch.from_numpy(target)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_matches_scikit_learn():
    num_classes = 6
    pred, target = _random_batch(0, num_classes)
    cm = confusion_matrix(pred, target, num_classes)
    valid = (target != 255).numpy().ravel()
    y_true, y_pred = target.numpy().ravel()[valid], pred.numpy().ravel()[valid]
    labels = list(range(num_classes))
    assert np.array_equal(cm.numpy(), sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels))
    iou = iou_from_confusion(cm).numpy()
    reference = sklearn_metrics.jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert np.allclose(iou, reference, atol=1e-12)
    summary = summarize(cm)
    assert summary["miou"] == pytest.approx(sklearn_metrics.jaccard_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert summary["pixel_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert summary["mean_class_accuracy"] == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(y_true, y_pred), abs=1e-12)


def test_absent_class_is_nan_and_excluded():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    cm = confusion_matrix(pred, target, num_classes=3)
    iou = iou_from_confusion(cm)
    assert math.isnan(iou[2]) and not math.isnan(iou[0])
    assert math.isnan(class_accuracy_from_confusion(cm)[2])
    assert summarize(cm)["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a class only predicted (never in the target) has IoU 0 and counts in the mean
    cm = confusion_matrix(torch.tensor([2, 0]), torch.tensor([0, 0]), num_classes=3)
    assert iou_from_confusion(cm)[2] == 0
    assert summarize(cm)["miou"] == pytest.approx(0.25)


def test_everything_ignored_gives_nan():
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([255, 255]), num_classes=2)
    assert int(cm.sum()) == 0
    summary = summarize(cm)
    assert math.isnan(summary["miou"]) and math.isnan(summary["pixel_accuracy"])


def test_accumulates_over_batches_and_merges():
    num_classes = 6
    batches = [_random_batch(seed, num_classes) for seed in range(3)]
    metric = ConfusionMatrix(num_classes)
    for pred, target in batches:
        metric.update(pred, target)
    whole = confusion_matrix(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]), num_classes)
    assert torch.equal(metric.matrix, whole)
    first, second = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    first.update(*batches[0])
    second.update(*batches[1])
    second.update(*batches[2])
    assert torch.equal(first.merge(second).matrix, whole)
    assert metric.summary()["miou"] == pytest.approx(summarize(whole)["miou"])
    metric.reset()
    assert int(metric.matrix.sum()) == 0


def test_custom_ignore_index():
    target = torch.tensor([0, 1, 3, 3])
    pred = torch.tensor([0, 1, 1, 0])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=3)
    assert int(cm.sum()) == 2 and summarize(cm)["miou"] == 1.0


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "same shape"),
        (torch.tensor([0, 4]), torch.tensor([0, 1]), "predicted labels must be in 0..3"),
        (torch.tensor([0, -1]), torch.tensor([0, 1]), "predicted labels"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), r"target labels \[7\]"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer class labels"),
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "integer class labels"),
    ],
)
def test_bad_inputs(pred, target, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred, target, num_classes=4)


def test_all_reduce_single_process_group(tmp_path):
    import torch.distributed as dist

    pred, target = _random_batch(1)
    cm = confusion_matrix(pred, target, 6)
    assert torch.equal(all_reduce_confusion(cm.clone()), cm)  # no process group: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        metric = ConfusionMatrix(6)
        metric.update(pred, target)
        assert torch.equal(metric.all_reduce().matrix, cm)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
def test_cuda_matches_cpu():
    pred, target = _random_batch(2)
    cpu = confusion_matrix(pred, target, 6)
    gpu = confusion_matrix(pred.cuda(), target.cuda(), 6)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)
    metric = ConfusionMatrix(6, device="cuda")
    metric.update(pred.cuda(), target.cuda())
    assert torch.equal(metric.matrix.cpu(), cpu)
