"""What the cost benchmarks share: one configuration per fresh process, its time and peak memory, its record.

Isolation: `run_isolated` starts a fresh Python process per configuration (imports, lazy initialisations and the
allocator state of one configuration never reach another; the process's peak RSS belongs to it alone) and reads
back the one line `BENCH_RECORD {json}` that the worker printed with `print_record`.

Measurement (`measure`, inside the worker): median wall time of `repeats` runs after `warmup` runs (CUDA
synchronised around each), median process CPU time (all threads: steadier than wall time on a shared machine),
and peak memory of the measured work, warm-up runs included (the first training step allocates AdamW's state):

- CPU: `peak_memory_mb` = peak RSS growth = peak RSS at the end minus the RSS right before the measured work. The
  kernel's peak-RSS counter is reset there through /proc/self/clear_refs (`peak_reset`) and read as VmHWM, the
  address space's peak RSS that `ru_maxrss` reports (`ru_maxrss` itself also keeps peaks recorded when threads
  exited, which cannot be reset; it is kept as `ru_maxrss_mb`); `peak_rss_mb` = the absolute peak.
- CUDA: `peak_memory_mb` = `torch.cuda.max_memory_allocated()` minus the memory allocated before the work.

Records: one dict per configuration (`model`, `mode`, `height`, `width`, `depth`, `mask`, the measurement, ...;
`{"error": ...}` with the configuration's identity when the worker failed), written as a JSON list.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUCLEI = ROOT / "examples" / "nuclei_dsb2018.npz"  # shipped with the repository (README, "Test data")
RECORD_PREFIX = "BENCH_RECORD "


def run_isolated(script: Path, spec: dict, identity: dict, timeout: float, threads: int,
                 omp_wait_policy: str = "") -> dict:
    """Run `python script SPEC_JSON` (a worker ending in `print_record`) in a fresh process, cwd the repository,
    OMP/MKL_NUM_THREADS=threads and OMP_WAIT_POLICY=omp_wait_policy unless ""; the record it printed, or
    `{**identity, "error": ...}`."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    try:
        done = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {**identity, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RECORD_PREFIX):
            return json.loads(line[len(RECORD_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {**identity, "error": f"worker exit {done.returncode}: {' | '.join(tail)}"}


def print_record(record: dict) -> None:
    """The worker's answer to `run_isolated` (the last line of its stdout that carries the prefix)."""
    print(RECORD_PREFIX + json.dumps(record), flush=True)


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def status_mb(field: str) -> float:
    """A field of /proc/self/status in MB: VmRSS (the current RSS) or VmHWM (the address space's peak RSS: what
    ru_maxrss reports, except that ru_maxrss also keeps the peak seen when any thread of the process exited, which
    /proc/self/clear_refs cannot reset). ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
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


def measure(step: Callable[[], object], warmup: int, repeats: int, device) -> dict:
    """Run `step()` warmup + repeats times; time and peak memory as the module docstring says (load_avg_1min: when
    the work started). Call it once the process has paid its one-off costs (imports, model, inputs, a priming
    pass): everything allocated from here on counts."""
    import torch

    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    gc.collect()
    sync()
    peak_reset = reset_peak_rss()
    baseline_rss = status_mb("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline_alloc = torch.cuda.memory_allocated(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times, cpu_times = [], []
    for i in range(warmup + repeats):
        cpu_start = time.process_time()
        sync()
        start = time.perf_counter()
        step()
        sync()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
            cpu_times.append(time.process_time() - cpu_start)
    sync()
    peak_rss = status_mb("VmHWM")
    if cuda:
        peak_memory = (torch.cuda.max_memory_allocated(device) - baseline_alloc) / 2 ** 20
    else:
        peak_memory = peak_rss - baseline_rss
    return {"peak_memory_mb": round(peak_memory, 1), "peak_rss_mb": round(peak_rss, 1),
            "baseline_rss_mb": round(baseline_rss, 1), "peak_reset": peak_reset,
            "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
            "median_ms": round(1e3 * statistics.median(times), 2), "times_ms": [round(1e3 * t, 2) for t in times],
            "median_cpu_ms": round(1e3 * statistics.median(cpu_times), 2),
            "load_avg_1min": None if load is None else round(load, 2)}


def parse_sizes(text: str, multiple: int) -> list[tuple[int, int]]:
    """"512x1024,1024x2048" -> [(512, 1024), (1024, 2048)]; each side a multiple of `multiple`."""
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not HxW (e.g. 512x1024)") from None
        if h % multiple or w % multiple:
            raise SystemExit(f"--sizes: {item} must be multiples of {multiple}")
        sizes.append((h, w))
    return sizes


def parse_list(text: str, valid, flag: str) -> list[str]:
    items = [v for v in text.split(",") if v]
    bad = [v for v in items if v not in valid]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; valid: {', '.join(valid)}")
    return items


def main(args, argv: list[str], measure: Callable, report: Callable) -> int:
    """A cost benchmark once its arguments are parsed: the records of `measure(args, temporary folder, argv)`
    (under --render-only: those of --json) to --json, then `report(args, records, argv)`."""
    if args.render_only:  # the command line recorded in the records is the measuring one
        records = json.loads(Path(args.json).read_text())
        report(args, records, next((r["argv"] for r in records if r.get("argv") is not None), []))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        records = measure(args, Path(tmp), argv)
    write_json(Path(args.json), records)
    report(args, records, argv)
    print(f"wrote {args.json}, {args.markdown}, {args.plot}")
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def command_line(script: str, argv: list[str]) -> str:
    """The command that measured a set of records, as README and the markdown reports quote it."""
    return f"python benchmarks/{script}" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))


def fmt_macs(macs) -> str:
    return "-" if macs is None else f"{macs / 1e9:.2f}"


def fmt_depth(depth) -> str:
    return "full" if depth is None else str(depth)


def find(records: list[dict], **where) -> dict | None:
    """The first record without an error whose fields equal `where`."""
    return next((r for r in records if "error" not in r and all(r.get(k) == v for k, v in where.items())), None)


def progress(r: dict) -> str:
    """One line per finished configuration (stderr)."""
    head = f"{r.get('height')}x{r.get('width')} {r['mask']} {r['model']} {r['mode']} depth={fmt_depth(r['depth'])}" \
           f" batch={r.get('batch_size', 1)}"
    if "error" in r:
        return f"{head}: ERROR {r['error']}"
    return f"{head}: {r['median_ms']:.0f} ms, +{r['peak_memory_mb']:.0f} MB (RSS {r['peak_rss_mb']:.0f}), " \
           f"{fmt_macs(r['macs'])} GMACs"


def environment(records: list[dict]) -> str:
    """Machine, Python, torch and the load average the records were measured under."""
    import torch

    loads = [r["load_avg_1min"] for r in records if r.get("load_avg_1min") is not None]
    versions = sorted({r["torch"] for r in records if r.get("torch")}) or [torch.__version__]
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
            f"{', '.join(versions)}" + ("" if not loads else f"; 1-min load average when the configurations "
                                                           f"started {min(loads):.1f} .. {max(loads):.1f}"))


def write_json(path: Path, data, indent: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))
