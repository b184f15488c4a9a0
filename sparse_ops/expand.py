"""Parent -> children projection: functional `expand_children`, module `ExpandChildren`.

Each parent at level l gets four children at level l + 1, each a learned linear projection of the parent's
features, one per quadrant. This is `F.conv_transpose2d(dense, weight, bias, stride=2)` read at the children
of the given parents, computed as one matmul over the parents only: no tensor of the size of the level grid.
Children of parent i are rows 4i..4i+3 in the (dy, dx) order (0,0), (0,1), (1,0), (1,1) - the quadtree's order.
Under `torch.autocast` the matmul follows autocast's rules (float32 inputs cast to the autocast dtype).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import quadtree
from quadtree import CHILD_OFFSETS  # noqa: F401  (re-exported: the (dy, dx) order of the children)
from sparse_ops import backend as _backend
from sparse_ops.geometry import SparseGeometry


def child_coords(coords: torch.Tensor) -> torch.Tensor:
    """int32 (4N, 3): (batch, 2y + dy, 2x + dx) of the children of each (batch, y, x) row of `coords` (N, 3), any
    integer dtype or layout; the quadtree's own order (`quadtree.child_coords`, `quadtree.CHILD_OFFSETS`)."""
    return quadtree.child_coords(_backend.as_int32_coords(coords))


def expand_children(
    feats: torch.Tensor,
    coords: torch.Tensor | SparseGeometry,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | SparseGeometry]:
    """Features and coordinates of the four children of every parent.

    Args:
        feats: float (N, C_in), one row per parent.
        coords: int (N, 3) (batch, y, x) of the parents at level l (any integer dtype/layout), or a
            `SparseGeometry` of them.
        weight: (C_in, C_out, 2, 2) as for `F.conv_transpose2d`; weight[:, :, dy, dx] projects to child (dy, dx).
        bias: (C_out,) or None.
    Returns:
        child_feats: (4N, C_out); row 4i + 2dy + dx is child (dy, dx) of parent i.
        child_coords: int32 (4N, 3) at level l + 1 (2 * parent yx + (dy, dx), batch kept) - or, when `coords`
            is a geometry, the children's `SparseGeometry` on the grid (2h, 2w).
    """
    if isinstance(coords, SparseGeometry):
        parents = coords.coords
    else:
        parents = _backend.as_int32_coords(coords)
    if isinstance(feats, torch.Tensor):
        feats, weight, bias = _backend.autocast_inputs(feats.device, feats, weight, bias)
    _check_expand_args(feats, parents, weight, bias)
    c_in, c_out = weight.shape[:2]
    n = feats.shape[0]
    out = feats @ weight.reshape(c_in, c_out * 4)  # (N, C_out * 4), columns (c_out, dy, dx)
    out = out.reshape(n, c_out, 4).transpose(1, 2).reshape(4 * n, c_out)  # (N, 4, C_out) -> (4N, C_out)
    if bias is not None:
        out = out + bias
    children = child_coords(parents)
    if isinstance(coords, SparseGeometry):
        h, w = coords.spatial_shape
        # children of unique in-grid parents are unique and in-grid: no need to re-validate
        children = SparseGeometry._trusted(children, (2 * h, 2 * w), coords.batch_size)
    return out, children


def _check_expand_args(feats, parents, weight, bias) -> None:
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or not feats.is_floating_point():
        raise ValueError("feats must be a float tensor (N, C_in)")
    if feats.shape[0] != parents.shape[0]:
        raise ValueError(f"feats has {feats.shape[0]} rows but coords {parents.shape[0]}; one row per parent")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or tuple(weight.shape[2:]) != (2, 2):
        raise ValueError(f"weight must be (C_in, C_out, 2, 2) as for F.conv_transpose2d, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if weight.shape[0] != feats.shape[1]:
        raise ValueError(f"weight expects C_in={weight.shape[0]} (weight is (C_in, C_out, 2, 2), as for "
                         f"F.conv_transpose2d) but feats has {feats.shape[1]} channels")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[1],)):
        raise ValueError(f"bias must be None or of shape ({weight.shape[1]},)")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and (tensor.dtype != feats.dtype or tensor.device != feats.device):
            raise ValueError(f"{name} is {tensor.dtype} on {tensor.device} but feats {feats.dtype} on {feats.device}")


class ExpandChildren(nn.Module):
    """Learned per-quadrant projection of parents to their four children (a sparse 2x2 stride-2 transposed conv).

    Shape:
        forward(feats (N, C_in), coords (N, 3) or SparseGeometry) -> (child_feats (4N, C_out), child coords or
        child SparseGeometry), see `expand_children`.
    Attributes:
        weight: (C_in, C_out, 2, 2) as for `F.conv_transpose2d`, initialised like `nn.ConvTranspose2d`'s.
        bias: (C_out,) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, 2, 2))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.ConvTranspose2d`'s initialisation (its fan_in is weight.size(1) * 2 * 2 = C_out * 4)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.out_channels * 4)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, feats, coords):
        return expand_children(feats, coords, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
