"""`qgn encode`, `qgn decode`, `qgn stats`: label masks <-> quadtree files, and node statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import quadtree as qt
from quadtree.mask_io import MASK_SUFFIXES
from qgn_cli.arguments import output_dir


def cmd_encode(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.masks]
    out = output_dir(args.out, paths)
    for path in paths:
        tree = qt.encode(qt.read_mask(path), args.depth, args.ignore_index)
        written = qt.save(tree, out / (path.stem + ".npz"))
        nodes = "/".join(str(level.num_nodes) for level in tree.levels)
        print(f"{path} -> {written} ({tree.num_nodes} nodes, per level {nodes})")


def cmd_decode(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.trees]
    out = output_dir(args.out, paths)
    for path in paths:
        mask = qt.decode(qt.load(path)).numpy()  # (B, H, W)
        if len(mask) > 1 and args.format == "png":  # a PNG holds one mask: one file per image
            written = [qt.write_mask(out / f"{path.stem}_{b}.png", m) for b, m in enumerate(mask)]
        else:  # one image: one (H, W) mask file; a batch: one (B, H, W) file
            written = [qt.write_mask(out / f"{path.stem}.{args.format}", mask[0] if len(mask) == 1 else mask)]
        print(f"{path} -> {', '.join(map(str, written))}")


def cmd_stats(args: argparse.Namespace) -> None:
    records = []
    for path in map(Path, args.inputs):
        if path.suffix.lower() == ".npz":
            tree = qt.load(path)
        else:
            if args.depth is None:
                raise ValueError(f"{path} is a mask: pass --depth D to choose the quadtree depth")
            tree = qt.encode(qt.read_mask(path), args.depth, args.ignore_index)
        stats = qt.tree_stats(tree)
        records.append({"input": str(path), **stats.as_dict()})
        if not args.json:
            print(qt.format_stats(stats, title=str(path)))
            print()
    if args.json:
        json.dump(records, sys.stdout, indent=2, default=int)  # numpy integers
        print()


def add_commands(commands) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    encode = commands.add_parser("encode", help="label masks (PNG, NPY, TIFF) -> quadtree .npz files",
                                 formatter_class=formatter)
    encode.add_argument("masks", nargs="+", metavar="MASK")
    encode.add_argument("--depth", type=int, required=True, help="levels below the root grid (root stride 2**D)")
    encode.add_argument("--ignore-index", type=int, default=255, help="label of unsupervised pixels")
    encode.add_argument("--out", required=True, metavar="DIR", help="folder for DIR/<mask name>.npz")
    encode.set_defaults(run=cmd_encode)

    decode = commands.add_parser("decode", help="quadtree .npz files -> label masks", formatter_class=formatter)
    decode.add_argument("trees", nargs="+", metavar="TREE")
    decode.add_argument("--out", required=True, metavar="DIR", help="folder for the masks")
    decode.add_argument("--format", choices=[suffix.lstrip(".") for suffix in MASK_SUFFIXES], default="png",
                        help="mask file format")
    decode.set_defaults(run=cmd_decode)

    stats = commands.add_parser("stats", help="node statistics of masks or trees", formatter_class=formatter)
    stats.add_argument("inputs", nargs="+", metavar="MASK_OR_TREE")
    stats.add_argument("--depth", type=int, help="quadtree depth for masks (trees carry their own)")
    stats.add_argument("--ignore-index", type=int, default=255, help="label of unsupervised pixels (masks)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.set_defaults(run=cmd_stats)
