"""Exact quadtree encoding of label masks, QGN-compatible (see README.md, "Quadtree semantics")."""

import os as _os

# PyTorch's OpenMP worker threads spin while they wait (libgomp: 300,000 rounds, ~3 ms); beside another process or
# spconv's serial kernels they take the cores (two trainings at once ran 6-10x slower each instead of 2x). OpenMP
# reads its settings when torch loads it, so they are set here, before this package imports torch, unless the user
# set either: PASSIVE (sleep when idle, for every OpenMP runtime) with a short spin of 3,000 rounds first (~30 us,
# libgomp only), measured as the best trade-off in benchmarks/results/backends_wait_policy.md. The other packages
# import quadtree first for this (README, "CPU threads and backends").
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _os.environ["GOMP_SPINCOUNT"] = "3000"

from quadtree.decode import decode, dense_level
from quadtree.encode import encode
from quadtree.io import load, save
from quadtree.mask_io import read_mask, write_mask
from quadtree.pad import pad_to_multiple, padded_size
from quadtree.stats import LevelStats, TreeStats, format_stats, tree_stats
from quadtree.tree import (
    CHILD_OFFSETS, MIXED, Quadtree, QuadtreeLevel, check_structure, check_structure_once, child_coords, flat_index,
    root_coords,
)

__all__ = [
    "CHILD_OFFSETS", "MIXED", "LevelStats", "Quadtree", "QuadtreeLevel", "TreeStats", "check_structure",
    "check_structure_once",
    "child_coords", "decode", "dense_level", "encode", "flat_index", "format_stats", "load", "pad_to_multiple",
    "padded_size", "read_mask", "root_coords", "save", "tree_stats", "write_mask",
]
