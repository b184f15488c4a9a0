"""Host overhead of a prediction and of a training step, counted on any machine: aten ops dispatched and ops that
force a host sync.

    python benchmarks/bench_dispatch.py [--sizes 512x1024] [--repeats 10] [--train-repeats 3] [--device cpu]
                                        [--out runs/bench]

On a GPU every aten op is one or more kernel launches and every sync-forcing op (nonzero, item, ...) stalls the
host until the GPU catches up, so these counts, taken on the CPU with a TorchDispatchMode, are device-independent
proxies of a GPU prediction's host time (issue 12: at most 150 ops, views excluded, and depth + 1 syncs per
full-depth predict at 512x1024). Inputs: the street scene and the nuclei image of benchmarks/inputs.py, depth 5,
19 classes, untrained weights, batch 1.

Predictions: for each input and setting - the oracle tree of the mask at full depth (a fixed, realistic number of
nodes; the decoder reads the children off the tree, with no host synchronisation), the same nodes found as a trained
model finds its own ("oracle's nodes, counted": a rule that marks the oracle's MIXED nodes, whose children the
decoder counts with one `nonzero` per level - what a trained QGN's prediction of that tree dispatches), and QGN's
own argmax rule (untrained weights: the fixed part, encoder, root and painting) - one `predict` of the network as
`load_predictor` runs it (batch norm folded,
`qgn.fold`), the same with the stem whole (what a GPU runs: the CPU runs the stem in stripes, for memory,
`ResNetEncoder.stripes_stem`), and unfolded; each is timed (median CPU wall time of `--repeats` calls after a
warm-up, side by side in one process). The counted predict is the second of its model and input (the steady state
of a predictor: what depends only on the weights or on the root grid is derived on the first call and kept,
`sparse_ops.inference_weights`); the first call's count is reported beside it. With `--device cuda` the networks
run on the GPU (same ops; the sparse convs on the device's default backend, spconv, whose own kernels are not aten
ops) and each timing adds the host's time per call, the GPU kernels' time and count, and the CUDA runtime calls
that made the host wait (torch.profiler) - issue 12's "host time per predict no more than GPU time".

Training steps: QGN and its dense twin, one step as `qgn train` runs it (train mode, forward on the ground-truth
tree, `QuadtreeLoss` as the trainer builds it, backward, the optimizer of `training.trainer.build_optimizer`),
counted per phase (the third step: the optimizer state exists) and timed (median of `--train-repeats` steps).

Prints tables; writes OUT/dispatch.{json,md}.
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
from qgn.cost import forces_host_sync
from qgn.fold import fold_batch_norm
from qgn.predict import predict, predict_by_rule
from training.config import RunConfig
from training.loss import build_criterion
from training.trainer import build_optimizer, model_losses

VIEW_OPS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "permute", "transpose", "t", "squeeze",
            "unsqueeze", "slice", "select", "as_strided", "alias", "detach", "unbind", "split", "split_with_sizes",
            "narrow", "flatten", "unflatten", "view_as", "diagonal", "unfold", "lift_fresh"}
"""Ops that only make a new view of existing memory: no kernel, not counted."""

class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the block, by name, and the ops other than views per `phase` (a name
    the caller sets as it goes), and those that force a host sync (`qgn.cost.forces_host_sync`)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.phase_ops = collections.Counter()
        self.syncs = collections.Counter()
        self.phase = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name not in VIEW_OPS:
            self.phase_ops[self.phase] += 1
        if forces_host_sync(func, args, kwargs or {}):
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))

    def kept(self) -> dict:
        """op name -> count, views excluded."""
        return {name: n for name, n in self.ops.items() if name not in VIEW_OPS}


def count_once(run) -> tuple[dict, dict, list[int]]:
    """(ops, sync ops, nodes per level) of one prediction `run()`: op name -> count, views excluded."""
    with OpCounter() as counter, torch.no_grad():
        prediction = run()
    return counter.kept(), dict(counter.syncs), prediction.nodes_per_level


def count(run) -> dict:
    """The counts of the second prediction (steady state), and the op count of the first."""
    first, _, _ = count_once(run)
    ops, syncs, nodes = count_once(run)
    return {"ops": sum(ops.values()), "syncs": sum(syncs.values()), "sync_ops": syncs,
            "ops_first_call": sum(first.values()), "top_ops": dict(collections.Counter(ops).most_common(12)),
            "nodes_per_level": nodes}


def timings(run, repeats: int, device: torch.device) -> dict:
    """Median milliseconds of `run()` after a warm-up: "median_ms" until its work is done (on CUDA: synchronised),
    and on CUDA "host_ms", until the call returns (the host's part: launching, and waiting where an op forces a
    sync), with `device_profile`'s figures of one more call."""
    cuda = device.type == "cuda"
    run()
    done, returned = [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        returned.append(time.perf_counter() - started)
        if cuda:
            torch.cuda.synchronize(device)
        done.append(time.perf_counter() - started)
    result = {"median_ms": 1e3 * statistics.median(done)}
    if cuda:
        result.update(host_ms=1e3 * statistics.median(returned), **device_profile(run, device))
    return result


CUDA_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
"""CUDA runtime calls that make the host wait for the device (cudaMemcpy: the synchronous copies; cudaMemcpyAsync
from pinned memory does not wait and is not counted)."""


def device_profile(run, device: torch.device) -> dict:
    """GPU time, kernels and host waits of one `run()` on CUDA, from torch.profiler: "gpu_ms", the kernels' and
    copies' device time summed; "kernels", their number; "cuda_syncs", the runtime calls that made the host wait
    for the device (CUDA_SYNC_CALLS)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    events = prof.events()
    # kernels and copies; not the device-side spans of user annotations (record_function ranges such as
    # "Optimizer.step#AdamW.step"), which torch's own tables leave out too
    on_device = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    waits = sorted((e for e in events if e.device_type == DeviceType.CPU and
                    any(e.name == call or e.name.startswith(call + "_") for call in CUDA_SYNC_CALLS)),
                   key=lambda e: e.time_range.start)
    if waits and waits[-1].name == "cudaDeviceSynchronize":
        waits = waits[:-1]  # the profile's own final synchronize, not the run's
    return {"gpu_ms": sum(e.time_range.elapsed_us() for e in on_device) / 1e3, "kernels": len(on_device),
            "cuda_syncs": len(waits)}


def settings(tree: qt.Quadtree) -> dict:
    """setting name -> predict(model, images) of that setting."""

    def oracle_mask(level, logits, grown):  # the oracle's MIXED nodes, found as a trained model finds its own
        return tree.levels[level].labels == qt.MIXED

    return {"oracle": lambda model, images: predict(model, images, oracle_tree=tree),
            "oracle's nodes, counted": lambda model, images: predict_by_rule(model, images, oracle_mask, DEPTH),
            "argmax": lambda model, images: predict(model, images)}


def measure(sizes, masks, repeats: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    unfolded = build_model(QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH)).to(device).eval()
    folded = fold_batch_norm(unfolded)
    stem_whole = fold_batch_norm(unfolded)
    stem_whole.encoder.stem_tile_rows = None
    models = (("folded", folded), ("folded, stem whole (GPU path)", stem_whole), ("unfolded", unfolded))
    records = []
    for height, width in sizes:
        for mask_name in masks:
            image, mask = MASKS[mask_name](height, width)
            images = image[None].to(device)
            tree = qt.encode(mask[None].to(device), DEPTH)
            for setting, run in settings(tree).items():
                for model_name, model in models:
                    record = {"height": height, "width": width, "mask": mask_name, "setting": setting,
                              "model": model_name, **environment(device), **count(lambda: run(model, images))}
                    with torch.no_grad():
                        record.update(timings(lambda: run(model, images), repeats, device))
                    records.append(record)
                    print(f"{height}x{width} {mask_name} {setting} {model_name}: {record['ops']} ops, "
                          f"{record['syncs']} syncs, {record['median_ms']:.1f} ms", file=sys.stderr)
    return records


def environment(device: torch.device) -> dict:
    return {"load_avg_1min": os.getloadavg()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


TRAIN_PHASES = ("forward", "loss", "backward", "optimizer")


def train_step(model, criterion, optimizer, images, masks, tree, counter: "OpCounter | None" = None) -> float:
    """One training step as `training.trainer.train_one_epoch` runs it (fp32); with `counter`, its ops are
    counted per phase (`counter.phase`). Returns the loss (the step's one host synchronisation, as the trainer's)."""

    def phase(name: str) -> None:
        if counter is not None:
            counter.phase = name

    phase("forward")
    output = model(images, tree)
    phase("loss")
    losses = model_losses(criterion, output, tree, masks)
    phase("backward")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    loss = float(losses["loss"].detach())  # read once the backward pass is queued, as the trainer does
    phase("optimizer")
    optimizer.step()
    return loss


def measure_training(sizes, masks, repeats: int, device: torch.device) -> list[dict]:
    records = []
    for height, width in sizes:
        for mask_name in masks:
            image, mask = MASKS[mask_name](height, width)
            images, masks_ = image[None].to(device), mask[None].long().to(device)
            tree = qt.encode(masks_, DEPTH)
            for kind in ("qgn", "dense"):
                torch.manual_seed(0)
                config = RunConfig(model=QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH, model=kind))
                model = build_model(config.model).to(device).train()
                criterion, optimizer = build_criterion(config).to(device), build_optimizer(model, config.train)
                train_step(model, criterion, optimizer, images, masks_, tree)  # the optimizer's state exists
                with OpCounter() as counter:
                    train_step(model, criterion, optimizer, images, masks_, tree, counter)
                record = {"height": height, "width": width, "mask": mask_name, "model": kind, **environment(device),
                          "ops": sum(counter.phase_ops[p] for p in TRAIN_PHASES),
                          "ops_per_phase": {p: counter.phase_ops[p] for p in TRAIN_PHASES},
                          "syncs": sum(counter.syncs.values()), "sync_ops": dict(counter.syncs),
                          "top_ops": dict(collections.Counter(counter.kept()).most_common(12)),
                          **timings(lambda: train_step(model, criterion, optimizer, images, masks_, tree), repeats,
                                    device)}
                records.append(record)
                print(f"{height}x{width} {mask_name} train {kind}: {record['ops']} ops, {record['syncs']} syncs, "
                      f"{record['median_ms']:.0f} ms", file=sys.stderr)
    return records


def table(records: list[dict]) -> str:
    lines = ["| size | mask | setting | model | aten ops (no views) | first call | sync ops | nodes per level | "
             f"{time_header(records)} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['height']}x{r['width']} | {r['mask']} | {r['setting']} | {r['model']} | {r['ops']} | "
                     f"{r['ops_first_call']} | {fmt_syncs(r)} | {'/'.join(map(str, r['nodes_per_level']))} | "
                     f"{fmt_times(r)} |")
    return "\n".join(lines)


def training_table(records: list[dict]) -> str:
    lines = ["| size | mask | network | aten ops (no views): " + " / ".join(TRAIN_PHASES) + " | all | sync ops | "
             f"{time_header(records)} |", "|---|---|---|---|---|---|---|"]
    for r in records:
        phases = " / ".join(str(r["ops_per_phase"][p]) for p in TRAIN_PHASES)
        lines.append(f"| {r['height']}x{r['width']} | {r['mask']} | {r['model']} | {phases} | {r['ops']} | "
                     f"{fmt_syncs(r)} | {fmt_times(r)} |")
    return "\n".join(lines)


def time_header(records: list[dict]) -> str:
    if records and "gpu_ms" in records[0]:
        return "ms (done / host / GPU kernels), kernels, CUDA syncs"
    return "CPU ms"


def fmt_times(r: dict) -> str:
    if "gpu_ms" in r:
        return (f"{r['median_ms']:.2f} / {r['host_ms']:.2f} / {r['gpu_ms']:.2f}, {r['kernels']} kernels, "
                f"{r['cuda_syncs']} syncs")
    return f"{r['median_ms']:.1f}"


def fmt_syncs(r: dict) -> str:
    return f"{r['syncs']} ({', '.join(f'{k} {v}' for k, v in r['sync_ops'].items())})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024", help=f"HxW list (multiples of {1 << DEPTH})")
    parser.add_argument("--masks", default="street,nuclei", help=f"subset of {','.join(MASKS)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed predictions per configuration")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps per network")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the networks run (the counts are the same ops); cuda adds host time, GPU kernel "
                             "time, kernels and CUDA syncs per call (torch.profiler)")
    parser.add_argument("--out", default="runs/bench", help="folder of dispatch.json and dispatch.md")
    args = parser.parse_args(argv)
    sizes, masks = harness.parse_sizes(args.sizes, 1 << DEPTH), harness.parse_list(args.masks, MASKS, "--masks")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    device = torch.device(args.device)
    records = measure(sizes, masks, args.repeats, device)
    training = measure_training(sizes, masks, args.train_repeats, device)
    body = f"Predictions:\n\n{table(records)}\n\nTraining steps:\n\n{training_table(training)}"
    print(body)
    out = Path(args.out)
    harness.write_json(out / "dispatch.json", {"predict": records, "train": training})
    command = harness.command_line("bench_dispatch.py", sys.argv[1:] if argv is None else argv)
    (out / "dispatch.md").write_text(f"Measured with `{command}` ({harness.environment(records)})\n\n{body}\n")
    print(f"wrote {out / 'dispatch.json'} and {out / 'dispatch.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
