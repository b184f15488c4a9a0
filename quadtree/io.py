"""Saving and loading quadtrees as one versioned .npz file, and the atomic file writer every saver uses."""

from __future__ import annotations

import os
import secrets
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from quadtree.tree import Quadtree, QuadtreeLevel, check_structure

FORMAT = "qgn-quadtree"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file all at once: `write(f)` fills a new temporary file beside `path`, which is then renamed onto
    `path` (os.replace), so readers see the old file or the whole new one, never a partial one.

    The parent folder is created when missing. When `write` raises (or the process is interrupted), the temporary
    file is removed and `path` is left as it was. The file gets the permissions of any new file (umask).
    Returns:
        `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save(tree: Quadtree, path: str | os.PathLike) -> Path:
    """Write `tree` to `path` (.npz, suffix added when missing) atomically: a temp file renamed into place.

    Layout: `format` ("qgn-quadtree"), `version` (1), `meta` int64 [depth, batch_size, H, W, ignore_index, 1],
    and per level l: `coords_l` int32 (N, 3), `labels_l` int64 (N,), `parent_l` int64 (N,). The last meta value
    (formerly a display flag, 1 = decode to (B, H, W)) is written for older readers and ignored by `load`.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    tree = tree.to("cpu")
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(FORMAT_VERSION),
        "meta": np.array([tree.depth, tree.batch_size, *tree.image_size, tree.ignore_index, 1], dtype=np.int64),
    }
    for l, level in enumerate(tree.levels):
        arrays[f"coords_{l}"] = level.coords.numpy()
        arrays[f"labels_{l}"] = level.labels.numpy()
        arrays[f"parent_{l}"] = level.parent.numpy()
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> Quadtree:
    """Read a tree written by `save`, checking its format, version and every structural invariant.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a quadtree file, another format version, missing arrays, or a corrupt structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quadtree file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable quadtree .npz file ({error}); re-create it with "
                         f"`qgn encode` or quadtree.save") from error
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise ValueError(f"{path} is not a quadtree file (no '{FORMAT}' format tag); create it with `qgn encode` "
                         f"or quadtree.save")
    version = int(arrays.get("version", -1))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has quadtree format version {version}; this engine reads version "
                         f"{FORMAT_VERSION}: re-encode it from the mask")
    try:
        meta = [int(v) for v in arrays["meta"]]
        if len(meta) not in (5, 6):  # 6: files that stored a display flag (ignored)
            raise ValueError(f"meta holds {len(meta)} values, expected [depth, batch_size, H, W, ignore_index]")
        depth, batch_size, height, width, ignore_index = meta[:5]
        levels = tuple(
            QuadtreeLevel(
                torch.from_numpy(arrays[f"coords_{l}"]).contiguous(),
                torch.from_numpy(arrays[f"labels_{l}"]),
                torch.from_numpy(arrays[f"parent_{l}"]),
            )
            for l in range(depth + 1)
        )
        tree = Quadtree(levels=levels, depth=depth, batch_size=batch_size, image_size=(height, width),
                        ignore_index=ignore_index)
        check_structure(tree)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} is a corrupt quadtree file: {error}") from error
    return tree.to(device)
