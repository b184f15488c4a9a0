"""Batch normalisation over the nodes of a level: `node_batch_norm` and `NodeBatchNorm`.

Features of a level are (N, C) - one row per node, the nodes of every image of the batch together - so this is
`F.batch_norm` / `nn.BatchNorm1d` over rows. The one rule added: batch statistics need at least two rows, so
in training with N < 2 nodes (an empty level, or a single node) the running statistics normalise the features
(as in evaluation) and are not updated. Without running statistics (track_running_stats=False) a single node
in training raises ValueError; an empty level always returns an empty (0, C) output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def node_batch_norm(
    feats: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch norm of `feats` (N, C) over its rows, with the N < 2 rule of the module docstring. Returns (N, C)."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
        raise ValueError(f"feats must be (N, C), got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
    if training and feats.shape[0] < 2:
        if running_mean is None or running_var is None:
            if feats.shape[0] == 0:
                return F.batch_norm(feats, None, None, weight, bias, True, momentum, eps)
            raise ValueError("batch norm of a single node in training needs running statistics "
                             "(track_running_stats=True) or at least two nodes")
        training = False
    return F.batch_norm(feats, running_mean, running_var, weight, bias, training, momentum, eps)


class NodeBatchNorm(nn.BatchNorm1d):
    """`nn.BatchNorm1d` over the nodes of a level, with the N < 2 rule of the module docstring.

    Shape:
        forward(feats (N, C)) -> (N, C).
        forward_dense(x (B, C, H, W)) -> (B, C, H, W): the dense twin, statistics over (B, H, W) with the same
            parameters, running statistics and momentum rules (None: cumulative average) - `nn.BatchNorm2d`'s.
    """

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim != 2:
            raise ValueError(f"NodeBatchNorm takes node features (N, C), got {tuple(feats.shape)}")
        if self.training and feats.shape[0] < 2:
            return node_batch_norm(feats, self.running_mean, self.running_var, self.weight, self.bias, True,
                                   0.0, self.eps)
        return super().forward(feats)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"NodeBatchNorm.forward_dense takes a dense map (B, C, H, W), got {tuple(x.shape)}")
        # BatchNorm1d over (B, C, H * W) normalises over (B, H * W) per channel: BatchNorm2d, with this module's
        # own bookkeeping (momentum, num_batches_tracked)
        return super().forward(x.flatten(2)).view_as(x)


class FoldedBatchNorm(nn.Identity):
    """A batch norm folded into the convolution before it (`fold_batch_norm`): the identity, sparse and dense.
    Inference only: training the folded network would train it without batch norm, so train mode is refused."""

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def train(self, mode: bool = True) -> "FoldedBatchNorm":
        if mode:
            raise RuntimeError("this network's batch norms are folded into its convolutions (inference only, e.g. "
                               "load_predictor's); to train or fine-tune, load the checkpoint with "
                               "qgn.checkpoint.load_model")
        return super().train(False)


@torch.no_grad()
def fold_batch_norm(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold `bn` (its running statistics: inference) into `conv` in place: conv'(x) = bn(conv(x)).

    Args:
        conv: a module with `weight` (C_out, ...) and `bias` (C_out,) or None (nn.Conv2d, SubMConv2d, ...).
        bn: a BatchNorm over C_out channels with running statistics.
    """
    if bn.running_mean is None:
        raise ValueError("only a batch norm with running statistics (track_running_stats=True) can be folded")
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    conv.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.ndim - 1)).to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
