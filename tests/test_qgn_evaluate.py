from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qgn.evaluate import Setting, evaluate, evaluate_settings, format_table, plot_accuracy_vs_cost, sweep_settings
from stand_in import DEPTH, coarsened, example_masks, stand_in

sklearn_metrics = pytest.importorskip("sklearn.metrics")


class FixedLabels:
    """A stand-in network: predicts the labels it was given for each batch, in order; records the depths asked."""

    def __init__(self, labels: list[torch.Tensor], num_classes: int, ignore_index: int = 255):
        self.config = SimpleNamespace(num_classes=num_classes, ignore_index=ignore_index, depth=3, model="qgn")
        self.labels, self.depths = iter(labels), []

    def eval(self):
        return self

    def predict(self, images, max_depth=None):
        self.depths.append(max_depth)
        return SimpleNamespace(labels=next(self.labels))


def test_evaluate_matches_scikit_learn_with_the_models_classes_and_ignore_label():
    rng = np.random.default_rng(0)
    masks = [torch.from_numpy(rng.integers(0, 4, (2, 5, 6))) for _ in range(3)]
    for mask in masks:
        mask[mask == 3] = 7  # the model's ignore label
    predicted = [torch.from_numpy(rng.integers(0, 3, (2, 5, 6))) for _ in range(3)]
    loader = [(torch.zeros(2, 3, 5, 6), mask, None) for mask in masks]
    model = FixedLabels(predicted, num_classes=3, ignore_index=7)
    summary = evaluate(model, loader, torch.device("cpu"), class_names=["a", "b", "c"], max_depth=2)
    truth, guess = torch.cat(masks).numpy().ravel(), torch.cat(predicted).numpy().ravel()
    valid = truth != 7
    expected = sklearn_metrics.jaccard_score(truth[valid], guess[valid], labels=[0, 1, 2], average=None)
    assert summary["iou"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert summary["miou"] == pytest.approx(expected.mean(), abs=1e-12)
    assert summary["pixel_accuracy"] == pytest.approx((truth == guess)[valid].mean(), abs=1e-12)
    assert set(summary["iou_per_class"]) == {"a", "b", "c"} and model.depths == [2, 2, 2]


def test_sweep_settings_and_their_labels():
    assert sweep_settings(3) == [Setting(max_depth=k) for k in range(4)]
    assert sweep_settings(3, max_depth=1) == [Setting(max_depth=1)]
    swept = sweep_settings(2, thresholds=True)
    assert [s.threshold for s in swept[3:]] == [0.1, 0.3, 0.5, 0.7, 0.9] and {s.max_depth for s in swept[3:]} == {2}
    assert Setting().label() == "full depth"
    assert Setting(max_depth=2, threshold=0.5, budget=10).label() == "depth 2, threshold 0.5, budget 10"


def record(model="qgn", max_depth=None, threshold=None, miou=0.5, macs=2e9):
    setting = Setting(max_depth=max_depth, threshold=threshold)
    return {"max_depth": max_depth, "threshold": threshold, "budget": None, "setting": setting.label(),
            "model": model, "miou": miou, "pixel_accuracy": 0.9, "nodes_per_level": [4.0, 8.5],
            "macs": macs, "latency_ms": 12.34, "peak_memory_mb": 5.0}


def test_table_and_plot_of_records(tmp_path):
    records = [record(max_depth=0, miou=0.3, macs=1e9), record(max_depth=1), record(threshold=0.5),
               record(model="dense", max_depth=1, miou=0.6, macs=4e9)]
    lines = format_table(records).splitlines()
    assert lines[0].startswith("| model | setting | mIoU |") and len(lines) == 2 + len(records)
    assert lines[2] == "| qgn | depth 0 | 0.3000 | 0.9000 | 4/8 | 1.000 | 12.3 | 5.0 |"
    plot_accuracy_vs_cost(records, tmp_path / "p.png", "title")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_evaluation_figures_match_an_independent_computation():
    from sklearn.metrics import jaccard_score

    masks = example_masks()
    model = stand_in(masks[:1])
    samples = [(torch.zeros(3, 24, 32), torch.from_numpy(masks[0]).long())]
    records = evaluate_settings(model, samples, [Setting(max_depth=1), Setting()], "cpu")
    for record in records:
        labels = coarsened(masks[:1], record["max_depth"] if record["max_depth"] is not None else DEPTH)[0]
        present = np.union1d(np.unique(labels), np.unique(masks[0]))
        expected = jaccard_score(masks[0].ravel(), labels.ravel(), labels=present, average="macro")
        assert record["miou"] == pytest.approx(expected, abs=1e-12)
        assert record["pixel_accuracy"] == pytest.approx(float((labels == masks[0]).mean()), abs=1e-12)
    assert records[1]["miou"] == 1.0 and records[1]["peak_memory_mb"] > 0


def test_evaluation_streams_its_samples_and_rejects_an_empty_set():
    masks = example_masks()
    model = stand_in(masks[:1])
    samples = ((torch.zeros(3, 24, 32), torch.from_numpy(masks[0]).long()) for _ in range(2))  # a generator
    assert evaluate_settings(model, samples, [Setting()], "cpu")[0]["images"] == 2
    with pytest.raises(ValueError, match="empty"):
        evaluate_settings(model, [], [Setting()], "cpu")
