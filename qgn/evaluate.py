"""Evaluation of a trained network, in one place: `evaluate` (mIoU, per-class IoU and pixel accuracy over a loader,
summed over DDP ranks: what training validates and tests with) and accuracy against cost at several inference
settings (depths, thresholds, budgets: `sweep_settings`, `evaluate_settings`, `format_table`,
`plot_accuracy_vs_cost`). Classes and the ignore label are the model's (`model.config`)."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, dataclass

import numpy as np
import torch

from qgn.cost import padded_shape, peak_memory, prediction_macs, stopwatch
from qgn.metrics import ConfusionMatrix
from qgn.precision import autocast


@torch.no_grad()
def evaluate(model, loader, device: torch.device, max_depth: int | None = None, class_names=None,
             amp: str = "off") -> dict:
    """mIoU, per-class IoU and pixel accuracy of `model.predict(max_depth=...)` over `loader` (batches of images,
    masks and trees; all DDP ranks), predicted under `amp`'s autocast."""
    model.eval()
    metric = ConfusionMatrix(model.config.num_classes, model.config.ignore_index, device)
    for images, masks, _ in loader:
        with autocast(amp, device):
            prediction = model.predict(images.to(device), max_depth=max_depth)
        metric.update(prediction.labels, masks.to(device))
    return metric.all_reduce().summary(class_names)  # all_reduce: a no-op without DDP


@dataclass(frozen=True)
class Setting:
    """One inference setting of `QGN.predict`."""

    max_depth: int | None = None
    threshold: float | None = None
    budget: int | None = None

    def label(self) -> str:
        parts = [f"depth {self.max_depth}" if self.max_depth is not None else "full depth"]
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.budget is not None:
            parts.append(f"budget {self.budget}")
        return ", ".join(parts)


def sweep_settings(depth: int, max_depth: int | None = None, thresholds: bool = False) -> list[Setting]:
    """Every depth 0..depth (or only `max_depth`), plus a few MIXED thresholds at full depth when `thresholds`."""
    depths = range(depth + 1) if max_depth is None else [max_depth]
    settings = [Setting(max_depth=k) for k in depths]
    if thresholds:
        settings += [Setting(max_depth=depth, threshold=t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
    return settings


@torch.no_grad()
def evaluate_settings(model, samples, settings: list[Setting], device, class_names=None, progress: bool = False,
                      amp: str = "off") -> list[dict]:
    """Evaluate `model` at each setting over `samples`: an iterable of (image (C, H, W), mask (H, W)) pairs,
    read one at a time, predicting under `amp`'s autocast (`qgn.precision`).

    Each image is predicted alone (batch 1), so latency and memory are per image. `progress` shows a bar.
    Returns:
        one record per setting: the setting, mIoU, per-class IoU, pixel accuracy, nodes per level (mean per
        image), MACs (mean per image), median latency (ms), and peak tensor memory (MiB, max over images).
    """
    model.eval()
    total = len(samples) if hasattr(samples, "__len__") else None
    samples = iter(samples)  # streamed: a validation set never sits in memory whole
    first = next(samples, None)
    if first is None:
        raise ValueError("nothing to evaluate: the data set is empty")
    metrics = {s: ConfusionMatrix(model.config.num_classes, model.config.ignore_index, device) for s in settings}
    costs = {s: {"nodes": [], "macs": [], "ms": [], "mb": []} for s in settings}
    device = torch.device(device)

    def predict(image, setting: Setting):
        with autocast(amp, device):
            return model.predict(image, **asdict(setting))

    predict(first[0][None].to(device), settings[0])  # warm-up: one-time imports and allocations
    from tqdm import tqdm

    count = 0
    for image, mask in tqdm(itertools.chain([first], samples), total=total, desc=f"eval ({len(settings)} settings)",
                            unit="image", disable=not progress):
        count += 1
        image, mask = image[None].to(device), mask[None].to(device)
        for setting in settings:
            with peak_memory(device) as memory:
                prediction = predict(image, setting)
            metrics[setting].update(prediction.labels, mask)
            cost = costs[setting]
            cost["nodes"].append(prediction.nodes_per_level)
            cost["macs"].append(prediction_macs(model, padded_shape(image, prediction), prediction.nodes_per_level))
            cost["mb"].append(memory["peak_mb"])
        for setting in settings:  # latency without the memory tracker's overhead
            with stopwatch(device) as clock:
                predict(image, setting)
            costs[setting]["ms"].append(1e3 * clock["seconds"])
    records = []
    for setting in settings:
        summary = metrics[setting].summary(class_names)
        cost = costs[setting]
        records.append({
            **asdict(setting), "setting": setting.label(), "model": model.config.model, "amp": amp,
            "miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"], "iou": summary["iou"],
            "nodes_per_level": np.mean(cost["nodes"], axis=0).tolist(),
            "macs": float(np.mean(cost["macs"])), "latency_ms": statistics.median(cost["ms"]),
            "peak_memory_mb": max(cost["mb"]), "images": count,
        })
    return records


def format_table(records: list[dict]) -> str:
    """A markdown table of `evaluate_settings` records."""
    lines = ["| model | setting | mIoU | pixel acc. | nodes per level | GMACs | latency ms | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        nodes = "/".join(f"{n:.0f}" for n in r["nodes_per_level"])
        lines.append(f"| {r['model']} | {r['setting']} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | {nodes} | "
                     f"{r['macs'] / 1e9:.3f} | {r['latency_ms']:.1f} | {r['peak_memory_mb']:.1f} |")
    return "\n".join(lines)


def plot_accuracy_vs_cost(records: list[dict], path, title: str = "") -> None:
    """PNG: mIoU against GMACs and against peak memory. One labelled series per kind of setting: each model's
    depth sweep (points "d0".."dD"), its threshold sweep ("t=0.1"...), and every other setting on its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def kind(r):
        if r.get("threshold") is not None:
            return "threshold"
        return "budget" if r.get("budget") is not None else "depth"

    def point_label(r):
        if kind(r) == "depth":
            return f"d{r['max_depth']}" if r.get("max_depth") is not None else "full"
        return f"t={r['threshold']:g}" if kind(r) == "threshold" else f"b={r['budget']}"

    series: dict[str, list[dict]] = {}
    for r in records:
        name = r["model"] if r["model"] != "qgn" else f"qgn, {kind(r)} sweep"
        series.setdefault(name, []).append(r)
    styles = {"qgn, depth sweep": ("o-", "tab:orange"), "qgn, threshold sweep": ("^--", "tab:green"),
              "qgn, budget sweep": ("v:", "tab:purple"), "dense": ("s", "tab:blue")}
    offsets = {"qgn, depth sweep": (6, -10), "qgn, threshold sweep": (-8, 6), "qgn, budget sweep": (6, 6)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, xlabel in ((axes[0], "macs", "GMACs per image"), (axes[1], "peak_memory_mb", "peak memory (MiB)")):
        for name, rows in series.items():
            rows = sorted(rows, key=lambda r: r[key])
            xs = [r[key] / (1e9 if key == "macs" else 1) for r in rows]
            style, colour = styles.get(name, ("D", None))
            label = "dense twin (full depth)" if name == "dense" else name
            ax.plot(xs, [r["miou"] for r in rows], style, color=colour, label=label, markersize=6)
            dx, dy = offsets.get(name, (6, 4))
            for x, r in zip(xs, rows):
                ax.annotate(point_label(r) if name != "dense" else "dense", (x, r["miou"]), fontsize=7, color=colour,
                            xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU")
        ax.margins(x=0.1, y=0.06)  # room for the point labels
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
