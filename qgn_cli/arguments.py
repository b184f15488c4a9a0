"""What several commands share: output folders, and the precision flags."""

from __future__ import annotations

import argparse
from pathlib import Path


def output_dir(out: str, inputs: list[Path]) -> Path:
    """`out` as a directory to write into (created). ValueError when it is an existing file, or when two `inputs`
    share a file stem (their outputs in `out` would overwrite each other)."""
    seen: dict[str, Path] = {}
    for path in inputs:
        if path.stem in seen:
            raise ValueError(f"{seen[path.stem]} and {path} share the name {path.stem!r}, so their outputs in {out} "
                             f"would overwrite each other; rename one, or run them with different --out folders")
        seen[path.stem] = path
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out} is an existing file; name a directory to write the results into")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_precision_flags(parser: argparse.ArgumentParser, default) -> None:
    """--amp and --tf32 (qgn.precision); `default` None leaves the run's config (train) in charge."""
    from qgn.precision import AMP_DTYPES

    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=default,
                        help="mixed precision: off (float32), fp16 (CUDA) or bf16" + (" (default off)" if default
                                                                                      is None else ""))
    parser.add_argument("--tf32", action="store_true", default=None if default is None else False,
                        help="let float32 convs and matmuls use TF32 on Ampere+ GPUs (otherwise IEEE float32)")

