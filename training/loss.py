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
               class_weights: torch.Tensor | None = None, check_labels: bool = True) -> torch.Tensor:
    """Mean cross-entropy of one level over its supervised nodes (0 when none is supervised).

    Args:
        logits: float (N, C + 1), or (N, C) at full resolution.
        labels: int64 (N,) node labels (classes, the ignore index, MIXED).
        class_weights: float (C + 1,) or None; sliced to the logits' width.
        check_labels: raise ValueError for labels that are neither a class, MIXED nor the ignore index (one host
            synchronisation; `check_labels_in_range`). The trainer passes False: its data sets check every mask read.
    Returns:
        a float32 scalar (low-precision logits are cast first: the loss is always computed in float32); the
        weighted mean over nodes whose label is not the ignore index, as `F.cross_entropy`, computed without a
        host synchronisation.
    """
    if check_labels:  # MIXED is a label of the levels above full resolution (whose logits are C + 1 wide)
        mixed = logits.shape[1] > num_classes
        check_labels_in_range([labels] if mixed else [], [] if mixed else [labels], num_classes, ignore_index)
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0  # keeps the graph (and every parameter) connected on empty levels
    # MIXED -> class C (full resolution, where the logits are C wide, holds no MIXED node)
    targets = labels if logits.shape[1] == num_classes else labels.masked_fill(labels == qt.MIXED, num_classes)
    weight = None if class_weights is None else class_weights[: logits.shape[1]].to(logits.device, torch.float32)
    return supervised_mean(torch.ops.aten.nll_loss_forward, F.log_softmax(logits.float(), 1), targets, weight,
                           ignore_index)


def supervised_mean(nll_forward, log_probs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                    ignore_index: int) -> torch.Tensor:
    """F.nll_loss's weighted mean (sum of w[t] * -log p over the supervised targets, divided by the sum of their
    w[t]), 0 where nothing is supervised (or every weight is 0) instead of 0/0 - with no host synchronisation to
    find that out.
    `nll_forward`: `torch.ops.aten.nll_loss_forward` ((N, K) log_probs) or `nll_loss2d_forward` ((B, K, H, W))."""
    total, weight_sum = nll_forward(log_probs, targets, weight, 2, ignore_index)  # reduction 2: sum
    # weight_sum == 0 means every weight summed is 0, so total is 0 too (or not finite, which the trainer reports);
    # any positive sum of class weights that is not absurdly small (below float32's smallest normal) is kept as is
    return total / weight_sum.clamp_min(torch.finfo(torch.float32).tiny)


def check_labels_in_range(coarse: list[torch.Tensor], fine: list[torch.Tensor], num_classes: int,
                          ignore_index: int) -> None:
    """ValueError naming the offending values unless every label is a class 0..C-1 or `ignore_index`, or MIXED in
    `coarse` (the levels above full resolution; `fine`: the full-resolution level and dense masks). One host
    synchronisation for all of them (integer tensors of any shape)."""
    bad = [_not_a_class(l, num_classes, ignore_index, mixed_allowed) for tensors, mixed_allowed in
           ((coarse, True), (fine, False)) for l in tensors]
    if bad and bool(torch.stack([b.any() for b in bad]).any()):
        values = sorted({v for b, l in zip(bad, coarse + fine) for v in torch.unique(l[b]).tolist()})
        raise ValueError(f"labels {values[:20]} are not classes: mask labels must be in 0..{num_classes - 1} "
                         f"(num_classes = {num_classes}) or the ignore index {ignore_index}; MIXED ({qt.MIXED}) "
                         f"only above full resolution")


def _not_a_class(labels: torch.Tensor, num_classes: int, ignore_index: int, mixed_allowed: bool) -> torch.Tensor:
    wrong = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    return wrong & (labels != qt.MIXED) if mixed_allowed else wrong


