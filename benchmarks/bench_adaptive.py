"""QGN, SparseRefine and SegBlocks on one cost axis: accuracy against MACs, latency and memory on held-out images.

    python benchmarks/bench_adaptive.py                                 # both data sets, prints the tables
    python benchmarks/bench_adaptive.py --out benchmarks/results        # also writes adaptive.{json,md,png}
    qgn bench adaptive --data nuclei --steps 100                        # the same through the CLI

Every model is trained and evaluated the way a user runs them: `qgn train` and `qgn eval --sweep` in fresh
processes, default settings plus the listed flags, the same data, crops, steps and seed for every model.
- nuclei: the real 16-bit fluorescence image of examples/nuclei_dsb2018.npz cut into 16 tiles of 128x128
  (`instances > 0`: nuclei vs background; 10 tiles train, 3 val, 3 test, as benchmarks/bench_convergence.py).
  Depth 4 (roots at 16 px) so that SegBlocks' blocks (32 px, a multiple of 2**(depth + 1)) tile a 128-px tile 4x4.
- street: the synthetic street-like scenes (6 classes, 256x256, thin poles and small signs), trained on crops of
  128; depth 5, SegBlocks blocks of 64 px.
Models: the dense twin (the base at full resolution), QGN (its depths and MIXED thresholds), SparseRefine over
the dense twin's last.pt at 1/4 resolution (the base alone, the tau chosen for 10 % refined pixels on validation,
refined fractions 1-20 %), SegBlocks trained toward t = 0.2 and t = 0.4 (the learned policy, the policy under
budgets; all-high, all-low, the oracle and the static baseline of equal cost). Reported on the test split:
mIoU, MACs, median latency and peak memory per image (batch 1, `qgn eval`), and each model's training time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import NUCLEI, ROOT

DATA = ("nuclei", "street")
MODELS = ("dense", "qgn", "sparserefine", "segblocks")
TARGETS = (0.2, 0.4)


def data_flags(name: str, root: Path) -> tuple[list[str], str, dict]:
    """(`qgn train` flags of data set `name`, its evaluation spec, SegBlocks' block size and the depth)."""
    if name == "nuclei":
        from bench_convergence import write_tiles

        write_tiles(root / "nuclei_tiles")
        spec = f"folder:{root / 'nuclei_tiles'}"
        return (["--data", spec, "--num-classes", "2", "--in-channels", "1", "--depth", "4", "--crop", "128"],
                spec, {"block_size": 32, "depth": 4})
    spec = "synthetic:64,size=256"
    return (["--data", spec, "--val-data", "synthetic:8,size=256", "--crop", "128"], "synthetic:16,size=256",
            {"block_size": 64, "depth": 5})


def qgn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qgn_cli", *args]


def run_command(command: list[str]) -> float:
    """Run `command` (from the repository root, quiet); its wall time in seconds. RuntimeError with its stderr."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def train_and_evaluate(name: str, root: Path, steps: int, models: list[str], limit: int | None) -> list[dict]:
    """Train every model on data set `name` into `root`, evaluate each on the test split; the records."""
    root.mkdir(parents=True, exist_ok=True)
    flags, eval_spec, blocks = data_flags(name, root)
    config = root / "train.yaml"  # validate at the end only: the comparison is on the test split
    config.write_text("train:\n  val_every: 100000\n  log_every: 50\n  seed: 0\n")
    common = [*flags, "--config", str(config), "--batch-size", "4", "--epochs", "100000", "--max-steps", str(steps),
              "--no-progress", "--no-test"]
    runs = {"dense": ["--model", "dense"], "qgn": ["--model", "qgn"]}
    if "sparserefine" in models:
        runs["sparserefine"] = ["--model", "sparserefine", "--base-checkpoint", str(root / "dense" / "last.pt"),
                                "--base-scale", "0.25", "--refine-fraction", "0.1"]
    if "segblocks" in models:
        for target in TARGETS:
            runs[f"segblocks_t{target}"] = ["--model", "segblocks", "--block-size", str(blocks["block_size"]),
                                            "--target", str(target)]
    records = []
    for run, extra in runs.items():
        kind = run.split("_")[0]
        if kind not in models and not (kind == "dense" and "sparserefine" in models):
            continue
        seconds = run_command(qgn_command("train", *common, *extra, "--out", str(root / run)))
        evaluation = root / f"{run}.json"
        sweep = ["--max-depth", str(blocks["depth"])] if kind == "dense" else ["--sweep"]
        run_command(qgn_command("eval", "--checkpoint", str(root / run / "last.pt"), "--data", eval_spec, "--split",
                                "test", *sweep, *([] if limit is None else ["--limit", str(limit)]),
                                "--json", str(evaluation)))
        load = round(os.getloadavg()[0], 2)  # the 1-minute load average the evaluation ran under, about
        for record in json.loads(evaluation.read_text()):
            record.update(data=name, run=run, train_seconds=round(seconds, 1), train_steps=steps, load_avg_1min=load,
                          **series_of(run, record))
            records.append(record)
        print(f"[{name}] {run}: trained {steps} steps in {seconds:.0f} s, {len(records)} records", file=sys.stderr)
    return records


def series_of(run: str, record: dict) -> dict:
    """The plot series and point label of a record (`qgn.evaluate.plot_accuracy_vs_cost` reads them)."""
    if run == "dense":
        return {"series": "dense twin (base at full resolution)", "point": "dense"}
    if run == "sparserefine":
        fraction = record.get("refined_fraction") or 0.0
        return {"series": "sparserefine (base at 1/4)", "point": "base 1/4" if fraction == 0 else
                f"{100 * fraction:.0f}%" if fraction >= 0.01 else f"{100 * fraction:.1f}%"}
    if run.startswith("segblocks"):
        target = run.split("_t")[1]
        if record.get("policy") == "learned":
            return {"series": f"segblocks t={target}, learned policy",
                    "point": "policy" if record.get("fraction") is None else f"budget {record['fraction']:g}"}
        return {"series": f"segblocks t={target}, baselines", "point": record["policy"]}
    return {}


def table(records: list[dict]) -> str:
    lines = ["| data | run | setting | mIoU | pixel acc. | refined / high-res | GMACs | latency ms | peak MiB | "
             "train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        share = r.get("refined_fraction") if r.get("refined_fraction") is not None else r.get("high_res_fraction")
        lines.append(f"| {r['data']} | {r['run']} | {r['setting']} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | "
                     f"{'-' if share is None else f'{100 * share:.1f}%'} | {r['macs'] / 1e9:.3f} | "
                     f"{r['latency_ms']:.1f} | {r['peak_memory_mb']:.1f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def report(records: list[dict], argv: list[str], out: Path | None) -> str:
    from qgn.evaluate import plot_accuracy_vs_cost

    text = (f"Measured with `{harness.command_line('bench_adaptive.py', argv)}` ({harness.environment(records)}).\n"
            f"Test split, one image at a time; latency: median per image, CPU, default threads.\n\n"
            + table(records) + "\n")
    if out is not None:
        harness.write_json(out / "adaptive.json", records)
        pictures = []
        for name in sorted({r["data"] for r in records}):
            path = out / f"adaptive_{name}.png"
            plot_accuracy_vs_cost([r for r in records if r["data"] == name], path, f"{name}: accuracy vs cost")
            pictures.append(f"![{name}: mIoU against GMACs and peak memory]({path.name})")
        (out / "adaptive.md").write_text(text + "\n" + "\n\n".join(pictures) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=",".join(DATA), help="data sets, of: " + ", ".join(DATA))
    parser.add_argument("--models", default=",".join(MODELS), help="models, of: " + ", ".join(MODELS))
    parser.add_argument("--steps", type=int, default=300, help="training steps of batch 4 per model")
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--out", help="write adaptive.json, adaptive.md and adaptive_<data>.png here")
    args = parser.parse_args(argv)
    data = harness.parse_list(args.data, DATA, "--data")
    models = harness.parse_list(args.models, MODELS, "--models")
    if "nuclei" in data and not NUCLEI.is_file():
        raise SystemExit(f"needs the real nuclei image at {NUCLEI}")
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_adaptive_") as tmp:
        for name in data:
            records += train_and_evaluate(name, Path(tmp) / name, args.steps, models, args.limit)
            if args.out:  # what is measured is kept, whatever happens to the next data set
                harness.write_json(Path(args.out) / "adaptive.json", records)
    for record in records:
        record.update(argv=argv)
    print(report(records, argv, Path(args.out) if args.out else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
