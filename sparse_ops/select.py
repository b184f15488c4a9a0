"""Selecting a subset of a level's nodes (e.g. those predicted MIXED) together with their features."""

from __future__ import annotations

from typing import NamedTuple

import torch

from sparse_ops import backend as _backend
from sparse_ops.geometry import SparseGeometry


class Selection(NamedTuple):
    """The selected nodes.

    Attributes:
        feats: (M, C) rows of the selected nodes (None when no features were given).
        coords: int32 (M, 3) of the selected nodes - or their `SparseGeometry` (same grid) when a geometry was given.
        index: int64 (M,) rows of the selected nodes in the input, in the order they were selected.
    """

    feats: torch.Tensor | None
    coords: torch.Tensor | SparseGeometry
    index: torch.Tensor


def select_nodes(
    feats: torch.Tensor | None, coords: torch.Tensor | SparseGeometry, which: torch.Tensor
) -> Selection:
    """The nodes chosen by `which`, with their features.

    Args:
        feats: (N, C) or None.
        coords: int (N, 3) (batch, y, x), or a `SparseGeometry` of N sites.
        which: bool (N,) mask - the selected rows keep their order - or integer (M,) row indices in 0..N-1
            (any order; with a geometry they must not repeat, since sites are unique).
    Returns:
        `Selection(feats, coords, index)`; e.g. `select_nodes(f, geom, logits.argmax(1) == mixed_class)`.
    """
    geometry = coords if isinstance(coords, SparseGeometry) else None
    coords = geometry.coords if geometry is not None else _backend.as_int32_coords(coords)
    n = coords.shape[0]
    if feats is not None and (not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != n):
        raise ValueError(f"feats must be (N, C) with N = {n} rows (one per node), got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
    index = _as_index(which, n, unique=geometry is not None).to(coords.device)
    selected = coords[index].contiguous()
    if geometry is not None:
        selected = SparseGeometry._trusted(selected, geometry.spatial_shape, geometry.batch_size)
    return Selection(None if feats is None else feats[index.to(feats.device)], selected, index)


def _as_index(which: torch.Tensor, n: int, unique: bool) -> torch.Tensor:
    if not isinstance(which, torch.Tensor) or which.ndim != 1:
        raise ValueError("which must be a 1-D bool mask (N,) or a 1-D integer index tensor (M,)")
    if which.dtype == torch.bool:
        if which.shape[0] != n:
            raise ValueError(f"the bool mask has {which.shape[0]} entries but there are {n} nodes")
        return torch.nonzero(which).flatten()
    if which.is_floating_point() or which.is_complex():
        raise ValueError(f"which must be bool or integer, got {which.dtype}")
    index = which.long()
    if index.numel() > 0:
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= n:
            raise ValueError(f"indices must lie in 0..{n - 1}, got values in {low}..{high} (negative indices are "
                             f"not accepted)")
        if unique and torch.unique(index).numel() != index.numel():
            raise ValueError("indices repeat; a geometry's sites are unique, so each node may be selected once")
    return index
