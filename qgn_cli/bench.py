"""`qgn bench`: benchmarks/bench_qgn.py of a source checkout, with every further argument; `qgn bench adaptive`:
benchmarks/bench_adaptive.py (QGN, SparseRefine and SegBlocks trained and compared on one cost axis)."""

from __future__ import annotations

import argparse
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH_SCRIPTS = {"cost": BENCHMARKS / "bench_qgn.py", "adaptive": BENCHMARKS / "bench_adaptive.py"}


def cmd_bench(args: argparse.Namespace) -> None:
    """Run benchmarks/bench_qgn.py (QGN vs its dense twin vs smp Unet), or with a first argument "adaptive"
    benchmarks/bench_adaptive.py, with the remaining arguments."""
    import runpy
    import sys

    bench_args = list(args.bench_args)
    script = BENCH_SCRIPTS["adaptive" if bench_args[:1] == ["adaptive"] else "cost"]
    bench_args = bench_args[1:] if bench_args[:1] == ["adaptive"] else bench_args
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: `qgn bench` runs the benchmark suite of a source "
                                f"checkout (pip install -e .)")
    if str(BENCHMARKS) not in sys.path:  # the scripts import their shared modules (harness, ...)
        sys.path.insert(0, str(BENCHMARKS))
    code = runpy.run_path(str(script), run_name="qgn_bench")["main"](bench_args)
    if code:
        raise SystemExit(code)


def add_commands(commands) -> None:
    bench = commands.add_parser("bench", help="cost of QGN vs its dense twin vs smp Unet (benchmarks/bench_qgn.py); "
                                              "`qgn bench adaptive`: QGN, SparseRefine and SegBlocks trained and "
                                              "compared (benchmarks/bench_adaptive.py)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of bench_qgn.py, or `adaptive` and "
                                                                    "those of bench_adaptive.py (--help lists them)")
    bench.set_defaults(run=cmd_bench)
