"""Node statistics of a quadtree: what a tree costs compared with the dense grid it replaces."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from quadtree.tree import MIXED, Quadtree


@dataclass(frozen=True)
class LevelStats:
    level: int
    stride: int  # pixels per cell side
    grid_cells: int  # B * h * w cells of the level grid
    nodes: int  # nodes present at this level
    mixed: int  # of them, MIXED (split further)
    leaves: int  # of them, leaves (a class or the ignore index)
    active_fraction: float  # nodes / grid_cells


@dataclass(frozen=True)
class TreeStats:
    batch_size: int
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    depth: int
    levels: tuple[LevelStats, ...]
    total_nodes: int
    pixels: int  # B * H * W before padding
    nodes_per_pixel: float  # total_nodes / pixels
    leaves_per_class: dict[int, int]  # label (ignore index included) -> number of leaves
    pixels_per_class: dict[int, int]  # label -> pixels covered by its leaves (padding excluded)

    def as_dict(self) -> dict:
        return asdict(self)


def tree_stats(tree: Quadtree) -> TreeStats:
    """Nodes, MIXED nodes and active fraction (nodes / cells of the level grid) per level; leaves per class."""
    levels = []
    leaves_per_class: dict[int, int] = {}
    pixels_per_class: dict[int, int] = {}
    height, width = tree.image_size
    for l, level in enumerate(tree.levels):
        h, w = tree.level_shape(l)
        cells = tree.batch_size * h * w
        is_mixed = level.labels == MIXED
        mixed = int(is_mixed.sum())
        levels.append(LevelStats(l, tree.stride(l), cells, level.num_nodes, mixed, level.num_nodes - mixed,
                                 level.num_nodes / cells))
        leaf_labels = level.labels[~is_mixed]
        for label, count in zip(*torch.unique(leaf_labels, return_counts=True)):
            leaves_per_class[int(label)] = leaves_per_class.get(int(label), 0) + int(count)
        # Pixels of each leaf inside the unpadded image.
        stride = tree.stride(l)
        leaf_coords = level.coords[~is_mixed].long()
        y0, x0 = leaf_coords[:, 1] * stride, leaf_coords[:, 2] * stride
        area = (torch.clamp(height - y0, 0, stride) * torch.clamp(width - x0, 0, stride))
        area_per_label = torch.zeros(256, dtype=torch.int64, device=area.device).index_add_(0, leaf_labels, area)
        for label in torch.nonzero(area_per_label).flatten().tolist():
            pixels_per_class[label] = pixels_per_class.get(label, 0) + int(area_per_label[label])
    total = tree.num_nodes
    pixels = tree.batch_size * height * width
    return TreeStats(
        batch_size=tree.batch_size, image_size=tree.image_size, padded_size=tree.padded_size, depth=tree.depth,
        levels=tuple(levels), total_nodes=total, pixels=pixels, nodes_per_pixel=total / pixels,
        leaves_per_class=dict(sorted(leaves_per_class.items())),
        pixels_per_class=dict(sorted(pixels_per_class.items())),
    )


def format_stats(stats: TreeStats, title: str = "") -> str:
    """A human-readable table of `stats`."""
    lines = []
    if title:
        lines.append(title)
    h, w = stats.image_size
    lines.append(f"batch {stats.batch_size}, {h}x{w} (padded {stats.padded_size[0]}x{stats.padded_size[1]}), "
                 f"depth {stats.depth}")
    lines.append(f"{'level':>5} {'stride':>6} {'nodes':>10} {'mixed':>10} {'leaves':>10} {'active %':>9}")
    for level in stats.levels:
        lines.append(f"{level.level:>5} {level.stride:>6} {level.nodes:>10} {level.mixed:>10} {level.leaves:>10} "
                     f"{100 * level.active_fraction:>9.3f}")
    lines.append(f"total nodes {stats.total_nodes} for {stats.pixels} pixels "
                 f"({100 * stats.nodes_per_pixel:.3f} nodes per 100 pixels)")
    classes = ", ".join(f"{label}: {count}" for label, count in stats.leaves_per_class.items())
    lines.append(f"leaves per label: {classes}")
    return "\n".join(lines)
