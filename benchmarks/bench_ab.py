"""The same workloads under two revisions of the engine, side by side: does a change make QGN faster or slower?

    python benchmarks/bench_ab.py --base REV [--models qgn,dense] [--sizes 512x1024,1024x2048] [--masks street,nuclei]
                                  [--workloads predict,train] [--rounds 20] [--out runs/bench]

The base revision's tree is exported (`git archive REV`) into a temporary folder. For each workload, network,
size and mask, two worker processes - one importing the engine of REV, one the working tree's - build the same
network (`--models`: QGN and/or its dense twin; seed 0, 19 classes, depth 5, untrained) on the same input
(`benchmarks/inputs.py`, written once by this process), warm up, then run one step at a time in alternation,
A B B A A B ... for `--rounds` rounds: both see the same machine load, so the ratio of their medians is meaningful
on a shared, noisy machine where absolute times are not. Each worker runs with the environment a user's process
has (the engine's own OpenMP settings, 2 torch threads).

Workloads (only APIs both revisions have):
- "predict": `qgn.predict.predict(fold_batch_norm(model), images, oracle_tree=tree)` at full depth - what
  `load_predictor` runs, expanding the ground-truth tree of the mask (the dense twin: its own prediction).
- "train": one training step as `qgn train` runs it: `build_criterion` and `build_optimizer` of a `RunConfig`,
  forward along the ground-truth tree, loss, backward, optimizer step (the optimizer's state exists).
- "decode": `quadtree.decode(tree, dtype=torch.int64)` of the mask's tree (painting the labels, checked).

Prints a table (median ms per step of each revision, new / base; the peak live tensor memory of one step,
counted exactly by `qgn.cost.peak_memory` where the revision has it; the peak RSS of each worker process) and
writes OUT/ab.json and OUT/ab.md.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import inputs  # noqa: E402
from harness import ROOT  # noqa: E402

WORKLOADS = ("predict", "train", "decode")

WORKER = r'''
import json, resource, sys, time
spec = json.loads(sys.argv[1])
import quadtree as qt  # first: the engine's OpenMP settings, as every user process gets them
import torch
from qgn import QGNConfig, build_model
torch.set_num_threads(spec["threads"])
data = torch.load(spec["inputs"])
images, masks = data["image"][None], data["mask"][None].long()
tree = qt.encode(masks, spec["depth"])
torch.manual_seed(0)
config = QGNConfig(num_classes=spec["num_classes"], depth=spec["depth"], model=spec["model"])
if spec["workload"] == "decode":
    def step():
        qt.decode(tree, dtype=torch.int64)
elif spec["workload"] == "predict":
    from qgn.fold import fold_batch_norm
    from qgn.predict import predict
    model = fold_batch_norm(build_model(config))
    knobs = {"oracle_tree": tree} if spec["model"] == "qgn" else {}
    def step():
        predict(model, images, **knobs)
else:
    from training.config import RunConfig
    from training.loss import build_criterion
    from training.trainer import build_optimizer
    run = RunConfig(model=config)
    model = build_model(config).train()
    criterion, optimizer = build_criterion(run), build_optimizer(model, run.train)
    def step():
        out = model(images, tree)
        loss = criterion(out.level_logits, tree, out.full_logits, masks)["loss"]
        float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
for _ in range(spec["warmup"]):
    step()
try:  # the peak of live tensor memory of one more step, where the revision can count it (exact, untimed)
    from qgn.cost import peak_memory
except ImportError:
    tensor_mb = None
else:
    with peak_memory("cpu") as memory:
        step()
    tensor_mb = memory["peak_mb"]
print("ready " + json.dumps({"peak_tensor_mb": tensor_mb}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    print(json.dumps({"ms": 1e3 * elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)
'''


class Worker:
    """A worker process of one revision (`root`: the folder whose engine it imports), stepped one step at a time."""

    def __init__(self, root: Path, spec: dict, timeout: float):
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONWARNINGS="ignore",
                   OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        env.pop("OMP_WAIT_POLICY", None)  # the engine's own settings, as a user's process has them
        env.pop("GOMP_SPINCOUNT", None)
        self.timeout = timeout
        self.process = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=root, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.ready = json.loads(self._expect("ready")[len("ready"):])

    def step(self) -> dict:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return json.loads(self._expect(None))

    def _expect(self, prefix: str | None) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line or (prefix is not None and not line.startswith(prefix)):
            self.process.kill()
            raise RuntimeError(f"worker failed: {line.strip() or 'no answer'} | "
                               f"{' | '.join(self.process.stderr.read().strip().splitlines()[-5:])}")
        return line

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def export_revision(revision: str, folder: Path) -> str:
    """`git archive` of `revision` unpacked into `folder`; returns its commit hash."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"--base {revision!r} is not a commit of the repository at {ROOT}; name one that "
                         f"`git log` lists (a hash, a tag, HEAD~3)")
    commit = found.stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return commit


