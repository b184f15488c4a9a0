"""Pixel features at the fine levels (strides 1 and 2) that the encoder does not produce.

`PixelStem` is a k x k convolution of the (average-pooled) image, evaluated only at a level's nodes: it reads
the k x k window of (pooled) pixels around each node (`window_pixels`) and applies one matmul. Its weight has the
`F.conv2d` layout, so the dense twin is `F.conv2d(pooled_image, weight, bias, padding=k // 2)`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops import SparseGeometry
from sparse_ops.backend import autocast_inputs
from sparse_ops.inference_weights import derived_weight
from sparse_ops.rulebook import window_index


def window_pixels(images: torch.Tensor, coords: torch.Tensor, kernel_size: int = 3, stride: int = 1) -> torch.Tensor:
    """The k x k window of pixels around each node in the image average-pooled to `stride`, zero outside the image.

    Pooled (stride > 1): one gather from the pooled image with a zero border (`bordered_pixels`) at the cells
    `rulebook.window_index` gives. Full resolution (stride 1): no bordered copy of the image (at 1024x2048 it would
    set the memory peak of a prediction) - read at the clamped positions, the taps outside the image zeroed.

    Args:
        images: float (B, C, H, W), H and W multiples of `stride`.
        coords: int (N, 3) (batch, y, x) in the grid of stride `stride`.
    Returns:
        (N, k * k, C), taps in (ky, kx) order.
    """
    batch, channels, height, width = images.shape
    if stride == 1:
        return _clamped_window(images, coords, kernel_size)
    window = window_index(coords, (height // stride, width // stride), batch, kernel_size, 1)
    # index_select takes int32 positions as they are (advanced indexing would copy them to int64 first)
    return bordered_pixels(images, stride, kernel_size // 2).index_select(0, window.view(-1)).view(
        coords.shape[0], kernel_size * kernel_size, channels)


def bordered_pixels(images: torch.Tensor, stride: int, border: int) -> torch.Tensor:
    """The image average-pooled to `stride` with `border` cells of zeros on every side, as a (B * h' * w', C) view
    (h' = H / stride + 2 * border, w' likewise): row (b * h' + y) * w' + x is pixel (b, y, x) of the bordered
    grid - the positions `rulebook.window_index` gives for a kernel reaching `border` cells. Two ops at most:
    pool, then pad."""
    channels = images.shape[1]
    pooled = F.avg_pool2d(images, stride) if stride > 1 else images
    # padding the (C, B, h, w) view stores it channel-major; with neither border nor pooling, reshape copies
    return F.pad(pooled.transpose(0, 1), (border,) * 4).reshape(channels, -1).t()


def _clamped_window(images: torch.Tensor, coords: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """`window_pixels` at stride 1: (N, k * k, C) read at the clamped positions, zero where a tap leaves the image."""
    batch, channels, height, width = images.shape
    b, y, x = coords.long().unbind(1)  # int64 positions: indexing would copy each int32 index tensor itself
    steps = _steps(kernel_size, torch.int64, coords.device)
    rows, cols = y[:, None] + steps, x[:, None] + steps  # (N, k) the taps' rows and columns
    kept_rows, kept_cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    # advanced indices around a slice: the indexed dims, broadcast to (N, k, k), come first -> (N, k, k, C)
    pixels = images[b[:, None, None], :, kept_rows[:, :, None], kept_cols[:, None, :]]
    inside = (kept_rows == rows)[:, :, None] & (kept_cols == cols)[:, None, :]
    return (pixels * inside[..., None]).view(coords.shape[0], kernel_size * kernel_size, channels)


@functools.lru_cache(maxsize=None)
def _steps(kernel_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(k,) offsets -k // 2 .. k // 2 of a window's rows (and columns), made once per device."""
    return torch.arange(-(kernel_size // 2), kernel_size // 2 + 1, dtype=dtype, device=device)


def gather_patches(images: torch.Tensor, coords: torch.Tensor, kernel_size: int = 3, stride: int = 1) -> torch.Tensor:
    """The k x k neighbourhood of each node in the image average-pooled to `stride`, zero outside the image.

    Args:
        images: float (B, C, H, W), H and W multiples of `stride`.
        coords: int (N, 3) (batch, y, x) in the grid of stride `stride`.
    Returns:
        (N, C * k * k), columns in (c, ky, kx) order - as `F.unfold(F.avg_pool2d(images, stride), k, padding=k // 2)`
        read at the nodes, and as `weight.flatten(1)` of a conv.
    """
    pixels = window_pixels(images, coords, kernel_size, stride)  # (N, k * k, C)
    return pixels.transpose(1, 2).reshape(coords.shape[0], images.shape[1] * kernel_size ** 2)


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
        patches = self.patch_rows(images, geometry)
        (patches,) = autocast_inputs(patches.device, patches)
        matrix, bias = self.weight_matrix()
        return torch.addmm(bias, patches, matrix)

    def patch_rows(self, images: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        """(N, k * k * C): the k x k patch of pooled pixels around each site of `geometry` (a level of this stem's
        stride over `images` (B, C_in, H, W)), columns in (ky, kx, c) order - `weight_matrix`'s rows."""
        batch, channels, height, width = images.shape
        if geometry.spatial_shape != (height // self.stride, width // self.stride) or geometry.batch_size != batch:
            raise ValueError(f"the sites lie on a {geometry.batch_size} x {geometry.spatial_shape} grid but the "
                             f"images {tuple(images.shape)} pooled to stride {self.stride} give a {batch} x "
                             f"{(height // self.stride, width // self.stride)} one; pass the level of stride "
                             f"{self.stride} of these images")
        k = self.kernel_size
        if geometry.num_sites == 0:  # no pass over the image for an empty level
            return images.new_zeros(0, k * k * channels)
        pixels = window_pixels(images, geometry.coords, k, self.stride)  # (N, k * k, C)
        return pixels.view(pixels.shape[0], k * k * channels)

    def weight_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k * k * C_in, C_out) weight with rows in `patch_rows`' column order, and the bias, both cast to the
        autocast dtype; derived once while autograd records nothing (`sparse_ops.inference_weights`)."""
        return derived_weight(self, "matrix", _cast_stem_matrix, self.weight, self.bias)

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pooled(images), self.weight, self.bias, padding=self.kernel_size // 2)

    def macs_per_site(self) -> int:
        return self.in_channels * self.kernel_size ** 2 * self.out_channels

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kernel_size={self.kernel_size}"


def stem_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A stem's conv weight (C_out, C_in, k, k) as the (k * k * C_in, C_out) matrix `PixelStem.patch_rows` multiply."""
    c_out, c_in, k, _ = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out)


def _cast_stem_matrix(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = autocast_inputs(weight.device, weight, bias)
    return stem_matrix(weight), bias
