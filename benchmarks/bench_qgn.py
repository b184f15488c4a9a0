"""Cost of QGN against its dense twin and a segmentation_models_pytorch Unet (resnet18), side by side.

    python benchmarks/bench_qgn.py                       # the full suite (also `qgn bench`)
    python benchmarks/bench_qgn.py --quick               # small sizes, one repeat: a smoke test
    python benchmarks/bench_density.py                   # the boundary-density sweep (its own script)

Every configuration (model x mode x image size x mask x depth) runs in a fresh subprocess: QGN inference at every
depth in --depths (along the ground-truth tree), QGN training at full depth, the dense twin and the Unet once per
mode. What each configuration runs and how its MACs are counted: benchmarks/workloads.py; how time (median wall
and CPU time of --repeats runs after --warmup runs) and memory (peak RSS growth on CPU, peak allocated on CUDA)
are measured: benchmarks/harness.py; the inputs ("street", "nuclei", one image, batch 1 - or `--batch-sizes`
copies of it, reported as images/s -, 19 classes, depth 5):
benchmarks/inputs.py. Every record holds the active fraction per level of the tree used.

Output: a markdown table on stdout; `--json` (a list of records, one per configuration), `--markdown` (tables,
target verdicts, the command line), `--plot` (memory and latency against depth, dense and Unet as lines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # its sibling modules, also when run by `qgn bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import inputs  # noqa: E402
import workloads  # noqa: E402
from harness import find, fmt_depth, fmt_macs  # noqa: E402
from inputs import DEPTH, MASKS  # noqa: E402

MODELS = tuple(workloads.NETWORKS)
MODES = tuple(workloads.STEPS)
RATIOS = {  # verdict field: (model against QGN, mode of both, record field, target of the ratio or None)
    "inference_memory_ratio": ("dense", "inference", "peak_memory_mb", 4.0),
    "train_memory_ratio": ("dense", "train", "peak_memory_mb", 3.0),
    "latency_ratio": ("dense", "inference", "median_ms", 1.0),
    "cpu_time_ratio": ("dense", "inference", "median_cpu_ms", None),
    "train_time_ratio": ("dense", "train", "median_ms", None),
    "unet_inference_memory_ratio": ("smp_unet", "inference", "peak_memory_mb", None),
    "unet_latency_ratio": ("smp_unet", "inference", "median_ms", None),
}


def run_suite(args, cache: Path, argv: list[str]) -> list[dict]:
    """Save the inputs of every size and mask (`inputs.save_inputs`), then measure every configuration, grouped by
    (size, mask) so that every model sees the same inputs."""
    if "smp_unet" in args.models and workloads.import_smp() is None:
        print("segmentation_models_pytorch is not installed: skipping smp_unet (pip install -e \".[bench]\", or "
              "pip install segmentation-models-pytorch)", file=sys.stderr)
        args.models = [m for m in args.models if m != "smp_unet"]
    specs = []
    for h, w in args.sizes:
        for mask in args.masks:
            made = MASKS[mask](h, w)
            if made is None:
                print(f"skipping mask {mask!r}: {inputs.NUCLEI} not found", file=sys.stderr)
                continue
            saved = inputs.save_inputs(cache / f"{mask}_{h}x{w}.pt", *made, height=h, width=w)
            for batch_size in args.batch_sizes:
                for model in args.models:
                    for mode in args.modes:
                        depths = args.depths if (model == "qgn" and mode == "inference") else \
                            ([DEPTH] if model == "qgn" else [None])
                        for depth in depths:
                            specs.append(workloads.make_spec(args, model, mode, depth, mask, saved,
                                                             batch_size=batch_size))
    print(f"{len(specs)} configurations, one subprocess each", file=sys.stderr, flush=True)
    return workloads.run_all(specs, args.timeout, argv)


def table(records: list[dict]) -> str:
    lines = ["| size | mask | batch | model | mode | depth | median ms | CPU ms | peak MB (growth) | peak RSS MB | "
             "GMACs | nodes per level |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['height']}x{r['width']} | {r['mask']} | {r.get('batch_size', 1)} | {r['model']} | {r['mode']} | " \
               f"{fmt_depth(r['depth'])} |"
        if "error" in r:
            lines.append(f"{head} error: {r['error']} | | | | | |")
            continue
        nodes = "-" if r["nodes_per_level"] is None else "/".join(map(str, r["nodes_per_level"]))
        lines.append(f"{head} {r['median_ms']:.0f} | {r['median_cpu_ms']:.0f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {fmt_macs(r['macs'])} | {nodes} |")
    return "\n".join(lines)


def throughput_table(records: list[dict]) -> str:
    """Inference images/s per batch size: QGN at full depth, the dense twin, the Unet ("" without several batch
    sizes)."""
    batches = sorted({r.get("batch_size", 1) for r in records if "error" not in r})
    if len(batches) < 2:
        return ""
    names = {"qgn": "QGN", "dense": "dense twin", "smp_unet": "Unet-r18"}
    lines = ["| size | mask | network | " + " | ".join(f"images/s, batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---|" * len(batches)]
    for h, w, mask in sorted({(r["height"], r["width"], r["mask"]) for r in records if "error" not in r}):
        for model, name in names.items():
            found = [find(records, height=h, width=w, mask=mask, model=model, mode="inference", batch_size=b,
                          depth=DEPTH if model == "qgn" else None) for b in batches]
            if any(found):
                cells = ["-" if r is None else f"{r['images_per_s']:.2f}" for r in found]
                lines.append(f"| {h}x{w} | {mask} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fractions_table(records: list[dict]) -> str:
    seen, lines = set(), ["| size | mask | active % per level 0..5 (nodes / cells of the level grid) | nodes per level |",
                          "|---|---|---|---|"]
    for r in records:
        key = (r.get("height"), r.get("width"), r["mask"])
        if key in seen or "active_fraction_per_level" not in r:
            continue
        seen.add(key)
        fractions = " / ".join(f"{100 * f:.2f}" for f in r["active_fraction_per_level"])
        lines.append(f"| {key[0]}x{key[1]} | {key[2]} | {fractions} | {'/'.join(map(str, r['tree_nodes_per_level']))} |")
    return "\n".join(lines)


def verdicts(records: list[dict]) -> tuple[str, list[dict]]:
    """Ratios of QGN at full depth to the dense twin (and the Unet) per size and mask, with the target checks."""
    rows, out = [], ["| size | mask | inference memory dense/QGN | train memory dense/QGN | latency dense/QGN | "
                     "inference CPU time dense/QGN | train time dense/QGN | inference memory Unet/QGN | "
                     "latency Unet/QGN |", "|---|---|---|---|---|---|---|---|---|"]
    for h, w, mask in sorted({(r["height"], r["width"], r["mask"]) for r in records if "error" not in r}):
        row, cells = {"height": h, "width": w, "mask": mask}, []
        for name, (model, mode, field, target) in RATIOS.items():
            a, b = (find(records, height=h, width=w, mask=mask, model=m, mode=mode, batch_size=1,
                         depth=DEPTH if m == "qgn" else None) for m in (model, "qgn"))
            # memory growth below 1 MB is below what RSS measures reliably: no ratio rather than a huge one
            floor = 1.0 if field == "peak_memory_mb" else 0.0
            row[name] = value = None if a is None or b is None or b[field] <= floor else a[field] / b[field]
            cell = "-" if value is None else f"{value:.2f}x"
            if value is not None and target is not None:
                cell += " (met)" if value >= target else f" (missed: target {target:g}x)"
            cells.append(cell)
        rows.append(row)
        out.append(f"| {h}x{w} | {mask} | " + " | ".join(cells) + " |")
    return "\n".join(out), rows


def write_markdown(path: Path, records, argv) -> None:
    verdict_table, _ = verdicts(records)
    throughput = throughput_table(records)
    if throughput:
        throughput = f"### Batched inference (images/s; QGN at full depth)\n\n{throughput}\n\n"
    first = next((r for r in records if "error" not in r), {"threads": "?", "device": "?"})
    threads, device = first["threads"], first["device"]
    command, machine = harness.command_line("bench_qgn.py", argv), harness.environment(records)
    text = f"""## Performance

