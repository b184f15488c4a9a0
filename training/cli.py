"""The `qgn` command line: one subcommand per job (`qgn --help` lists them).

Also runnable as `python -m training.cli ...` (e.g. under torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def output_dir(out: str) -> Path:
    """`out` as a directory to write into (created); ValueError when it is an existing file."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is an existing file; name a directory to write the results into")
    path.mkdir(parents=True, exist_ok=True)
    return path


def unique_stems(paths: list[Path], out: Path) -> None:
    """ValueError when two inputs share a file stem: their outputs in `out` would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(f"{seen[path.stem]} and {path} share the name {path.stem!r}, so their outputs in {out} "
                             f"would overwrite each other; rename one, or run them with different --out folders")
        seen[path.stem] = path


def cmd_encode(args: argparse.Namespace) -> None:
    import quadtree as qt

    paths = [Path(p) for p in args.masks]
    unique_stems(paths, Path(args.out))
    out = output_dir(args.out)
    for path in paths:
        tree = qt.encode(qt.read_mask(path), args.depth, args.ignore_index)
        written = qt.save(tree, out / (path.stem + ".npz"))
        nodes = "/".join(str(level.num_nodes) for level in tree.levels)
        print(f"{path} -> {written} ({tree.num_nodes} nodes, per level {nodes})")


def cmd_decode(args: argparse.Namespace) -> None:
    import quadtree as qt

    paths = [Path(p) for p in args.trees]
    unique_stems(paths, Path(args.out))
    out = output_dir(args.out)
    for path in paths:
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


def run_config_from_args(args: argparse.Namespace):
    """defaults < --config FILE (or RUN_DIR/config.yaml with --resume) < flags given on the command line."""
    import yaml

    from qgn.config import QGNConfig
    from training.config import RunConfig
    from training.datasets import build_dataset, parse_label_map

    values: dict = {}
    config_file = Path(args.config) if args.config else None
    if config_file is None and args.resume and (Path(args.out) / "config.yaml").is_file():
        config_file = Path(args.out) / "config.yaml"
    if config_file is not None:
        RunConfig.load(config_file)  # validates the file; the merge below uses what it says, not the defaults
        values = yaml.safe_load(config_file.read_text()) or {}
    model, data = values.setdefault("model", {}) or {}, values.setdefault("data", {}) or {}
    train, loss = values.setdefault("train", {}) or {}, values.setdefault("loss", {}) or {}
    values.update(model=model, data=data, train=train, loss=loss)
    flags = {
        ("data", "dataset"): args.data, ("data", "val_dataset"): args.val_data,
        ("data", "val_fraction"): args.val_fraction,
        ("model", "num_classes"): args.num_classes, ("data", "num_classes"): args.num_classes,
        ("model", "model"): args.model, ("model", "encoder"): args.encoder,
        ("model", "backend"): args.backend, ("model", "in_channels"): args.in_channels,
        ("data", "in_channels"): args.in_channels,
        ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr,
        ("train", "max_steps"): args.max_steps, ("train", "device"): args.device, ("train", "seed"): args.seed,
        ("train", "num_workers"): args.workers, ("train", "optimizer"): args.optimizer,
        ("train", "schedule"): args.schedule, ("train", "checkpoint_every"): args.checkpoint_every,
        ("train", "amp"): args.amp, ("train", "tf32"): args.tf32, ("train", "deterministic"): args.deterministic,
        ("loss", "level_scale"): args.level_scale, ("train", "test"): False if args.no_test else None,
    }
    for (section, key), value in flags.items():
        if value is not None:
            values[section][key] = value
    if args.label_map is not None:
        data["label_map"] = parse_label_map(args.label_map)
    if args.no_progress:
        train["progress"] = False
    if args.depth is not None:
        model["depth"] = data["depth"] = args.depth
        defaults = QGNConfig.for_depth(args.depth, num_classes=1)
        for key in ("encoder_channels", "decoder_channels"):
            if key in model and len(model[key]) != len(getattr(defaults, key)):
                raise ValueError(f"--depth {args.depth} does not fit {key} {list(model[key])} of {config_file} (widths "
                                 f"for another depth): remove encoder_channels and decoder_channels from the file to "
                                 f"use the defaults of depth {args.depth}, or give {len(getattr(defaults, key))} "
                                 f"widths there")
            model.setdefault(key, list(getattr(defaults, key)))
    if args.crop is not None:
        data.setdefault("augment", {})["crop"] = args.crop
    if model.get("num_classes") is None:  # the data set's own count (synthetic presets, Cityscapes, ...)
        dataset = build_dataset(data.get("dataset", "synthetic"), "train", data.get("num_classes"),
                                val_fraction=data.get("val_fraction", 0.1))
        model["num_classes"] = dataset.num_classes
    if data.get("num_classes") is None:
        data["num_classes"] = model["num_classes"]
    return RunConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> None:
    from training.trainer import TrainingInterrupted, train

    config = run_config_from_args(args)
    try:
        result = train(config, args.out, resume=args.resume)
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(interrupted_line(stop, f"qgn train --out {args.out} --resume"), file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        steps = f"{result['step']} step" + ("s" if result["step"] != 1 else "")
        print(f"done: {args.out}/last.pt, best.pt, log.jsonl ({steps}, {result['seconds']:.1f} s of training); "
              f"{format_result(result)}")


def format_result(result: dict) -> str:
    """Last and best validation mIoU, and the test split's when there is one, in one line."""
    def miou(value):
        return "n/a" if value is None or value != value else f"{value:.4f}"

    line = (f"validation mIoU last {miou(result['miou'])}, best {miou(result['best_miou'])} "
            f"(epoch {result['best_epoch'] + 1})")
    if "test" in result:
        line += (f"; test mIoU last.pt {miou(result['test']['last']['miou'])}, best.pt "
                 f"{miou(result['test']['best']['miou'])}")
    return line


