"""One configuration of the cost benchmarks: a network doing one step on one input, in this (fresh) process.

    python benchmarks/workloads.py SPEC_JSON    # what `run_all` starts; prints one record

Networks (`NETWORKS`, 19 classes, depth 5; a batch of `batch_size` copies of the input image, batch 1 unless
`--batch-sizes` says otherwise):
- "qgn": `qgn.build_model(QGNConfig(model="qgn"))`. Inference: `qgn.predict.predict(model, images, max_depth=k,
  oracle_tree=tree)` - an untrained model's tree is meaningless, so QGN expands the ground-truth tree of the mask
  (`tree_source: "oracle"`): the cost of a prediction whose tree matches the labels.
- "dense": its dense twin (`model="dense"`); inference `predict(model, images)` computes every cell of every level.
- "smp_unet": `smp.Unet("resnet18", encoder_weights=None, classes=19)`; inference: forward plus argmax.

Steps (`STEPS`): "inference" (eval mode, no autograd) and "train" (train mode: forward, loss, backward, the
optimizer step of `qgn train` (fused AdamW); `QuadtreeLoss` over the ground-truth tree for QGN and the dense twin,
as the trainer builds it, cross-entropy for the Unet). Both run
under the CLI's precision (`--amp`, `--tf32`: `qgn.precision`), QGN with the sparse backend "auto" unless
`--backend` says otherwise, and the library's OpenMP wait policy unless the environment or `--omp-wait-policy`
sets one. Before the measured work, one step on a small crop pays the lazy initialisations (kernels, thread pools,
autograd engine); a training step primes forward + backward without the optimizer step (AdamW's state is
allocated by the first measured step). Time and memory: `harness.measure`.

MACs per image of the forward pass (train records too), counted after the measured work: for QGN and the dense
twin `qgn.cost.prediction_macs` of the prediction (every nn.Conv2d of encoder and root by hooks, submanifold
convs at all k*k taps); for the Unet `conv2d_macs`, which counts every nn.Conv2d the same way (output elements x
C_in / groups x kh x kw).
"""

from __future__ import annotations

import quadtree as qt  # first, as users import the library: it sets the OpenMP wait policy before torch loads

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

import harness
from inputs import DEPTH, NUM_CLASSES, load_inputs
from qgn import QGNConfig, build_model
from qgn.cost import conv2d_macs as cost_conv2d_macs
from qgn.cost import quadtree_macs
from qgn.precision import AMP_DTYPES, autocast, grad_scaler, set_fp32_math
from qgn.predict import predict
from sparse_ops import BACKENDS, spconv_available
from training.config import RunConfig, TrainConfig
from training.loss import QuadtreeLoss, build_criterion
from training.trainer import build_optimizer


class QuadtreeNetwork:
    """QGN ("qgn") or its dense twin ("dense")."""

    def __init__(self, kind: str):
        self.kind = kind
        self.tree_source = "oracle" if kind == "qgn" else None

    def build(self, seed: int, backend: str) -> nn.Module:
        if self.kind == "qgn":
            spconv_available()  # its lazy import (seconds, ~100 MB of libraries) is not part of the measured work
        torch.manual_seed(seed)
        return build_model(QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH, model=self.kind, backend=backend))

    def infer(self, model, images, tree, depth) -> list[int]:
        if self.kind == "qgn":
            return predict(model, images, max_depth=depth, oracle_tree=tree).nodes_per_level
        return predict(model, images).nodes_per_level

    def loss(self, model, images, masks, tree, criterion: QuadtreeLoss):
        out = model(images, tree)
        return criterion(out.level_logits, tree, out.full_logits, masks)["loss"]

    def forward_cost(self, model, images, tree, depth) -> tuple[int, list[int]]:
        """(MACs, nodes per level) of the inference at `depth`."""
        nodes_per_level = list(self.infer(model.eval(), images, tree, depth))
        # the images are multiples of 2**depth (harness.parse_sizes): their padded shape is their shape
        return quadtree_macs(model, tuple(images.shape), nodes_per_level), nodes_per_level


class UnetNetwork:
    """segmentation_models_pytorch's Unet with a resnet18 encoder, untrained (the peer)."""

    tree_source = None

    def build(self, seed: int, backend: str) -> nn.Module:
        smp = import_smp()
        if smp is None:
            raise RuntimeError("segmentation_models_pytorch is not installed (pip install -e \".[bench]\")")
        torch.manual_seed(seed)
        return smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)

    def infer(self, model, images, tree, depth) -> None:
        model(images).argmax(1)

    def loss(self, model, images, masks, tree, criterion):
        return nn.functional.cross_entropy(model(images), masks, ignore_index=255)

    def forward_cost(self, model, images, tree, depth) -> tuple[int, None]:
        return conv2d_macs(model, images), None


