"""The `qgn` command line: one subcommand per job (`qgn --help` lists them), one module per concern: trees.py
(encode, decode, stats), train.py (train, demo), inference.py (eval, infer), bench.py, and arguments.py (what
several commands share). Also runnable as `python -m qgn_cli ...` (e.g. under torchrun)."""

from __future__ import annotations

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import os
import sys

from qgn_cli import bench, inference, train, trees


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("qgn")
    except PackageNotFoundError:
        release = "unknown (not installed)"
    parser = argparse.ArgumentParser(prog="qgn", description="Quadtree generating networks for segmentation.")
    parser.add_argument("--version", action="version", version=f"qgn {release}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (trees, train, inference, bench):
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every further argument (--help too) belongs to the benchmark script
        args = argparse.Namespace(command="bench", run=bench.cmd_bench, bench_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    from qgn.precision import fp32_math

    try:
        with fp32_math(bool(getattr(args, "tf32", False))):  # IEEE float32 unless --tf32 (train: its config's)
            args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"qgn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `qgn stats --json | head -1`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
