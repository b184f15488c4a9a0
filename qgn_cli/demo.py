"""`qgn demo`: train a small QGN and its dense twin on synthetic scenes, evaluate them, write a report
(training.demo)."""

from __future__ import annotations

import argparse
import sys

from qgn_cli.train import interrupted_line


def cmd_demo(args: argparse.Namespace) -> None:
    from training.demo import DemoConfig, run_demo
    from training.trainer import TrainingInterrupted

    try:
        report = run_demo(args.out, DemoConfig(steps=args.steps))
    except TrainingInterrupted as stop:
        print(interrupted_line(stop, f"qgn demo --out {args.out}"), file=sys.stderr)
        raise SystemExit(130) from None
    print(f"report: {report.resolve()}")


def add_commands(commands) -> None:
    demo = commands.add_parser("demo", help="train on synthetic scenes, evaluate every depth, write a report",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="folder of the runs and report.md")
    demo.add_argument("--steps", type=int, default=250, help="training steps per model")
    demo.set_defaults(run=cmd_demo)
