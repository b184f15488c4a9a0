"""Does training with the default settings converge stably on real data? Last vs best, on a split never seen.

    python benchmarks/bench_convergence.py                          # prints the table
    python benchmarks/bench_convergence.py --out benchmarks/results # also writes convergence.{json,md,png}

Data: the real 16-bit fluorescence image of examples/nuclei_dsb2018.npz (512x512, human-labelled nuclei),
cut into 16 tiles of 128x128 (`instances > 0` as the binary mask), written as a `folder:` data set with split
folders: 10 tiles train, 3 val, 3 test (a fixed shuffle). Each configuration runs `qgn train` in a fresh process
with the default settings plus the listed overrides (`--normalize` modes: "auto" is the default, "fixed" the
ImageNet statistics that were the default before), validating every epoch. Reported: validation mIoU per epoch,
its spread over the last half of the run, the best epoch, and the test mIoU of last.pt and best.pt (selected on
validation, reported on test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import harness
from harness import NUCLEI, ROOT


def write_tiles(root: Path, tile: int = 128, seed: int = 0) -> dict:
    """The nuclei image cut into tiles, as root/{train,val,test}/{images,masks}/<name>.png; returns the split sizes."""
    from PIL import Image

    with np.load(NUCLEI) as data:
        image, instances = data["image"], data["instances"]
    tiles = [(y, x) for y in range(0, image.shape[0], tile) for x in range(0, image.shape[1], tile)]
    order = np.random.default_rng(seed).permutation(len(tiles))
    splits = {"train": order[:10], "val": order[10:13], "test": order[13:16]}
    for split, indices in splits.items():
        for i in indices:
            y, x = tiles[i]
            for kind, array in (("images", image[y:y + tile, x:x + tile]),
                                ("masks", (instances[y:y + tile, x:x + tile] > 0).astype(np.uint8))):
                path = root / split / kind / f"tile{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return {split: len(indices) for split, indices in splits.items()}


def run(data: Path, out: Path, normalize: str, model: str, epochs: int, extra: list[str]) -> dict:
    import yaml

    config = {"data": {"normalize": {"mode": normalize}}}
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "qgn_cli", "train", "--config", str(out.parent / f"{out.name}.yaml"),
               "--data", f"folder:{data}", "--num-classes", "2", "--in-channels", "1", "--crop", "128",
               "--batch-size", "2", "--epochs", str(epochs), "--model", model, "--no-progress", "--out", str(out),
               *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r["val"]["miou"] for r in records if "val" in r]
    test = next(r["test"] for r in records if "test" in r)
    half = val[len(val) // 2:]
    return {"normalize": normalize, "model": model, "epochs": epochs, "extra": " ".join(extra),
            "val_miou": [round(v, 4) for v in val], "val_last": val[-1], "val_best": max(val),
            "best_epoch": int(np.argmax(val)) + 1, "val_min_second_half": min(half),
            "val_std_second_half": statistics.pstdev(half),
            "test_last": test["last"]["miou"], "test_best": test["best"]["miou"],
            "test_gap": test["best"]["miou"] - test["last"]["miou"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | normalize | other flags | val mIoU last / best (epoch) | val min / std, 2nd half | "
             "test mIoU last.pt / best.pt | best - last (test) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['normalize']} | {r['extra'] or '-'} | {r['val_last']:.4f} / "
                     f"{r['val_best']:.4f} ({r['best_epoch']}) | {r['val_min_second_half']:.4f} / "
                     f"{r['val_std_second_half']:.4f} | {r['test_last']:.4f} / {r['test_best']:.4f} | "
                     f"{r['test_gap']:+.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for r in rows:
        ax.plot(range(1, len(r["val_miou"]) + 1), r["val_miou"], marker=".",
                label=f"{r['model']}, normalize {r['normalize']} {r['extra']}".strip())
    ax.set(xlabel="epoch", ylabel="validation mIoU",
           title="Real 16-bit nuclei tiles (10 train / 3 val / 3 test), default settings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", default="qgn,dense")
    parser.add_argument("--normalize", default="auto,fixed", help="normalisation modes to compare")
    parser.add_argument("--out", help="write convergence.json, .md and .png here (default: print only)")
    args = parser.parse_args(argv)
    if not NUCLEI.is_file():
        raise SystemExit(f"needs the real nuclei image at {NUCLEI}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "nuclei_tiles"
        sizes = write_tiles(data)
        for model in args.models.split(","):
            for mode in args.normalize.split(","):
                rows.append(run(data, Path(tmp) / f"{model}_{mode}", mode, model, args.epochs, []))
                print(json.dumps(rows[-1]), flush=True)
    text = (f"Measured with `python benchmarks/bench_convergence.py {' '.join(argv or sys.argv[1:])}` ({os.cpu_count()} "
            f"CPUs); tiles per split {sizes}.\n\n" + table(rows) + "\n")
    print(text)
    if args.out:
        out = Path(args.out)
        harness.write_json(out / "convergence.json", rows)
        (out / "convergence.md").write_text(text + "\n![validation mIoU per epoch](convergence.png)\n")
        plot(rows, out / "convergence.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