Measured with `{command}` on {machine}; {threads} torch threads, device {device}.
Batch 1 (unless the batch column says otherwise: copies of the image), 19 classes, depth 5; every configuration in a
fresh process. QGN expands the ground-truth tree of the
mask (`tree_source: oracle`) - the cost of a prediction whose tree matches the labels. "peak MB (growth)" is the
peak RSS growth during the measured work (warm-up included) over the RSS right before it (after imports, model
construction, input loading and a small priming pass); "peak RSS MB" is the absolute peak. "CPU ms" is the
median process time, summed over all threads (above the wall time when both threads work). GMACs are per image
(forward pass; train records too). Workers run with the library's default
OpenMP wait policy (PASSIVE). Figures from a shared 2-core machine: other jobs ran at the same time (each record holds
the 1-minute load average), so wall times are noisy - CPU time is the steadier comparison. Peak RSS growth also
varies between identical runs (allocator behaviour; up to ~15% on the development machine), so a ratio close to
its target is within noise.

### Ratios at full depth (higher = QGN cheaper; targets: inference memory >= 4x, train memory >= 3x, latency > 1x)

{verdict_table}

"-": not measured, or a memory growth below 1 MB (below what peak RSS resolves; no ratio is computed from it).

### Trees used (active fraction per level)

