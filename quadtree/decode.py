"""Quadtree -> dense label maps: the exact inverse of `encode`, and the dense view of any level."""

from __future__ import annotations

import torch

from quadtree.tree import Quadtree


def upsample2x(grid: torch.Tensor) -> torch.Tensor:
    """(B, h, w) -> a new contiguous (B, 2h, 2w), every cell copied into its four children (one copy; `contiguous`,
    not `reshape`, which may return a view of the expanded grid when h or w is 1)."""
    b, h, w = grid.shape
    return grid[:, :, None, :, None].expand(b, h, 2, w, 2).contiguous().view(b, 2 * h, 2 * w)


def paint_level(grid: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> None:
    """Write `labels` (N,) at the cells `coords` (int32 or int64 (N, 3), (batch, y, x)) of `grid` (B, h, w), in
    place: one indexed write at the coordinates themselves (no flat index to compute). The coordinates are widened
    first: indexing converts int32 indices to int64 itself, one hidden copy per index tensor (three)."""
    b, y, x = coords.long().unbind(1)
    grid[b, y, x] = labels if labels.dtype == grid.dtype else labels.to(grid.dtype)


def dense_level(tree: Quadtree, level: int) -> torch.Tensor:
    """The tree as a label grid at `level`'s resolution.

    Args:
        tree: a Quadtree.
        level: 0..tree.depth.
    Returns:
        int64 (B, h, w) with (h, w) = tree.level_shape(level) (the padded grid, not cropped): the label of the
        level-`level` node at each cell (MIXED where that node was split), or the label of the coarser leaf
        covering the cell. Padding cells hold the ignore index.
    """
    return _paint(tree, level, torch.int64)


def decode(tree: Quadtree, dtype: torch.dtype = torch.uint8, check_complete: bool = True) -> torch.Tensor:
    """The label mask a tree encodes, cropped to `tree.image_size`.

    Args:
        tree: a Quadtree (e.g. from `encode`, or a predicted tree whose last levels are empty).
        dtype: integer dtype of the result. Labels are 0..255, so the default uint8 is lossless (and 8x
            cheaper than int64); pass torch.int64 for loss targets.
        check_complete: raise when a MIXED node has no children (a host synchronisation). A caller that knows
            the tree is complete - the decoder's own prediction, whose deepest level is never MIXED - passes False.
    Returns:
        (B, H, W) for every tree (B = tree.batch_size; an (H, W) mask's tree gives (1, H, W): take [0]), on the
        tree's device. A pixel takes the label of the deepest node covering it; `decode(encode(m))` is m as
        (B, H, W).
    Raises:
        ValueError: with `check_complete`, when a node on the tree's last non-empty level is still MIXED (nothing
            says what is under it).
    """
    # the check reads the whole grid: in int16 it reads a quarter of int64's bytes (measured on a CPU at 2048x4096:
    # painting in int64 and checking there was 1.13x slower); unchecked, painting in the dtype saves a cast per level
    direct = dtype in PAINT_DTYPES and not check_complete
    grid = _paint(tree, tree.depth, dtype if direct else torch.int16)
    if check_complete and bool((grid < 0).any()):
        raise ValueError("the tree has MIXED nodes without children: it does not describe every pixel; resolve "
                         "them (e.g. predict with max_depth) before decoding")
    height, width = tree.image_size
    grid = grid[:, :height, :width]
    return grid.to(dtype) if grid.dtype != dtype else grid.contiguous()  # a copy only to crop or cast


PAINT_DTYPES = (torch.int16, torch.int32, torch.int64)
"""Integer dtypes that hold every label and MIXED (-1): an unchecked decode paints in them directly."""


def _paint(tree: Quadtree, level: int, dtype: torch.dtype) -> torch.Tensor:
    """`dtype` (B, h, w) label grid at `level` (see dense_level; `dtype` one of PAINT_DTYPES): coarse to fine, each
    level upsampled and its nodes written over the MIXED cells of their parents; three ops per level, none that
    synchronises with the host."""
    tree._check_level(level)
    h0, w0 = tree.level_shape(0)
    # below the roots the first upsample copies: the tree's own labels are never written to, nor returned
    grid = tree.levels[0].labels.to(dtype, copy=level == 0).view(tree.batch_size, h0, w0)
    for l in range(1, level + 1):
        grid = upsample2x(grid)
        nodes = tree.levels[l]
        if nodes.num_nodes:
            paint_level(grid, nodes.coords, nodes.labels)
    return grid
