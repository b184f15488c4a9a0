"""Expansion rules: which nodes of a level the decoder gives children.

One signature serves training, oracle and every inference knob:

    rule(level: int, logits: float (N, C + 1), tree: Quadtree) -> bool (N,)

`tree` is the tree grown so far: levels 0..level, the last one labelled as if it were all leaves (the best
non-MIXED class, the ignore index for nodes wholly in the padding), deeper levels empty. Row i of `logits` is
node i of `tree.levels[level]`; the rule returns which of them become MIXED and get four children.

- `follow_tree(target)`: exactly the MIXED nodes of a given tree (training on the ground truth; the oracle).
- `argmax_rule(mixed_class)`: QGN's rule - expand where MIXED is the argmax.
- `threshold_rule(mixed_class, p)`: expand where P(MIXED) >= p.
- `within_budget(rule, mixed_class, k)`: at most k nodes per image and level, the most probably MIXED first.
A node wholly in the padding is never expanded by the predicting rules (`in_image`).
"""

from __future__ import annotations

from typing import Callable

import torch

import quadtree as qt

ExpansionRule = Callable[[int, torch.Tensor, qt.Quadtree], torch.Tensor]


def in_image(expand: torch.Tensor, tree: qt.Quadtree, level: int) -> torch.Tensor:
    """`expand` (bool (N,)) restricted to the nodes of `tree.levels[level]` that hold pixels of the unpadded image
    (`expand` itself when the image fills the padded grid)."""
    if tree.padded_size == tuple(tree.image_size):
        return expand
    return expand & cells_in_image(tree.levels[level].coords, tree.stride(level), tree.image_size)


def cells_in_image(coords: torch.Tensor, stride: int, image_size: tuple[int, int]) -> torch.Tensor:
    """bool (N,): which cells (coords (N, 3) on a grid of `stride` pixels per cell) hold pixels of an image of
    `image_size` (H, W) padded at the bottom and right."""
    height, width = image_size
    # y * stride < height  <=>  y < ceil(height / stride) for cells y >= 0: no widening, no multiply
    return (coords[:, 1] < -(-height // stride)) & (coords[:, 2] < -(-width // stride))


class FollowTree:
    """Expand exactly the MIXED nodes of `target` (the grown tree then has `target`'s nodes): `follow_tree`.

    Besides the rule's mask, it knows the children it leads to without asking the device (`children_of`): the
    target's next level holds them, so the decoder takes their rows, parents and coordinates from there instead of
    counting the mask's nodes on the host (a synchronisation per level on a GPU) and computing them again. The
    target must keep the quadtree's invariants (`quadtree.check_structure`): trees from `encode`, `merge`, `split`
    and `load` do, and `predict` checks an oracle tree (once per tree).
    """

    def __init__(self, target: qt.Quadtree):
        self.target = target

    def __call__(self, level: int, logits: torch.Tensor, tree: qt.Quadtree) -> torch.Tensor:
        return self.target.levels[level].labels.to(logits.device) == qt.MIXED

    def children_of(self, level: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen int64 (M,), parent int64 (4M,), coords int32 (4M, 3)) of the children of level `level`: the rows
        of the expanded nodes (in order), each child's parent row and its cell - `target.levels[level + 1]`'s, whose
        groups of four children follow their MIXED parents in order (`quadtree.check_structure`)."""
        children = self.target.levels[level + 1]
        parent = children.parent.to(device)
        return parent[::4], parent, children.coords.to(device)


def follow_tree(target: qt.Quadtree) -> ExpansionRule:
    """Expand exactly the MIXED nodes of `target` (the grown tree then has `target`'s nodes); see `FollowTree`."""
    return FollowTree(target)


def argmax_rule(mixed_class: int) -> ExpansionRule:
    """Expand where MIXED (logit `mixed_class`) is the argmax (QGN's own rule)."""

    def rule(level: int, logits: torch.Tensor, tree: qt.Quadtree) -> torch.Tensor:
        return in_image(logits.argmax(1) == mixed_class, tree, level)

    return rule


def threshold_rule(mixed_class: int, threshold: float) -> ExpansionRule:
    """Expand where P(MIXED) = softmax(logits)[mixed_class] >= `threshold` (0 expands everything)."""

    def rule(level: int, logits: torch.Tensor, tree: qt.Quadtree) -> torch.Tensor:
        return in_image(mixed_probability(logits, mixed_class) >= threshold, tree, level)

    return rule


def within_budget(inner: ExpansionRule, mixed_class: int, budget: int) -> ExpansionRule:
    """`inner`'s choice cut to at most `budget` nodes per image and level, those of highest P(MIXED)."""

    def rule(level: int, logits: torch.Tensor, tree: qt.Quadtree) -> torch.Tensor:
        return keep_top(inner(level, logits, tree), mixed_probability(logits, mixed_class),
                        tree.levels[level].coords[:, 0].long(), budget)

    return rule


def expansion_rule(mixed_class: int, threshold: float | None = None, budget: int | None = None,
                   oracle_tree: qt.Quadtree | None = None) -> ExpansionRule | None:
    """The rule of `predict`'s knobs; None when none is set (the model's own prediction)."""
    if oracle_tree is not None:
        return follow_tree(oracle_tree)
    if threshold is None and budget is None:
        return None
    rule = argmax_rule(mixed_class) if threshold is None else threshold_rule(mixed_class, threshold)
    return rule if budget is None else within_budget(rule, mixed_class, budget)


def mixed_probability(logits: torch.Tensor, mixed_class: int) -> torch.Tensor:
    """float32 (N,): softmax(logits)[:, mixed_class], computed in float32 whatever the logits' dtype."""
    return torch.softmax(logits.float(), 1)[:, mixed_class]


def keep_top(expand: torch.Tensor, score: torch.Tensor, batch: torch.Tensor, budget: int) -> torch.Tensor:
    """bool (N,): at most `budget` of the `expand` nodes per batch index, those of highest `score`. No host
    synchronisation: every node is ranked within its image (candidates first, by score), none is looked up."""
    masked = torch.where(expand, score.float(), float("-inf"))
    order = torch.argsort(masked, descending=True, stable=True)
    order = order[torch.argsort(batch[order], stable=True)]  # by image, candidates by score within each image
    images = batch[order]
    rank = torch.arange(order.numel(), device=order.device) - torch.searchsorted(images, images)
    kept = torch.zeros_like(expand)
    kept[order] = rank < budget
    return kept & expand