{fractions_table(records)}

{throughput}### All configurations

{table(records)}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_plot(path: Path, records) -> None:
    import matplotlib

    records = [r for r in records if r.get("batch_size", 1) == 1]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["height"], r["width"]) for r in records if "error" not in r}, key=lambda s: s[0] * s[1])
    if not sizes:
        return
    masks = sorted({r["mask"] for r in records if "error" not in r})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    colors = {"street": "tab:blue", "nuclei": "tab:orange"}
    for row, (h, w) in enumerate(sizes):
        for col, (field, label) in enumerate((("peak_memory_mb", "inference peak memory growth (MB)"),
                                              ("median_ms", "inference median latency (ms)"))):
            ax = axes[row][col]
            for mask in masks:
                color = colors.get(mask)
                # a memory growth of 0 (below what RSS resolves) has no place on a log axis
                points = sorted((r["depth"], r[field]) for r in records if "error" not in r and r["model"] == "qgn"
                                and r["mode"] == "inference" and (r["height"], r["width"]) == (h, w)
                                and r["mask"] == mask and r[field] > 0)
                if points:
                    ax.plot(*zip(*points), "o-", color=color, label=f"QGN ({mask})")
                for model, style in (("dense", "--"), ("smp_unet", ":")):
                    r = find(records, model=model, mode="inference", height=h, width=w, mask=mask)
                    if r is not None and r[field] > 0:
                        ax.axhline(r[field], linestyle=style, color=color,
                                   label=f"{'dense twin' if model == 'dense' else 'smp Unet-resnet18'} ({mask})")
            ax.set(yscale="log", xlabel="QGN inference depth (levels computed below the root grid)", ylabel=label,
                   title=f"{h}x{w}, batch 1, 19 classes")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0 and col == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="qgn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024,1024x2048", help=f"HxW list (multiples of {1 << DEPTH})")
    parser.add_argument("--masks", default="street,nuclei", help=f"subset of {','.join(MASKS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--depths", default=",".join(map(str, range(DEPTH + 1))), help="QGN inference depths")
    parser.add_argument("--batch-sizes", default="1",
                        help="images per batch, a list (copies of the input image; ratios use batch 1)")
    args = workloads.parse_args(parser, argv, "bench_qgn", "128x256,256x512",
                                "128x256 and 256x512, one timed run: a smoke test")
    args.masks = harness.parse_list(args.masks, MASKS, "--masks")
    args.models = harness.parse_list(args.models, MODELS, "--models")
    args.modes = harness.parse_list(args.modes, MODES, "--modes")
    args.depths = [int(d) for d in args.depths.split(",")]
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--batch-sizes must be a comma-separated list of positive integers, got "
                         f"{args.batch_sizes!r}") from None
    if any(b < 1 for b in args.batch_sizes):
        raise SystemExit(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if any(not 0 <= d <= DEPTH for d in args.depths):
        raise SystemExit(f"--depths must lie in 0..{DEPTH}")
    return args


def report(args, records: list[dict], argv: list[str]) -> None:
    write_markdown(Path(args.markdown), records, argv)
    write_plot(Path(args.plot), records)
    print(table(records))
    print()
    print(verdicts(records)[0])
    throughput = throughput_table(records)
    if throughput:
        print()
        print(throughput)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return harness.main(parse_args(argv), argv, run_suite, report)


if __name__ == "__main__":
    sys.exit(main())
