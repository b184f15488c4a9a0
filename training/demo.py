"""`qgn demo`: train the engine's four models on synthetic scenes - QGN, its dense twin, SparseRefine over the dense
twin at 1/4 resolution, SegBlocks toward 40 % high-resolution blocks - evaluate them at their settings on one cost
axis, and write a report.

Runs on a fresh 2-core CPU machine in a few minutes: no files or downloads needed. A run that was interrupted
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
from qgn.config import RefineConfig, SegBlocksConfig
from qgn.evaluate import evaluate_settings, format_table, plot_accuracy_vs_cost, settings_for
from qgn.visualize import class_legend, colour_labels, display_image, error_map, fine_overlay, quadtree_overlay
from training.config import RunConfig, TrainConfig
from training.datasets import DataConfig, build_dataset
from training.trainer import train
from training.transforms import AugmentConfig

RUNS = ("qgn", "dense", "sparserefine", "segblocks", "segblocks_t0.2")  # in training order: SparseRefine's base is
#                                                                          the dense run
NAMES = {"qgn": "QGN", "dense": "the dense twin", "sparserefine": "SparseRefine", "segblocks": "SegBlocks (t = 0.4)",
         "segblocks_t0.2": "SegBlocks (t = 0.2)"}


def block_target(run: str) -> float:
    """The high-resolution target of a SegBlocks run of the demo."""
    return 0.2 if run == "segblocks_t0.2" else 0.4


@dataclass
class DemoConfig:
    train_images: int = 256  # synthetic training scenes (256x256, cropped to 128x128 for training)
    val_images: int = 8  # synthetic validation scenes, evaluated whole (256x256)
    steps: int = 250  # optimizer steps of batch 8 for each model
    seed: int = 0

    @property
    def val_spec(self) -> str:
        return f"synthetic:{self.val_images},size=256"


def demo_run_config(cfg: DemoConfig, run: str, out_dir: str | Path = ".") -> RunConfig:
    """The config of `run` (one of RUNS): the same data, crops, steps and seed for all; SparseRefine over `out_dir`'s
    dense run (base at 1/4 resolution, tau chosen for 10 % refined pixels), SegBlocks with 64-px blocks toward
    t = 0.4 ("segblocks") and 0.2 ("segblocks_t0.2")."""
    model = run.split("_")[0]
    data = DataConfig(dataset=f"synthetic:{cfg.train_images},size=256", val_dataset=cfg.val_spec,
                      augment=AugmentConfig(crop=(128, 128), scale_range=(0.75, 1.25)))
    train_cfg = TrainConfig(epochs=1000, max_steps=cfg.steps, batch_size=8, lr=3e-3, seed=cfg.seed, val_every=1000,
                            log_every=25, test=False)
    sections = {}
    if model == "sparserefine":
        sections["refine"] = RefineConfig(base_checkpoint=str(Path(out_dir) / "run_dense" / "last.pt"),
                                          base_scale=0.25, tau=None, refine_fraction=0.1)
    if model == "segblocks":
        sections["segblocks"] = SegBlocksConfig(block_size=64, target=block_target(run))
    return RunConfig(model=QGNConfig(num_classes=6, depth=5, model=model, **sections), data=data, train=train_cfg)


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
        config = RunConfig.load(run_dir / "config.yaml") if last.exists() else \
            demo_run_config(cfg, model, run_dir.parent)  # a resumed run keeps the tau it chose
        train(config, run_dir, resume=last.exists())
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
    runs = {run: train_or_resume(cfg, run, out_dir / f"run_{run}") for run in RUNS}

    print("[demo] evaluating every model at its settings on the validation scenes")
    device = torch.device("cpu")
    predictors = {run: load_predictor(out_dir / f"run_{run}" / "last.pt", device) for run in RUNS}
    val = build_dataset(cfg.val_spec, "val", 6, normalize=predictors["qgn"].normalize)
    samples = [val[i] for i in range(len(val))]
    records = []
    for run, predictor in predictors.items():
        network = predictor.model
        settings = settings_for(network, sweep=run != "dense")
        if run == "dense":
            settings = [s for s in settings if s.max_depth == network.config.depth]
        if run == "sparserefine":  # the base alone, the tau chosen in training, refined fractions
            settings = [s for s in settings if s.tau is None or s.tau == network.config.refine.tau]
        if run == "segblocks_t0.2":  # all-high and all-low are the t = 0.4 run's (the same network kind)
            settings = [s for s in settings if s.policy not in ("high", "low")]
        for record in evaluate_settings(network, samples, settings, device, class_names=val.class_names):
            if record["model"] == "segblocks":
                kind = "learned policy" if record["policy"] == "learned" else "baselines"
                record.update(run=run, series=f"segblocks t={block_target(run)}, {kind}")
            records.append(record)
    load_after = os.getloadavg()[0]
    (out_dir / "eval.json").write_text(json.dumps(records, indent=2))
    plot_accuracy_vs_cost(records, out_dir / "accuracy_vs_cost.png",
                          "synthetic scenes 256x256: QGN, SparseRefine and SegBlocks vs the dense twin")
    examples = [write_example(out_dir / f"example{i}.png", predictors, samples[i], val.class_names)
                for i in range(min(3, len(samples)))]
    report = out_dir / "report.md"
    report.write_text(render_report(cfg, records, examples, runs, (load_before, load_after)))
    return report


def write_example(path: Path, predictors: dict, sample, class_names) -> str:
    """One figure, two rows: the image, its ground truth, QGN at full depth (leaf cells outlined) and its errors,
    QGN at depth 2; the dense twin's errors, SparseRefine's refined pixels and errors, SegBlocks' high-resolution
    blocks and errors; a legend of the class colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask = sample
    qgn = predictors["qgn"].model
    full = qgn.predict(image[None])
    coarse = qgn.predict(image[None], max_depth=2)
    dense = predictors["dense"].model.predict(image[None])
    refined = predictors["sparserefine"].model.predict(image[None])
    blocks = predictors["segblocks"].model.predict(image[None])
    rgb, truth = display_image(image), mask.numpy()
    tiles = [
        ("image", rgb),
        ("ground truth", colour_labels(truth)),
        (f"QGN full depth ({full.tree.num_nodes} nodes)", quadtree_overlay(rgb, full.tree.split()[0])),
        (f"QGN full depth: errors ({_errors(full, truth):.2%})", error_map(rgb, full.labels[0].numpy(), truth)),
        (f"QGN depth 2 ({coarse.tree.num_nodes} nodes)", quadtree_overlay(rgb, coarse.tree.split()[0])),
        (f"dense twin: errors ({_errors(dense, truth):.2%})", error_map(rgb, dense.labels[0].numpy(), truth)),
        (f"SparseRefine: {refined.stats['refined_fraction']:.1%} refined",
         fine_overlay(rgb, refined.labels[0], refined.fine[0])),
        (f"SparseRefine: errors ({_errors(refined, truth):.2%})", error_map(rgb, refined.labels[0].numpy(), truth)),
        (f"SegBlocks: {blocks.stats['high_res_fraction']:.0%} blocks high-res",
         fine_overlay(rgb, blocks.labels[0], blocks.fine[0])),
        (f"SegBlocks: errors ({_errors(blocks, truth):.2%})", error_map(rgb, blocks.labels[0].numpy(), truth)),
    ]
    columns = len(tiles) // 2
    fig, axes = plt.subplots(2, columns + 1, figsize=(3.0 * columns + 2.2, 6.4),
                             gridspec_kw={"width_ratios": [1] * columns + [0.75]})
    for index, (title, tile) in enumerate(tiles):
        ax = axes[index // columns, index % columns]
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for ax in axes[:, -1]:
        ax.axis("off")
    axes[0, -1].legend(handles=class_legend(len(class_names), list(class_names)), loc="center", fontsize=8,
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
    base = next(r for r in records if r["model"] == "sparserefine" and r["setting"] == "base alone")
    refined = next(r for r in records if r["model"] == "sparserefine" and r["tau"] is not None)
    policies = [next(r for r in records if r.get("run") == run and r["setting"] == "policy learned")
                for run in ("segblocks", "segblocks_t0.2")]

    def versus(r: dict) -> str:
        return (f"mIoU {r['miou']:.4f} at {r['macs'] / dense['macs']:.2f}x the dense twin's MACs and "
                f"{r['peak_memory_mb'] / dense['peak_memory_mb']:.2f}x its peak memory")

    def trained(model: str) -> str:
        run = runs[model]
        how = {"trained": "this session", "reused": "reused from an earlier session"}.get(run["status"], run["status"])
        return f"{run['seconds']:.0f} s for {run['steps']} steps ({how})"

    lines = [
        "# qgn demo report",
        "",
        f"Four models over the same layers were trained on procedurally generated scenes (6 classes, "
        f"{cfg.train_images} scenes of 256x256, random 128x128 crops, {cfg.steps} steps of batch 8, seed {cfg.seed}): "
        f"QGN, whose decoder runs only at the nodes of the quadtree; its dense twin, which runs the same layers at "
        f"every pixel; SparseRefine, which runs the trained dense twin (frozen) on the image at 1/4 resolution and "
        f"refines its most uncertain pixels with a sparse U-Net (tau chosen for 10 % of the validation pixels); and "
        f"SegBlocks, the dense network over 64-px blocks at two resolutions with a policy trained toward 40 % "
        f"(and, a second run, 20 %) high-resolution blocks. Training took " +
        "; ".join(f"{trained(run)} for {NAMES[run]}" for run in RUNS) +
        f". All are evaluated on {full['images']} unseen 256x256 scenes, one image at a time.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}; 1-minute load average {load[0]:.2f} before "
        f"training and {load[1]:.2f} after the evaluation" + (
            " (above the CPU count: other jobs shared the machine, so the times are longer than on a quiet one)."
            if max(load) > (os.cpu_count() or 1) else "."),
        "",
        "QGN's depth caps the quadtree: depth k paints the predicted classes at stride 2**(5-k); a threshold t "
        "expands a node when P(MIXED) >= t (full depth). SparseRefine's settings: the base alone, the trained tau, "
        "and fixed fractions of refined pixels. SegBlocks' settings: the learned policy (alone and under budgets), "
        "all blocks high (= the dense network), all low (half resolution), an oracle that picks the blocks with "
        "the most ground-truth boundary pixels, and a static baseline (the whole image at the one scale whose MACs "
        "equal the target's). GMACs count convolutions and linear layers; latency is the "
        "median over the images after a warm-up; peak memory is the peak of live tensor storages during one "
        "prediction (in-process; see README for process-level figures).",
        "",
        format_table(records),
        "",
        f"The dense twin reaches mIoU {dense['miou']:.4f}. QGN at full depth: {versus(full)}. SparseRefine: the base "
        f"alone at 1/4 resolution {versus(base)}; refining {refined['refined_fraction']:.1%} of the pixels "
        f"{versus(refined)}. SegBlocks' learned policy: " + "; ".join(
            f"trained toward {p['target']:.0%}, it runs {p['high_res_fraction']:.0%} of the blocks at high "
            f"resolution, {versus(p)}" for p in policies) + ".",
        "",
        "![accuracy against cost](accuracy_vs_cost.png)",
        "",
        "## Examples",
        "",
        "Each figure: the image, its ground truth, QGN's prediction at full depth with the leaf cells of its "
        "predicted quadtree outlined (cells smaller than 4 pixels are not outlined), QGN's wrong pixels in red "
        "(ignored pixels grey), QGN stopped at depth 2; below, the dense twin's wrong pixels, SparseRefine's "
        "refined pixels (bright, edged in magenta; the rest is the base's, dimmed) and its errors, SegBlocks' "
        "high-resolution blocks (bright) and its errors.",
        "",
    ]
    lines += [f"![example {i}]({name})" for i, name in enumerate(examples)]
    lines.append("")
    return "\n".join(lines)
