"""The immutable quadtree: per-level node tensors, batched as a forest of trees.

A `Quadtree` encodes a label mask of padded size (H_pad, W_pad) = multiples of 2**depth. Level l is a grid of
(H_pad >> (depth - l), W_pad >> (depth - l)) cells of 2**(depth - l) pixels each. Level 0 holds every root
cell; level l > 0 holds exactly the four children of every MIXED node of level l - 1; level `depth` is full
resolution. Children of one parent are consecutive, in the (dy, dx) order (0,0), (0,1), (1,0), (1,1), and the
groups follow the order of their parents, so every level is sorted by batch index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch

from quadtree.pad import padded_size

MIXED = -1
"""Label of a node whose window holds more than one value; such a node has four children."""

CHILD_OFFSETS = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.int32)
"""(4, 2) int32: the (dy, dx) of the four children of a node, in their storage order."""


@dataclass(frozen=True, eq=False)
class QuadtreeLevel:
    """The nodes of one level (compared by identity: `equal` compares contents).

    Attributes:
        coords: int32 (N, 3), row-major contiguous, columns (batch, y, x) in level cells.
        labels: int64 (N,), a class in 0..254, the ignore index, or MIXED (-1).
        parent: int64 (N,), the row of each node's parent in the previous level (-1 at level 0).
        derived: structures computed from these nodes on first use and kept with them (e.g. the sparse
            geometry and rulebooks of `sparse_ops.level_geometry`), keyed by what they derive from. The node
            tensors never change, so neither do these.
    """

    coords: torch.Tensor
    labels: torch.Tensor
    parent: torch.Tensor
    derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_nodes(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "QuadtreeLevel":
        return QuadtreeLevel(*(t.to(device, non_blocking=non_blocking) for t in (self.coords, self.labels, self.parent)))

    def pin_memory(self) -> "QuadtreeLevel":
        return QuadtreeLevel(self.coords.pin_memory(), self.labels.pin_memory(), self.parent.pin_memory())

    def equal(self, other: "QuadtreeLevel") -> bool:
        return (
            self.coords.shape == other.coords.shape
            and torch.equal(self.coords.cpu(), other.coords.cpu())
            and torch.equal(self.labels.cpu(), other.labels.cpu())
            and torch.equal(self.parent.cpu(), other.parent.cpu())
        )


@dataclass(frozen=True, eq=False)
class Quadtree:
    """A batch of quadtrees over label masks of one size (compared by identity: `equal` compares contents).

    Attributes:
        levels: depth + 1 `QuadtreeLevel`s; a level below which nothing is MIXED is empty (zero nodes).
        depth: number of subdivisions from the root grid (stride 2**depth) to full resolution.
        batch_size: number of masks B.
        image_size: (H, W) of the masks before padding.
        ignore_index: the label of unsupervised pixels; the padding holds it.
    """

    levels: tuple[QuadtreeLevel, ...]
    depth: int
    batch_size: int
    image_size: tuple[int, int]
    ignore_index: int = 255

    def __post_init__(self):
        if len(self.levels) != self.depth + 1:
            raise ValueError(f"a quadtree of depth {self.depth} needs {self.depth + 1} levels, got {len(self.levels)}")

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H_pad, W_pad): the image size rounded up to multiples of 2**depth."""
        return padded_size(self.image_size, 1 << self.depth)

    def level_shape(self, level: int) -> tuple[int, int]:
        """(h, w) of the level-`level` grid: the padded size divided by its stride 2**(depth - level)."""
        self._check_level(level)
        shift = self.depth - level
        h, w = self.padded_size
        return (h >> shift, w >> shift)

    def stride(self, level: int) -> int:
        """Pixels per cell side at `level`."""
        self._check_level(level)
        return 1 << (self.depth - level)

    @property
    def device(self) -> torch.device:
        return self.levels[0].device

    @property
    def num_nodes(self) -> int:
        return sum(level.num_nodes for level in self.levels)

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.depth:
            raise ValueError(f"level {level} does not exist: this tree has levels 0..{self.depth}")

    # ---- transformations (all return new trees) -------------------------------------------------------------
    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Quadtree":
        """The tree on `device`; `non_blocking` copies from pinned memory (`pin_memory`) without a host wait."""
        return self._replace(levels=tuple(level.to(device, non_blocking) for level in self.levels))

    def pin_memory(self) -> "Quadtree":
        """The tree in page-locked CPU memory (what `DataLoader(pin_memory=True)` calls on a batch's tree), from
        which `to(cuda, non_blocking=True)` copies without stalling the host."""
        return self._replace(levels=tuple(level.pin_memory() for level in self.levels))

    def _replace(self, **changes) -> "Quadtree":
        fields = dict(
            levels=self.levels, depth=self.depth, batch_size=self.batch_size, image_size=self.image_size,
            ignore_index=self.ignore_index,
        )
        fields.update(changes)
        return Quadtree(**fields)

    def split(self) -> list["Quadtree"]:
        """The B single trees of this batch, each with batch index 0."""
        trees_levels: list[list[QuadtreeLevel]] = [[] for _ in range(self.batch_size)]
        previous_starts = None
        for level in self.levels:
            counts = torch.bincount(level.coords[:, 0].long(), minlength=self.batch_size).cpu()
            starts = torch.cumsum(counts, 0) - counts
            for b in range(self.batch_size):
                begin, end = int(starts[b]), int(starts[b] + counts[b])
                coords = level.coords[begin:end].clone()
                coords[:, 0] = 0
                parent = level.parent[begin:end]
                if previous_starts is not None:
                    parent = parent - int(previous_starts[b])
                trees_levels[b].append(QuadtreeLevel(coords, level.labels[begin:end].clone(), parent.clone()))
            previous_starts = starts
        return [self._replace(levels=tuple(levels), batch_size=1) for levels in trees_levels]

    @staticmethod
    def merge(trees: Sequence["Quadtree"]) -> "Quadtree":
        """One batched tree from trees of one depth, image size and ignore index (batch indices renumbered)."""
        if len(trees) == 0:
            raise ValueError("Quadtree.merge needs at least one tree")
        first = trees[0]
        for tree in trees[1:]:
            if (tree.depth, tree.image_size, tree.ignore_index) != (first.depth, first.image_size, first.ignore_index):
                raise ValueError(
                    "Quadtree.merge needs trees of one depth, image size and ignore index; got "
                    f"{(first.depth, first.image_size, first.ignore_index)} and "
                    f"{(tree.depth, tree.image_size, tree.ignore_index)} (pad or crop the masks to one size first)"
                )
            if tree.device != first.device:
                raise ValueError(f"Quadtree.merge needs trees on one device, got {first.device} and {tree.device}")
        levels = []
        for l in range(first.depth + 1):
            coords, labels, parents = [], [], []
            batch_offset, parent_offset = 0, 0
            for tree in trees:
                level = tree.levels[l]
                shifted = level.coords.clone()
                shifted[:, 0] += batch_offset
                coords.append(shifted)
                labels.append(level.labels)
                parents.append(level.parent + parent_offset if l > 0 else level.parent)
                batch_offset += tree.batch_size
                parent_offset += tree.levels[l - 1].num_nodes if l > 0 else 0
            levels.append(QuadtreeLevel(torch.cat(coords).contiguous(), torch.cat(labels), torch.cat(parents)))
        batch_size = sum(tree.batch_size for tree in trees)
        return first._replace(levels=tuple(levels), batch_size=batch_size)

    def equal(self, other: "Quadtree") -> bool:
        """True when both trees have the same metadata and identical node tensors (on any device)."""
        return (
            (self.depth, self.batch_size, self.image_size, self.ignore_index)
            == (other.depth, other.batch_size, other.image_size, other.ignore_index)
            and all(a.equal(b) for a, b in zip(self.levels, other.levels))
        )

    def __repr__(self) -> str:
        nodes = ", ".join(str(level.num_nodes) for level in self.levels)
        return (
            f"Quadtree(batch_size={self.batch_size}, image_size={self.image_size}, depth={self.depth}, "
            f"nodes per level=[{nodes}], device={self.device})"
        )


