"""Boundary-density sweep: QGN's cost grows with the MIXED nodes of its tree, not with the pixels.

    python benchmarks/bench_density.py                                # 512x1024, 7 masks
    python benchmarks/bench_density.py --sizes 512x1024,1024x2048     # README's figures
    python benchmarks/bench_density.py --quick                        # 256x512, 3 masks, one repeat

Random Voronoi masks (19 classes, `inputs.density_mask`) whose cell count is tuned so that the full-resolution
active fraction spans ~1 % .. 50 %; QGN inference at full depth along each mask's ground-truth tree against the
dense twin, whose cost does not depend on the mask (one reference per size). Each configuration runs in a fresh
subprocess, measured as the suite measures (benchmarks/workloads.py, benchmarks/harness.py). Output: a table and
linear fits of QGN's memory and latency against the MIXED nodes on stdout; `--json` (one record per
configuration, the suite's fields plus `sweep`, `target_active_fraction`, `voronoi_cells`), `--markdown`, `--plot`
(default OUT/density_sweep.{json,md,png}).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # its sibling modules, also when run through runpy
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import inputs  # noqa: E402
import workloads  # noqa: E402
from harness import find, fmt_macs  # noqa: E402
from inputs import DEPTH  # noqa: E402

TARGETS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.35, 0.50)  # full-resolution active fractions of the masks


def run_sweep(args, cache: Path, argv: list[str]) -> list[dict]:
    import torch

    records = []
    for h, w in args.sizes:
        image, _ = inputs.street_inputs(h, w)
        specs, first = [], None
        for target in TARGETS[:3] if args.quick else TARGETS:
            mask, _, cells = inputs.density_mask(h, w, target, seed=args.seed)
            saved = inputs.save_inputs(cache / f"voronoi_{h}x{w}_{target:g}.pt", image, torch.from_numpy(mask),
                                       height=h, width=w)
            first = first or (saved, target)
            extra = {"sweep": "density", "target_active_fraction": target, "voronoi_cells": cells}
            specs.append(workloads.make_spec(args, "qgn", "inference", DEPTH, f"voronoi_{target:g}", saved, extra))
        # the dense twin computes every cell whatever the mask: one reference per size
        specs.append(workloads.make_spec(args, "dense", "inference", None, f"voronoi_{first[1]:g}", first[0],
                                         {"sweep": "density"}))
        records += workloads.run_all(specs, args.timeout, argv)
    return records


def linear_fit(xs, ys):
    """(slope, intercept, R^2) of the least-squares line; None unless xs take two values or more."""
    if len(set(xs)) < 2:
        return None
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept, statistics.correlation(xs, ys) ** 2 if len(set(ys)) > 1 else 1.0


def sweep_report(records) -> tuple[str, list[str]]:
    lines = ["| size | full-res active % | nodes (all levels) | MIXED nodes | model | median ms | peak MB (growth) | "
             "GMACs |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| | | | | {r['model']} | error: {r['error']} | | |")
            continue
        lines.append(f"| {r['height']}x{r['width']} | {100 * r['active_fraction_per_level'][-1]:.2f} | "
                     f"{sum(r['tree_nodes_per_level'])} | {sum(r['tree_mixed_per_level'])} | {r['model']} | "
                     f"{r['median_ms']:.0f} | {r['peak_memory_mb']:.0f} | {fmt_macs(r['macs'])} |")
    fits = []
    for h, w in sorted({(r["height"], r["width"]) for r in records if "error" not in r}):
        qgn = [r for r in records if "error" not in r and r["model"] == "qgn" and (r["height"], r["width"]) == (h, w)]
        for field, unit in (("peak_memory_mb", "MB"), ("median_ms", "ms")):
            fit = linear_fit([sum(r["tree_mixed_per_level"]) / 1e3 for r in qgn], [r[field] for r in qgn])
            if fit:
                fits.append(f"{h}x{w}: {field} = {fit[1]:.0f} {unit} + {fit[0]:.2f} {unit} per 1000 MIXED nodes "
                            f"(R^2 {fit[2]:.3f}, {len(qgn)} masks)")
    return "\n".join(lines), fits


def report(args, records: list[dict], argv: list[str]) -> None:
    """The markdown and the plot; the table and the fits on stdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    body, fits = sweep_report(records)
    print(body)
    print("\n".join(fits))
    # records measured before this script existed came from `bench_qgn.py --sweep-density`
    command = harness.command_line("bench_qgn.py" if "--sweep-density" in argv else "bench_density.py", argv)
    machine = harness.environment(records)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(f"""## Boundary-density sweep

Measured with `{command}` on {machine}. QGN inference at full depth with the ground-truth
tree of random Voronoi masks (19 classes) whose cell count was tuned to the target full-resolution active
fraction; the dense twin's cost does not depend on the mask (one reference per size). Peak MB = peak RSS
growth during the measured work.

{body}

Linear fits of QGN against the number of MIXED nodes (all levels):

""" + "\n".join(f"- {f}" for f in fits) + "\n")
    ok = [r for r in records if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (h, w), color in zip(sorted({(r["height"], r["width"]) for r in ok}), ("tab:blue", "tab:orange", "tab:green")):
        qgn = sorted((r for r in ok if r["model"] == "qgn" and (r["height"], r["width"]) == (h, w)),
                     key=lambda r: r["active_fraction_per_level"][-1])
        dense = find(ok, model="dense", height=h, width=w)
        for ax, field, label in ((axes[0], "peak_memory_mb", "peak memory growth (MB)"),
                                 (axes[1], "median_ms", "median latency (ms)")):
            ax.plot([100 * r["active_fraction_per_level"][-1] for r in qgn], [r[field] for r in qgn], "o-",
                    color=color, label=f"QGN {h}x{w}")
            if dense is not None:
                ax.axhline(dense[field], linestyle="--", color=color, label=f"dense twin {h}x{w}")
            ax.set(xscale="log", yscale="log", xlabel="active fraction at full resolution (%)", ylabel=label)
            ax.grid(True, which="both", alpha=0.3)
        axes[2].plot([sum(r["tree_mixed_per_level"]) / 1e3 for r in qgn], [r["peak_memory_mb"] for r in qgn], "o-",
                     color=color, label=f"QGN {h}x{w}")
    axes[0].legend(fontsize=7)
    axes[2].set(xlabel="MIXED nodes, all levels (thousands)", ylabel="peak memory growth (MB)")
    axes[2].grid(True, alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle("QGN inference (full depth, oracle tree) vs boundary density, batch 1, 19 classes")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024", help=f"HxW list (multiples of {1 << DEPTH})")
    return workloads.parse_args(parser, argv, "density_sweep", "256x512",
                                "256x512, 3 masks, one timed run: a smoke test")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return harness.main(parse_args(argv), argv, run_sweep, report)


if __name__ == "__main__":
    sys.exit(main())
