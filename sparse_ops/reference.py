"""Dense PyTorch definitions of the sparse ops: what `submanifold_conv2d` and `expand_children` must equal.

They allocate the whole (B, C, h, w) grid: for tests and for checking models, never for the network itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_ops.gather import scatter_dense
from sparse_ops.geometry import SparseGeometry


def read_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(N, C): dense (B, C, h, w) read at the (batch, y, x) rows of `coords` (N, 3)."""
    b, y, x = coords.long().unbind(1)
    return dense[b, :, y, x]


def dense_submanifold_conv2d(feats, geometry: SparseGeometry, weight, bias=None, dilation: int = 1):
    """`F.conv2d(dense, weight, bias, padding=dilation * (k // 2), dilation=dilation)` at the sites of `geometry`,
    where `dense` (B, C_in, h, w) holds `feats` (N, C_in) at the sites and zeros elsewhere. Returns (N, C_out)."""
    dense = scatter_dense(feats, geometry)
    k = weight.shape[-1]
    out = F.conv2d(dense, weight, bias, padding=dilation * (k // 2), dilation=dilation)
    return read_sites(out, geometry.coords)


def dense_expand_children(feats, geometry: SparseGeometry, weight, bias=None):
    """`F.conv_transpose2d(dense, weight, bias, stride=2)` at the children of the sites of `geometry`, where `dense`
    holds `feats` (N, C_in) at the sites and zeros elsewhere. Returns (4N, C_out), rows in the order of
    `geometry.children()`."""
    dense = scatter_dense(feats, geometry)
    out = F.conv_transpose2d(dense, weight, bias, stride=2)
    return read_sites(out, geometry.children().coords)
