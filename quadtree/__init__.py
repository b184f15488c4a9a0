"""Exact quadtree encoding of label masks, QGN-compatible (see README.md, "Quadtree semantics")."""

import os as _os

# PyTorch's OpenMP worker threads spin while they wait; beside spconv's serial kernels or another process they take
# the cores (two trainings at once ran 6-10x slower each instead of 2x). OpenMP reads its wait policy when torch
# loads it, so the policy is set here, before this package imports torch, unless the user chose one. The other
# packages import quadtree first for this (README, "CPU threads and backends").
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
