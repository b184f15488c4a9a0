"""Benchmark: 3x3 submanifold conv (64 -> 64 channels) on boundary bands and random sites vs dense nn.Conv2d.

Methods (each case runs in a fresh subprocess, torch threads = --threads):
- wrapper:        sparse_ops.SubMConv2d(backend="spconv"), the SparseGeometry (validation + rulebook) built in
                  every call, like `spconv` below.
- wrapper_cached: the same with one SparseGeometry reused across calls (rulebook built once per level, as in a
                  network with several convs per level).
- spconv:         spconv.pytorch.SubMConv2d(algo=Native) called directly on a fresh SparseConvTensor per call.
- torch:          sparse_ops.SubMConv2d(backend="torch"), geometry (neighbour table) built in every call.
- dense:          nn.Conv2d(64, 64, 3, padding=1) on the whole (1, 64, H, W) map (independent of the sites).

Timings: --rounds passes over all cases (interleaved, odd passes reversed), --repeats timed calls per case and
pass after one warm-up; medians (and minima) of the pooled calls. "fwd" runs under torch.no_grad(), "fwd+bwd" =
forward with autograd plus backward of a fixed random output gradient (gradients for input, weight and bias).
Process CPU time is recorded too (with --threads 1 it hardly depends on other jobs). Memory: growth of the
process's peak RSS (ru_maxrss) over its value once inputs, weights and output gradient exist ("extra MB"); the
libraries are warmed up on a tiny input before that. "background cores" = CPU used by other processes during a
case (the development machine is shared; --wait-quiet waits for it to drop before each case).

Sites: "band" = the pixels nearest to the region boundaries of a smooth random label mask (argmax of a few
Gaussian-blurred noise fields, i.e. blobby regions with curved boundaries; distance from scipy's
distance_transform_edt, ties broken at random) - what a quadtree level activates; "random" = uniform sites.
Each fraction takes exactly round(fraction * H * W) sites.

Example:
    python benchmarks/bench_sparse_ops.py --sizes 512x512 --fractions 1,5,10,25,50,100 --wait-quiet 300
    python benchmarks/bench_sparse_ops.py --sizes 1024x2048 --fractions 10 --patterns band --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import ROOT

METHODS = ("wrapper", "wrapper_cached", "spconv", "torch", "dense")
PATTERNS = ("band", "random")


def smooth_label_mask(height: int, width: int, num_classes: int = 4, seed: int = 0) -> np.ndarray:
    """(H, W) int labels: argmax over `num_classes` Gaussian-blurred noise fields (blobs ~ min(H, W) / 8 across)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sigma = min(height, width) / 24
    fields = [gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), sigma, mode="wrap")
              for _ in range(num_classes)]
    return np.argmax(np.stack(fields), axis=0)


