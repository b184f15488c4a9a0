"""The `qgn` command line: one subcommand per job (`qgn --help` lists them).

Also runnable as `python -m training.cli ...` (e.g. under torchrun).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def cmd_encode(args: argparse.Namespace) -> None:
    import quadtree as qt

    out = Path(args.out)
    for path in map(Path, args.masks):
        tree = qt.encode(qt.read_mask(path), args.depth, args.ignore_index)
        written = qt.save(tree, out / (path.stem + ".npz"))
        nodes = "/".join(str(level.num_nodes) for level in tree.levels)
        print(f"{path} -> {written} ({tree.num_nodes} nodes, per level {nodes})")


def cmd_decode(args: argparse.Namespace) -> None:
    import quadtree as qt

    out = Path(args.out)
    for path in map(Path, args.trees):
        mask = qt.decode(qt.load(path)).numpy()
        suffix = "." + args.format
        if suffix == ".png" and mask.ndim == 3:
            written = [qt.write_mask(out / f"{path.stem}_{b}.png", m) for b, m in enumerate(mask)]
        else:
            written = [qt.write_mask(out / (path.stem + suffix), mask)]
        print(f"{path} -> {', '.join(map(str, written))}")


def cmd_stats(args: argparse.Namespace) -> None:
    import quadtree as qt

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
        json.dump(records, sys.stdout, indent=2, default=_json_default)
        print()


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qgn", description="Quadtree generating networks for segmentation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    encode = commands.add_parser("encode", help="label masks (PNG, NPY, TIFF) -> quadtree .npz files")
    encode.add_argument("masks", nargs="+", metavar="MASK")
    encode.add_argument("--depth", type=int, required=True, help="levels below the root grid (root stride 2**D)")
    encode.add_argument("--ignore-index", type=int, default=255)
    encode.add_argument("--out", required=True, metavar="DIR")
    encode.set_defaults(run=cmd_encode)

    decode = commands.add_parser("decode", help="quadtree .npz files -> label masks")
    decode.add_argument("trees", nargs="+", metavar="TREE")
    decode.add_argument("--out", required=True, metavar="DIR")
    decode.add_argument("--format", choices=["png", "npy", "tif"], default="png")
    decode.set_defaults(run=cmd_decode)

    stats = commands.add_parser("stats", help="node statistics of masks or trees")
    stats.add_argument("inputs", nargs="+", metavar="MASK_OR_TREE")
    stats.add_argument("--depth", type=int, help="quadtree depth for masks (trees carry their own)")
    stats.add_argument("--ignore-index", type=int, default=255)
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.set_defaults(run=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"qgn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
