"""Inference-time batch-norm folding: every batch norm that directly follows a convolution becomes part of it.

At inference a batch norm is an affine map per channel (its running statistics), so `bn(conv(x))` is one
convolution with a scaled weight and a new bias: one op and one pass over the features less per pair, on the dense
encoder and root as on the sparse blocks. `fold_batch_norm(model)` returns a folded copy in eval mode;
`qgn.load_predictor` folds the networks it loads. Outputs equal the unfolded model's within float32 rounding
(tests/test_qgn_fold.py). The folded copy is for inference only: training it would train without batch norm.
"""

from __future__ import annotations

import copy

from torch import nn

from sparse_ops import NodeBatchNorm, SubMConv2d
from sparse_ops.batchnorm import FoldedBatchNorm, fold_batch_norm as fold_pair

CONVS = (nn.Conv2d, SubMConv2d)
NORMS = (nn.BatchNorm2d, NodeBatchNorm)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with each batch norm folded into the convolution registered just before it
    in the same parent module - the order in which this engine's blocks (and EfficientNet's) apply them."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if isinstance(conv, CONVS) and isinstance(norm, NORMS) and norm.track_running_stats:
                fold_pair(conv, norm)
                setattr(parent, name, FoldedBatchNorm())  # also a Sequential's or ModuleDict's entry
    return model
