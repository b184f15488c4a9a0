"""Dense PyTorch definitions of the sparse ops: what `submanifold_conv2d` and `expand_children` must equal.

They allocate the whole (B, C, h, w) grid: for tests and for checking models, never for the network itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_ops.expand import child_coords
from sparse_ops.gather import scatter_dense
from sparse_ops.geometry import SparseGeometry


def read_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(N, C): dense (B, C, h, w) read at the (batch, y, x) rows of `coords` (N, 3)."""
    b, y, x = coords.long().unbind(1)
    return dense[b, :, y, x]


def dense_submanifold_conv2d(feats, coords, spatial_shape, batch_size, weight, bias=None, dilation: int = 1):
    """`F.conv2d(dense, weight, bias, padding=dilation * (k // 2), dilation=dilation)` at the active sites, where
    `dense` (B, C_in, h, w) holds `feats` (N, C_in) at `coords` (N, 3) and zeros elsewhere. Returns (N, C_out)."""
    geometry = SparseGeometry.of(coords, spatial_shape, batch_size)
    dense = scatter_dense(feats, geometry)
    k = weight.shape[-1]
    out = F.conv2d(dense, weight, bias, padding=dilation * (k // 2), dilation=dilation)
    return read_sites(out, geometry.coords)


def dense_expand_children(feats, coords, spatial_shape, batch_size, weight, bias=None):
    """`F.conv_transpose2d(dense, weight, bias, stride=2)` at the children of the parents `coords` (N, 3), where
    `dense` holds `feats` (N, C_in) at the parents and zeros elsewhere. Returns ((4N, C_out), int32 (4N, 3))."""
    geometry = SparseGeometry.of(coords, spatial_shape, batch_size)
    dense = scatter_dense(feats, geometry)
    out = F.conv_transpose2d(dense, weight, bias, stride=2)
    children = child_coords(geometry.coords)
    return read_sites(out, children), children
