"""Between dense maps and the nodes of a level: `gather_dense` (dense -> nodes) and `scatter_dense` (nodes -> dense).

Geometry. A level grid (h, w) and a dense map (H, W) cover the same image; the map may be at the level's own
resolution (H, W) = (h, w) or coarser by integer factors fy = h / H, fx = w / W (e.g. an encoder feature map at
stride 16 gathered at a stride-4 level: fy = fx = 4). Level cell (y, x) covers map pixel (y // fy, x // fx).

Modes of `gather_dense`:
- "nearest": the map pixel covering the cell, dense[b, :, y // fy, x // fx] (`F.interpolate(mode="nearest")`).
- "bilinear": bilinear interpolation at the cell's centre with pixel-centre (align_corners=False) semantics:
  the centre of cell y lies at map coordinate sy = (y + 0.5) / fy - 0.5, clamped below at 0; y0 = floor(sy),
  y1 = min(y0 + 1, H - 1), weight sy - y0 on row y1 (the same along x). This is exactly
  `F.interpolate(dense, size=(h, w), mode="bilinear", align_corners=False)` read at the node - and
  `F.grid_sample(..., align_corners=False, padding_mode="border")` at the cell centres - without building the
  upsampled map.
"""

from __future__ import annotations

import torch

from sparse_ops.geometry import SparseGeometry

MODES = ("nearest", "bilinear")
"""Valid `mode=` names of `gather_dense`."""


def gather_dense(dense: torch.Tensor, geometry: SparseGeometry, mode: str = "nearest") -> torch.Tensor:
    """Features of a dense map at the sites of a level (see the module docstring for the geometry and modes).

    Args:
        dense: float (B, C, H, W), B the geometry's batch size; the geometry's grid (h, w) must be (H, W) times
            an integer factor per axis.
        geometry: the sites (`sparse_ops.level_geometry(tree, level)` or a `SparseGeometry`).
        mode: "nearest" or "bilinear".
    Returns:
        (N, C) of `dense`'s dtype, differentiable with respect to `dense`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(map(repr, MODES))}")
    if not isinstance(dense, torch.Tensor) or dense.ndim != 4 or not dense.is_floating_point():
        raise ValueError("dense must be a float tensor (B, C, H, W)")
    _check_geometry(geometry)
    batch, _, height, width = dense.shape
    if geometry.batch_size != batch:
        raise ValueError(f"dense has batch size {batch} but the geometry {geometry.batch_size}")
    shape, coords = geometry.spatial_shape, geometry.coords
    if coords.device != dense.device:
        raise ValueError(f"the geometry is on {coords.device} but dense on {dense.device}")
    h, w = shape
    if h % height or w % width:
        raise ValueError(
            f"the level grid {shape} must be the dense map's size {(height, width)} times an integer factor per "
            f"axis; pool a finer map down first (e.g. F.avg_pool2d) or gather at the level of the map's stride"
        )
    fy, fx = h // height, w // width
    b, y, x = coords.long().unbind(1)  # one copy: indexing would convert each int32 index tensor itself
    if mode == "nearest":
        return dense[b, :, y if fy == 1 else y // fy, x if fx == 1 else x // fx]  # (N, C)
    y0, y1, wy = _linear_taps(y, fy, height, dense.dtype)
    x0, x1, wx = _linear_taps(x, fx, width, dense.dtype)
    wy, wx = wy[:, None], wx[:, None]
    top = dense[b, :, y0, x0] * (1 - wx) + dense[b, :, y0, x1] * wx
    bottom = dense[b, :, y1, x0] * (1 - wx) + dense[b, :, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _linear_taps(i: torch.Tensor, factor: int, size: int, dtype: torch.dtype):
    """Source pixels i0, i1 and weight of i1 for the centres of fine cells i (align_corners=False, clamped)."""
    src = ((i.to(torch.float64) + 0.5) / factor - 0.5).clamp_min(0.0)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp_max(size - 1)
    return i0, i1, (src - i0).to(dtype)


def scatter_dense(feats: torch.Tensor, geometry: SparseGeometry, fill_value: float = 0.0) -> torch.Tensor:
    """A dense (B, C, h, w) map holding `feats` at the sites and `fill_value` elsewhere (references, pictures).

    Args:
        feats: (N, C), any dtype, one row per site of `geometry`.
        geometry: the sites on a (B, h, w) grid.
        fill_value: value of the cells without a site (e.g. float("nan") to tell them apart).
    Returns:
        (B, C, h, w) of `feats`' dtype, differentiable with respect to `feats`.
    Note: this allocates the whole grid - it is for references and pictures, not for the sparse network.
    """
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
        raise ValueError("feats must be a tensor (N, C)")
    _check_geometry(geometry)
    coords = geometry.coords
    if feats.shape[0] != coords.shape[0]:
        raise ValueError(f"feats has {feats.shape[0]} rows but the geometry {coords.shape[0]} sites")
    if coords.device != feats.device:
        raise ValueError(f"the geometry is on {coords.device} but feats on {feats.device}")
    out = feats.new_full((geometry.batch_size, feats.shape[1], *geometry.spatial_shape), fill_value)
    b, y, x = coords.long().unbind(1)
    out[b, :, y, x] = feats
    return out


def _check_geometry(geometry) -> None:
    if not isinstance(geometry, SparseGeometry):
        raise ValueError(f"geometry must be a SparseGeometry, got {type(geometry).__name__}; build one with "
                         f"SparseGeometry(coords, (h, w), batch_size) or sparse_ops.level_geometry(tree, level)")
