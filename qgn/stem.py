"""Pixel features at the fine levels (strides 1 and 2) that the encoder does not produce.

`PixelStem` is a k x k convolution of the (average-pooled) image, evaluated only at a level's nodes: it reads
the k x k patch of (pooled) pixels around each node straight from the image (`gather_patches`) and applies one
matmul. Its weight has the
`F.conv2d` layout, so the dense twin is `F.conv2d(pooled_image, weight, bias, padding=k // 2)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops import SparseGeometry


def gather_patches(images: torch.Tensor, coords: torch.Tensor, kernel_size: int = 3, stride: int = 1) -> torch.Tensor:
    """The k x k neighbourhood of each node in the image average-pooled to `stride`, zero outside the image.

    Reads only the pixels it needs (k * k * stride**2 per node and channel): neither the pooled image nor a
    padded copy is built.

    Args:
        images: float (B, C, H, W), H and W multiples of `stride`.
        coords: int (N, 3) (batch, y, x) in the grid of stride `stride`.
    Returns:
        (N, C * k * k), columns in (c, ky, kx) order - as `F.unfold(F.avg_pool2d(images, stride), k, padding=k // 2)`
        read at the nodes, and as `weight.flatten(1)` of a conv.
    """
    batch, channels, height, width = images.shape
    n = coords.shape[0]
    b, y, x = coords.long().unbind(1)
    taps = torch.arange(kernel_size, device=images.device) - kernel_size // 2
    ty, tx = y[:, None] + taps, x[:, None] + taps  # (N, k): rows and columns in the pooled grid
    valid = ((ty >= 0) & (ty < height // stride))[:, :, None] & ((tx >= 0) & (tx < width // stride))[:, None, :]
    sub = torch.arange(stride, device=images.device)
    rows = (ty.clamp(0, height // stride - 1)[:, :, None] * stride + sub)  # (N, k, s) pixel rows
    cols = (tx.clamp(0, width // stride - 1)[:, :, None] * stride + sub)  # (N, k, s) pixel columns
    # Advanced indices around a slice: the indexed dims come first -> (N, k, s, k, s, C).
    pixels = images[b[:, None, None, None, None], :, rows[:, :, :, None, None], cols[:, None, None, :, :]]
    pooled = pixels.mean(dim=(2, 4)) if stride > 1 else pixels[:, :, 0, :, 0]  # (N, k, k, C)
    pooled = pooled * valid[..., None]
    return pooled.permute(0, 3, 1, 2).reshape(n, channels * kernel_size ** 2)


class PixelStem(nn.Module):
    """k x k conv of the image average-pooled to `stride`, at the nodes of a level of that stride.

    Shape:
        forward(images (B, C_in, H, W), geometry: the sites of a level of stride `stride`) -> (N, C_out)
        forward_dense(images) -> (B, C_out, H / stride, W / stride): the dense twin, same weights
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

    def forward(self, images: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        patches = gather_patches(images, geometry.coords, self.kernel_size, self.stride)
        return torch.addmm(self.bias, patches, self.weight.flatten(1).t())

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pooled(images), self.weight, self.bias, padding=self.kernel_size // 2)

    def macs_per_site(self) -> int:
        return self.in_channels * self.kernel_size ** 2 * self.out_channels

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kernel_size={self.kernel_size}"
