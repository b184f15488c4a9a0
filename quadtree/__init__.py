"""Exact quadtree encoding of label masks, QGN-compatible (see README.md, "Quadtree semantics")."""

from quadtree.decode import decode, dense_level
from quadtree.encode import encode
from quadtree.io import load, save
from quadtree.mask_io import read_mask, write_mask
from quadtree.stats import LevelStats, TreeStats, format_stats, tree_stats
from quadtree.tree import CHILD_OFFSETS, MIXED, Quadtree, QuadtreeLevel, check_structure, child_coords, root_coords

__all__ = [
    "CHILD_OFFSETS", "MIXED", "LevelStats", "Quadtree", "QuadtreeLevel", "TreeStats", "check_structure",
    "child_coords", "decode", "dense_level", "encode", "format_stats", "load", "read_mask", "root_coords", "save", "tree_stats", "write_mask",
]
