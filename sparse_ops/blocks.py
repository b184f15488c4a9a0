"""Residual block over the nodes of a level: SubMConv + NodeBatchNorm + ReLU, twice, plus the input."""

from __future__ import annotations

import torch
from torch import nn

from sparse_ops.batchnorm import NodeBatchNorm
from sparse_ops.geometry import SparseGeometry
from sparse_ops.submanifold import SubMConv2d


class SubMResBlock(nn.Module):
    """ResNet basic block on active sites: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Both convs share the level's rulebook through the `SparseGeometry`. The shortcut is the identity, or a
    1x1 conv + NodeBatchNorm when in_channels != out_channels.

    Args:
        in_channels, out_channels (default in_channels), kernel_size (odd), dilation, backend: as `SubMConv2d`.
    Shape:
        forward(feats (N, C_in), geometry) -> (N, C_out).
        forward_dense(x (B, C_in, H, W)) -> (B, C_out, H, W): the dense twin, same weights and statistics.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, dilation: int = 1,
                 backend: str = "auto"):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.conv1 = SubMConv2d(in_channels, out_channels, kernel_size, dilation, bias=False, backend=backend)
        self.bn1 = NodeBatchNorm(out_channels)
        self.conv2 = SubMConv2d(out_channels, out_channels, kernel_size, dilation, bias=False, backend=backend)
        self.bn2 = NodeBatchNorm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.ModuleDict({
                "conv": SubMConv2d(in_channels, out_channels, 1, bias=False, backend=backend),
                "bn": NodeBatchNorm(out_channels),
            })

    def forward(self, feats: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(feats, geometry)))
        out = self.bn2(self.conv2(out, geometry))
        identity = feats if self.shortcut is None else self.shortcut["bn"](self.shortcut["conv"](feats, geometry))
        return self.relu(out + identity)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1.forward_dense(self.conv1.forward_dense(x)))
        out = self.bn2.forward_dense(self.conv2.forward_dense(out))
        identity = x if self.shortcut is None else \
            self.shortcut["bn"].forward_dense(self.shortcut["conv"].forward_dense(x))
        return self.relu(out + identity)

    def macs_per_site(self) -> int:
        """Multiply-accumulates per site (both convs and the shortcut conv; batch norm not counted)."""
        convs = [self.conv1, self.conv2] + ([] if self.shortcut is None else [self.shortcut["conv"]])
        return sum(conv.macs_per_site() for conv in convs)
