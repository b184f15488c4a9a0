"""Encode/decode speed of the quadtree at 1024x2048, depth 5, against `mask.copy()` timed in the same run.

    python benchmarks/bench_quadtree.py [--repeats 30] [--json benchmarks/results/quadtree.json]

Masks: smooth street-like regions, many small objects, and the real nuclei mask (examples/) tiled.
Prints a table (median ms; ratio to a plain copy of the mask) and the nodes per level, and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import quadtree as qt
import harness
from harness import NUCLEI, ROOT


def street_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Large smooth regions of 8 classes: argmax of smoothly interpolated random fields."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(8, height // 64 + 1, width // 64 + 1))
    fields = np.stack([ndimage.zoom(c, 64, order=3)[:height, :width] for c in coarse])
    return fields.argmax(0).astype(np.uint8)


def small_objects(height: int, width: int, seed: int = 0, count: int = 3000) -> np.ndarray:
    """Background with `count` small discs (radius 2..8 px) of 10 classes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for cy, cx, r, c in zip(rng.integers(0, height, count), rng.integers(0, width, count),
                            rng.integers(2, 9, count), rng.integers(1, 11, count)):
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, height), max(cx - r, 0), min(cx + r + 1, width)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
    return mask


def nuclei_tiled(height: int, width: int) -> np.ndarray | None:
    if not NUCLEI.is_file():
        return None
    with np.load(NUCLEI) as data:
        tile = (data["instances"] % 20).astype(np.uint8)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]))
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quadtree.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    h, w = args.height, args.width
    masks = {"street_like": street_like(h, w), "small_objects": small_objects(h, w), "nuclei_tiled": nuclei_tiled(h, w)}
    records = []
    print(f"{h}x{w} uint8 masks, depth {args.depth}, {args.repeats} repeats, "
          f"{args.threads} threads; ratios are to mask.copy() timed in the same run")
    print("| mask | copy ms | encode ms | decode ms (uint8) | decode ms (int64) | encode/copy | decode/copy "
          "| nodes per level |")
    print("|---|---|---|---|---|---|---|---|")
    for name, mask in masks.items():
        if mask is None:
            print(f"| {name} | skipped: {NUCLEI} not found |")
            continue
        tree = qt.encode(mask, args.depth)
        assert np.array_equal(qt.decode(tree)[0].numpy(), mask)  # decode gives (B, H, W)
        copy_ms = median_ms(mask.copy, args.repeats)
        encode_ms = median_ms(lambda: qt.encode(mask, args.depth), args.repeats)
        decode_ms = median_ms(lambda: qt.decode(tree), args.repeats)
        decode64_ms = median_ms(lambda: qt.decode(tree, dtype=torch.int64), args.repeats)
        nodes = [level.num_nodes for level in tree.levels]
        fractions = [level.active_fraction for level in qt.tree_stats(tree).levels]
        records.append({"mask": name, "height": h, "width": w, "depth": args.depth, "copy_ms": copy_ms,
                        "encode_ms": encode_ms, "decode_uint8_ms": decode_ms, "decode_int64_ms": decode64_ms,
                        "encode_over_copy": encode_ms / copy_ms, "decode_over_copy": decode_ms / copy_ms,
                        "nodes_per_level": nodes, "active_fraction_per_level": fractions})
        print(f"| {name} | {copy_ms:.3f} | {encode_ms:.2f} | {decode_ms:.2f} | {decode64_ms:.2f} "
              f"| {encode_ms / copy_ms:.0f}x | {decode_ms / copy_ms:.0f}x | {'/'.join(map(str, nodes))} |")
    meta = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": args.threads, "repeats": args.repeats}
    harness.write_json(Path(args.json), {"meta": meta, "records": records}, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
