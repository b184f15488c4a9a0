"""The loss over quadtree levels (QGN): cross-entropy at every level over the nodes of the ground-truth tree.

Targets of level l are the node labels with MIXED mapped to class index C (the last logit); ignore leaves are
not supervised. Levels are weighted geometrically, w_l = s ** (depth - l) (s = 1: QGN's Cityscapes setting), or
adaptively: w_l = running average of L_l / L_full (momentum 0.99, detached), QGN's negative-s option; under DDP the
ratios are those of the level losses summed over the ranks, so every rank weights the levels alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import quadtree as qt


@dataclass
class LossConfig:
    level_scale: float = 1.0  # s in w_l = s ** (depth - l); ignored when adaptive
    adaptive: bool = False  # weight level l by the running average of L_l / L_full instead
    momentum: float = 0.99  # of the adaptive running averages
    mixed_weight: float = 1.0  # class weight of MIXED (index C); the C real classes weigh 1 unless class_weights


def level_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255,
               class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of one level over its supervised nodes (0 when none is supervised).

    Args:
        logits: float (N, C + 1), or (N, C) at full resolution.
        labels: int64 (N,) node labels (classes, the ignore index, MIXED).
        class_weights: float (C + 1,) or None; sliced to the logits' width.
    Returns:
        a float32 scalar (low-precision logits are cast first: the loss is always computed in float32); the
        weighted mean over nodes whose label is not the ignore index, as `F.cross_entropy`.
    """
    logits = logits.float()
    targets = torch.where(labels == qt.MIXED, torch.full_like(labels, num_classes), labels)  # MIXED -> class C
    supervised = targets != ignore_index
    if not bool(supervised.any()):
        return logits.sum() * 0.0  # keeps the graph (and every parameter) connected on empty levels
    if bool((targets[supervised] >= logits.shape[1]).any()):
        bad = torch.unique(targets[supervised & (targets >= logits.shape[1])]).tolist()
        raise ValueError(f"targets {bad} exceed the {logits.shape[1]} logits of this level: mask labels must be "
                         f"< num_classes = {num_classes} (or the ignore index {ignore_index})")
    weight = None if class_weights is None else class_weights[: logits.shape[1]].to(logits)
    return F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_index)


class QuadtreeLoss(nn.Module):
    """Weighted sum of per-level losses; returns named losses.

    Shape:
        forward(level_logits: depth + 1 tensors (N_l, C + 1) (last (N_depth, C)), tree: Quadtree,
                full_logits: (B, C, H, W) or None, masks: int64 (B, H, W) or None)
            -> {"loss_l0": ..., ..., "loss_l{depth}": ..., "loss": weighted total} (scalars)
        With `full_logits` (the dense model) the full-resolution loss is over every pixel of `masks`.
    """

    def __init__(self, num_classes: int, depth: int, config: LossConfig | None = None, ignore_index: int = 255,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.num_classes, self.depth, self.ignore_index = num_classes, depth, ignore_index
        self.config = config or LossConfig()
        weights = torch.ones(num_classes + 1) if class_weights is None else class_weights.clone().float()
        weights[num_classes] *= self.config.mixed_weight
        self.register_buffer("class_weights", weights)
        self.register_buffer("ratios", torch.ones(depth))  # adaptive: running L_l / L_full for l < depth

    def level_weights(self) -> list[float]:
        """w_l for l = 0 .. depth (w_depth = 1)."""
        if self.config.adaptive:
            return [float(r) for r in self.ratios] + [1.0]
        return [self.config.level_scale ** (self.depth - l) for l in range(self.depth + 1)]

    def forward(self, level_logits, tree: qt.Quadtree, full_logits=None, masks=None) -> dict[str, torch.Tensor]:
        if len(level_logits) != tree.depth + 1 or tree.depth != self.depth:
            raise ValueError(f"expected {self.depth + 1} levels of logits for a depth-{self.depth} tree, got "
                             f"{len(level_logits)} (tree depth {tree.depth})")
        losses = {}
        for l, (logits, level) in enumerate(zip(level_logits, tree.levels)):
            if logits.shape[0] != level.num_nodes:
                raise ValueError(f"level {l}: {logits.shape[0]} rows of logits for {level.num_nodes} nodes")
            losses[f"loss_l{l}"] = level_loss(logits, level.labels, self.num_classes, self.ignore_index,
                                              self.class_weights)
        if full_logits is not None:
            if masks is None:
                raise ValueError("full_logits need the dense masks (B, H, W) as targets")
            losses[f"loss_l{self.depth}"] = F.cross_entropy(
                full_logits.float(), masks.long(), weight=self.class_weights[: self.num_classes].to(full_logits.device),
                ignore_index=self.ignore_index)
        if self.config.adaptive and self.training:
            level = torch.stack([losses[f"loss_l{l}"].detach().float() for l in range(self.depth + 1)])
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(level)
            if float(level[-1]) > 0:
                self.ratios.mul_(self.config.momentum).add_((1 - self.config.momentum) * level[:-1] / level[-1])
        weights = self.level_weights()
        losses["loss"] = sum(w * losses[f"loss_l{l}"] for l, w in enumerate(weights))
        return losses


def build_criterion(config) -> nn.Module:
    """The training loss of `config.model.model` (a RunConfig): `QuadtreeLoss` for QGN and the dense twin,
    `qgn.sparserefine.RefineLoss`, `qgn.segblocks.SegBlocksLoss`."""
    model = config.model
    if model.model == "sparserefine":
        from qgn.sparserefine import RefineLoss

        return RefineLoss(model)
    if model.model == "segblocks":
        from qgn.segblocks import SegBlocksLoss

        return SegBlocksLoss(model)
    return QuadtreeLoss(model.num_classes, model.depth, config.loss, model.ignore_index)
