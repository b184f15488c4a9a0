"""Sparse ops on the nodes of quadtree levels: submanifold convs (spconv or pure PyTorch), stride-2 sparse convs
down to the halved site set and transposed back up, parent -> children projection, dense <-> node transfers, batch
norm over nodes, and a residual block.

Every op takes the features of a level, (N, C) - one row per node - and the level's `SparseGeometry`: the nodes'
(batch, y, x) coords on the level grid with the rulebooks derived from them. A quadtree keeps the geometry of each
of its levels (`level_geometry(tree, level)`), so every op of a level shares one rulebook; a tree the network
grows carries the geometries it was computed with (`tree_level`). Every module has a dense twin
(`forward_dense`) with the same weights, and `sparse_ops.reference` holds the dense definitions the tests use.
Without autograd the modules reuse their weights in matmul layout (`sparse_ops.inference_weights`).
"""

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

from sparse_ops.backend import (BACKENDS, as_int32_coords, check_backend_name, conv_algo, resolve_backend,
                                spconv_available)
from sparse_ops.batchnorm import NodeBatchNorm, node_batch_norm
from sparse_ops.blocks import SubMResBlock
from sparse_ops.expand import ExpandChildren, expand_children
from sparse_ops.gather import MODES, gather_dense, scatter_dense
from sparse_ops.geometry import SparseGeometry, level_geometry, tree_level
from sparse_ops.reference import dense_expand_children, dense_submanifold_conv2d
from sparse_ops.rulebook import kernel_offsets, neighbour_table, spconv_rulebook
from sparse_ops.strided import (StridedConv2d, TransposedConv2d, dense_strided_conv2d, dense_transposed_conv2d,
                                strided_conv2d, transposed_conv2d)
from sparse_ops.submanifold import SubMConv2d, submanifold_conv2d

__all__ = [
    # geometry and backends
    "SparseGeometry", "level_geometry", "tree_level", "BACKENDS", "resolve_backend", "check_backend_name", "spconv_available",
    "conv_algo", "as_int32_coords", "kernel_offsets", "neighbour_table", "spconv_rulebook",
    # ops and modules
    "submanifold_conv2d", "SubMConv2d", "expand_children", "ExpandChildren", "gather_dense", "scatter_dense", "MODES",
    "node_batch_norm", "NodeBatchNorm",
    "SubMResBlock", "strided_conv2d", "StridedConv2d", "transposed_conv2d", "TransposedConv2d",
    # dense references
    "dense_submanifold_conv2d", "dense_expand_children", "dense_strided_conv2d", "dense_transposed_conv2d",
]
