"""Quadtree -> dense label maps: the exact inverse of `encode`, and the dense view of any level."""

from __future__ import annotations

import torch

from quadtree.tree import Quadtree, flat_index


def upsample2x(grid: torch.Tensor) -> torch.Tensor:
    """(B, h, w) -> a new contiguous (B, 2h, 2w), every cell copied into its four children."""
    b, h, w = grid.shape
    out = torch.empty(b, 2 * h, 2 * w, dtype=grid.dtype, device=grid.device)
    out.view(b, h, 2, w, 2).copy_(grid[:, :, None, :, None].expand(b, h, 2, w, 2))
    return out


def paint_level(grid: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> None:
    """Write `labels` (N,) at the cells `coords` (N, 3) (batch, y, x) of `grid` (B, h, w), in place."""
    grid.view(-1)[flat_index(coords, grid.shape[1:])] = labels.to(grid.dtype)


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
    return _paint(tree, level).long()


def decode(tree: Quadtree, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The label mask a tree encodes, cropped to `tree.image_size`.

    Args:
        tree: a Quadtree (e.g. from `encode`, or a predicted tree whose last levels are empty).
        dtype: integer dtype of the result. Labels are 0..255, so the default uint8 is lossless (and 8x
            cheaper than int64); pass torch.int64 for loss targets.
    Returns:
        (B, H, W) for every tree (B = tree.batch_size; an (H, W) mask's tree gives (1, H, W): take [0]), on the
        tree's device. A pixel takes the label of the deepest node covering it; `decode(encode(m))` is m as
        (B, H, W).
    Raises:
        ValueError: when a node on the tree's last non-empty level is still MIXED (nothing says what is under it).
    """
    grid = _paint(tree, tree.depth)
    if bool((grid < 0).any()):
        raise ValueError("the tree has MIXED nodes without children: it does not describe every pixel; resolve "
                         "them (e.g. predict with max_depth) before decoding")
    height, width = tree.image_size
    return grid[:, :height, :width].to(dtype)


def _paint(tree: Quadtree, level: int) -> torch.Tensor:
    """int16 (B, h, w) label grid at `level` (see dense_level)."""
    tree._check_level(level)
    h0, w0 = tree.level_shape(0)
    grid = tree.levels[0].labels.to(torch.int16).reshape(tree.batch_size, h0, w0).clone()
    for l in range(1, level + 1):
        grid = upsample2x(grid)
        nodes = tree.levels[l]
        if nodes.num_nodes:
            paint_level(grid, nodes.coords, nodes.labels)
    return grid
