"""Saving and loading quadtrees as one versioned .npz file."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from quadtree.tree import Quadtree, QuadtreeLevel, check_structure

FORMAT = "qgn-quadtree"
FORMAT_VERSION = 1


def save(tree: Quadtree, path: str | os.PathLike) -> Path:
    """Write `tree` to `path` (.npz, suffix added when missing) atomically: a temp file renamed into place.

    Layout: `format` ("qgn-quadtree"), `version` (1), `meta` int64 [depth, batch_size, H, W, ignore_index,
    batched], and per level l: `coords_l` int32 (N, 3), `labels_l` int64 (N,), `parent_l` int64 (N,).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    tree = tree.to("cpu")
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(FORMAT_VERSION),
        "meta": np.array([tree.depth, tree.batch_size, *tree.image_size, tree.ignore_index, int(tree.batched)],
                         dtype=np.int64),
    }
    for l, level in enumerate(tree.levels):
        arrays[f"coords_{l}"] = level.coords.numpy()
        arrays[f"labels_{l}"] = level.labels.numpy()
        arrays[f"parent_{l}"] = level.parent.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


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
        depth, batch_size, height, width, ignore_index, batched = (int(v) for v in arrays["meta"])
        levels = tuple(
            QuadtreeLevel(
                torch.from_numpy(arrays[f"coords_{l}"]).contiguous(),
                torch.from_numpy(arrays[f"labels_{l}"]),
                torch.from_numpy(arrays[f"parent_{l}"]),
            )
            for l in range(depth + 1)
        )
        tree = Quadtree(levels=levels, depth=depth, batch_size=batch_size, image_size=(height, width),
                        ignore_index=ignore_index, batched=bool(batched))
        check_structure(tree)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} is a corrupt quadtree file: {error}") from error
    return tree.to(device)
