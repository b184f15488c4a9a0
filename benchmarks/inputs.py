"""Inputs of the cost benchmarks: one image and its mask (19 classes), and the depth-5 quadtree of the mask.

- "street": `build_dataset("synthetic:street,1,size=HxW", "train")[0]`, a Cityscapes-like layout whose tree has
  ~32/19/10/4.7/1.7 % active cells at levels 1..5 (the bundled hand-drawn street mask: 38/20/10/4.3/1.5 %).
- "nuclei": the real DSB2018 mask (`instances % 19`) of examples/nuclei_dsb2018.npz, shipped with the repository
  (README, "Test data"), tiled to HxW; its 16-bit image replicated to 3 channels and standardised.
- `density_mask`: random Voronoi masks whose cell count is tuned to a full-resolution active fraction (the
  boundary-density sweep).

A worker reads its input from a file that `save_inputs` wrote (image float32 (3, H, W), mask uint8 (H, W)); every
record carries the tree's active fraction, nodes and MIXED nodes per level.
"""

from __future__ import annotations

import math
from pathlib import Path

import quadtree as qt  # first: sets the OpenMP wait policy before torch loads

import numpy as np
import torch

from harness import NUCLEI

NUM_CLASSES = 19
DEPTH = 5


def street_inputs(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image float32 (3, H, W) normalised, mask uint8 (H, W)) of the synthetic street preset."""
    from training.datasets import build_dataset

    image, mask = build_dataset(f"synthetic:street,1,size={height}x{width},seed={seed}", "train")[0]
    return image.float(), mask.to(torch.uint8)


def nuclei_inputs(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The DSB2018 nuclei image and `instances % 19` mask tiled to (H, W); None when the file is missing."""
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


MASKS = {"street": street_inputs, "nuclei": nuclei_inputs}
"""`--masks` name -> (image, mask) of a size, None when not available."""


def voronoi_mask(height: int, width: int, cells: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W): nearest of `cells` random seeds, each seed a random class of 19 (a boundary-density knob)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.uniform((0, 0), (height, width), size=(cells, 2))
    labels = rng.integers(0, NUM_CLASSES, cells).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    _, nearest = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float32), workers=-1)
    return labels[nearest].reshape(height, width)


def density_mask(height: int, width: int, target: float, seed: int = 0) -> tuple[np.ndarray, float, int]:
    """(mask, its full-resolution active fraction, Voronoi cells): the fraction close to `target` (bisection on
    the cell count)."""
    low, high = 1.0, float(height * width) / 4
    best = None
    for _ in range(14):
        cells = int(round(math.sqrt(low * high)))
        mask = voronoi_mask(height, width, max(cells, 2), seed)
        fraction = qt.tree_stats(qt.encode(mask, DEPTH)).levels[DEPTH].active_fraction
        if best is None or abs(math.log(fraction / target)) < abs(math.log(best[1] / target)):
            best = (mask, fraction, cells)
        if abs(fraction / target - 1) < 0.08:
            break
        low, high = (cells, high) if fraction < target else (low, cells)
    return best


def save_inputs(path: Path, image: torch.Tensor, mask: torch.Tensor, **info) -> dict:
    """Write (image, mask) for the workers; returns {"inputs": path, the active fraction, nodes and MIXED nodes per
    level of the mask's depth-5 tree, **info}."""
    torch.save({"image": image.contiguous(), "mask": mask.contiguous()}, path)
    stats = qt.tree_stats(qt.encode(mask, DEPTH))
    return {"inputs": str(path), "active_fraction_per_level": [round(l.active_fraction, 6) for l in stats.levels],
            "tree_nodes_per_level": [l.nodes for l in stats.levels],
            "tree_mixed_per_level": [l.mixed for l in stats.levels], **info}


def load_inputs(path: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (1, 3, H, W), masks int64 (1, H, W)) on `device`, from a file of `save_inputs`."""
    data = torch.load(path)
    return data["image"][None].to(device), data["mask"][None].long().to(device)
