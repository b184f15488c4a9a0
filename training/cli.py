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


def run_config_from_args(args: argparse.Namespace):
    """defaults < --config FILE (or RUN_DIR/config.yaml with --resume) < flags given on the command line."""
    from qgn.config import QGNConfig
    from training.config import RunConfig
    from training.datasets import build_dataset

    values: dict = {}
    config_file = Path(args.config) if args.config else None
    if config_file is None and args.resume and (Path(args.out) / "config.yaml").is_file():
        config_file = Path(args.out) / "config.yaml"
    if config_file is not None:
        values = RunConfig.load(config_file).as_dict()
    model, data = values.setdefault("model", {}), values.setdefault("data", {})
    train, loss = values.setdefault("train", {}), values.setdefault("loss", {})
    flags = {
        ("data", "dataset"): args.data, ("data", "val_dataset"): args.val_data,
        ("model", "num_classes"): args.num_classes, ("model", "model"): args.model, ("model", "encoder"): args.encoder,
        ("model", "backend"): args.backend, ("model", "in_channels"): args.in_channels,
        ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr,
        ("train", "max_steps"): args.max_steps, ("train", "device"): args.device, ("train", "seed"): args.seed,
        ("train", "num_workers"): args.workers, ("train", "optimizer"): args.optimizer,
        ("train", "schedule"): args.schedule, ("train", "checkpoint_every"): args.checkpoint_every,
        ("train", "amp"): args.amp, ("train", "tf32"): args.tf32, ("train", "deterministic"): args.deterministic,
        ("loss", "level_scale"): args.level_scale,
    }
    sections = {"model": model, "data": data, "train": train, "loss": loss}
    for (section, key), value in flags.items():
        if value is not None:
            sections[section][key] = value
    if args.no_progress:
        train["progress"] = False
    if args.in_channels is not None:
        data["in_channels"] = args.in_channels
    if args.depth is not None:
        model["depth"] = data["depth"] = args.depth
        if "decoder_channels" not in model:
            defaults = QGNConfig.for_depth(args.depth, num_classes=1)
            model["encoder_channels"] = list(defaults.encoder_channels)
            model["decoder_channels"] = list(defaults.decoder_channels)
    if args.crop is not None:
        data.setdefault("augment", {})["crop"] = args.crop
    if "num_classes" not in model:
        dataset = build_dataset(data.get("dataset", "synthetic"), "train", data.get("num_classes"))
        model["num_classes"] = dataset.num_classes
    data.setdefault("num_classes", model["num_classes"])
    return RunConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> None:
    from training.trainer import train

    config = run_config_from_args(args)
    summary = train(config, args.out, resume=args.resume)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"done: {args.out}/last.pt, best.pt, log.jsonl; last validation mIoU {summary.get('miou', float('nan')):.4f}")


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from training.config import RunConfig
    from training.datasets import build_dataset
    from training.evaluate import evaluate_settings, format_table, plot_accuracy_vs_cost, sweep_settings
    from training.trainer import load_checkpoint, load_model, resolve_device

    from qgn.precision import check_amp, set_fp32_math

    device = resolve_device(args.device)
    check_amp(args.amp, device)
    set_fp32_math(args.tf32)
    model = load_model(args.checkpoint, device)
    config = RunConfig.from_dict(load_checkpoint(args.checkpoint)["config"])
    spec = args.data or config.data.val_dataset or config.data.dataset
    dataset = build_dataset(spec, args.split, model.config.num_classes, ignore_index=config.data.ignore_index,
                            normalize=config.data.normalize, in_channels=model.config.in_channels)
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
    import torch

    import quadtree as qt
    from training.config import RunConfig
    from training.datasets import match_channels, read_image
    from training.trainer import load_checkpoint, load_model, resolve_device
    from training.transforms import normalize_image
    from training.visualize import save_label_png, save_overlay

    from qgn.precision import autocast, check_amp, set_fp32_math

    device = resolve_device(args.device)
    check_amp(args.amp, device)
    set_fp32_math(args.tf32)
    model = load_model(args.checkpoint, device)
    normalize = RunConfig.from_dict(load_checkpoint(args.checkpoint)["config"]).data.normalize
    out = Path(args.out)
    for path in map(Path, args.images):
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}")
        raw = match_channels(read_image(path), model.config.in_channels, path)
        image = torch.from_numpy(normalize_image(raw, normalize))
        with autocast(args.amp, device):
            prediction = model.predict(image[None].to(device), max_depth=args.max_depth, threshold=args.threshold,
                                       budget=args.budget)
        labels = save_label_png(prediction.labels[0], out / f"{path.stem}_labels.png")
        single = prediction.tree.split()[0].to("cpu")
        tree = qt.save(single, out / f"{path.stem}_tree.npz")
        overlay = save_overlay(image, single, out / f"{path.stem}_overlay.png")
        nodes = "/".join(map(str, prediction.nodes_per_level))
        print(f"{path} -> {labels.name}, {tree.name}, {overlay.name} (nodes per level {nodes}, "
              f"{prediction.macs / 1e9:.2f} GMACs, {1e3 * prediction.seconds:.0f} ms)")