NETWORKS = {"qgn": QuadtreeNetwork("qgn"), "dense": QuadtreeNetwork("dense"), "smp_unet": UnetNetwork()}
"""`--models` name -> what the suite runs of that network."""


def conv2d_macs(model: nn.Module, images: torch.Tensor) -> int:
    """MACs of one forward pass in eval mode, counted as QGN's dense part is (`qgn.cost.conv2d_macs`)."""
    model.eval()
    with torch.no_grad():
        return cost_conv2d_macs(model, lambda: model(images))


_TORCHVISION_SHIM = []


def import_smp():
    """Import segmentation_models_pytorch; None when it is not installed. PyPI's torchvision wheels link the CUDA
    build of torch; with the CPU build their C ops do not load and `import torchvision` fails registering fake
    kernels for the two ops it does not guard (nms, qnms). The models need none of its C ops, so on that failure
    the two op schemas are declared and the import retried."""
    try:
        import segmentation_models_pytorch as smp

        return smp
    except ImportError:
        return None
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [n for n in sys.modules if n.startswith(("torchvision", "segmentation_models_pytorch", "timm"))]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM.append(lib)  # keep the library object (and its definitions) alive
    import segmentation_models_pytorch as smp

    return smp


class InferenceStep:
    """One inference in eval mode without autograd."""

    def __init__(self, network, model: nn.Module, depth: int | None, device: torch.device, amp: str):
        self.network, self.model, self.depth, self.device, self.amp = network, model.eval(), depth, device, amp

    def __call__(self, images, masks, tree) -> None:
        with torch.no_grad(), autocast(self.amp, self.device):
            self.network.infer(self.model, images, tree, self.depth)

    prime = __call__


class TrainStep:
    """One training step in train mode: forward and loss under autocast, backward (scaled under fp16), and the
    optimizer `qgn train` builds (`training.trainer.build_optimizer`: AdamW, fused); QGN's and the dense twin's loss
    as the trainer builds it (`build_criterion`: no per-step label check)."""

    def __init__(self, network, model: nn.Module, depth: int | None, device: torch.device, amp: str):
        self.network, self.model, self.device, self.amp = network, model.train(), device, amp
        run = RunConfig(model=QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH), train=TrainConfig(lr=1e-4))
        self.optimizer = build_optimizer(model, run.train)
        self.criterion = build_criterion(run).to(device)
        self.scaler = grad_scaler(amp, device)

    def __call__(self, images, masks, tree, update: bool = True) -> float:
        with autocast(self.amp, self.device):
            loss = self.network.loss(self.model, images, masks, tree, self.criterion)
        self.scaler.scale(loss).backward()
        if update:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    def prime(self, images, masks, tree) -> None:
        self(images, masks, tree, update=False)


STEPS = {"inference": InferenceStep, "train": TrainStep}
"""`--modes` name -> the step a configuration measures."""


