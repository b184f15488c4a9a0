"""`qgn demo`: train a small QGN and its dense twin on synthetic scenes, evaluate at every depth, write a report.

Runs on a fresh 2-core CPU machine in about 2 minutes: no files or downloads needed. A run that was interrupted
is resumed where it stopped (never reused); a finished one is reused and the report says so.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qgn import QGNConfig, load_predictor
from qgn.checkpoint import load_checkpoint
from qgn.evaluate import evaluate_settings, format_table, plot_accuracy_vs_cost, sweep_settings
from qgn.visualize import class_legend, colour_labels, display_image, error_map, quadtree_overlay
from training.config import RunConfig, TrainConfig
from training.datasets import DataConfig, build_dataset
from training.trainer import train
from training.transforms import AugmentConfig

MODELS = ("qgn", "dense")


@dataclass
class DemoConfig:
    train_images: int = 256  # synthetic training scenes (256x256, cropped to 128x128 for training)
    val_images: int = 8  # synthetic validation scenes, evaluated whole (256x256)
    steps: int = 250  # optimizer steps of batch 8 for each model
    seed: int = 0

    @property
    def val_spec(self) -> str:
        return f"synthetic:{self.val_images},size=256"


def demo_run_config(cfg: DemoConfig, model: str) -> RunConfig:
    data = DataConfig(dataset=f"synthetic:{cfg.train_images},size=256", val_dataset=cfg.val_spec,
                      augment=AugmentConfig(crop=(128, 128), scale_range=(0.75, 1.25)))
    train_cfg = TrainConfig(epochs=1000, max_steps=cfg.steps, batch_size=8, lr=3e-3, seed=cfg.seed, val_every=1000,
                            log_every=25, test=False)
    return RunConfig(model=QGNConfig(num_classes=6, depth=5, model=model), data=data, train=train_cfg)


def train_or_resume(cfg: DemoConfig, model: str, run_dir: Path) -> dict:
    """Train `model` into `run_dir`, resume it when it stopped early, reuse it when it finished. Returns {"status":
    "trained" | "resumed from step N" | "reused", "steps": int, "seconds": training time over every session}."""
    last = run_dir / "last.pt"
    status = "trained"
    if last.exists():
        progress = load_checkpoint(last)["progress"]
        if progress.get("finished") or progress["step"] >= cfg.steps:
            status = "reused"
            print(f"[demo] {model}: reusing the finished run in {run_dir} ({progress['step']} steps)")
        else:
            status = f"resumed from step {progress['step']}"
            print(f"[demo] {model}: resuming the unfinished run in {run_dir} at step {progress['step']} of {cfg.steps}")
    else:
        print(f"[demo] training the {model} model ({cfg.steps} steps of 8 crops of 128x128) -> {run_dir}")
    if status != "reused":
        train(demo_run_config(cfg, model), run_dir, resume=last.exists())
    progress = load_checkpoint(last)["progress"]
    return {"status": status, "steps": progress["step"], "seconds": progress.get("seconds", float("nan"))}


def run_demo(out_dir: str | Path, cfg: DemoConfig | None = None) -> Path:
    """Train, evaluate and write `out_dir/report.md`; returns its path. Ctrl-C raises
    `training.trainer.TrainingInterrupted` after saving the run in progress (run again to resume it)."""
    cfg = cfg or DemoConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is an existing file; name a directory for the demo")
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    runs = {model: train_or_resume(cfg, model, out_dir / f"run_{model}") for model in MODELS}

    print("[demo] evaluating at every depth on the validation scenes")
    device = torch.device("cpu")
    predictors = {model: load_predictor(out_dir / f"run_{model}" / "last.pt", device) for model in MODELS}
    val = build_dataset(cfg.val_spec, "val", 6, normalize=predictors["qgn"].normalize)
    samples = [val[i] for i in range(len(val))]
    records = []
    for model, predictor in predictors.items():
        network = predictor.model
        settings = sweep_settings(network.config.depth, thresholds=model == "qgn")
        if model == "dense":
            settings = [s for s in settings if s.max_depth == network.config.depth]
        records += evaluate_settings(network, samples, settings, device, class_names=val.class_names)
    load_after = os.getloadavg()[0]
    (out_dir / "eval.json").write_text(json.dumps(records, indent=2))
    plot_accuracy_vs_cost(records, out_dir / "accuracy_vs_cost.png",
                          "synthetic scenes 256x256: QGN's depth and threshold sweeps vs its dense twin")
    examples = [write_example(out_dir / f"example{i}.png", predictors, samples[i], val.class_names)
                for i in range(min(3, len(samples)))]
    report = out_dir / "report.md"
    report.write_text(render_report(cfg, records, examples, runs, (load_before, load_after)))
    return report


def write_example(path: Path, predictors: dict, sample, class_names) -> str:
    """One figure: image, ground truth, QGN at full depth (leaf cells outlined) and its errors, QGN at depth 2,
    and the dense twin's errors, with a legend of the class colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask = sample
    qgn = predictors["qgn"].model
    full = qgn.predict(image[None])
    coarse = qgn.predict(image[None], max_depth=2)
    dense = predictors["dense"].model.predict(image[None])
    rgb, truth = display_image(image), mask.numpy()
    tiles = [
        ("image", rgb),
        ("ground truth", colour_labels(truth)),
        (f"QGN full depth ({full.tree.num_nodes} nodes)", quadtree_overlay(rgb, full.tree.split()[0])),
        (f"QGN full depth: errors ({_errors(full, truth):.2%})", error_map(rgb, full.labels[0].numpy(), truth)),
        (f"QGN depth 2 ({coarse.tree.num_nodes} nodes)", quadtree_overlay(rgb, coarse.tree.split()[0])),
        (f"dense twin: errors ({_errors(dense, truth):.2%})", error_map(rgb, dense.labels[0].numpy(), truth)),
    ]
    fig, axes = plt.subplots(1, len(tiles) + 1, figsize=(3.0 * len(tiles) + 2.2, 3.3),
                             gridspec_kw={"width_ratios": [1] * len(tiles) + [0.75]})
    for ax, (title, tile) in zip(axes, tiles):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    axes[-1].axis("off")
    axes[-1].legend(handles=class_legend(len(class_names), list(class_names)), loc="center", fontsize=8,
                    frameon=False, title="classes", title_fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _errors(prediction, truth: np.ndarray, ignore_index: int = 255) -> float:
    valid = truth != ignore_index
    return float((prediction.labels[0].numpy() != truth)[valid].mean()) if valid.any() else float("nan")


def render_report(cfg: DemoConfig, records: list[dict], examples: list[str], runs: dict, load: tuple) -> str:
    dense = next(r for r in records if r["model"] == "dense")
    full = next(r for r in records if r["model"] == "qgn" and r["max_depth"] == 5 and r["threshold"] is None)

    def trained(model: str) -> str:
        run = runs[model]
        how = {"trained": "this session", "reused": "reused from an earlier session"}.get(run["status"], run["status"])
        return f"{run['seconds']:.0f} s for {run['steps']} steps ({how})"

    lines = [
        "# qgn demo report",
        "",
        f"Two networks with the same layers were trained on procedurally generated scenes (6 classes, "
        f"{cfg.train_images} scenes of 256x256, random 128x128 crops, {cfg.steps} steps of batch 8, seed {cfg.seed}): "
        f"QGN, whose decoder runs only at the nodes of the quadtree, and its dense twin, which runs the same "
        f"layers at every pixel. Training took {trained('qgn')} for QGN and {trained('dense')} for the dense twin. "
        f"Both are evaluated on {full['images']} unseen 256x256 scenes, one image at a time.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}; 1-minute load average {load[0]:.2f} before "
        f"training and {load[1]:.2f} after the evaluation" + (
            " (above the CPU count: other jobs shared the machine, so the times are longer than on a quiet one)."
            if max(load) > (os.cpu_count() or 1) else "."),
        "",
        "QGN's depth caps the quadtree: depth k paints the predicted classes at stride 2**(5-k); a threshold t "
        "expands a node when P(MIXED) >= t (full depth). GMACs count convolutions and linear layers; latency is the "
        "median over the images after a warm-up; peak memory is the peak of live tensor storages during one "
        "prediction (in-process; see README for process-level figures).",
        "",
        format_table(records),
        "",
        f"At full depth QGN reaches mIoU {full['miou']:.4f} with {full['macs'] / dense['macs']:.2f}x the dense "
        f"twin's MACs and {full['peak_memory_mb'] / dense['peak_memory_mb']:.2f}x its peak memory "
        f"(dense: mIoU {dense['miou']:.4f}).",
        "",
        "![accuracy against cost](accuracy_vs_cost.png)",
        "",
        "## Examples",
        "",
        "Each row: the image, its ground truth, QGN's prediction at full depth with the leaf cells of its predicted "
        "quadtree outlined (cells smaller than 4 pixels are not outlined), QGN's wrong pixels in red (ignored "
        "pixels grey), QGN stopped at depth 2, and the dense twin's wrong pixels.",
        "",
    ]
    lines += [f"![example {i}]({name})" for i, name in enumerate(examples)]
    lines.append("")
    return "\n".join(lines)
