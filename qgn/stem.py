"""Pixel features at the fine levels (strides 1 and 2) that the encoder does not produce.

`PixelStem` is a k x k convolution of the (average-pooled) image, evaluated only at a level's nodes: it reads
the k x k patch of pixels around each node (`gather_patches`) and applies one matmul. Its weight has the
`F.conv2d` layout, so the dense twin is `F.conv2d(pooled_image, weight, bias, padding=k // 2)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gather_patches(image: torch.Tensor, coords: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """The k x k neighbourhood of each node, zero outside the image.

    Args:
        image: float (B, C, h, w) at the level's resolution.
        coords: int (N, 3) (batch, y, x) in the same grid.
    Returns:
        (N, C * k * k), columns in (c, ky, kx) order - as `F.unfold` and `weight.flatten(1)` of a conv.
    """
    pad = kernel_size // 2
    padded = F.pad(image, (pad, pad, pad, pad))
    b, y, x = coords.long().unbind(1)
    taps = [padded[b, :, y + dy, x + dx] for dy in range(kernel_size) for dx in range(kernel_size)]  # k*k x (N, C)
    return torch.stack(taps, 2).reshape(coords.shape[0], image.shape[1] * kernel_size ** 2)  # (N, C, k*k) -> (N, C*k*k)


class PixelStem(nn.Module):
    """k x k conv of the image average-pooled to `stride`, at the nodes of a level of that stride.

    Shape:
        forward(images (B, C_in, H, W), coords (N, 3) at stride `stride`) -> (N, C_out)
        forward_dense(images) -> (B, C_out, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.kernel_size = in_channels, out_channels, stride, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(in_channels * kernel_size ** 2), 1 / math.sqrt(in_channels * kernel_size ** 2))

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.stride == 1 else F.avg_pool2d(images, self.stride)

    def forward(self, images: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        patches = gather_patches(self.pooled(images), coords, self.kernel_size)
        return torch.addmm(self.bias, patches, self.weight.flatten(1).t())

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pooled(images), self.weight, self.bias, padding=self.kernel_size // 2)

    def macs_per_node(self) -> int:
        return self.in_channels * self.kernel_size ** 2 * self.out_channels

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kernel_size={self.kernel_size}"
