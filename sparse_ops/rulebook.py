"""Neighbour rulebooks of submanifold convolutions: pure functions of (coords, grid, kernel, dilation).

A submanifold convolution reads, for every active site, the active sites at the k*k offsets
((ky - k//2) * dilation, (kx - k//2) * dilation), ky, kx in 0..k-1 (row-major, the order of `F.conv2d`'s
weight taps). Two representations:

- `neighbour_table`: (N, k*k) int64, the row of the neighbour at each tap, or N (a sentinel row of zeros
  appended to the features) where that neighbour is inactive or off the grid. Built from a dense index map of
  the (batch, h, w) grid with a border of sentinels - used by the pure-PyTorch backend.
- `spconv_rulebook`: spconv's own indice pairs (an `IndiceData` for the Native algorithm, an
  `ImplicitGemmIndiceData` for the implicit-GEMM ones), so its kernels can be called with our weights.

These functions do not cache: `sparse_ops.geometry.SparseGeometry` caches their results per level.
"""

from __future__ import annotations

import torch

import quadtree
from sparse_ops import backend


def kernel_offsets(kernel_size: int, dilation: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k*k, 2) int64 (dy, dx) of every tap, row-major over (ky, kx): the order of `weight[:, :, ky, kx]`."""
    r = torch.arange(kernel_size, dtype=torch.int64, device=device) - kernel_size // 2
    dy, dx = torch.meshgrid(r * dilation, r * dilation, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


def neighbour_table(
    coords: torch.Tensor, spatial_shape: tuple[int, int], batch_size: int, kernel_size: int, dilation: int
) -> torch.Tensor:
    """The neighbour of every active site at every kernel tap.

    Args:
        coords: int32 (N, 3) (batch, y, x), unique, inside the (batch_size, h, w) grid.
        spatial_shape: (h, w) of the grid.
    Returns:
        int64 (N, k*k): row index into `coords` of the site at offset tap t (see `kernel_offsets`), or N where
        that site is inactive or outside the grid. Uses a dense int64 index map of the grid plus a border.
    """
    h, w = spatial_shape
    n = coords.shape[0]
    device = coords.device
    # An index map with a border of r = dilation * (k // 2) cells holding the sentinel N on every side: every tap of
    # every site reads inside it, so a neighbour is one add and one gather, with no bounds checks.
    r = dilation * (kernel_size // 2)
    width = w + 2 * r
    index_map = torch.full((batch_size * (h + 2 * r) * width,), n, dtype=torch.int64, device=device)
    centre = quadtree.flat_index(coords, (h + 2 * r, width)) + (r * width + r)  # (N,) the sites, shifted by (r, r)
    index_map[centre] = torch.arange(n, device=device)
    steps = [(t - kernel_size // 2) * dilation for t in range(kernel_size)]
    taps = [dy * width + dx for dy in steps for dx in steps]  # the flat step of each tap, in `kernel_offsets` order
    return index_map[centre[:, None] + torch.tensor(taps, device=device)]  # (N, kk)


def spconv_rulebook(
    coords: torch.Tensor, spatial_shape: tuple[int, int], batch_size: int, kernel_size: int, dilation: int
):
    """spconv's indice pairs for a 2-D submanifold convolution over `coords`, for the algorithm of their device.

    Args:
        coords: int32 (N, 3), row-major contiguous, unique, inside the grid (see `backend.as_int32_coords`).
    Returns:
        `spconv.pytorch.core.IndiceData` (Native: `indice_pairs` int32 (2, k*k, N), `indice_pair_num` int32
        (k*k,)) or `ImplicitGemmIndiceData` (CUDA implicit GEMM), exactly what spconv stores in
        `SparseConvTensor.indice_dict`.
    """
    if not (coords.dtype == torch.int32 and coords.is_contiguous()):
        raise ValueError("spconv_rulebook needs int32 row-major contiguous coords; use backend.as_int32_coords")
    ksize, stride, padding, dil, out_padding = [kernel_size] * 2, [1, 1], [0, 0], [dilation] * 2, [0, 0]
    shape = list(spatial_shape)
    api = backend.spconv_api()
    algo = backend.conv_algo(coords.device, kernel_size * kernel_size)
    if algo == api.ConvAlgo.Native:
        out_inds, pairs, pair_num = api.ops.get_indice_pairs(
            coords, batch_size, shape, algo, ksize, stride, padding, dil, out_padding, subm=True
        )
        return api.IndiceData(
            out_inds, coords, pairs, pair_num, shape, shape, is_subm=True, algo=algo,
            ksize=ksize, stride=stride, padding=padding, dilation=dil,
        )
    res = api.ops.get_indice_pairs_implicit_gemm(
        coords, batch_size, shape, algo, ksize=ksize, stride=stride, padding=padding, dilation=dil,
        out_padding=out_padding, subm=True, transpose=False, is_train=True,
    )
    return api.ImplicitGemmIndiceData(
        res[0], coords, res[2], res[3], pair_mask_fwd_splits=res[4], pair_mask_bwd_splits=res[5],
        mask_argsort_fwd_splits=res[6], mask_argsort_bwd_splits=res[7], masks=res[8], is_subm=True,
        spatial_shape=shape, out_spatial_shape=shape, algo=algo, ksize=ksize, stride=stride, padding=padding,
        dilation=dil,
    )
