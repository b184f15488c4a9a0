"""Which sparse backend should "auto" run, and do jobs that share a CPU stay fast? Measured as users run them.

    python benchmarks/bench_backends.py                      # prints the tables
    python benchmarks/bench_backends.py --json benchmarks/results/backends.json \
        --markdown benchmarks/results/backends.md          # also writes them (committed results: only when asked)

Every run is a fresh process in the default environment of the CLI and the library (no thread or wait-policy
settings of its own; the library sets OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=3000 unless the environment sets
either). Workloads:

- train: the whole command `qgn train --data synthetic:64 --epochs 1 --batch-size 8 --crop 128 --no-progress`
  (QGN, default settings, one validation), wall time of the process - imports included, as a user waits for it.
- predict SIZE: a fresh process builds the default QGN (19 classes, depth 5, untrained), predicts a synthetic
  street scene of SIZE along the ground-truth tree of its mask (oracle: the tree an accurate model predicts) once
  (`first_ms`: lazy imports and allocations) and then `--repeats` times (`median_ms`); `process_s` is the wall
  time of the whole process.

Conditions: "quiet" (nothing else running), "busy" (one busy Python loop on another process), and "pair" (two
identical runs started together; each one's time is reported). `--backends` picks the sparse backends compared;
`--policies` adds runs with other OpenMP settings in the environment, to show what they do: "openmp-default"
(OMP_WAIT_POLICY set but empty: libgomp's own default, spinning 300,000 rounds before sleeping - what every
command ran with before the engine set its own), "ACTIVE" (spin until work comes), "PASSIVE" (sleep at once,
GOMP_SPINCOUNT=0), or "spin=N" (PASSIVE with GOMP_SPINCOUNT=N).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import RECORD_PREFIX, ROOT

TRAIN_ARGS = ["--data", "synthetic:64", "--epochs", "1", "--batch-size", "8", "--crop", "128", "--no-progress"]


def worker(spec: dict) -> dict:
    """predict SIZE in this process (see the module docstring)."""
    import quadtree as qt  # first, as users import the library: it sets the OpenMP wait policy before torch loads

    import torch

    from qgn import QGNConfig, build_model, predict
    from training.datasets import build_dataset

    height, width = spec["size"]
    image, mask = build_dataset(f"synthetic:street,1,size={height}x{width}", "train")[0]
    torch.manual_seed(0)
    model = build_model(QGNConfig(num_classes=19, backend=spec["backend"])).eval()
    images, tree = image[None], qt.encode(mask[None], 5)
    times = []
    for _ in range(1 + spec["repeats"]):
        start = time.perf_counter()
        predict(model, images, oracle_tree=tree)
        times.append(time.perf_counter() - start)
    return {"first_ms": round(1e3 * times[0], 1), "median_ms": round(1e3 * statistics.median(times[1:]), 1)}


def command(task: dict, out_dir: Path) -> list[str]:
    if task["kind"] == "train":
        return [sys.executable, "-m", "qgn_cli", "train", *TRAIN_ARGS, "--backend", task["backend"],
                "--out", str(out_dir)]
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]


def run_together(task: dict, copies: int, policy: str | None) -> list[dict]:
    """Start `copies` processes of `task` at once; wall time and worker record of each."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy == "openmp-default":
        env["OMP_WAIT_POLICY"] = ""  # set, so the library keeps it; libgomp reads an empty value as unset
    elif policy and policy.startswith("spin="):
        env["OMP_WAIT_POLICY"], env["GOMP_SPINCOUNT"] = "PASSIVE", policy.removeprefix("spin=")
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
        if policy == "PASSIVE":
            env["GOMP_SPINCOUNT"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        processes = []
        for i in range(copies):
            start = time.perf_counter()
            processes.append((start, subprocess.Popen(command(task, Path(tmp) / f"run{i}"), cwd=ROOT, env=env,
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        results = []
        for start, process in processes:
            out, err = process.communicate()
            seconds = time.perf_counter() - start
            if process.returncode:
                raise RuntimeError(f"{task} failed: {err.strip()[-2000:]}")
            record = {"process_s": round(seconds, 2)}
            for line in out.splitlines():
                if line.startswith(RECORD_PREFIX):
                    record.update(json.loads(line[len(RECORD_PREFIX):]))
            results.append(record)
    return results


def measure(task: dict, condition: str, policy: str | None, repeats: int) -> list[dict]:
    busy = None
    if condition == "busy":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        return [r for _ in range(repeats) for r in run_together(task, 2 if condition == "pair" else 1, policy)]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def summarise(task, condition, policy, records) -> dict:
    row = {"workload": task["name"], "backend": task["backend"], "condition": condition,
           "omp_wait_policy": policy or "engine default (PASSIVE, spin=3000)", "runs": len(records),
           "process_s": round(statistics.median(r["process_s"] for r in records), 2),
           "process_s_all": [r["process_s"] for r in records]}
    for key in ("first_ms", "median_ms"):
        if key in records[0]:
            row[key] = round(statistics.median(r[key] for r in records), 1)
    return row


def markdown(rows: list[dict], argv: list[str]) -> str:
    import torch

    lines = [f"Measured with `python benchmarks/bench_backends.py {' '.join(argv)}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}; medians over the "
             f"runs (pair: both processes of every repeat).", "",
             "| workload | backend | condition | OMP_WAIT_POLICY | process s | predict ms (median) | first predict ms | "
             "runs |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['backend']} | {r['condition']} | {r['omp_wait_policy']} | "
                     f"{r['process_s']:.2f} | {r.get('median_ms', '-')} | {r.get('first_ms', '-')} | {r['runs']} |")
    lines += ["", "Slow-down against the same run alone (process time; pair = two at once, busy = beside a busy loop):",
              "", "| workload | backend | OMP_WAIT_POLICY | busy / quiet | pair / quiet |", "|---|---|---|---|---|"]
    for r in rows:
        if r["condition"] != "quiet":
            continue
        same = {x["condition"]: x for x in rows if (x["workload"], x["backend"], x["omp_wait_policy"])
                == (r["workload"], r["backend"], r["omp_wait_policy"])}
        ratio = {c: f"{same[c]['process_s'] / r['process_s']:.2f}x" if c in same else "-" for c in ("busy", "pair")}
        lines.append(f"| {r['workload']} | {r['backend']} | {r['omp_wait_policy']} | {ratio['busy']} | "
                     f"{ratio['pair']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="spconv,torch")
    parser.add_argument("--workloads", default="train,predict256,predict1024x2048",
                        help="train, predictHxW or predictS (square)")
    parser.add_argument("--conditions", default="quiet,busy,pair")
    parser.add_argument("--policies", default="", help="extra OMP_WAIT_POLICY values to run, e.g. ACTIVE")
    parser.add_argument("--repeats", type=int, default=3, help="processes (pairs) per configuration")
    parser.add_argument("--predict-repeats", type=int, default=5, help="timed predicts per process")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        harness.print_record(worker(json.loads(args.worker)))
        return 0
    tasks = []
    for name in args.workloads.split(","):
        for backend in args.backends.split(","):
            if name == "train":
                tasks.append({"name": name, "kind": "train", "backend": backend})
            else:
                h, _, w = name.removeprefix("predict").partition("x")
                tasks.append({"name": name, "kind": "predict", "backend": backend, "size": [int(h), int(w or h)],
                              "repeats": args.predict_repeats})
    rows = []
    for policy in [None] + [p for p in args.policies.split(",") if p]:
        for task in tasks:
            for condition in args.conditions.split(","):
                rows.append(summarise(task, condition, policy, measure(task, condition, policy, args.repeats)))
                print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows, argv)
    print(text)
    for path, content in ((args.json, json.dumps(rows, indent=2)), (args.markdown, text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