def compare(base_root: Path, spec: dict, rounds: int, timeout: float) -> dict:
    """Alternate single steps of the base and the working tree's workers; their medians and the ratio."""
    workers = {"base": Worker(base_root, spec, timeout), "new": Worker(ROOT, spec, timeout)}
    times = {"base": [], "new": []}
    try:
        for i in range(rounds):
            order = ("base", "new") if i % 2 == 0 else ("new", "base")  # A B, B A, ...: neither always first
            for name in order:
                times[name].append(workers[name].step())
    finally:
        for worker in workers.values():
            worker.close()
    result = {"load_avg_1min": os.getloadavg()[0]}
    for name, steps in times.items():
        result[f"{name}_ms"] = round(statistics.median(s["ms"] for s in steps), 2)
        result[f"{name}_peak_rss_mb"] = round(max(s["peak_rss_mb"] for s in steps), 1)
        tensor_mb = workers[name].ready["peak_tensor_mb"]
        result[f"{name}_peak_tensor_mb"] = None if tensor_mb is None else round(tensor_mb, 1)
    result["new_over_base"] = round(result["new_ms"] / result["base_ms"], 3)
    return result


def table(records: list[dict]) -> str:
    lines = ["| workload | network | size | mask | base ms | new ms | new / base | peak tensor MB, base / new | "
             "peak RSS MB, base / new |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        tensors = " / ".join("-" if r[f"{n}_peak_tensor_mb"] is None else f"{r[f'{n}_peak_tensor_mb']:.1f}"
                             for n in ("base", "new"))
        lines.append(f"| {r['workload']} | {r.get('model', 'qgn')} | {r['height']}x{r['width']} | {r['mask']} | "
                     f"{r['base_ms']:.1f} | "
                     f"{r['new_ms']:.1f} | {r['new_over_base']:.3f} | {tensors} | {r['base_peak_rss_mb']:.0f} / "
                     f"{r['new_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare the working tree with (git rev)")
    parser.add_argument("--sizes", default="512x1024,1024x2048", help=f"HxW list (multiples of {1 << inputs.DEPTH})")
    parser.add_argument("--masks", default="street,nuclei", help=f"subset of {','.join(inputs.MASKS)}")
    parser.add_argument("--workloads", default="predict,train", help=f"subset of {','.join(WORKLOADS)}")
    parser.add_argument("--models", default="qgn", help="qgn and/or dense (its dense twin)")
    parser.add_argument("--rounds", type=int, default=20, help="timed steps of each revision per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each worker first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a worker may take for one answer")
    parser.add_argument("--out", default="runs/bench", help="folder of ab.json and ab.md")
    args = parser.parse_args(argv)
    sizes = harness.parse_sizes(args.sizes, 1 << inputs.DEPTH)
    masks = harness.parse_list(args.masks, inputs.MASKS, "--masks")
    workloads = harness.parse_list(args.workloads, WORKLOADS, "--workloads")
    models = harness.parse_list(args.models, ("qgn", "dense"), "--models")
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as tmp:
        base_root = Path(tmp) / "base"
        base_root.mkdir()
        commit = export_revision(args.base, base_root)
        for height, width in sizes:
            for mask in masks:
                made = inputs.MASKS[mask](height, width)
                if made is None:
                    print(f"skipping mask {mask!r}: {harness.NUCLEI} not found", file=sys.stderr)
                    continue
                saved = inputs.save_inputs(Path(tmp) / f"{mask}_{height}x{width}.pt", *made)
                for workload, model in [(w, m) for w in workloads for m in models
                                        if w != "decode" or m == models[0]]:
                    spec = {"workload": workload, "model": model, "inputs": saved["inputs"], "depth": inputs.DEPTH,
                            "num_classes": inputs.NUM_CLASSES, "threads": args.threads, "warmup": args.warmup}
                    started = time.perf_counter()
                    record = {"workload": workload, "model": model, "height": height, "width": width, "mask": mask,
                              "base": args.base, "base_commit": commit, "rounds": args.rounds,
                              "threads": args.threads, **compare(base_root, spec, args.rounds, args.timeout)}
                    records.append(record)
                    print(f"{workload} {model} {height}x{width} {mask}: base {record['base_ms']:.1f} ms, new "
                          f"{record['new_ms']:.1f} ms ({record['new_over_base']:.3f}x) in "
                          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    body = table(records)
    print(body)
    out = Path(args.out)
    harness.write_json(out / "ab.json", records)
    command = harness.command_line("bench_ab.py", argv)
    (out / "ab.md").write_text(f"Measured with `{command}` (base {commit[:12]}; {harness.environment(records)})\n\n"
                               f"{body}\n")
    print(f"wrote {out / 'ab.json'} and {out / 'ab.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