def interrupted_line(stop, resume_command: str) -> str:
    """The one line a Ctrl-C ends with: what was saved and how to go on."""
    if stop.checkpoint is None:
        return f"interrupted at step {stop.step}; nothing saved (stopped mid-step); the last checkpoint stands"
    return f"interrupted: saved {stop.checkpoint} at step {stop.step}; continue with: {resume_command}"


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from qgn.predictor import load_predictor
    from training.config import RunConfig
    from training.datasets import dataset_for
    from training.evaluate import evaluate_settings, format_table, plot_accuracy_vs_cost, sweep_settings
    from training.trainer import resolve_device

    device = resolve_device(args.device)
    predictor = load_predictor(args.checkpoint, device, args.amp)
    model = predictor.model
    config = RunConfig.from_dict(predictor.config)  # its data section holds the normalisation training resolved
    spec = args.data or config.data.val_dataset or config.data.dataset
    dataset = dataset_for(config.data, spec, args.split)
    if getattr(dataset, "split_note", None):
        print(f"evaluating {dataset.split_note}")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if args.max_depth is not None and not 0 <= args.max_depth <= model.config.depth:
        raise ValueError(f"--max-depth must be in 0..{model.config.depth} (the model's depth), got {args.max_depth}")
    settings = sweep_settings(model.config.depth, args.max_depth, thresholds=args.sweep)
    records = evaluate_settings(model, torch.utils.data.Subset(dataset, range(count)), settings, device,
                                config.data.ignore_index, getattr(dataset, "class_names", None), progress=True,
                                amp=args.amp)
    print(format_table(records))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=2))
        plot = path.with_suffix(".png")
        plot_accuracy_vs_cost(records, plot, f"{args.checkpoint} on {spec} ({count} images)")
        print(f"wrote {path} and {plot}")


def cmd_infer(args: argparse.Namespace) -> None:
    import quadtree as qt
    from qgn.predictor import load_predictor
    from training.datasets import read_image
    from training.trainer import resolve_device
    from training.visualize import save_label_png, save_overlay

    paths = [Path(p) for p in args.images]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}")
    unique_stems(paths, Path(args.out))
    predictor = load_predictor(args.checkpoint, resolve_device(args.device), args.amp)
    out = output_dir(args.out)
    knobs = dict(max_depth=args.max_depth, threshold=args.threshold, budget=args.budget)
    for index, path in enumerate(paths):
        raw = read_image(path).transpose(1, 2, 0)  # (H, W, C) as stored
        image = predictor.prepare(raw)
        if index == 0:
            predictor.predict_prepared(image, **knobs)  # warm-up: one-time start-up is not this image's cost
        prediction = predictor.predict_prepared(image, **knobs)
        labels = save_label_png(prediction.labels[0], out / f"{path.stem}_labels.png")
        single = prediction.tree.split()[0].to("cpu")
        tree = qt.save(single, out / f"{path.stem}_tree.npz")
        overlay = save_overlay(image[0].cpu(), single, out / f"{path.stem}_overlay.png")
        nodes = "/".join(map(str, prediction.nodes_per_level))
        print(f"{path} -> {labels.name}, {tree.name}, {overlay.name} (nodes per level {nodes}, "
              f"{prediction.macs / 1e9:.2f} GMACs, {1e3 * prediction.seconds:.0f} ms)")


