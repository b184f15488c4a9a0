"""`qgn eval` and `qgn infer`: a checkpoint's accuracy and cost on a data set, and its predictions for images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qgn_cli.arguments import add_precision_flags, output_dir


def load_predictor_of(args: argparse.Namespace):
    from qgn.predictor import load_predictor
    from training.trainer import resolve_device

    return load_predictor(args.checkpoint, resolve_device(args.device), args.amp)


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from qgn.evaluate import evaluate_settings, format_table, plot_accuracy_vs_cost, settings_for
    from training.config import RunConfig
    from training.datasets import dataset_for

    predictor = load_predictor_of(args)
    model = predictor.model
    config = RunConfig.from_dict(predictor.config)  # its data section holds the normalisation training resolved
    spec = args.data or config.data.val_dataset or config.data.dataset
    dataset = dataset_for(config.data, config.model, spec, args.split)
    if getattr(dataset, "split_note", None):
        print(f"evaluating {dataset.split_note}")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if args.max_depth is not None and model.config.model in ("qgn", "dense") and \
            not 0 <= args.max_depth <= model.config.depth:
        raise ValueError(f"--max-depth must be in 0..{model.config.depth} (the model's depth), got {args.max_depth}")
    settings = settings_for(model, args.max_depth, sweep=args.sweep)
    records = evaluate_settings(model, torch.utils.data.Subset(dataset, range(count)), settings, predictor.device,
                                getattr(dataset, "class_names", None), progress=True, amp=args.amp)
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
    from qgn.cost import prediction_macs, stopwatch
    from qgn.registry import PREDICT_KNOBS, check_knobs
    from qgn.visualize import save_fine_overlay, save_label_png, save_overlay
    from training.datasets import read_image

    paths = [Path(p) for p in args.images]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}")
    predictor = load_predictor_of(args)
    kind = predictor.model.config.model
    knobs = {k: getattr(args, k) for k in {k for names in PREDICT_KNOBS.values() for k in names}
             if getattr(args, k, None) is not None}
    check_knobs(kind, knobs)
    if knobs.get("policy") == "static" and "scale" not in knobs:
        raise ValueError("--policy static runs the whole image at one scale: pass --scale S (e.g. 0.5)")
    out = output_dir(args.out, paths)
    for index, path in enumerate(paths):
        image = predictor.prepare(read_image(path).transpose(1, 2, 0))  # read as (C, H, W), given as stored (H, W, C)
        if index == 0:
            predictor.predict_prepared(image, **knobs)  # warm-up: one-time start-up is not this image's cost
        with stopwatch(predictor.device) as clock:
            prediction = predictor.predict_prepared(image, **knobs)
        macs = prediction_macs(predictor.model, tuple(image.shape), prediction)
        labels = save_label_png(prediction.labels[0], out / f"{path.stem}_labels.png")
        written = [labels.name]
        if prediction.tree is not None:  # QGN and the dense twin: the predicted quadtree
            single = prediction.tree.split()[0].to("cpu")
            written.append(qt.save(single, out / f"{path.stem}_tree.npz").name)
            written.append(save_overlay(image[0].cpu(), single, out / f"{path.stem}_overlay.png").name)
            computed = "nodes per level " + "/".join(map(str, prediction.nodes_per_level))
        else:  # SparseRefine, SegBlocks: where they computed at full resolution
            written.append(save_fine_overlay(image[0].cpu(), prediction.labels[0], prediction.fine[0],
                                             out / f"{path.stem}_overlay.png").name)
            computed = (f"{100 * prediction.stats['refined_fraction']:.1f}% of the pixels refined"
                        if kind == "sparserefine" else
                        f"{100 * prediction.stats['high_res_fraction']:.0f}% of the blocks at high resolution")
        print(f"{path} -> {', '.join(written)} ({computed}, {macs / 1e9:.2f} GMACs, "
              f"{1e3 * clock['seconds']:.0f} ms)")


def add_commands(commands) -> None:
    from training.datasets import SPLITS

    formatter = argparse.ArgumentDefaultsHelpFormatter
    evaluate = commands.add_parser("eval", help="accuracy and cost of a checkpoint at its settings (every depth, "
                                               "refined fractions, policies)",
                                   formatter_class=formatter)
    infer = commands.add_parser("infer", help="label maps, predicted quadtrees and overlays for images",
                                formatter_class=formatter)
    infer.add_argument("images", nargs="+", metavar="IMAGE")
    for parser in (evaluate, infer):
        parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a last.pt or best.pt of qgn train")
        parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
        add_precision_flags(parser, default="off")

    evaluate.add_argument("--data", help="data spec (default: the run's validation data)")
    evaluate.add_argument("--split", default="val", choices=list(SPLITS), help="split of the data")
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--max-depth", type=int, help="evaluate this depth only (default: every depth 0..D)")
    which.add_argument("--sweep", action="store_true", help="more settings: qgn, dense: every depth plus MIXED "
                                                            "thresholds 0.1..0.9; sparserefine: refined fractions "
                                                            "and taus; segblocks: all-high, all-low, oracle, static "
                                                            "and budgets")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only (default: all)")
    evaluate.add_argument("--json", metavar="OUT", help="write records here (and a PNG plot beside it)")
    evaluate.set_defaults(run=cmd_eval)

    infer.add_argument("--max-depth", type=int, help="qgn, dense: deepest quadtree level to compute (default: full)")
    infer.add_argument("--threshold", type=float, help="qgn, dense: expand a node when P(MIXED) >= this, 0..1 "
                                                        "(default: when MIXED is the most probable class)")
    infer.add_argument("--budget", type=int, help="qgn, dense: at most this many expanded nodes per level; "
                                                  "sparserefine: at most this many refined pixels per image "
                                                  "(default: no limit)")
    infer.add_argument("--tau", type=float, help="sparserefine: refine where the base's entropy exceeds this "
                                                 "(default: the run's tau)")
    infer.add_argument("--fraction", type=float, help="sparserefine: refine this fraction of the pixels; segblocks: "
                                                      "run this fraction of the blocks at high resolution")
    infer.add_argument("--policy", choices=["learned", "high", "low", "static"],
                       help="segblocks: which blocks run at high resolution (default learned; static needs --scale)")
    infer.add_argument("--scale", type=float, help="segblocks --policy static: the whole image at this scale")
    infer.add_argument("--out", required=True, metavar="DIR", help="folder for <name>_labels.png, _overlay.png "
                                                                   "(and _tree.npz of a qgn or dense model)")
    infer.set_defaults(run=cmd_infer)
