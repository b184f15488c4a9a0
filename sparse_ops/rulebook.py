"""Neighbour rulebooks of submanifold convolutions: pure functions of (coords, grid, kernel, dilation).

A submanifold convolution reads, for every active site, the active sites at the k*k offsets
((ky - k//2) * dilation, (kx - k//2) * dilation), ky, kx in 0..k-1 (row-major, the order of `F.conv2d`'s
weight taps). Two representations:

- `neighbour_table`: (N, k*k) int64, the row of the neighbour at each tap, or N (a sentinel row of zeros
  appended to the features) where that neighbour is inactive or off the grid. Built from a dense index map of
  the (batch, h, w) grid with a border of sentinels - used by the pure-PyTorch backend. Two cheaper ways give the
  same table where the sites have a known structure: `grid_neighbour_table` (every cell of the grid: windows of
  the index map, no scatter) and `child_neighbour_table` (the children of chosen sites of a coarser level, from
  that level's table: no grid-sized map at all, five ops).
- `window_index`: (N, k*k), where each tap of each site falls in the grid bordered by the kernel's reach - what
  the index map is read at, and where `qgn.stem` reads the pixels of a pooled image with a zero border.
- `spconv_rulebook`: spconv's own indice pairs (an `IndiceData` for the Native algorithm, an
  `ImplicitGemmIndiceData` for the implicit-GEMM ones), so its kernels can be called with our weights.

These functions do not cache: `sparse_ops.geometry.SparseGeometry` caches their results per level (the small
constant tensors of tap steps are made once per device and grid width).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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
    r = dilation * (kernel_size // 2)
    # An index map with a border of r cells holding the sentinel N on every side: every tap of every site reads
    # inside it, so a neighbour is one gather, with no bounds checks.
    window = window_index(coords, spatial_shape, batch_size, kernel_size, dilation)  # (N, kk) cells of that map
    index_map = torch.full((batch_size * (h + 2 * r) * (w + 2 * r),), n, dtype=torch.int64, device=coords.device)
    index_map[window[:, (kernel_size * kernel_size) // 2]] = torch.arange(n, device=coords.device)  # the centres
    return index_map.index_select(0, window.view(-1)).view(window.shape)  # int32 positions taken as they are


def window_index(
    coords: torch.Tensor, spatial_shape: tuple[int, int], batch_size: int, kernel_size: int, dilation: int
) -> torch.Tensor:
    """Where the taps of every site fall in the grid bordered by the kernel's reach.

    Args:
        coords: integer (N, 3) (batch, y, x) inside the (batch_size, h, w) grid.
        spatial_shape: (h, w) of the grid.
    Returns:
        (N, k*k): the row-major position of cell (b, y + dy + r, x + dx + r) - tap t's offset (dy, dx) as in
        `kernel_offsets` - in a (batch_size, h + 2r, w + 2r) grid, r = dilation * (k // 2): every tap lands
        inside it, the border cells standing for everything off the grid. int32 when that grid has fewer than
        2**31 cells (and the coords are int32), else int64.
    """
    h, w = spatial_shape
    r = dilation * (kernel_size // 2)
    height, width = h + 2 * r, w + 2 * r
    if coords.dtype != torch.int32 or batch_size * height * width >= 2 ** 31:
        coords = coords.long()
    b, y, x = coords.unbind(1)
    rows = y if batch_size == 1 else torch.add(y, b, alpha=height)  # b * height + y (b is 0 in a batch of one)
    centre = torch.add(x, rows, alpha=width)  # (b * height + y) * width + x; the border's offset is in the steps
    return centre[:, None] + _tap_steps(kernel_size, dilation, width, coords.dtype, coords.device)


@functools.lru_cache(maxsize=256)
def _tap_steps(kernel_size: int, dilation: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(k*k,) flat steps from a cell (b, y, x) of a grid of row length `width` to (b, y + dy + r, x + dx + r)."""
    steps = [t * dilation for t in range(kernel_size)]  # dy + r of the taps' rows (and dx + r of their columns)
    return torch.tensor([dy * width + dx for dy in steps for dx in steps], dtype=dtype, device=device)


def grid_neighbour_table(
    batch_size: int, spatial_shape: tuple[int, int], kernel_size: int, dilation: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`neighbour_table` of every cell of a (batch_size, h, w) grid in (batch, y, x) order (a root level): the
    k x k windows of the bordered index map, read as one strided view. int64 (B * h * w, k*k)."""
    h, w = spatial_shape
    n = batch_size * h * w
    r = dilation * (kernel_size // 2)
    index_map = F.pad(torch.arange(n, device=device).view(batch_size, h, w), (r, r, r, r), value=n)
    span = 2 * r + 1
    windows = index_map.unfold(1, span, 1).unfold(2, span, 1)[..., ::dilation, ::dilation]  # (B, h, w, k, k)
    return windows.reshape(n, kernel_size * kernel_size)


def child_neighbour_table(parent_table: torch.Tensor, index: torch.Tensor, kernel_size: int, dilation: int
                          ) -> torch.Tensor:
    """`neighbour_table` of the children of the sites `index` of a coarser level (`SparseGeometry.children`),
    read off that level's table: the neighbour of a child lies among the children of its parent's neighbours.

    Args:
        parent_table: int64 (N_p, K*K), the coarser level's `neighbour_table` with dilation 1 and
            K = `parent_kernel_size(kernel_size, dilation)`.
        index: int64 (M,) unique rows of the coarser level whose children the finer level holds, in order: rows
            4i..4i+3 are the children of index[i] in the (dy, dx) order of `quadtree.CHILD_OFFSETS`.
    Returns:
        int64 (4M, k*k), exactly `neighbour_table` of the children's coords (4M where a neighbour is missing).
    """
    m, parents = index.shape[0], parent_table.shape[0]
    n = 4 * m
    parent_tap, quadrant = _child_taps(kernel_size, dilation, parent_table.shape[1], index.device)
    # first child row of each coarser site (N for the unchosen ones and for the sentinel row N_p), per quadrant
    children = torch.full((parents + 1, 4), n, dtype=torch.int64, device=index.device)
    children[index] = torch.arange(n, device=index.device).view(m, 4)
    return children[parent_table[index[:, None], parent_tap], quadrant].view(n, kernel_size * kernel_size)


def parent_kernel_size(kernel_size: int, dilation: int) -> int:
    """The kernel size (dilation 1) of the coarser level's table that `child_neighbour_table` reads: a child's
    offsets up to r = dilation * (k // 2) reach parents up to ceil(r / 2) away."""
    return 2 * ((dilation * (kernel_size // 2) + 1) // 2) + 1


@functools.lru_cache(maxsize=64)
def _child_taps(kernel_size: int, dilation: int, parent_taps: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 (4 * k*k,) each: for child quadrant q and tap t (position q * k*k + t), the parent's tap (in a
    K x K table, K*K = `parent_taps`) whose site holds the neighbour, and that neighbour's quadrant there."""
    parent_k = int(round(parent_taps ** 0.5))
    radius = parent_k // 2
    parent_tap, quadrant = [], []
    for qy, qx in quadtree.CHILD_OFFSETS.tolist():
        for dy, dx in kernel_offsets(kernel_size, dilation).tolist():
            py, px = (qy + dy) // 2, (qx + dx) // 2  # the parent's offset (floor division)
            parent_tap.append((py + radius) * parent_k + (px + radius))
            quadrant.append(2 * (qy + dy - 2 * py) + (qx + dx - 2 * px))
    return (torch.tensor(parent_tap, dtype=torch.int64, device=device),
            torch.tensor(quadrant, dtype=torch.int64, device=device))


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
