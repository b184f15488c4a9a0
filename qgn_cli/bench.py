"""`qgn bench`: benchmarks/bench_qgn.py of a source checkout, with every further argument."""

from __future__ import annotations

import argparse
from pathlib import Path

BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_qgn.py"


def cmd_bench(args: argparse.Namespace) -> None:
    """Run benchmarks/bench_qgn.py (QGN vs its dense twin vs smp Unet) with the remaining arguments."""
    import runpy

    if not BENCH_SCRIPT.is_file():
        raise FileNotFoundError(f"{BENCH_SCRIPT} not found: `qgn bench` runs the benchmark suite of a source "
                                f"checkout (pip install -e .)")
    code = runpy.run_path(str(BENCH_SCRIPT), run_name="qgn_bench")["main"](args.bench_args)
    if code:
        raise SystemExit(code)


def add_commands(commands) -> None:
    bench = commands.add_parser("bench", help="cost of QGN vs its dense twin vs smp Unet (benchmarks/bench_qgn.py)",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of bench_qgn.py (--help lists them)")
    bench.set_defaults(run=cmd_bench)