def cmd_demo(args: argparse.Namespace) -> None:
    from training.demo import DemoConfig, run_demo

    cfg = DemoConfig() if args.steps is None else DemoConfig(steps=args.steps)
    report = run_demo(args.out, cfg)
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
                        help="mixed precision: off (float32, the default), fp16 (CUDA) or bf16")
    parser.add_argument("--tf32", action="store_true", default=None if default is None else False,
                        help="let float32 convs and matmuls use TF32 on Ampere+ GPUs (default: IEEE float32)")


def build_parser() -> argparse.ArgumentParser:
    from sparse_ops.backend import BACKENDS

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

    train = commands.add_parser("train", help="train a QGN (or its dense twin); torchrun for several processes")
    train.add_argument("--data", help="training data spec: synthetic[:OPTIONS], folder:PATH, cityscapes:PATH, "
                                      "ade20k:PATH, sunrgbd:PATH (default synthetic)")
    train.add_argument("--val-data", help="validation spec (default: --data, split val)")
    train.add_argument("--num-classes", type=int, help="classes C (default: the data set's own count)")
    train.add_argument("--depth", type=int, help="quadtree depth D (default 5)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--crop", type=int, help="square training crop, a multiple of 2**depth")
    train.add_argument("--model", choices=["qgn", "dense"])
    train.add_argument("--encoder", choices=["resnet", "efficientnet_lite0"])
    train.add_argument("--backend", choices=list(BACKENDS),
                       help="sparse convs: auto (default: torch on CPU, spconv on CUDA), spconv or torch")
    train.add_argument("--in-channels", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--optimizer", choices=["adamw", "sgd"])
    train.add_argument("--schedule", choices=["poly", "cosine", "constant"])
    train.add_argument("--level-scale", type=float, help="s in the level weights s**(depth - l)")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--checkpoint-every", type=int, help="also write last.pt every N steps")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    add_precision_flags(train, default=None)
    train.add_argument("--deterministic", action="store_true", default=None,
                       help="deterministic algorithms: bitwise-exact resume on CUDA too (slower; sparse convs run the "
                            "torch backend there)")
    train.add_argument("--workers", type=int, help="DataLoader workers per process")
    train.add_argument("--seed", type=int)
    train.add_argument("--config", help="YAML file with sections model, data, loss, train (flags override it)")
    train.add_argument("--out", required=True, metavar="RUN_DIR")
    train.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly where it stopped")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy and cost of a checkpoint at every depth (or one)")
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT")
    evaluate.add_argument("--data", help="data spec (default: the run's validation data)")
    evaluate.add_argument("--split", default="val", choices=["train", "val", "test"])
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--max-depth", type=int, help="evaluate this depth only (default: every depth 0..D)")
    which.add_argument("--sweep", action="store_true", help="every depth plus MIXED thresholds 0.1..0.9")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only")
    evaluate.add_argument("--device", default="auto")
    add_precision_flags(evaluate, default="off")
    evaluate.add_argument("--json", metavar="OUT", help="write records here (and a PNG plot beside it)")
    evaluate.set_defaults(run=cmd_eval)

    infer = commands.add_parser("infer", help="label maps, predicted quadtrees and overlays for images")
    infer.add_argument("images", nargs="+", metavar="IMAGE")
    infer.add_argument("--checkpoint", required=True, metavar="CKPT")
    infer.add_argument("--max-depth", type=int, help="deepest quadtree level to compute (default: full)")
    infer.add_argument("--threshold", type=float, help="expand a node when P(MIXED) >= this")
    infer.add_argument("--budget", type=int, help="at most this many expanded nodes per level")
    infer.add_argument("--device", default="auto")
    add_precision_flags(infer, default="off")
    infer.add_argument("--out", required=True, metavar="DIR")
    infer.set_defaults(run=cmd_infer)

    demo = commands.add_parser("demo", help="train on synthetic scenes, evaluate every depth, write a report")
    demo.add_argument("--out", default="runs/demo", metavar="DIR")
    demo.add_argument("--steps", type=int, help="training steps per model (default 250)")
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
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"qgn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
