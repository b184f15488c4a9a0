"""Evaluation of a trained network, in one place: `evaluate` (mIoU, per-class IoU and pixel accuracy over a loader,
summed over DDP ranks: what training validates and tests with) and accuracy against cost at several inference
settings of any of the engine's models (QGN's depths, thresholds, budgets; SparseRefine's taus and refined
fractions; SegBlocks' policies: `settings_for`, `evaluate_settings`, `format_table`, `plot_accuracy_vs_cost`).
Classes and the ignore label are the model's (`model.config`)."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, dataclass

import numpy as np
import torch

from qgn.cost import peak_memory, prediction_macs, stopwatch
from qgn.metrics import ConfusionMatrix
from qgn.precision import autocast


@torch.no_grad()
def evaluate(model, loader, device: torch.device, class_names=None, amp: str = "off", **knobs) -> dict:
    """mIoU, per-class IoU and pixel accuracy of `model.predict(**knobs)` (any of the engine's models; no knobs: its
    default setting) over `loader` (batches of images, masks and trees; all DDP ranks), predicted under `amp`'s
    autocast."""
    model.eval()
    metric = ConfusionMatrix(model.config.num_classes, model.config.ignore_index, device)
    for images, masks, _ in loader:
        with autocast(amp, device):
            prediction = model.predict(images.to(device), **knobs)
        metric.update(prediction.labels, masks.to(device))
    return metric.all_reduce().summary(class_names)  # all_reduce: a no-op without DDP


@dataclass(frozen=True)
class Setting:
    """One inference setting: the knobs of `model.predict` it sets (None: the model's default).

    QGN and the dense twin: max_depth, threshold, budget (nodes per level). SparseRefine: tau, budget (pixels per
    image), fraction (of the pixels). SegBlocks: policy ("learned", "high", "low", "oracle", "static"), fraction
    (of the blocks at high resolution), scale ("static"). The "oracle" policy also reads the ground truth.
    """

    max_depth: int | None = None
    threshold: float | None = None
    budget: int | None = None
    tau: float | None = None
    fraction: float | None = None
    policy: str | None = None
    scale: float | None = None

    def knobs(self) -> dict:
        """The keyword arguments of `model.predict` this setting passes."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def needs_masks(self) -> bool:
        return self.policy == "oracle"

    def label(self) -> str:
        if self.tau is None and self.policy is None and (self.fraction == 0 or self.budget == 0):
            return "base alone"
        parts = [] if self.tau is not None or self.policy is not None or self.fraction is not None else \
            [f"depth {self.max_depth}" if self.max_depth is not None else "full depth"]
        parts += [f"policy {self.policy}"] if self.policy is not None else []
        for name in ("threshold", "budget", "tau", "fraction", "scale"):
            if getattr(self, name) is not None:
                parts.append(f"{name} {getattr(self, name):g}")
        return ", ".join(parts)


def sweep_settings(depth: int, max_depth: int | None = None, thresholds: bool = False) -> list[Setting]:
    """QGN and the dense twin: every depth 0..depth (or only `max_depth`), plus a few MIXED thresholds at full depth
    when `thresholds`."""
    depths = range(depth + 1) if max_depth is None else [max_depth]
    settings = [Setting(max_depth=k) for k in depths]
    if thresholds:
        settings += [Setting(max_depth=depth, threshold=t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
    return settings


REFINE_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
"""Fractions of the pixels SparseRefine's sweep refines."""
REFINE_TAUS = (0.005, 0.05, 0.1, 0.3)
"""Entropy thresholds SparseRefine's sweep tries: the official per-model values (Mask2Former-L .. HRNet-W48)."""
BLOCK_FRACTIONS = (0.2, 0.4, 0.6)
"""Fractions of high-resolution blocks SegBlocks' sweep gives its learned policy as a budget."""


def settings_for(model, max_depth: int | None = None, sweep: bool = False) -> list[Setting]:
    """The settings `qgn eval` evaluates for `model` (any of the engine's models), `sweep` adding more:

    - QGN and the dense twin: every depth (or `max_depth`); the sweep adds MIXED thresholds.
    - SparseRefine: the base alone and the config's tau; the sweep adds fractions of refined pixels
      (`REFINE_FRACTIONS`) and the official taus (`REFINE_TAUS`).
    - SegBlocks: the learned policy; the sweep adds all-high, all-low, the oracle at the target fraction, the
      static baseline of the target's cost, and the learned policy under budgets (`BLOCK_FRACTIONS`).
    """
    kind = model.config.model
    if kind in ("qgn", "dense"):
        return sweep_settings(model.config.depth, max_depth, thresholds=sweep)
    if max_depth is not None:
        raise ValueError(f"max_depth (--max-depth) is a knob of qgn and dense models, not of {kind}; drop it (--sweep "
                         f"adds {kind}'s other settings)")
    if kind == "sparserefine":
        tau = model.config.refine.tau
        settings = [Setting(fraction=0.0)] + ([Setting(tau=tau)] if tau is not None else [])
        if sweep:
            settings += [Setting(fraction=f) for f in REFINE_FRACTIONS]
            settings += [Setting(tau=t) for t in REFINE_TAUS if t != tau]
        return settings
    target = model.config.segblocks.target
    settings = [Setting(policy="learned")]
    if sweep:
        from qgn.segblocks import static_scale

        settings += [Setting(policy="high"), Setting(policy="low"), Setting(policy="oracle", fraction=target),
                     Setting(policy="static", scale=round(static_scale(target), 4))]
        settings += [Setting(policy="learned", fraction=f) for f in BLOCK_FRACTIONS]
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
    costs = {s: {"nodes": [], "macs": [], "ms": [], "mb": [], "stats": []} for s in settings}
    device = torch.device(device)

    def predict(image, mask, setting: Setting):
        with autocast(amp, device):
            return model.predict(image, **setting.knobs(), **({"masks": mask} if setting.needs_masks else {}))

    predict(first[0][None].to(device), first[1][None].to(device), settings[0])  # warm-up: one-time allocations
    from tqdm import tqdm

    count = 0
    for image, mask in tqdm(itertools.chain([first], samples), total=total, desc=f"eval ({len(settings)} settings)",
                            unit="image", disable=not progress):
        count += 1
        image, mask = image[None].to(device), mask[None].to(device)
        for setting in settings:
            with peak_memory(device) as memory:
                prediction = predict(image, mask, setting)
            metrics[setting].update(prediction.labels, mask)
            cost = costs[setting]
            if prediction.nodes_per_level is not None:
                cost["nodes"].append(prediction.nodes_per_level)
            cost["stats"].append(prediction.stats)
            cost["macs"].append(prediction_macs(model, tuple(image.shape), prediction))
            cost["mb"].append(memory["peak_mb"])
        for setting in settings:  # latency without the memory tracker's overhead
            with stopwatch(device) as clock:
                predict(image, mask, setting)
            costs[setting]["ms"].append(1e3 * clock["seconds"])
    records = []
    for setting in settings:
        summary = metrics[setting].summary(class_names)
        cost = costs[setting]
        records.append({
            **asdict(setting), **mean_stats(cost["stats"]), "setting": setting.label(), "model": model.config.model,
            "amp": amp, "miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"], "iou": summary["iou"],
            "nodes_per_level": np.mean(cost["nodes"], axis=0).tolist() if cost["nodes"] else None,
            "macs": float(np.mean(cost["macs"])), "latency_ms": statistics.median(cost["ms"]),
            "peak_memory_mb": max(cost["mb"]), "images": count,
        })
    return records


def mean_stats(stats: list[dict]) -> dict:
    """The mean over images of each numeric scalar in the predictions' `stats` (None when one is missing or
    None: e.g. SparseRefine's tau under a budget)."""
    means = {}
    for key, value in stats[0].items():
        values = [s.get(key) for s in stats]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            means[key] = None if any(v is None for v in values) else float(np.mean(values))
        elif value is None:
            means[key] = None
    return means


def detail(record: dict) -> str:
    """Where a setting spent its compute, in a few characters: QGN's nodes per level, SparseRefine's refined
    pixels, SegBlocks' high-resolution blocks."""
    if record.get("nodes_per_level") is not None and record["model"] in ("qgn", "dense"):
        return "/".join(f"{n:.0f}" for n in record["nodes_per_level"])
    if record.get("refined_fraction") is not None:
        return f"{100 * record['refined_fraction']:.1f}% refined"
    if record.get("high_res_fraction") is not None:
        return f"{100 * record['high_res_fraction']:.0f}% high-res"
    return "-"


def format_table(records: list[dict]) -> str:
    """A markdown table of `evaluate_settings` records (a record's "run", when it has one, names its row's model)."""
    lines = ["| model | setting | mIoU | pixel acc. | computed | GMACs | latency ms | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.get('run') or r['model']} | {r['setting']} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | {detail(r)} | "
                     f"{r['macs'] / 1e9:.3f} | {r['latency_ms']:.1f} | {r['peak_memory_mb']:.1f} |")
    return "\n".join(lines)


def plot_accuracy_vs_cost(records: list[dict], path, title: str = "") -> None:
    """PNG: mIoU against GMACs and against peak memory. One labelled series per kind of setting: QGN's depth sweep
    (points "d0".."dD"), its threshold sweep ("t=0.1"...), SparseRefine's refined fractions ("base", "2.0%"...),
    SegBlocks' learned policy and its baselines ("high", "low", "oracle", "static"), the dense twin. A record's own
    "series" and "point" keys, when present, name its series and label its point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def kind(r):
        if r.get("threshold") is not None:
            return "threshold"
        return "budget" if r.get("budget") is not None else "depth"

    def series_name(r):
        if r.get("series"):
            return r["series"]
        if r["model"] == "qgn":
            return f"qgn, {kind(r)} sweep"
        if r["model"] == "segblocks":
            return "segblocks, learned policy" if r.get("policy") == "learned" else "segblocks, baselines"
        return r["model"]

    def point_label(r):
        if r.get("point"):
            return r["point"]
        if r["model"] == "dense":
            return "dense"
        if r["model"] == "sparserefine":
            fraction = r.get("refined_fraction") or 0.0
            return "base" if fraction == 0 else f"{100 * fraction:.1f}%"
        if r["model"] == "segblocks":
            return r["policy"] if r.get("fraction") is None else f"{r['policy']} {r['fraction']:g}"
        if kind(r) == "depth":
            return f"d{r['max_depth']}" if r.get("max_depth") is not None else "full"
        return f"t={r['threshold']:g}" if kind(r) == "threshold" else f"b={r['budget']}"

    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(series_name(r), []).append(r)
    styles = {"qgn, depth sweep": ("o-", "tab:orange"), "qgn, threshold sweep": ("^--", "tab:green"),
              "qgn, budget sweep": ("v:", "tab:purple"), "dense": ("s", "tab:blue"),
              "sparserefine": ("P-", "tab:red"), "segblocks, learned policy": ("X-", "tab:brown"),
              "segblocks, baselines": ("*", "tab:gray")}
    offsets = {"qgn, depth sweep": (6, -10), "qgn, threshold sweep": (-8, 6), "qgn, budget sweep": (6, 6)}
    spare = iter([("D-", "tab:cyan"), ("h-", "tab:olive"), ("p-", "tab:pink"), ("d-", "tab:gray"),
                  ("<-", "black"), (">-", "tab:blue"), ("8-", "tab:red"), ("H-", "tab:green")])
    for name in series:  # the others (a record's own "series"): distinct styles, in order of appearance; points
        if name not in styles:  # of a "baselines" series are not one curve: no line
            marker, colour = next(spare, ("D", "black"))
            styles[name] = (marker.rstrip("-") if "baselines" in name else marker, colour)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, xlabel in ((axes[0], "macs", "GMACs per image"), (axes[1], "peak_memory_mb", "peak memory (MiB)")):
        for name, rows in series.items():
            rows = sorted(rows, key=lambda r: r[key])
            xs = [r[key] / (1e9 if key == "macs" else 1) for r in rows]
            style, colour = styles[name]
            label = "dense twin (full depth)" if name == "dense" else name
            ax.plot(xs, [r["miou"] for r in rows], style, color=colour, label=label, markersize=6)
            dx, dy = offsets.get(name, (6, 4))
            for x, r in zip(xs, rows):
                ax.annotate(point_label(r), (x, r["miou"]), fontsize=7, color=colour,
                            xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU")
        ax.margins(x=0.1, y=0.06)  # room for the point labels
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