def cmd_demo(args: argparse.Namespace) -> None:
    from training.demo import DemoConfig, run_demo
    from training.trainer import TrainingInterrupted

    try:
        report = run_demo(args.out, DemoConfig(steps=args.steps))
    except TrainingInterrupted as stop:
        print(interrupted_line(stop, f"qgn demo --out {args.out}"), file=sys.stderr)
        raise SystemExit(130) from None
    print(f"report: {report.resolve()}")


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


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def add_precision_flags(parser: argparse.ArgumentParser, default) -> None:
    """--amp and --tf32 (qgn.precision); `default` None leaves the run's config (train) in charge."""
    from qgn.precision import AMP_DTYPES

    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=default,
                        help="mixed precision: off (float32), fp16 (CUDA) or bf16" + (" (default off)" if default
                                                                                      is None else ""))
    parser.add_argument("--tf32", action="store_true", default=None if default is None else False,
                        help="let float32 convs and matmuls use TF32 on Ampere+ GPUs (otherwise IEEE float32)")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    from qgn.config import ENCODERS, MODELS, QGNConfig
    from sparse_ops.backend import BACKENDS
    from training.config import OPTIMIZERS, SCHEDULES, TrainConfig
    from training.datasets import DataConfig
    from training.loss import LossConfig

    model_d, data_d, train_d, loss_d = QGNConfig(), DataConfig(), TrainConfig(), LossConfig()
    try:
        release = version("qgn")
    except PackageNotFoundError:
        release = "unknown (not installed)"
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="qgn", description="Quadtree generating networks for segmentation.")
    parser.add_argument("--version", action="version", version=f"qgn {release}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    decode.add_argument("--format", choices=["png", "npy", "tif"], default="png", help="mask file format")
    decode.set_defaults(run=cmd_decode)

    stats = commands.add_parser("stats", help="node statistics of masks or trees", formatter_class=formatter)
    stats.add_argument("inputs", nargs="+", metavar="MASK_OR_TREE")
    stats.add_argument("--depth", type=int, help="quadtree depth for masks (trees carry their own)")
    stats.add_argument("--ignore-index", type=int, default=255, help="label of unsupervised pixels (masks)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.set_defaults(run=cmd_stats)

    # train: flags default to None (= the config file's value, else the dataclass default named in the help)
    train = commands.add_parser("train", help="train a QGN (or its dense twin); torchrun for several processes")
    add = train.add_argument
    add("--data", help=f"training data spec: synthetic[:OPTIONS], folder:PATH, cityscapes:PATH, ade20k:PATH, "
                       f"sunrgbd:PATH (default {data_d.dataset})")
    add("--val-data", help="validation data spec (default: --data, split val)")
    add("--val-fraction", type=float, help=f"folder: without split folders: share of the images held out for "
                                           f"validation (default {data_d.val_fraction})")
    add("--label-map", metavar="RAW:CLASS,...", help="map raw mask values to classes first, e.g. 255:1 for 0/255 "
                                                     "binary masks (default: none)")
    add("--num-classes", type=int, help="classes C (default: the data set's own count; required for folder:)")
    add("--depth", type=int, help=f"quadtree depth D: roots at stride 2**D (default {model_d.depth})")
    add("--epochs", type=int, help=f"passes over the training set (default {train_d.epochs})")
    add("--batch-size", type=int, help=f"images per step and process (default {train_d.batch_size})")
    add("--crop", type=int, help="square training crop, a multiple of 2**depth (default: whole images)")
    add("--model", choices=list(MODELS), help=f"sparse QGN or its dense twin (default {model_d.model})")
    add("--encoder", choices=list(ENCODERS), help=f"dense encoder (default {model_d.encoder})")
    add("--backend", choices=list(BACKENDS), help="sparse convs: auto = torch on CPU, spconv on CUDA "
                                                  f"(default {model_d.backend})")
    add("--in-channels", type=int, help=f"image channels; gray files are replicated (default {model_d.in_channels})")
    add("--lr", type=float, help=f"peak learning rate (default {train_d.lr})")
    add("--optimizer", choices=list(OPTIMIZERS), help=f"(default {train_d.optimizer})")
    add("--schedule", choices=list(SCHEDULES), help=f"learning-rate schedule after the warm-up "
                                                    f"(default {train_d.schedule})")
    add("--level-scale", type=float, help=f"s in the level weights s**(depth - l) (default {loss_d.level_scale})")
    add("--max-steps", type=int, help="stop after this many optimizer steps (default: epochs only)")
    add("--checkpoint-every", type=int, help="also write last.pt every N steps (default: at epoch ends)")
    add("--device", help=f"auto, cpu, cuda, cuda:N (default {train_d.device}: CUDA when available)")
    add_precision_flags(train, default=None)
    add("--deterministic", action="store_true", default=None,
        help="deterministic algorithms: bitwise-exact resume on CUDA too (slower; sparse convs run the torch backend "
             "there)")
    add("--workers", type=int, help=f"DataLoader workers per process (default {train_d.num_workers})")
    add("--seed", type=int, help=f"seed of the initialisation, data order and augmentation (default {train_d.seed})")
    add("--no-test", action="store_true", help="skip evaluating last.pt and best.pt on the test split at the end")
    add("--config", help="YAML file with sections model, data, loss, train (flags override it)")
    add("--out", required=True, metavar="RUN_DIR", help="folder of config.yaml, last.pt, best.pt, log.jsonl")
    add("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly where it stopped")
    add("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy and cost of a checkpoint at every depth (or one)",
                                   formatter_class=formatter)
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help="a last.pt or best.pt of qgn train")
    evaluate.add_argument("--data", help="data spec (default: the run's validation data)")
    evaluate.add_argument("--split", default="val", choices=["train", "val", "test"], help="split of the data")
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--max-depth", type=int, help="evaluate this depth only (default: every depth 0..D)")
    which.add_argument("--sweep", action="store_true", help="every depth plus MIXED thresholds 0.1..0.9")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only (default: all)")
    evaluate.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    add_precision_flags(evaluate, default="off")
    evaluate.add_argument("--json", metavar="OUT", help="write records here (and a PNG plot beside it)")
    evaluate.set_defaults(run=cmd_eval)

    infer = commands.add_parser("infer", help="label maps, predicted quadtrees and overlays for images",
                                formatter_class=formatter)
    infer.add_argument("images", nargs="+", metavar="IMAGE")
    infer.add_argument("--checkpoint", required=True, metavar="CKPT", help="a last.pt or best.pt of qgn train")
    infer.add_argument("--max-depth", type=int, help="deepest quadtree level to compute (default: full)")
    infer.add_argument("--threshold", type=float, help="expand a node when P(MIXED) >= this, 0..1 (default: when "
                                                        "MIXED is the most probable class)")
    infer.add_argument("--budget", type=int, help="at most this many expanded nodes per level (default: no limit)")
    infer.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    add_precision_flags(infer, default="off")
    infer.add_argument("--out", required=True, metavar="DIR", help="folder for <name>_labels.png, _tree.npz, "
                                                                   "_overlay.png")
    infer.set_defaults(run=cmd_infer)

    demo = commands.add_parser("demo", help="train on synthetic scenes, evaluate every depth, write a report",
                               formatter_class=formatter)
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="folder of the runs and report.md")
    demo.add_argument("--steps", type=int, default=250, help="training steps per model")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser("bench", help="cost of QGN vs its dense twin vs smp Unet (benchmarks/bench_qgn.py)",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of bench_qgn.py (--help lists them)")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every further argument (--help too) belongs to the benchmark script
        args = argparse.Namespace(command="bench", run=cmd_bench, bench_args=argv[1:])
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


if __name__ == "__main__":
    sys.exit(main())