def band_sites(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """int32 (N, 3) (0, y, x) of the round(fraction * H * W) pixels nearest to a region boundary, row-major order."""
    from scipy.ndimage import distance_transform_edt

    boundary = np.zeros(labels.shape, dtype=bool)
    boundary[:-1] |= labels[:-1] != labels[1:]
    boundary[1:] |= labels[:-1] != labels[1:]
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    boundary[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    distance = distance_transform_edt(~boundary)
    jitter = np.random.default_rng(seed).random(labels.shape) * 1e-3  # random tie-breaking between equal distances
    return _take_smallest(distance + jitter, fraction)


def random_sites(shape: tuple[int, int], fraction: float, seed: int = 0) -> np.ndarray:
    return _take_smallest(np.random.default_rng(seed).random(shape), fraction)


def _take_smallest(score: np.ndarray, fraction: float) -> np.ndarray:
    n = int(round(fraction * score.size))
    chosen = np.zeros(score.size, dtype=bool)
    chosen[np.argpartition(score.ravel(), n - 1)[:n] if n < score.size else slice(None)] = True
    y, x = np.nonzero(chosen.reshape(score.shape))
    return np.ascontiguousarray(np.stack([np.zeros_like(y), y, x], axis=1).astype(np.int32))


def cpu_seconds() -> tuple[float | None, float, float]:
    """(busy seconds of the whole machine from /proc/stat, None without it; CPU seconds of this process; wall)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except OSError:
        machine = None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return machine, usage.ru_utime + usage.ru_stime, time.perf_counter()


def background_cores(start: tuple) -> float | None:
    """Cores kept busy by other processes since `start = cpu_seconds()`: the machine's busy time minus ours. The
    development machine is shared; this tells a clean measurement (about 0) from one taken while other jobs ran
    (up to the core count). None where /proc/stat is unavailable."""
    end = cpu_seconds()
    if end[0] is None or start[0] is None:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def run_case(case: dict) -> dict:
    """Set up one (size, sites, method) case in this process and time it; see the module docstring."""
    import torch

    torch.set_num_threads(case["threads"])
    shape, channels, method = tuple(case["size"]), case["channels"], case["method"]
    coords = None if method == "dense" else torch.from_numpy(np.load(case["coords"]))  # int32 (N, 3) row-major
    # Library start-up (spconv's import and kernel tables, first-use buffers of the matmul libraries) is done on
    # a tiny input first, so that "extra MB" holds only what the measured case itself needs.
    tiny = _make(method, (16, 16) if coords is None else shape, channels, None if coords is None else coords[:64])
    _forward_backward(*tiny[:3])
    del tiny
    forward, params, grad_out, num_sites = _make(method, shape, channels, coords)
    baseline = harness.ru_maxrss_mb()
    start = cpu_seconds()
    with torch.no_grad():
        fwd_ms, fwd_cpu_ms = _time(forward, case["repeats"])
    extra_fwd = harness.ru_maxrss_mb() - baseline
    fwdbwd_ms, fwdbwd_cpu_ms = _time(lambda: _forward_backward(forward, params, grad_out), case["repeats"])
    extra_total = harness.ru_maxrss_mb() - baseline
    cores = background_cores(start)
    return {"num_sites": int(num_sites), "fwd_ms_all": fwd_ms, "fwdbwd_ms_all": fwdbwd_ms,
            "fwd_cpu_ms_all": fwd_cpu_ms, "fwdbwd_cpu_ms_all": fwdbwd_cpu_ms,
            "extra_mb_fwd": extra_fwd, "extra_mb": extra_total, "baseline_mb": baseline,
            "background_cores": cores}


def _forward_backward(forward, params, grad_out) -> None:
    for p in params:
        p.grad = None
    forward().backward(grad_out)


def _time(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU milliseconds of `repeats` calls of fn after one untimed warm-up call (with one
    thread the CPU time hardly depends on other jobs; with more it also counts threads waiting for each other)."""
    wall, cpu = [], []
    for i in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if i > 0:
            wall.append((time.perf_counter() - start) * 1e3)
            cpu.append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


def _make(method: str, shape: tuple[int, int], channels: int, coords):
    """(forward() -> output, parameters to clear, output gradient, number of sites) of one case; coords: int32
    (N, 3) active sites, None for the dense method."""
    import warnings

    import torch

    height, width = shape
    gen = torch.Generator().manual_seed(0)
    if method == "dense":
        layer = torch.nn.Conv2d(channels, channels, 3, padding=1)
        x = torch.randn(1, channels, height, width, generator=gen).requires_grad_(True)
        grad_out = torch.randn(1, channels, height, width, generator=gen)
        return (lambda: layer(x)), [x, *layer.parameters()], grad_out, height * width
    feats = torch.randn(coords.shape[0], channels, generator=gen).requires_grad_(True)
    grad_out = torch.randn(coords.shape[0], channels, generator=gen)
    if method == "spconv":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import spconv.pytorch as spconv
        layer = spconv.SubMConv2d(channels, channels, 3, algo=spconv.ConvAlgo.Native)

        def forward():
            return layer(spconv.SparseConvTensor(feats, coords, [height, width], 1)).features
    else:
        from sparse_ops import SparseGeometry, SubMConv2d

        layer = SubMConv2d(channels, channels, 3, backend="torch" if method == "torch" else "spconv")
        cached = SparseGeometry(coords, (height, width), 1)

        def forward():
            geometry = cached if method == "wrapper_cached" else SparseGeometry(coords, (height, width), 1)
            return layer(feats, geometry)
    return forward, [feats, *layer.parameters()], grad_out, coords.shape[0]


def wait_until_quiet(max_cores: float, timeout: float, window: float = 5.0) -> None:
    """Wait until other processes use fewer than `max_cores` cores over `window` seconds, at most `timeout` s
    (on a shared machine: no case while other jobs saturate the cores; the load during a case is recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() <= deadline:
        start = cpu_seconds()
        time.sleep(window)
        cores = background_cores(start)
        if cores is None or cores < max_cores:
            return


def aggregate(key: tuple, rounds: list[dict]) -> dict:
    """One record from the rounds of a case: timings pooled over rounds (median and min), memory median."""
    size_str, pattern, fraction, method = key
    fwd, fwdbwd, fwd_cpu, fwdbwd_cpu = ([t for r in rounds for t in r[f"{k}_all"]]
                                        for k in ("fwd_ms", "fwdbwd_ms", "fwd_cpu_ms", "fwdbwd_cpu_ms"))
    loads = [r["background_cores"] for r in rounds if r["background_cores"] is not None]
    return {
        "size_str": size_str, "pattern": pattern, "fraction": fraction, "method": method,
        "num_sites": rounds[0]["num_sites"],
        "fwd_ms": statistics.median(fwd), "fwd_ms_min": min(fwd),
        "fwdbwd_ms": statistics.median(fwdbwd), "fwdbwd_ms_min": min(fwdbwd),
        "fwd_cpu_ms": statistics.median(fwd_cpu), "fwdbwd_cpu_ms": statistics.median(fwdbwd_cpu),
        "extra_mb_fwd": statistics.median(r["extra_mb_fwd"] for r in rounds),
        "extra_mb": statistics.median(r["extra_mb"] for r in rounds),
        "background_cores": statistics.mean(loads) if loads else None,
        "rounds": rounds,
    }


def markdown_table(records: list[dict]) -> str:
    dense = {r["size_str"]: r for r in records if r["method"] == "dense"}
    lines = ["| size | sites | active % | method | fwd ms (min) | fwd+bwd ms (min) | CPU ms fwd / fwd+bwd | extra MB "
             "| fwd speed-up vs dense | fwd+bwd speed-up vs dense | dense extra MB / extra MB | background cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        d = dense.get(r["size_str"])
        if r["method"] == "dense" or d is None:
            speed_fwd = speed_all = mem = "1x" if r["method"] == "dense" else "-"
        else:
            speed_fwd = f"{d['fwd_ms'] / r['fwd_ms']:.2f}x"
            speed_all = f"{d['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x"
            mem = f"{d['extra_mb'] / max(r['extra_mb'], 1.0):.1f}x"
        load = "-" if r["background_cores"] is None else f"{r['background_cores']:.2f}"
        lines.append(
            f"| {r['size_str']} | {r['pattern']} | {r['fraction'] * 100:g} | {r['method']} | "
            f"{r['fwd_ms']:.1f} ({r['fwd_ms_min']:.1f}) | {r['fwdbwd_ms']:.1f} ({r['fwdbwd_ms_min']:.1f}) | "
            f"{r['fwd_cpu_ms']:.1f} / {r['fwdbwd_cpu_ms']:.1f} | {r['extra_mb']:.0f} | {speed_fwd} | {speed_all} | "
            f"{mem} | {load} |"
        )
    return "\n".join(lines)


def overhead_lines(records: list[dict]) -> list[str]:
    """Our wrapper vs spconv called directly, for every case measured with both: wall-time ratio of medians (of
    minima in brackets), and of median process CPU time."""
    lines = []
    keyed = {(r["size_str"], r["pattern"], r["fraction"], r["method"]): r for r in records}
    for (size, pattern, fraction, method), r in keyed.items():
        direct = keyed.get((size, pattern, fraction, "spconv"))
        if method not in ("wrapper", "wrapper_cached") or direct is None:
            continue
        lines.append(
            f"- {size} {pattern} {fraction * 100:g}% {method}: / spconv direct = "
            f"{r['fwd_ms'] / direct['fwd_ms']:.3f} ({r['fwd_ms_min'] / direct['fwd_ms_min']:.3f}) fwd, "
            f"{r['fwdbwd_ms'] / direct['fwdbwd_ms']:.3f} ({r['fwdbwd_ms_min'] / direct['fwdbwd_ms_min']:.3f}) fwd+bwd; "
            f"CPU time {r['fwd_cpu_ms'] / direct['fwd_cpu_ms']:.3f} fwd, "
            f"{r['fwdbwd_cpu_ms'] / direct['fwdbwd_cpu_ms']:.3f} fwd+bwd; "
            f"extra memory {r['extra_mb']:.0f} vs {direct['extra_mb']:.0f} MB"
        )
    return lines


def crossover_lines(records: list[dict], method: str = "wrapper") -> list[str]:
    """Where `method` stops being faster than dense: linear interpolation of the speed-up between fractions."""
    lines = []
    dense = {r["size_str"]: r for r in records if r["method"] == "dense"}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["method"] == method and r["size_str"] in dense:
            groups.setdefault((r["size_str"], r["pattern"]), []).append(r)
    for (size, pattern), rows in groups.items():
        rows.sort(key=lambda r: r["fraction"])
        parts = []
        for key, name in (("fwd_ms", "fwd"), ("fwdbwd_ms", "fwd+bwd")):
            speed = [(r["fraction"], dense[size][key] / r[key]) for r in rows]
            crossings = [f0 + (f1 - f0) * (s0 - 1) / (s0 - s1)
                         for (f0, s0), (f1, s1) in zip(speed, speed[1:]) if s0 > 1 >= s1]
            if len(crossings) == 1:
                parts.append(f"{name} at ~{crossings[0] * 100:.0f}% active")
            elif all(s > 1 for _, s in speed):
                parts.append(f"{name}: faster than dense at every measured fraction (up to {speed[-1][0] * 100:g}%)")
            elif all(s <= 1 for _, s in speed):
                parts.append(f"{name}: not faster than dense at any measured fraction")
            elif crossings:
                parts.append(f"{name}: crosses {len(crossings)} times (noise), first at ~{crossings[0] * 100:.0f}%")
            else:
                parts.append(f"{name}: no crossover found (noise)")
        lines.append(f"- {size} {pattern}: " + "; ".join(parts))
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512x512", help="comma-separated HxW grids, e.g. 512x512,1024x2048")
    p.add_argument("--fractions", default="1,5,10,25,50,100", help="comma-separated active-site percentages")
    p.add_argument("--patterns", default="band,random", help=f"comma-separated, of {','.join(PATTERNS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per case and round (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2,
                   help="passes over all cases, interleaved (odd passes in reverse order), each case in a fresh "
                        "process; timings are pooled over rounds")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads in every case")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each case wait up to this long for other processes to use < 0.3 cores")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sparse_ops.json",
                   help="where to write the results (a markdown report is written beside it, suffix .md)")
    p.add_argument("case", nargs="?", help=argparse.SUPPRESS)  # internal: run this case (JSON) in this process
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.case:
        harness.print_record(run_case(json.loads(args.case)))
        return
    sizes = harness.parse_sizes(args.sizes, 1)
    fractions = [float(f) / 100 for f in args.fractions.split(",")]
    patterns = harness.parse_list(args.patterns, PATTERNS, "--patterns")
    methods = harness.parse_list(args.methods, METHODS, "--methods")
    common = {"channels": args.channels, "repeats": args.repeats, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[tuple, dict]] = []  # ((size, pattern, fraction, method), case)
        for height, width in sizes:
            size_str = f"{height}x{width}"
            base = {**common, "size": [height, width]}
            if "dense" in methods:
                cases.append(((size_str, "dense", 1.0, "dense"), {**base, "method": "dense"}))
            labels = smooth_label_mask(height, width) if "band" in patterns else None
            for pattern in patterns:
                for fraction in fractions:
                    if pattern == "random" and fraction >= 1.0:
                        continue  # 100% random = 100% band: every site
                    path = Path(tmp) / f"{size_str}_{pattern}_{fraction}.npy"
                    np.save(path, band_sites(labels, fraction) if pattern == "band"
                            else random_sites((height, width), fraction))
                    for method in methods:
                        if method != "dense":
                            cases.append(((size_str, pattern, fraction, method), {**base, "method": method,
                                                                                   "coords": str(path)}))
        results: dict[tuple, list[dict]] = {key: [] for key, _ in cases}
        for round_index in range(args.rounds):
            for key, case in cases if round_index % 2 == 0 else cases[::-1]:
                if args.wait_quiet > 0:
                    wait_until_quiet(0.3, args.wait_quiet)
                result = harness.run_isolated(Path(__file__), case, {}, args.timeout, case["threads"])
                if "error" in result:
                    raise RuntimeError(f"case {case} failed: {result['error']}")
                results[key].append(result)
                fwd, fwdbwd = statistics.median(result["fwd_ms_all"]), statistics.median(result["fwdbwd_ms_all"])
                print(f"round {round_index + 1}: {' '.join(map(str, key))}: fwd {fwd:.1f} ms, fwd+bwd {fwdbwd:.1f} ms, "
                      f"+{result['extra_mb']:.0f} MB, background {result['background_cores']:.2f} cores", flush=True)
    records = [aggregate(key, rounds) for key, rounds in results.items()]
    report = [
        f"3x3 submanifold conv, {args.channels} -> {args.channels} channels, batch 1, torch threads {args.threads}; "
        f"medians over {args.rounds} rounds x {args.repeats} repeats (min in brackets); 'background cores' = CPU "
        f"used by other processes during the case.", "",
        markdown_table(records), "", "Wrapper vs spconv called directly:", *overhead_lines(records), "",
        "Crossover (our spconv wrapper no longer faster than dense):", *crossover_lines(records),
    ]
    text = "\n".join(report)
    print("\n" + text)
    meta = {"channels": args.channels, "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
            "kernel_size": 3, "cpu_count": os.cpu_count(), "argv": sys.argv[1:],
            "note": "spconv's Native CPU path is serial C++ whatever the torch thread count"}
    harness.write_json(args.json, {"meta": meta, "records": records})
    args.json.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {args.json} and {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