def run_configuration(spec: dict) -> dict:
    """Build, prime, measure and count one configuration (a spec of `make_spec`) in this process; its record."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    network = NETWORKS[spec["model"]]
    amp, depth = spec["amp"], spec["depth"]
    set_fp32_math(spec["tf32"])
    images, masks = load_inputs(spec["inputs"], device)
    batch = spec["batch_size"]
    images, masks = images.expand(batch, -1, -1, -1).contiguous(), masks.expand(batch, -1, -1).contiguous()
    tree = qt.encode(masks, DEPTH)
    model = network.build(spec["seed"], spec["backend"]).to(device)
    step = STEPS[spec["mode"]](network, model, depth, device, amp)

    cell = 1 << DEPTH
    crop_h, crop_w = min(images.shape[2], 4 * cell), min(images.shape[3], 8 * cell)
    crop_images, crop_masks = images[:, :, :crop_h, :crop_w].contiguous(), masks[:, :crop_h, :crop_w].contiguous()
    step.prime(crop_images, crop_masks, qt.encode(crop_masks, DEPTH))
    del crop_images, crop_masks

    measured = harness.measure(lambda: step(images, masks, tree), spec["warmup"], spec["repeats"], device)
    with torch.no_grad():  # after the memory was read, not timed
        macs, nodes_per_level = network.forward_cost(model, images, tree, depth)

    load_avg = measured.pop("load_avg_1min")
    return {"model": spec["model"], "mode": spec["mode"], "height": int(images.shape[2]),
            "width": int(images.shape[3]), "depth": depth, "mask": spec["mask"], "batch_size": batch,
            "images_per_s": round(1e3 * batch / measured["median_ms"], 3), "num_classes": NUM_CLASSES, **measured, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "macs": int(macs) // batch, "nodes_per_level": nodes_per_level, "tree_source": network.tree_source,
            "params": sum(p.numel() for p in model.parameters()), "device": str(device), "amp": amp,
            "tf32": spec["tf32"], "backend": spec["backend"], "threads": spec["threads"], "warmup": spec["warmup"],
            "repeats": spec["repeats"], "load_avg_1min": load_avg, "torch": torch.__version__, **spec["extra"]}


def make_spec(args: argparse.Namespace, model: str, mode: str, depth: int | None, mask: str, inputs: dict,
              extra: dict | None = None, batch_size: int = 1) -> dict:
    """The spec of one configuration: the measurement options of `args` (`parse_args`), the input
    file and tree summary of `inputs` (`inputs.save_inputs`), `extra` fields for the record."""
    big = batch_size * inputs["height"] * inputs["width"] >= 1024 * 2048
    repeats = args.repeats if args.repeats is not None else (3 if (big and (mode == "train" or model != "qgn")) else 5)
    return {"model": model, "mode": mode, "depth": depth, "mask": mask, "inputs": inputs["inputs"],
            "batch_size": batch_size,
            "height": inputs["height"], "width": inputs["width"],
            "warmup": args.warmup, "repeats": repeats, "threads": args.threads, "device": args.device,
            "amp": args.amp, "tf32": args.tf32, "backend": args.backend, "seed": args.seed,
            "omp_wait_policy": args.omp_wait_policy,
            "extra": {**{k: inputs[k] for k in ("active_fraction_per_level", "tree_nodes_per_level",
                                                "tree_mixed_per_level")}, **(extra or {})}}


def run_all(specs: list[dict], timeout: float, argv: list[str]) -> list[dict]:
    """`run_configuration` of each spec in a fresh process (`harness.run_isolated`): the records (or error
    records), each with the command line `argv`; a progress line per record on stderr."""
    records = []
    for spec in specs:
        identity = {k: spec[k] for k in ("model", "mode", "depth", "mask", "batch_size")}
        record = harness.run_isolated(Path(__file__).resolve(), spec, identity, timeout, spec["threads"],
                                      spec["omp_wait_policy"])
        record.setdefault("height", spec["height"])
        record.setdefault("width", spec["width"])
        record["argv"] = argv
        records.append(record)
        print(harness.progress(record), file=sys.stderr, flush=True)
    return records


def parse_args(parser: argparse.ArgumentParser, argv: list[str], stem: str, quick_sizes: str,
               quick_help: str) -> argparse.Namespace:
    """Add the options every cost benchmark shares to `parser` (which has --sizes), parse `argv` and check them.

    --json/--markdown/--plot default to OUT/<stem>.json|md|png; --quick means `quick_sizes` and one timed run.
    """
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per configuration (default 5; 3 for dense/Unet/train at >= 1024x2048)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES),
                        help="mixed precision as the CLI's --amp (qgn.precision): fp16 on CUDA, bf16 anywhere")
    parser.add_argument("--tf32", action="store_true", help="let float32 convs and matmuls use TF32 (CUDA)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="QGN's sparse conv backend (default auto: the device's measured default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--omp-wait-policy", default="", choices=("PASSIVE", "ACTIVE", ""),
                        help="OMP_WAIT_POLICY of the workers (default: the environment's, else the library's PASSIVE)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    outputs = (("json", "json"), ("markdown", "md"), ("plot", "png"))
    for name, suffix in outputs:
        parser.add_argument(f"--{name}", help=f"output file (default OUT/{stem}.{suffix})")
    parser.add_argument("--out", default="runs/bench", metavar="OUT",
                        help="folder of the outputs (default runs/bench; the committed figures README shows are in "
                             "benchmarks/results and change only when you pass --out benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the markdown and plot from the existing --json records")
    args = parser.parse_args(argv)
    for name, suffix in outputs:
        if getattr(args, name) is None:
            setattr(args, name, str(Path(args.out) / f"{stem}.{suffix}"))
    if args.quick:
        if "--sizes" not in argv:
            args.sizes = quick_sizes
        args.repeats = 1 if args.repeats is None else args.repeats
    args.sizes = harness.parse_sizes(args.sizes, 1 << DEPTH)
    if args.amp == "fp16" and args.device != "cuda":
        raise SystemExit("--amp fp16 needs --device cuda (CPUs have no fast float16 matmul); use --amp bf16 on CPU")
    if args.device == "cuda" and not args.render_only and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    return args


if __name__ == "__main__":
    harness.print_record(run_configuration(json.loads(sys.argv[1])))
