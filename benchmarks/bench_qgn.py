"""Cost of QGN against its dense twin and a segmentation_models_pytorch Unet (resnet18), side by side.

    python benchmarks/bench_qgn.py                       # the full suite (also `qgn bench`)
    python benchmarks/bench_qgn.py --quick               # small sizes, one repeat: a smoke test
    python benchmarks/bench_qgn.py --sweep-density --skip-suite   # only the boundary-density sweep

What is measured, per configuration (model x mode x image size x mask x depth), each in a fresh subprocess:

- inference: `model.predict(images, max_depth=k, oracle_tree=tree)` for QGN at every depth k (the tree of an
  untrained model is meaningless, so QGN expands the ground-truth tree of the mask: `tree_source: "oracle"`);
  `model.predict(images)` for the dense twin (every cell of every level); `smp.Unet("resnet18",
  encoder_weights=None, classes=19)` forward under `torch.no_grad()` plus the argmax, in eval mode.
- train: one step, forward + loss + backward + AdamW step (QuadtreeLoss over the ground-truth tree for QGN and
  the dense twin, cross-entropy for the Unet), in train mode.
- median wall time of `--repeats` runs after `--warmup` runs; MACs per image (convolutions and linear layers,
  submanifold convs counted at all k*k taps: `Prediction.macs`; the Unet's with the same nn.Conv2d counter,
  `qgn.predict.count_dense_conv_macs`; forward MACs also for train records).
- memory. CPU: `peak_memory_mb` = peak RSS growth during the measured work = peak RSS at the end minus the
  RSS right before the measured work starts (after imports, model construction, input loading and a small
  priming pass that pays the one-off lazy initialisations). The kernel's peak-RSS counter is reset there
  through /proc/self/clear_refs (`peak_reset`) and read as VmHWM, the address space's peak RSS that
  `ru_maxrss` reports (`ru_maxrss` itself also keeps peaks recorded when threads exited, which cannot be
  reset; it is kept as `ru_maxrss_mb`); `peak_rss_mb` = the absolute peak.
  CUDA: `peak_memory_mb` = `torch.cuda.max_memory_allocated()` minus the memory allocated before the work.
  Warm-up runs count as measured work (the first training step allocates AdamW's state).
- CPU time too (`median_cpu_ms`, process time summed over all threads): less sensitive than wall time to other jobs on a
  shared machine. Workers run in the environment a user has: the library's own OpenMP wait policy (PASSIVE unless
  the environment sets one; `--omp-wait-policy` overrides it), `--amp` and `--tf32` as the CLI's flags
  (`qgn.precision`), the sparse backend "auto" (`--backend` overrides it).

Inputs (one image, batch 1, 19 classes, depth 5): "street" = `build_dataset("synthetic:street,1,size=HxW",
"train")[0]` (a Cityscapes-like layout whose tree has ~32/19/10/4.7/1.7 % active cells at levels 1..5, close to
the bundled hand-drawn street mask's 38/20/10/4.3/1.5 %); "nuclei" = the real DSB2018 mask (`instances % 19`,
../shared/data/nuclei_dsb2018.npz) tiled to HxW, its image replicated to 3 channels and standardised.
Every record holds the active fraction per level of the tree used.

`--sweep-density`: random Voronoi masks (19 classes) whose cell count is tuned so that the full-resolution
active fraction spans ~1 % .. 50 %; QGN inference at full depth against the dense twin (written to
benchmarks/results/density_sweep.{json,md,png}).

Output: a markdown table on stdout; `--json` (a list of records, one per configuration), `--markdown` (tables,
target verdicts, the command line), `--plot` (memory and latency against depth, dense and Unet as lines).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUCLEI = ROOT.parent / "shared" / "data" / "nuclei_dsb2018.npz"
MODELS = ("qgn", "dense", "smp_unet")
MODES = ("inference", "train")
MASKS = ("street", "nuclei")
NUM_CLASSES = 19
DEPTH = 5
IGNORE_INDEX = 255
RECORD_PREFIX = "BENCH_RECORD "
SWEEP_TARGETS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.35, 0.50)
TARGETS = {"inference_memory": 4.0, "inference_memory_aim": 8.0, "train_memory": 3.0, "latency": 1.0}


# ---- inputs ------------------------------------------------------------------------------------------------


def street_inputs(height: int, width: int, seed: int = 0):
    """(image float32 (3, H, W) normalised, mask uint8 (H, W)) of the synthetic street preset."""
    import torch

    from training.datasets import build_dataset

    image, mask = build_dataset(f"synthetic:street,1,size={height}x{width},seed={seed}", "train")[0]
    return image.float(), mask.to(torch.uint8)


def nuclei_inputs(height: int, width: int):
    """The DSB2018 nuclei image and `instances % 19` mask tiled to (H, W); None when the file is missing."""
    import numpy as np
    import torch

    if not NUCLEI.is_file():
        return None
    with np.load(NUCLEI) as data:
        tile_mask = (data["instances"] % NUM_CLASSES).astype(np.uint8)
        tile_image = data["image"].astype(np.float32)
    reps = (-(-height // tile_mask.shape[0]), -(-width // tile_mask.shape[1]))
    mask = np.ascontiguousarray(np.tile(tile_mask, reps)[:height, :width])
    gray = np.tile(tile_image, reps)[:height, :width]
    gray = (gray - gray.mean()) / max(float(gray.std()), 1e-6)
    image = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(gray, (3, height, width)))).float()
    return image, torch.from_numpy(mask)


def voronoi_mask(height: int, width: int, cells: int, seed: int = 0):
    """uint8 (H, W): nearest of `cells` random seeds, each seed a random class of 19 (a boundary-density knob)."""
    import numpy as np
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.uniform((0, 0), (height, width), size=(cells, 2))
    labels = rng.integers(0, NUM_CLASSES, cells).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    _, nearest = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float32), workers=-1)
    return labels[nearest].reshape(height, width)


def full_res_active_fraction(mask) -> float:
    import quadtree as qt

    return qt.tree_stats(qt.encode(mask, DEPTH)).levels[DEPTH].active_fraction


def density_mask(height: int, width: int, target: float, seed: int = 0):
    """A Voronoi mask whose full-resolution active fraction is close to `target` (bisection on the cell count)."""
    low, high = 1.0, float(height * width) / 4
    best = None
    for _ in range(14):
        cells = int(round(math.sqrt(low * high)))
        mask = voronoi_mask(height, width, max(cells, 2), seed)
        fraction = full_res_active_fraction(mask)
        if best is None or abs(math.log(fraction / target)) < abs(math.log(best[1] / target)):
            best = (mask, fraction, cells)
        if abs(fraction / target - 1) < 0.08:
            break
        low, high = (cells, high) if fraction < target else (low, cells)
    return best


def tree_summary(mask) -> dict:
    import quadtree as qt

    stats = qt.tree_stats(qt.encode(mask, DEPTH))
    return {"active_fraction_per_level": [round(l.active_fraction, 6) for l in stats.levels],
            "tree_nodes_per_level": [l.nodes for l in stats.levels],
            "tree_mixed_per_level": [l.mixed for l in stats.levels]}


def save_inputs(path: Path, image, mask, **info) -> dict:
    import torch

    torch.save({"image": image.contiguous(), "mask": mask.contiguous()}, path)
    return {"inputs": str(path), **tree_summary(mask), **info}


# ---- worker: one configuration in this (fresh) process -------------------------------------------------------


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def peak_rss_mb() -> float:
    """The address space's peak RSS (VmHWM): what ru_maxrss reports, except that ru_maxrss also keeps the
    peak seen when any thread of the process exited, which /proc/self/clear_refs cannot reset."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM, also what ru_maxrss reports) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_TORCHVISION_SHIM = []