def check_structure(tree: Quadtree) -> None:
    """Raise ValueError when `tree` breaks an invariant of the module docstring (used on loaded files).

    Checks dtypes and shapes, level 0 covering the root grid in (batch, y, x) order, every level holding exactly
    the four children of the MIXED nodes of the previous one in storage order, coordinates inside the grid, and
    labels in 0..254, the ignore index or MIXED (never MIXED at full resolution).
    """
    for l, level in enumerate(tree.levels):
        n = level.num_nodes
        if level.coords.dtype != torch.int32 or tuple(level.coords.shape) != (n, 3):
            raise ValueError(f"level {l}: coords must be int32 of shape ({n}, 3), got {level.coords.dtype} "
                             f"{tuple(level.coords.shape)}")
        if level.labels.dtype != torch.int64 or level.parent.dtype != torch.int64 or level.parent.shape != (n,):
            raise ValueError(f"level {l}: labels and parent must be int64 of shape ({n},)")
        labels = level.labels
        valid = ((labels >= 0) & (labels <= 254)) | (labels == tree.ignore_index) | (labels == MIXED)
        if not bool(valid.all()):
            raise ValueError(f"level {l}: labels outside 0..254, the ignore index {tree.ignore_index} and MIXED")
        if l == tree.depth and bool((labels == MIXED).any()):
            raise ValueError(f"level {l}: full-resolution nodes cannot be MIXED")
    h0, w0 = tree.level_shape(0)
    expected = root_coords(tree.batch_size, h0, w0)
    level0 = tree.levels[0]
    if not torch.equal(level0.coords.cpu(), expected) or not bool((level0.parent == -1).all()):
        raise ValueError("level 0 must hold every root cell in (batch, y, x) order with parent -1")
    for l in range(1, tree.depth + 1):
        above, level = tree.levels[l - 1], tree.levels[l]
        mixed = torch.nonzero(above.labels == MIXED).flatten()
        if level.num_nodes != 4 * mixed.numel():
            raise ValueError(f"level {l} has {level.num_nodes} nodes but level {l - 1} has {mixed.numel()} MIXED "
                             f"nodes (4 children each)")
        if not torch.equal(level.parent.cpu(), mixed.repeat_interleave(4).cpu()):
            raise ValueError(f"level {l}: parent indices do not follow the MIXED nodes of level {l - 1} in order")
        expected = child_coords(above.coords[mixed])
        if not torch.equal(level.coords.cpu(), expected.cpu()):
            raise ValueError(f"level {l}: child coordinates are not 2 * parent + (dy, dx) in storage order")


