"""Host overhead of one prediction, counted on any machine: aten ops dispatched and ops that force a host sync.

    python benchmarks/bench_dispatch.py [--sizes 512x1024] [--repeats 10] [--out runs/bench]

On a GPU every aten op is one or more kernel launches and every sync-forcing op (nonzero, item, ...) stalls the
host until the GPU catches up, so these counts, taken on the CPU with a TorchDispatchMode, are device-independent
proxies of a GPU prediction's host time (issue 12: at most 150 ops, views excluded, and depth + 1 syncs per
full-depth predict at 512x1024). For each input (the street scene and the nuclei image of benchmarks/inputs.py,
depth 5, 19 classes, untrained weights, batch 1) and each setting - the oracle tree of the mask at full depth (a
fixed, realistic number of nodes), and QGN's own argmax rule - it counts one `predict` of the network as
`load_predictor` runs it (batch norm folded, `qgn.fold`) and unfolded, and times both (median CPU wall time of
`--repeats` calls after a warm-up, side by side in one process). The counted predict is the second of its model and
input (the steady state of a predictor: what depends only on the weights or on the root grid is derived on the
first call and kept, `sparse_ops.inference_weights`); the first call's count is reported beside it. Prints a table;
writes OUT/dispatch.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

import quadtree as qt
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import harness
from inputs import DEPTH, MASKS, NUM_CLASSES
from qgn import QGNConfig, build_model
from qgn.fold import fold_batch_norm
from qgn.predict import predict

VIEW_OPS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "permute", "transpose", "t", "squeeze",
            "unsqueeze", "slice", "select", "as_strided", "alias", "detach", "unbind", "split", "split_with_sizes",
            "narrow", "flatten", "unflatten", "view_as", "diagonal", "unfold", "lift_fresh"}
"""Ops that only make a new view of existing memory: no kernel, not counted."""

SYNC_OPS = {"nonzero", "_local_scalar_dense", "is_nonzero", "equal", "masked_select", "_unique2", "unique_dim",
            "unique_consecutive", "repeat_interleave"}
"""Ops whose output size or value the host needs before it can go on (repeat_interleave only with a tensor of
repeats: counted here when it dispatches as such)."""


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_once(model, images, **knobs) -> tuple[dict, dict, list[int]]:
    """(ops, sync ops, nodes per level) of one predict: op name -> count, views excluded."""
    with OpCounter() as counter, torch.no_grad():
        prediction = predict(model, images, **knobs)
    ops = {name: n for name, n in counter.ops.items() if name not in VIEW_OPS}
    syncs = {name: n for name, n in counter.ops.items() if name in SYNC_OPS}
    return ops, syncs, prediction.nodes_per_level


def count(model, images, **knobs) -> dict:
    """The counts of the second predict (steady state), and the op count of the first."""
    first, _, _ = count_once(model, images, **knobs)
    ops, syncs, nodes = count_once(model, images, **knobs)
    return {"ops": sum(ops.values()), "syncs": sum(syncs.values()), "sync_ops": syncs,
            "ops_first_call": sum(first.values()), "top_ops": dict(collections.Counter(ops).most_common(12)),
            "nodes_per_level": nodes}


def median_ms(model, images, repeats: int, **knobs) -> float:
    with torch.no_grad():
        predict(model, images, **knobs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            predict(model, images, **knobs)
            times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def measure(sizes, masks, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    unfolded = build_model(QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH)).eval()
    folded = fold_batch_norm(unfolded)
    records = []
    for height, width in sizes:
        for mask_name in masks:
            image, mask = MASKS[mask_name](height, width)
            images = image[None]
            tree = qt.encode(mask[None], DEPTH)
            for setting, knobs in (("oracle", {"oracle_tree": tree}), ("argmax", {})):
                for model_name, model in (("folded", folded), ("unfolded", unfolded)):
                    record = {"height": height, "width": width, "mask": mask_name, "setting": setting,
                              "model": model_name, "load_avg_1min": os.getloadavg()[0], "torch": torch.__version__,
                              "threads": torch.get_num_threads(), **count(model, images, **knobs)}
                    record["median_ms"] = median_ms(model, images, repeats, **knobs)
                    records.append(record)
                    print(f"{height}x{width} {mask_name} {setting} {model_name}: {record['ops']} ops, "
                          f"{record['syncs']} syncs, {record['median_ms']:.1f} ms", file=sys.stderr)
    return records


def table(records: list[dict]) -> str:
    lines = ["| size | mask | setting | model | aten ops (no views) | first call | sync ops | nodes per level | CPU ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['height']}x{r['width']} | {r['mask']} | {r['setting']} | {r['model']} | {r['ops']} | "
                     f"{r['ops_first_call']} | "
                     f"{r['syncs']} ({', '.join(f'{k} {v}' for k, v in r['sync_ops'].items())}) | "
                     f"{'/'.join(map(str, r['nodes_per_level']))} | {r['median_ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024", help=f"HxW list (multiples of {1 << DEPTH})")
    parser.add_argument("--masks", default="street,nuclei", help=f"subset of {','.join(MASKS)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed predictions per configuration")
    parser.add_argument("--out", default="runs/bench", help="folder of dispatch.json and dispatch.md")
    args = parser.parse_args(argv)
    records = measure(harness.parse_sizes(args.sizes, 1 << DEPTH), harness.parse_list(args.masks, MASKS, "--masks"),
                      args.repeats)
    body = table(records)
    print(body)
    out = Path(args.out)
    harness.write_json(out / "dispatch.json", records)
    command = harness.command_line("bench_dispatch.py", sys.argv[1:] if argv is None else argv)
    (out / "dispatch.md").write_text(f"Measured with `{command}` ({harness.environment(records)})\n\n{body}\n")
    print(f"wrote {out / 'dispatch.json'} and {out / 'dispatch.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