class QuadtreeLoss(nn.Module):
    """Weighted sum of per-level losses; returns named losses. No host synchronisation when `check_labels` is
    False (what the trainer runs: its data sets check the labels of every mask they read).

    Shape:
        forward(level_logits: depth + 1 tensors (N_l, C + 1) (last (N_depth, C)), tree: Quadtree,
                full_logits: (B, C, H, W) or None, masks: int64 (B, H, W) or None)
            -> {"loss_l0": ..., ..., "loss_l{depth}": ..., "loss": weighted total} (scalars)
        With `full_logits` (the dense model) the full-resolution loss is over every pixel of `masks`.
    """

    def __init__(self, num_classes: int, depth: int, config: LossConfig | None = None, ignore_index: int = 255,
                 class_weights: torch.Tensor | None = None, check_labels: bool = True):
        super().__init__()
        self.num_classes, self.depth, self.ignore_index = num_classes, depth, ignore_index
        self.check_labels = check_labels
        self.config = config or LossConfig()
        weights = torch.ones(num_classes + 1) if class_weights is None else class_weights.clone().float()
        weights[num_classes] *= self.config.mixed_weight
        self.register_buffer("class_weights", weights)
        self.register_buffer("ratios", torch.ones(depth))  # adaptive: running L_l / L_full for l < depth
        scales = torch.tensor([self.config.level_scale ** (depth - l) for l in range(depth + 1)])
        self.register_buffer("scales", scales, persistent=False)  # geometric w_l, on the losses' device

    def level_weights(self) -> list[float]:
        """w_l for l = 0 .. depth (w_depth = 1)."""
        if self.config.adaptive:
            return [float(r) for r in self.ratios] + [1.0]
        return self.scales.tolist()

    def forward(self, level_logits, tree: qt.Quadtree, full_logits=None, masks=None) -> dict[str, torch.Tensor]:
        if len(level_logits) != tree.depth + 1 or tree.depth != self.depth:
            raise ValueError(f"expected {self.depth + 1} levels of logits for a depth-{self.depth} tree, got "
                             f"{len(level_logits)} (tree depth {tree.depth})")
        for l, (logits, level) in enumerate(zip(level_logits, tree.levels)):
            if logits.shape[0] != level.num_nodes:
                raise ValueError(f"level {l}: {logits.shape[0]} rows of logits for {level.num_nodes} nodes")
        if full_logits is not None and masks is None:
            raise ValueError("full_logits need the dense masks (B, H, W) as targets")
        if self.check_labels:
            check_labels_in_range([level.labels for level in tree.levels[:-1]],
                                  [tree.levels[-1].labels] + ([] if masks is None else [masks]), self.num_classes,
                                  self.ignore_index)
        # with the dense model's full-resolution logits, those replace the nodes' at full resolution
        last = self.depth if full_logits is not None else self.depth + 1
        losses = {f"loss_l{l}": level_loss(logits, level.labels, self.num_classes, self.ignore_index,
                                           self.class_weights, check_labels=False)
                  for l, (logits, level) in enumerate(zip(level_logits[:last], tree.levels[:last]))}
        if full_logits is not None:
            weight = self.class_weights[: self.num_classes].to(full_logits.device)
            losses[f"loss_l{self.depth}"] = supervised_mean(
                torch.ops.aten.nll_loss2d_forward, F.log_softmax(full_logits.float(), 1), masks.long(), weight,
                self.ignore_index)
        levels = torch.stack([losses[f"loss_l{l}"] for l in range(self.depth + 1)])  # float32 (depth + 1,)
        if self.config.adaptive and self.training:
            self._update_ratios(levels.detach().clone())  # all_reduce writes into its argument
        weights = torch.cat([self.ratios, self.scales[-1:]]) if self.config.adaptive else self.scales
        losses["loss"] = (levels * weights).sum()  # elementwise: float32 under autocast too
        return losses

    def _update_ratios(self, levels: torch.Tensor) -> None:
        """Move the running ratios L_l / L_full toward this step's (summed over the DDP ranks); unchanged when
        L_full is 0 - decided on the device, without a host synchronisation."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(levels)
        moved = self.ratios * self.config.momentum + (1 - self.config.momentum) * levels[:-1] / levels[-1]
        self.ratios.copy_(torch.where(levels[-1] > 0, moved, self.ratios))


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
    # the data sets check the labels of every mask they read: no per-step check (a host synchronisation)
    return QuadtreeLoss(model.num_classes, model.depth, config.loss, model.ignore_index, check_labels=False)
