"""SegBlocks' real speed-up against its MAC count: the block network at several high-resolution fractions vs the
dense twin, same weights, inference as users run it (`load_predictor` folds batch norm), side by side in one run.

    python benchmarks/bench_blocks.py                                    # 512x1024 and 1024x2048, prints the table
    python benchmarks/bench_blocks.py --sizes 512x1024 --out benchmarks/results   # also writes blocks.{json,md}

The network: `QGNConfig()` defaults (depth 5, 3 channels, 19 classes) with 128-px blocks. The blocks a fraction f
runs at high resolution are a fixed random choice of round(f * blocks) (the speed does not depend on which).
Rounds are interleaved (dense, f = 1, 0.4, 0.2, 0, dense, ...) so that machine noise hits all alike; reported:
median latency, latency and MACs relative to the dense twin, and the time the BlockPad gathers and the per-group
convs add (all-high vs dense). The paper: a half-high-resolution residual block ran 1.92x faster against 2.3x in
theory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import harness

FRACTIONS = (1.0, 0.4, 0.2, 0.0)


def measure_size(height: int, width: int, rounds: int, block_size: int, device) -> list[dict]:
    import torch

    from qgn import QGNConfig, build_model
    from qgn.config import SegBlocksConfig
    from qgn.fold import fold_batch_norm
    from qgn.segblocks import dense_network_logits, network_macs

    torch.manual_seed(0)
    model = fold_batch_norm(build_model(QGNConfig(model="segblocks", segblocks=SegBlocksConfig(block_size))))
    model = model.to(device)
    images = torch.randn(1, 3, height, width, device=device)
    grid = (height // block_size, width // block_size)
    blocks = grid[0] * grid[1]
    order = torch.randperm(blocks, generator=torch.Generator().manual_seed(0))
    layouts = {}
    for fraction in FRACTIONS:
        high = torch.zeros(blocks, dtype=torch.bool)
        high[order[:round(fraction * blocks)]] = True
        layouts[fraction] = high.view(1, *grid).to(device)
    steps = {"dense": lambda: dense_network_logits(model.network, images)}
    steps.update({f: (lambda high=high: model.block_logits(images, high)) for f, high in layouts.items()})
    times = {name: [] for name in steps}
    with torch.no_grad():
        for step in steps.values():  # warm-up: allocations, gather plans of the first call
            step()
        for _ in range(rounds):
            for name, step in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(1e3 * (time.perf_counter() - start))
    full = network_macs(model.network, block_size, block_size)
    half = network_macs(model.network, block_size // 2, block_size // 2)
    dense_macs = network_macs(model.network, height, width)
    dense_ms = statistics.median(times["dense"])
    records = [{"height": height, "width": width, "block_size": block_size, "setting": "dense twin",
                "high_res_fraction": None, "median_ms": dense_ms, "times_ms": times["dense"], "macs": dense_macs}]
    for fraction in FRACTIONS:
        high = int(layouts[fraction].sum())
        macs = high * full + (blocks - high) * half
        records.append({"height": height, "width": width, "block_size": block_size,
                        "setting": f"segblocks, {high}/{blocks} blocks high", "high_res_fraction": high / blocks,
                        "median_ms": statistics.median(times[fraction]), "times_ms": times[fraction], "macs": macs})
    for r in records:
        r.update(time_vs_dense=r["median_ms"] / dense_ms, macs_vs_dense=r["macs"] / dense_macs,
                 device=str(device), rounds=rounds)
    return records


def table(records: list[dict]) -> str:
    lines = ["| size | setting | median ms | time / dense | MACs / dense | speed-up real / in MACs |",
             "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['height']}x{r['width']} | {r['setting']} | {r['median_ms']:.1f} | "
                     f"{r['time_vs_dense']:.2f} | {r['macs_vs_dense']:.2f} | {1 / r['time_vs_dense']:.2f}x / "
                     f"{1 / r['macs_vs_dense']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="image sizes HxW, multiples of --block-size")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (medians reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write blocks.json and blocks.md here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    records = []
    for height, width in harness.parse_sizes(args.sizes, args.block_size):
        records += measure_size(height, width, args.rounds, args.block_size, device)
    text = (f"Measured with `{harness.command_line('bench_blocks.py', argv)}` ({harness.environment(records)}; "
            f"device {device}, {torch.get_num_threads()} torch threads, batch 1, batch norm folded).\n\n"
            + table(records) + "\n")
    print(text)
    if args.out:
        harness.write_json(Path(args.out) / "blocks.json", records)
        (Path(args.out) / "blocks.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