def check_structure_once(tree: Quadtree) -> None:
    """`check_structure`, remembered with the tree (in its root level's `derived`): a tree checked before - an
    oracle tree predicted along again and again - is not checked again (the check copies the tree to the CPU)."""
    key = ("check_structure", "passed")
    if not tree.levels[0].derived.get(key):
        check_structure(tree)
        tree.levels[0].derived[key] = True


def root_coords(batch_size: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 (B * h * w, 3) row-major contiguous: every cell of a (B, h, w) root grid in (batch, y, x) order."""
    b, y, x = torch.meshgrid(
        torch.arange(batch_size, device=device), torch.arange(height, device=device),
        torch.arange(width, device=device), indexing="ij",
    )
    return torch.stack([b, y, x], -1).reshape(-1, 3).to(torch.int32)


def child_coords(parent_coords: torch.Tensor) -> torch.Tensor:
    """Coordinates of the four children of each parent.

    Args:
        parent_coords: int32 (N, 3) (batch, y, x) at level l.
    Returns:
        int32 (4N, 3) row-major contiguous at level l + 1; rows 4i..4i+3 are the children of parent i.
    """
    scale, offsets = _child_steps(parent_coords.device)
    return (parent_coords[:, None, :] * scale + offsets).reshape(-1, 3)  # (N, 4, 3) -> (4N, 3)


@functools.lru_cache(maxsize=None)
def _child_steps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 (3,) scale (1, 2, 2) and (4, 3) offsets (0, dy, dx) of the children, made once per device."""
    offsets = torch.zeros(4, 3, dtype=torch.int32, device=device)
    offsets[:, 1:] = CHILD_OFFSETS.to(device)
    return torch.tensor([1, 2, 2], dtype=torch.int32, device=device), offsets


def flat_index(coords: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Row-major position of each cell in a (B, h, w) grid: (b * h + y) * w + x.

    Args:
        coords: integer (N, 3) (batch, y, x), inside the grid (not checked).
        shape: (h, w) of the grid.
    Returns:
        int64 (N,), the index of each cell in `grid.view(-1)` of a contiguous (B, h, w) grid.
    """
    h, w = shape
    coords = coords.long()
    return (coords[:, 0] * h + coords[:, 1]) * w + coords[:, 2]