def import_smp():
    """Import segmentation_models_pytorch; None when it is not installed.

    PyPI's torchvision wheels link the CUDA build of torch; with the CPU build their C ops do not load and
    `import torchvision` fails registering fake kernels for the two ops it does not guard (nms, qnms). The
    models need none of its C ops, so on that failure the two op schemas are declared and the import retried.
    """
    import torch

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


def build_model(name: str, seed: int, backend: str = "auto"):
    import torch

    torch.manual_seed(seed)
    if name == "smp_unet":
        smp = import_smp()
        if smp is None:
            raise RuntimeError("segmentation_models_pytorch is not installed (pip install segmentation-models-pytorch)")
        return smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)
    from qgn.config import QGNConfig
    from qgn.model import QGN

    return QGN(QGNConfig(num_classes=NUM_CLASSES, depth=DEPTH, model=name, backend=backend))


def run_worker(spec: dict) -> dict:
    import quadtree as qt  # first, as users import the library: it sets the OpenMP wait policy before torch loads

    import torch

    from qgn.precision import autocast as precision_autocast, grad_scaler, set_fp32_math
    from qgn.predict import count_dense_conv_macs
    from sparse_ops import spconv_available
    from training.loss import QuadtreeLoss

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if spec["model"] == "qgn":
        spconv_available()  # its lazy import (seconds, ~100 MB of libraries) is not part of the measured work
    amp = spec.get("amp", "off")
    set_fp32_math(bool(spec.get("tf32")))

    def autocast():
        return precision_autocast(amp, device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    data = torch.load(spec["inputs"])
    images = data["image"][None].to(device)
    masks = data["mask"][None].long().to(device)
    tree = qt.encode(masks, DEPTH)
    model = build_model(spec["model"], spec["seed"], spec.get("backend", "auto")).to(device)
    name, mode, depth = spec["model"], spec["mode"], spec["depth"]
    info: dict = {}

    if mode == "inference":
        model.eval()

        def run_on(x, m, t):
            if name == "smp_unet":
                with torch.no_grad(), autocast():
                    return model(x).argmax(1)
            with autocast():
                if name == "qgn":
                    return model.predict(x, max_depth=depth, oracle_tree=t)
                return model.predict(x)

        def run_once():
            sync()
            start = time.perf_counter()
            out = run_on(images, masks, tree)
            sync()
            elapsed = time.perf_counter() - start
            if name != "smp_unet":
                info["nodes_per_level"], info["macs"] = list(out.nodes_per_level), int(out.macs)
            return elapsed
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        criterion = QuadtreeLoss(NUM_CLASSES, DEPTH).to(device)
        scaler = grad_scaler(amp, device)

        def loss_of(x, m, t):
            with autocast():
                if name == "smp_unet":
                    return torch.nn.functional.cross_entropy(model(x), m, ignore_index=IGNORE_INDEX)
                out = model(x, t)
                return criterion(out.level_logits, t, out.full_logits, m)["loss"]

        def run_on(x, m, t, step=True):
            loss = loss_of(x, m, t)
            scaler.scale(loss).backward()
            if step:
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            return float(loss)

        def run_once():
            sync()
            start = time.perf_counter()
            run_on(images, masks, tree)
            sync()
            return time.perf_counter() - start

    # Prime: one pass on a small crop pays lazy initialisations (kernels, thread pools, autograd engine) outside
    # the measured work. Training primes forward + backward without the optimizer step (AdamW's state is
    # allocated by the first measured step).
    cell = 1 << DEPTH
    ph, pw = min(images.shape[2], 4 * cell), min(images.shape[3], 8 * cell)
    crop_images, crop_masks = images[:, :, :ph, :pw].contiguous(), masks[:, :ph, :pw].contiguous()
    crop_tree = qt.encode(crop_masks, DEPTH)
    if mode == "inference":
        run_on(crop_images, crop_masks, crop_tree)
    else:
        run_on(crop_images, crop_masks, crop_tree, step=False)
    info.clear()
    gc.collect()
    sync()

    peak_reset = reset_peak_rss()
    baseline_rss = current_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline_alloc = torch.cuda.memory_allocated(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times, cpu_times = [], []
    for i in range(spec["warmup"] + spec["repeats"]):
        cpu_start = time.process_time()
        elapsed = run_once()
        if i >= spec["warmup"]:
            times.append(elapsed)
            cpu_times.append(time.process_time() - cpu_start)
    sync()
    peak_rss = peak_rss_mb()
    if cuda:
        peak_memory = (torch.cuda.max_memory_allocated(device) - baseline_alloc) / 2 ** 20
    else:
        peak_memory = peak_rss - baseline_rss

    # MACs per image of the forward pass (not timed, after the memory was read).
    if "macs" not in info:
        model.eval()
        with torch.no_grad(), autocast():
            if name == "smp_unet":
                with count_dense_conv_macs(model) as total:
                    model(images)
                info["macs"] = int(total[0])
            else:
                out = model.predict(images, oracle_tree=tree) if name == "qgn" else model.predict(images)
                info["nodes_per_level"], info["macs"] = list(out.nodes_per_level), int(out.macs)

    record = {
        "model": name, "mode": mode, "height": int(images.shape[2]), "width": int(images.shape[3]),
        "depth": depth, "mask": spec["mask"], "batch_size": 1, "num_classes": NUM_CLASSES,
        "peak_memory_mb": round(peak_memory, 1), "peak_rss_mb": round(peak_rss, 1),
        "baseline_rss_mb": round(baseline_rss, 1), "peak_reset": peak_reset, "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
        "median_ms": round(1e3 * statistics.median(times), 2), "times_ms": [round(1e3 * t, 2) for t in times],
        "median_cpu_ms": round(1e3 * statistics.median(cpu_times), 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "macs": info["macs"], "nodes_per_level": info.get("nodes_per_level"),
        "tree_source": "oracle" if name == "qgn" else None,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device), "amp": amp, "tf32": bool(spec.get("tf32")), "backend": spec.get("backend", "auto"),
        "threads": spec["threads"], "warmup": spec["warmup"],
        "repeats": spec["repeats"], "load_avg_1min": None if load is None else round(load, 2),
        "torch": torch.__version__,
    }
    record.update(spec.get("extra", {}))
    return record


# ---- parent: plan, spawn, collect, report ------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not HxW (e.g. 512x1024)") from None
        if h % (1 << DEPTH) or w % (1 << DEPTH):
            raise SystemExit(f"--sizes: {item} must be multiples of 2**{DEPTH} = {1 << DEPTH}")
        sizes.append((h, w))
    return sizes


def parse_list(text: str, valid, flag: str) -> list[str]:
    items = [v for v in text.split(",") if v]
    bad = [v for v in items if v not in valid]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; valid: {', '.join(valid)}")
    return items


def plan_suite(args, inputs: dict) -> list[dict]:
    """One spec per configuration, grouped by (size, mask) so that every model sees the same inputs."""
    specs = []
    for (h, w) in args.sizes:
        for mask in args.masks:
            key = (h, w, mask)
            if key not in inputs:
                continue
            for model in args.models:
                for mode in args.modes:
                    depths = args.depths if (model == "qgn" and mode == "inference") else \
                        ([DEPTH] if model == "qgn" else [None])
                    for depth in depths:
                        specs.append(make_spec(args, model, mode, depth, mask, inputs[key]))
    return specs


def make_spec(args, model, mode, depth, mask, inp, extra=None) -> dict:
    h, w = inp["height"], inp["width"]
    big = h * w >= 1024 * 2048
    repeats = args.repeats if args.repeats is not None else (3 if (big and (mode == "train" or model != "qgn")) else 5)
    return {"model": model, "mode": mode, "depth": depth, "mask": mask, "inputs": inp["inputs"],
            "warmup": args.warmup, "repeats": repeats, "threads": args.threads, "device": args.device,
            "amp": args.amp, "tf32": args.tf32, "backend": args.backend, "seed": args.seed,
            "omp_wait_policy": args.omp_wait_policy,
            "extra": {**{k: inp[k] for k in ("active_fraction_per_level", "tree_nodes_per_level",
                                             "tree_mixed_per_level")}, **(extra or {})}}


def run_spec(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               PYTHONWARNINGS="ignore")
    if spec.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = spec["omp_wait_policy"]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    base = {k: spec[k] for k in ("model", "mode", "depth", "mask")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RECORD_PREFIX):
            return json.loads(line[len(RECORD_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {**base, "error": f"worker exit {done.returncode}: {' | '.join(tail)}"}


def fmt_macs(macs) -> str:
    return "-" if macs is None else f"{macs / 1e9:.2f}"


def fmt_depth(depth) -> str:
    return "full" if depth is None else str(depth)


def table(records: list[dict]) -> str:
    lines = ["| size | mask | model | mode | depth | median ms | CPU ms | peak MB (growth) | peak RSS MB | GMACs | "
             "nodes per level |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        size = f"{r.get('height', '?')}x{r.get('width', '?')}"
        if "error" in r:
            lines.append(f"| {size} | {r['mask']} | {r['model']} | {r['mode']} | {fmt_depth(r['depth'])} | "
                         f"error: {r['error']} | | | | | |")
            continue
        nodes = "-" if r.get("nodes_per_level") is None else "/".join(map(str, r["nodes_per_level"]))
        lines.append(f"| {size} | {r['mask']} | {r['model']} | {r['mode']} | {fmt_depth(r['depth'])} | "
                     f"{r['median_ms']:.0f} | {r.get('median_cpu_ms', float('nan')):.0f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{fmt_macs(r['macs'])} | {nodes} |")
    return "\n".join(lines)


def fractions_table(records: list[dict]) -> str:
    seen, lines = set(), ["| size | mask | active % per level 0..5 (nodes / cells of the level grid) | nodes per level |",
                          "|---|---|---|---|"]
    for r in records:
        key = (r.get("height"), r.get("width"), r["mask"])
        if key in seen or "active_fraction_per_level" not in r:
            continue
        seen.add(key)
        fractions = " / ".join(f"{100 * f:.2f}" for f in r["active_fraction_per_level"])
        lines.append(f"| {key[0]}x{key[1]} | {key[2]} | {fractions} | {'/'.join(map(str, r['tree_nodes_per_level']))} |")
    return "\n".join(lines)


def find(records, **where):
    for r in records:
        if "error" not in r and all(r.get(k) == v for k, v in where.items()):
            return r
    return None


def verdicts(records: list[dict]) -> tuple[str, list[dict]]:
    """Ratios of QGN at full depth to the dense twin (and the Unet) per size and mask, with the target checks."""
    rows, out = [], ["| size | mask | inference memory dense/QGN | train memory dense/QGN | latency dense/QGN | "
                     "inference CPU time dense/QGN | train time dense/QGN | inference memory Unet/QGN | "
                     "latency Unet/QGN |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["height"], r["width"], r["mask"]) for r in records if "error" not in r})
    for h, w, mask in keys:
        def get(model, mode):
            return find(records, height=h, width=w, mask=mask, model=model, mode=mode,
                        depth=DEPTH if model == "qgn" else None)
        q_i, q_t, d_i, d_t, s_i = get("qgn", "inference"), get("qgn", "train"), get("dense", "inference"), \
            get("dense", "train"), get("smp_unet", "inference")

        def ratio(a, b, field):
            # memory growth below 1 MB is below what RSS measures reliably: no ratio rather than a huge one
            floor = 1.0 if field == "peak_memory_mb" else 0.0
            if a is None or b is None or b[field] <= floor:
                return None
            return a[field] / b[field]

        row = {"height": h, "width": w, "mask": mask,
               "inference_memory_ratio": ratio(d_i, q_i, "peak_memory_mb"),
               "train_memory_ratio": ratio(d_t, q_t, "peak_memory_mb"),
               "latency_ratio": ratio(d_i, q_i, "median_ms"),
               "cpu_time_ratio": ratio(d_i, q_i, "median_cpu_ms"),
               "train_time_ratio": ratio(d_t, q_t, "median_ms"),
               "unet_inference_memory_ratio": ratio(s_i, q_i, "peak_memory_mb"),
               "unet_latency_ratio": ratio(s_i, q_i, "median_ms")}
        rows.append(row)

        def cell(value, target=None):
            if value is None:
                return "-"
            text = f"{value:.2f}x"
            if target is not None:
                text += " (met)" if value >= target else f" (missed: target {target:g}x)"
            return text

        out.append(f"| {h}x{w} | {mask} | {cell(row['inference_memory_ratio'], TARGETS['inference_memory'])} | "
                   f"{cell(row['train_memory_ratio'], TARGETS['train_memory'])} | "
                   f"{cell(row['latency_ratio'], TARGETS['latency'])} | {cell(row['cpu_time_ratio'])} | "
                   f"{cell(row['train_time_ratio'])} | "
                   f"{cell(row['unet_inference_memory_ratio'])} | {cell(row['unet_latency_ratio'])} |")
    return "\n".join(out), rows


def command_line(argv: list[str]) -> str:
    return "python benchmarks/bench_qgn.py" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))


def environment(records: list[dict]) -> str:
    import torch

    loads = [r["load_avg_1min"] for r in records if r.get("load_avg_1min") is not None]
    versions = sorted({r["torch"] for r in records if r.get("torch")}) or [torch.__version__]
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
            f"{', '.join(versions)}" + ("" if not loads else f"; 1-min load average when the configurations "
                                                           f"started {min(loads):.1f} .. {max(loads):.1f}"))


def write_markdown(path: Path, records, argv) -> None:
    verdict_table, _ = verdicts(records)
    ok = [r for r in records if "error" not in r]
    threads = ok[0]["threads"] if ok else "?"
    device = ok[0]["device"] if ok else "?"
    text = f"""## Performance

Measured with `{command_line(argv)}` on {environment(records)}; {threads} torch threads, device {device}.
Batch 1, 19 classes, depth 5; every configuration in a fresh process. QGN expands the ground-truth tree of the
mask (`tree_source: oracle`) - the cost of a prediction whose tree matches the labels. "peak MB (growth)" is the
peak RSS growth during the measured work (warm-up included) over the RSS right before it (after imports, model
construction, input loading and a small priming pass); "peak RSS MB" is the absolute peak. "CPU ms" is the
median process time, summed over all threads (above the wall time when both threads work). GMACs are per image
(forward pass; train records too). Workers run with the library's default
OpenMP wait policy (PASSIVE). Figures from a shared 2-core machine: other jobs ran at the same time (each record holds
the 1-minute load average), so wall times are noisy - CPU time is the steadier comparison. Peak RSS growth also
varies between identical runs (allocator behaviour; up to ~15% on the development machine), so a ratio close to
its target is within noise.

### Ratios at full depth (higher = QGN cheaper; targets: inference memory >= 4x, train memory >= 3x, latency > 1x)

{verdict_table}

"-": not measured, or a memory growth below 1 MB (below what peak RSS resolves; no ratio is computed from it).

### Trees used (active fraction per level)

{fractions_table(records)}

### All configurations

{table(records)}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_plot(path: Path, records) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["height"], r["width"]) for r in records if "error" not in r}, key=lambda s: s[0] * s[1])
    if not sizes:
        return
    masks = sorted({r["mask"] for r in records if "error" not in r})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    colors = {"street": "tab:blue", "nuclei": "tab:orange"}
    for row, (h, w) in enumerate(sizes):
        for col, (field, label) in enumerate((("peak_memory_mb", "inference peak memory growth (MB)"),
                                              ("median_ms", "inference median latency (ms)"))):
            ax = axes[row][col]
            for mask in masks:
                color = colors.get(mask, None)
                points = sorted((r["depth"], r[field]) for r in records if "error" not in r and r["model"] == "qgn"
                                and r["mode"] == "inference" and (r["height"], r["width"]) == (h, w)
                                and r["mask"] == mask)
                if points:
                    ax.plot(*zip(*points), "o-", color=color, label=f"QGN ({mask})")
                for model, style in (("dense", "--"), ("smp_unet", ":")):
                    r = find(records, model=model, mode="inference", height=h, width=w, mask=mask)
                    if r is not None:
                        ax.axhline(r[field], linestyle=style, color=color,
                                   label=f"{'dense twin' if model == 'dense' else 'smp Unet-resnet18'} ({mask})")
            ax.set_yscale("log")
            ax.set_xlabel("QGN inference depth (levels computed below the root grid)")
            ax.set_ylabel(label)
            ax.set_title(f"{h}x{w}, batch 1, 19 classes")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def linear_fit(xs, ys):
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, (1 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def sweep_report(records) -> tuple[str, list[str]]:
    lines = ["| size | full-res active % | nodes (all levels) | MIXED nodes | model | median ms | peak MB (growth) | "
             "GMACs |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| | | | | {r['model']} | error: {r['error']} | | |")
            continue
        lines.append(f"| {r['height']}x{r['width']} | {100 * r['active_fraction_per_level'][-1]:.2f} | "
                     f"{sum(r['tree_nodes_per_level'])} | {sum(r['tree_mixed_per_level'])} | {r['model']} | "
                     f"{r['median_ms']:.0f} | {r['peak_memory_mb']:.0f} | {fmt_macs(r['macs'])} |")
    fits = []
    for h, w in sorted({(r["height"], r["width"]) for r in records if "error" not in r}):
        qgn = [r for r in records if "error" not in r and r["model"] == "qgn" and (r["height"], r["width"]) == (h, w)]
        for field, unit in (("peak_memory_mb", "MB"), ("median_ms", "ms")):
            fit = linear_fit([sum(r["tree_mixed_per_level"]) / 1e3 for r in qgn], [r[field] for r in qgn])
            if fit:
                fits.append(f"{h}x{w}: {field} = {fit[1]:.0f} {unit} + {fit[0]:.2f} {unit} per 1000 MIXED nodes "
                            f"(R^2 {fit[2]:.3f}, {len(qgn)} masks)")
    return "\n".join(lines), fits


def write_sweep(json_path: Path, md_path: Path, png_path: Path, records, argv) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(records, indent=1))
    body, fits = sweep_report(records)
    md_path.write_text(f"""## Boundary-density sweep

Measured with `{command_line(argv)}` on {environment(records)}. QGN inference at full depth with the ground-truth
tree of random Voronoi masks (19 classes) whose cell count was tuned to the target full-resolution active
fraction; the dense twin's cost does not depend on the mask (one reference per size). Peak MB = peak RSS
growth during the measured work.

{body}

Linear fits of QGN against the number of MIXED nodes (all levels):

""" + "\n".join(f"- {f}" for f in fits) + "\n")
    ok = [r for r in records if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (h, w), color in zip(sorted({(r["height"], r["width"]) for r in ok}), ("tab:blue", "tab:orange", "tab:green")):
        qgn = sorted((r for r in ok if r["model"] == "qgn" and (r["height"], r["width"]) == (h, w)),
                     key=lambda r: r["active_fraction_per_level"][-1])
        dense = find(ok, model="dense", height=h, width=w)
        for ax, field, label in ((axes[0], "peak_memory_mb", "peak memory growth (MB)"),
                                 (axes[1], "median_ms", "median latency (ms)")):
            ax.plot([100 * r["active_fraction_per_level"][-1] for r in qgn], [r[field] for r in qgn], "o-",
                    color=color, label=f"QGN {h}x{w}")
            if dense is not None:
                ax.axhline(dense[field], linestyle="--", color=color, label=f"dense twin {h}x{w}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("active fraction at full resolution (%)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[2].plot([sum(r["tree_mixed_per_level"]) / 1e3 for r in qgn], [r["peak_memory_mb"] for r in qgn], "o-",
                     color=color, label=f"QGN {h}x{w}")
    axes[0].legend(fontsize=7)
    axes[2].set_xlabel("MIXED nodes, all levels (thousands)")
    axes[2].set_ylabel("peak memory growth (MB)")
    axes[2].grid(True, alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle("QGN inference (full depth, oracle tree) vs boundary density, batch 1, 19 classes")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def prepare_suite_inputs(args, cache: Path) -> dict:
    inputs = {}
    for h, w in args.sizes:
        for mask in args.masks:
            made = street_inputs(h, w) if mask == "street" else nuclei_inputs(h, w)
            if made is None:
                print(f"skipping mask {mask!r}: {NUCLEI} not found", file=sys.stderr)
                continue
            inputs[(h, w, mask)] = save_inputs(cache / f"{mask}_{h}x{w}.pt", *made, height=h, width=w)
    return inputs


def run_sweep(args, cache: Path, argv) -> list[dict]:
    import torch

    records = []
    for h, w in args.sweep_sizes:
        image, _ = street_inputs(h, w)
        targets = SWEEP_TARGETS[:3] if args.quick else SWEEP_TARGETS
        specs, first = [], None
        for target in targets:
            mask, fraction, cells = density_mask(h, w, target, seed=args.seed)
            inp = save_inputs(cache / f"voronoi_{h}x{w}_{target:g}.pt", image, torch.from_numpy(mask), height=h,
                              width=w)
            first = first or (inp, target)
            extra = {"sweep": "density", "target_active_fraction": target, "voronoi_cells": cells}
            specs.append(make_spec(args, "qgn", "inference", DEPTH, f"voronoi_{target:g}", inp, extra))
        # the dense twin computes every cell whatever the mask: one reference per size
        specs.append(make_spec(args, "dense", "inference", None, f"voronoi_{first[1]:g}", first[0],
                               {"sweep": "density"}))
        for spec in specs:
            record = run_spec(spec, args.timeout)
            record.setdefault("height", h)
            record.setdefault("width", w)
            record["argv"] = argv
            records.append(record)
            print(progress(record), file=sys.stderr, flush=True)
    return records


def progress(r: dict) -> str:
    head = f"{r.get('height')}x{r.get('width')} {r['mask']} {r['model']} {r['mode']} depth={fmt_depth(r['depth'])}"
    if "error" in r:
        return f"{head}: ERROR {r['error']}"
    return f"{head}: {r['median_ms']:.0f} ms, +{r['peak_memory_mb']:.0f} MB (RSS {r['peak_rss_mb']:.0f}), " \
           f"{fmt_macs(r['macs'])} GMACs"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="qgn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="HxW list (multiples of 32)")
    parser.add_argument("--masks", default="street,nuclei", help=f"subset of {','.join(MASKS)}")
    parser.add_argument("--models", default="qgn,dense,smp_unet", help=f"subset of {','.join(MODELS)}")
    parser.add_argument("--modes", default="inference,train", help=f"subset of {','.join(MODES)}")
    parser.add_argument("--depths", default="0,1,2,3,4,5", help="QGN inference depths")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per configuration (default 5; 3 for dense/Unet/train at >= 1024x2048)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", default="off", choices=("off", "fp16", "bf16"),
                        help="mixed precision as the CLI's --amp (qgn.precision): fp16 on CUDA, bf16 anywhere")
    parser.add_argument("--tf32", action="store_true", help="let float32 convs and matmuls use TF32 (CUDA)")
    parser.add_argument("--backend", default="auto", choices=("auto", "spconv", "torch"),
                        help="QGN's sparse conv backend (default auto: the device's measured default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--omp-wait-policy", default="", choices=("PASSIVE", "ACTIVE", ""),
                        help="OMP_WAIT_POLICY of the workers (default: the environment's, else the library's "
                             "PASSIVE)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--json", help="output file (default OUT/bench_qgn.json)")
    parser.add_argument("--markdown", help="output file (default OUT/bench_qgn.md)")
    parser.add_argument("--plot", help="output file (default OUT/bench_qgn.png)")
    parser.add_argument("--out", default="runs/bench", metavar="OUT",
                        help="folder of the outputs (default runs/bench; the committed figures README shows are in "
                             "benchmarks/results and change only when you pass --out benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="128x256 and 256x512, one timed run: a smoke test")
    parser.add_argument("--sweep-density", action="store_true", help="also run the boundary-density sweep")
    parser.add_argument("--sweep-sizes", default="512x1024", help="sizes of the density sweep")
    parser.add_argument("--skip-suite", action="store_true", help="run only the density sweep")
    parser.add_argument("--sweep-json", help="output file (default OUT/density_sweep.json)")
    parser.add_argument("--sweep-markdown", help="output file (default OUT/density_sweep.md)")
    parser.add_argument("--sweep-plot", help="output file (default OUT/density_sweep.png)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite the markdown and plots from the existing --json (and, with "
                             "--sweep-density, --sweep-json) records")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    for name, stem in (("json", "bench_qgn.json"), ("markdown", "bench_qgn.md"), ("plot", "bench_qgn.png"),
                       ("sweep_json", "density_sweep.json"), ("sweep_markdown", "density_sweep.md"),
                       ("sweep_plot", "density_sweep.png")):
        if getattr(args, name) is None:
            setattr(args, name, str(out / stem))
    if args.quick:
        if "--sizes" not in argv:
            args.sizes = "128x256,256x512"
        if "--sweep-sizes" not in argv:
            args.sweep_sizes = "256x512"
        args.repeats = 1 if args.repeats is None else args.repeats
    args.sizes = parse_sizes(args.sizes)
    args.sweep_sizes = parse_sizes(args.sweep_sizes)
    args.masks = parse_list(args.masks, MASKS, "--masks")
    args.models = parse_list(args.models, MODELS, "--models")
    args.modes = parse_list(args.modes, MODES, "--modes")
    args.depths = [int(d) for d in args.depths.split(",")]
    if any(not 0 <= d <= DEPTH for d in args.depths):
        raise SystemExit(f"--depths must lie in 0..{DEPTH}")
    if args.amp == "fp16" and args.device != "cuda":
        raise SystemExit("--amp fp16 needs --device cuda (CPUs have no fast float16 matmul); use --amp bf16 on CPU")
    return args


def render_only(args) -> int:
    """Rewrite the reports from stored records; the command line recorded in them is the measuring one."""
    if not args.skip_suite:
        records = json.loads(Path(args.json).read_text())
        write_markdown(Path(args.markdown), records, records_argv(records))
        write_plot(Path(args.plot), records)
        print(table(records) + "\n\n" + verdicts(records)[0])
    if args.sweep_density:
        sweep = json.loads(Path(args.sweep_json).read_text())
        write_sweep(Path(args.sweep_json), Path(args.sweep_markdown), Path(args.sweep_plot), sweep,
                    records_argv(sweep))
        print(sweep_report(sweep)[0] + "\n" + "\n".join(sweep_report(sweep)[1]))
    return 0


def records_argv(records: list[dict]) -> list[str]:
    for r in records:
        if r.get("argv") is not None:
            return r["argv"]
    return []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        print(RECORD_PREFIX + json.dumps(run_worker(json.loads(argv[1]))), flush=True)
        return 0
    args = parse_args(argv)
    if args.render_only:
        return render_only(args)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
    if "smp_unet" in args.models and import_smp() is None:
        print("segmentation_models_pytorch is not installed: skipping smp_unet (pip install "
              "segmentation-models-pytorch)", file=sys.stderr)
        args.models = [m for m in args.models if m != "smp_unet"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_qgn_") as tmp:
        cache = Path(tmp)
        if not args.skip_suite:
            inputs = prepare_suite_inputs(args, cache)
            specs = plan_suite(args, inputs)
            print(f"{len(specs)} configurations, one subprocess each", file=sys.stderr, flush=True)
            records = []
            for spec in specs:
                record = run_spec(spec, args.timeout)
                key = next(k for k, v in inputs.items() if v["inputs"] == spec["inputs"])
                record.setdefault("height", key[0])
                record.setdefault("width", key[1])
                record["argv"] = argv
                records.append(record)
                print(progress(record), file=sys.stderr, flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(records, indent=1))
            write_markdown(Path(args.markdown), records, argv)
            write_plot(Path(args.plot), records)
            print(table(records))
            print()
            print(verdicts(records)[0])
            print(f"wrote {args.json}, {args.markdown}, {args.plot}")
        if args.sweep_density:
            sweep = run_sweep(args, cache, argv)
            write_sweep(Path(args.sweep_json), Path(args.sweep_markdown), Path(args.sweep_plot), sweep, argv)
            print(sweep_report(sweep)[0])
            print("\n".join(sweep_report(sweep)[1]))
            print(f"wrote {args.sweep_json}, {args.sweep_markdown}, {args.sweep_plot}")
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
