"""Parent -> children projection: functional `expand_children`, module `ExpandChildren`.

Each parent at level l gets four children at level l + 1, each a learned linear projection of the parent's
features, one per quadrant. This is `F.conv_transpose2d(dense, weight, bias, stride=2)` read at the children
of the given parents, computed as one matmul over the parents only: no tensor of the size of the level grid.
Children of parent i are rows 4i..4i+3 in the (dy, dx) order (0,0), (0,1), (1,0), (1,1) - the quadtree's order,
which is also the order of `SparseGeometry.children`, so the children's sites need no computing here.
Under `torch.autocast` the matmul follows autocast's rules (float32 inputs cast to the autocast dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops import backend as _backend
from sparse_ops.inference_weights import derived_weight, records_autograd
from sparse_ops.init import reset_conv_parameters


def expand_children(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Features of the four children of every parent.

    Args:
        feats: float (N, C_in), one row per parent (their sites: `geometry.children(index)` gives the children's).
        weight: (C_in, C_out, 2, 2) as for `F.conv_transpose2d`; weight[:, :, dy, dx] projects to child (dy, dx).
        bias: (C_out,) or None.
    Returns:
        (4N, C_out); row 4i + 2dy + dx is child (dy, dx) of parent i.
    """
    if isinstance(feats, torch.Tensor):
        feats, weight, bias = _backend.autocast_inputs(feats.device, feats, weight, bias)
    _check_expand_args(feats, weight, bias)
    return _expand(feats, *expansion_columns(weight, bias))


def expansion_columns(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`expand_children`'s weight as one matrix: (C_in, 4 * C_out), columns (dy, dx, c_out) - the product
    (N, 4 * C_out) is already (4N, C_out) in child order, only the small weight is permuted, never the output - and
    the bias repeated for the four children, (4 * C_out,) or None."""
    c_in, c_out = weight.shape[:2]
    return weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out), None if bias is None else bias.repeat(4)


def _expand(feats: torch.Tensor, columns: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = feats @ columns if bias is None else torch.addmm(bias, feats, columns)
    return out.view(4 * feats.shape[0], columns.shape[1] // 4)


def _check_feats(feats, in_channels: int | None) -> None:
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or not feats.is_floating_point():
        raise ValueError("feats must be a float tensor (N, C_in), one row per parent")
    if in_channels is not None and in_channels != feats.shape[1]:
        raise ValueError(f"weight expects C_in={in_channels} (weight is (C_in, C_out, 2, 2), as for "
                         f"F.conv_transpose2d) but feats has {feats.shape[1]} channels")


def _check_expand_args(feats, weight, bias) -> None:
    _check_feats(feats, None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or tuple(weight.shape[2:]) != (2, 2):
        raise ValueError(f"weight must be (C_in, C_out, 2, 2) as for F.conv_transpose2d, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    _check_feats(feats, weight.shape[0])
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[1],)):
        raise ValueError(f"bias must be None or of shape ({weight.shape[1]},)")
    _backend.check_like_feats(feats, weight=weight, bias=bias)


class ExpandChildren(nn.Module):
    """Learned per-quadrant projection of parents to their four children (a sparse 2x2 stride-2 transposed conv).

    Shape:
        forward(feats (N, C_in)) -> (4N, C_out), see `expand_children`.
        forward_dense(x (B, C_in, h, w)) -> (B, C_out, 2h, 2w): the dense twin, same weights.
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
        reset_conv_parameters(self.weight, self.bias, self.out_channels * 4)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor) or records_autograd(feats, self.weight, self.bias):
            return expand_children(feats, self.weight, self.bias)
        # inference: the columns and repeated bias (cast as autocast casts a matmul's inputs) are derived once
        (feats,) = _backend.autocast_inputs(feats.device, feats)
        columns, bias = self.weight_matrix()
        _check_feats(feats, self.in_channels)
        _backend.check_like_feats(feats, weight=columns)
        return _expand(feats, columns, bias)

    def weight_matrix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`expansion_columns` of the parameters, cast to the autocast dtype; derived once while autograd records
        nothing (`sparse_ops.inference_weights`)."""
        return derived_weight(self, "columns", _cast_columns, self.weight, self.bias)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2)

    def macs_per_child(self) -> int:
        """Multiply-accumulates per child: its quadrant of the parent's projection."""
        return self.in_channels * self.out_channels

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def _cast_columns(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return expansion_columns(*_backend.autocast_inputs(weight.device, weight, bias))
