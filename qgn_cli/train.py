"""`qgn train` (a run config from defaults, a YAML file and flags, then `training.trainer.train`) and `qgn demo`
(`training.demo`: train a QGN and its dense twin on synthetic scenes, evaluate them, write a report)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qgn_cli.arguments import add_precision_flags


def run_config_from_args(args: argparse.Namespace):
    """defaults < --config FILE (or RUN_DIR/config.yaml with --resume) < flags given on the command line."""
    import yaml

    from qgn.config import MODEL_SECTIONS, QGNConfig
    from training.config import RunConfig, move_data_fields
    from training.datasets import DataConfig, own_num_classes, parse_label_map

    values: dict = {}
    config_file = Path(args.config) if args.config else None
    if config_file is None and args.resume and (Path(args.out) / "config.yaml").is_file():
        config_file = Path(args.out) / "config.yaml"
    if config_file is not None:
        RunConfig.load(config_file)  # validates the file; the merge below uses what it says, not the defaults
        values = move_data_fields(yaml.safe_load(config_file.read_text()) or {})
    model, data, train, loss = (values.get(section) or {} for section in ("model", "data", "train", "loss"))
    values.update(model=model, data=data, train=train, loss=loss)
    flags = {
        ("data", "dataset"): args.data, ("data", "val_dataset"): args.val_data,
        ("data", "val_fraction"): args.val_fraction, ("model", "num_classes"): args.num_classes,
        ("model", "model"): args.model, ("model", "encoder"): args.encoder,
        ("model", "backend"): args.backend, ("model", "in_channels"): args.in_channels,
        ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr,
        ("train", "max_steps"): args.max_steps, ("train", "device"): args.device, ("train", "seed"): args.seed,
        ("train", "num_workers"): args.workers, ("train", "optimizer"): args.optimizer,
        ("train", "schedule"): args.schedule, ("train", "checkpoint_every"): args.checkpoint_every,
        ("train", "amp"): args.amp, ("train", "tf32"): args.tf32, ("train", "deterministic"): args.deterministic,
        ("loss", "level_scale"): args.level_scale, ("train", "test"): False if args.no_test else None,
        ("train", "progress"): False if args.no_progress else None,
    }
    for (section, key), value in flags.items():
        if value is not None:
            values[section][key] = value
    if args.label_map is not None:
        data["label_map"] = parse_label_map(args.label_map)
    if args.depth is not None:
        model["depth"] = args.depth
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
    sections = {"refine": {"base_checkpoint": args.base_checkpoint, "base_scale": args.base_scale, "tau": args.tau,
                           "refine_fraction": args.refine_fraction},
                "segblocks": {"block_size": args.block_size, "target": args.target,
                              "policy_gamma": args.policy_gamma, "policy_weight": args.policy_weight,
                              "policy_lr_scale": args.policy_lr_scale}}
    for name, flags_of_section in sections.items():
        given = {key: value for key, value in flags_of_section.items() if value is not None}
        if given:
            owner = MODEL_SECTIONS[name][0]
            if model.get("model") != owner:
                named = ", ".join("--" + key.replace("_", "-") for key in given)
                raise ValueError(f"{named} configure --model {owner}; this run's model is "
                                 f"{model.get('model', QGNConfig.model)!r}")
            model[name] = {**(model.get(name) or {}), **given}
    if args.refine_fraction is not None:
        model["refine"]["tau"] = None  # chosen on the validation images when training starts
    if args.base_checkpoint is not None:
        take_base_architecture(args.base_checkpoint, model, data)
    if model.get("num_classes") is None:  # the data set's own count (synthetic presets, Cityscapes, ...)
        model["num_classes"] = own_num_classes(data.get("dataset", DataConfig.dataset))
    return RunConfig.from_dict(values)


def take_base_architecture(path: str, model: dict, data: dict) -> None:
    """A SparseRefine run over the network of checkpoint `path`: its architecture (classes, depth, channels,
    widths, encoder, ignore label) and its normalisation become the run's; `model["refine"]["base_model"]` its kind.
    ValueError when the base is not a QGN or dense-twin checkpoint, or when a flag contradicts it."""
    from qgn.checkpoint import load_checkpoint
    from qgn.config import BASE_MODELS

    saved = load_checkpoint(path)["config"]
    base = dict(saved["model"])
    if base.get("model") not in BASE_MODELS:
        raise ValueError(f"--base-checkpoint {path} holds a {base.get('model')!r} model; a SparseRefine base is a "
                         f"checkpoint of {' or '.join(BASE_MODELS)}")
    for key, value in base.items():
        if key in ("model", "refine", "segblocks") or (key == "backend" and key in model):
            continue
        if model.get(key) not in (None, value) and key in ("num_classes", "in_channels", "depth", "encoder"):
            raise ValueError(f"the run sets {key} = {model[key]} but the base {path} has {value}: a SparseRefine run "
                             f"takes its base's {key}; drop the flag")
        model[key] = value
    model["refine"]["base_model"] = base["model"]
    normalize = saved.get("data", {}).get("normalize")
    if normalize and data.get("normalize", {}).get("mode", "auto") == "auto":
        data["normalize"] = normalize  # the base sees images as it was trained on them


def cmd_train(args: argparse.Namespace) -> None:
    from training.trainer import TrainingInterrupted, train

    config = run_config_from_args(args)
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        result = train(config, args.out, resume=args.resume)
    except TrainingInterrupted as stop:
        if main_process:
            print(interrupted_line(stop, f"qgn train --out {args.out} --resume"), file=sys.stderr)
        raise SystemExit(130) from None
    if main_process:
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
    from qgn.config import ENCODERS, MODELS, QGNConfig, RefineConfig, SegBlocksConfig
    from sparse_ops.backend import BACKENDS
    from training.config import OPTIMIZERS, SCHEDULES, TrainConfig
    from training.datasets import DATASETS, DataConfig
    from training.loss import LossConfig

    model_d, data_d, train_d, loss_d = QGNConfig(), DataConfig(), TrainConfig(), LossConfig()
    specs = ", ".join("synthetic[:OPTIONS]" if scheme == "synthetic" else f"{scheme}:PATH" for scheme in DATASETS)
    # flags default to None (= the config file's value, else the dataclass default named in the help)
    train = commands.add_parser("train", help="train a QGN, its dense twin, SparseRefine or SegBlocks; torchrun "
                                                "for several processes")
    add = train.add_argument
    add("--data", help=f"training data spec: {specs} (default {data_d.dataset})")
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
    add("--model", choices=list(MODELS), help=f"qgn (sparse quadtree decoder), dense (its dense twin), sparserefine "
                                              f"(a base refined at uncertain pixels), segblocks (blocks at two "
                                              f"resolutions) (default {model_d.model})")
    refine_d, blocks_d = RefineConfig(), SegBlocksConfig()
    add("--base-checkpoint", metavar="BASE.pt", help="sparserefine: the frozen base, a qgn or dense checkpoint of "
                                                     "this engine (its architecture and normalisation are taken)")
    add("--base-scale", type=float, help=f"sparserefine: the base runs on the image resized by this "
                                         f"(default {refine_d.base_scale})")
    refine_select = train.add_mutually_exclusive_group()
    refine_select.add_argument("--tau", type=float, help=f"sparserefine: refine where the base's entropy exceeds "
                                                         f"this (default {refine_d.tau})")
    refine_select.add_argument("--refine-fraction", type=float, help="sparserefine: choose tau on the validation "
                                                                     "images to refine this fraction of the pixels")
    add("--block-size", type=int, help=f"segblocks: block side in pixels, a multiple of 2**(depth+1) "
                                       f"(default {blocks_d.block_size})")
    add("--target", type=float, help=f"segblocks: fraction of high-resolution blocks the policy is trained toward "
                                     f"(default {blocks_d.target})")
    add("--policy-gamma", type=float, help=f"segblocks: weight of the compute term in the advantage "
                                           f"(default {blocks_d.policy_gamma}, the paper's; the official code: 1)")
    add("--policy-weight", type=float, help=f"segblocks: weight of the policy loss (default "
                                            f"{blocks_d.policy_weight}, the paper's; the official code: 1)")
    add("--policy-lr-scale", type=float, help=f"segblocks: the policy network's learning rate relative to --lr "
                                              f"(default {blocks_d.policy_lr_scale})")
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

    demo = commands.add_parser("demo", help="train on synthetic scenes, evaluate every depth, write a report",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="folder of the runs and report.md")
    demo.add_argument("--steps", type=int, default=250, help="training steps per model")
    demo.set_defaults(run=cmd_demo)
