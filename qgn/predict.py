"""Inference at a chosen cost: a depth cap, a MIXED-probability threshold, a node budget, or an oracle tree.

`predict` is a short composition: check the knobs, pad, encode, let the decoder grow a tree under the expansion
rule of the knobs (`qgn.expansion`), paint the tree. A node gets children when argmax of its logits is MIXED
(default), or when P(MIXED) >= `threshold`; with a `budget` K, at most K nodes per image and level are expanded,
the most probably MIXED first; with `oracle_tree`, exactly that tree's MIXED nodes are expanded.
Nodes that are not expanded take their best non-MIXED class. The deepest computed level is `max_depth`; a pixel
takes the class of the deepest non-MIXED node covering it, so at max_depth = k the labels are painted at stride
2**(depth - k).

Images of any size: they are padded at the bottom/right to multiples of 2**depth by repeating their last row and
column (no artificial edge for the network to see), and a node whose window lies wholly in that padding is never
expanded and is an ignore leaf of the predicted tree - what `quadtree.encode` gives for padding - so the padding
costs nothing beyond the root cells that hold it.

What a prediction costs (MACs, time, peak memory) is measured around it, not inside: `qgn.cost.measure_predict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

import quadtree as qt
from qgn.expansion import ExpansionRule, expansion_rule


@dataclass(frozen=True, eq=False)
class Prediction:
    """What a prediction produced - by any model of the engine (QGN, dense twin, SparseRefine, SegBlocks).

    Attributes:
        labels: int64 (B, H, W) at the input size.
        tree: QGN and the dense twin: the predicted Quadtree (image_size = (H, W); levels below max_depth are
            empty). None for the other models.
        nodes_per_level: QGN and the dense twin: nodes computed at each level 0..depth (every cell of the level
            grid for the dense twin). None for the other models.
        fine: bool (B, H, W), where the model spent full-resolution compute (SparseRefine: the refined pixels;
            SegBlocks: the high-resolution blocks); None for QGN and the dense twin (their tree says).
        stats: per-prediction figures of the model, means over the batch (SparseRefine: "tau",
            "refined_fraction"; SegBlocks: "high_res_fraction", "target"); evaluation reports their means.
    """

    labels: torch.Tensor
    tree: qt.Quadtree | None = None
    nodes_per_level: list[int] | None = None
    fine: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


@torch.no_grad()
def predict(model, images: torch.Tensor, max_depth: int | None = None, threshold: float | None = None,
            budget: int | None = None, oracle_tree: qt.Quadtree | None = None) -> Prediction:
    """Predict labels at a chosen cost (see the module docstring). Works for QGN and its dense twin.

    Args:
        model: a `qgn.QGN` or `qgn.DenseTwin` (put in eval mode by the caller for BatchNorm's running statistics).
        images: float (B, C_in, H, W); any H, W (padded to multiples of 2**depth, the result cropped back).
        max_depth: deepest level computed, 0..depth (default depth).
        threshold: expand when P(MIXED) >= threshold (default: when MIXED is the argmax).
        budget: at most this many expanded nodes per image per level.
        oracle_tree: expand exactly the MIXED nodes of this tree (its image size must be (H, W)).
    Returns:
        a `Prediction`.
    """
    max_depth = check_predict_args(model, images, max_depth, threshold, budget, oracle_tree)
    return predict_by_rule(model, images, expansion_rule(model.mixed_class, threshold, budget, oracle_tree),
                           max_depth)


@torch.no_grad()
def predict_by_rule(model, images: torch.Tensor, rule: ExpansionRule | None, max_depth: int) -> Prediction:
    """`predict` with the expansion rule itself (`qgn.expansion`; None: the model's argmax) instead of knobs, on
    arguments `predict` has checked."""
    image_size = tuple(images.shape[2:])
    padded = qt.pad_to_multiple(images, 1 << model.config.depth, mode="replicate")
    model.check_images(padded)
    decoding = model.decode(padded, model.encoder(padded), rule, image_size, max_depth)
    # the returned tree drops the rulebooks the decoder kept with its levels (9 int64 per node and more)
    tree = dataclasses.replace(decoding.tree, levels=tuple(
        qt.QuadtreeLevel(level.coords, level.labels, level.parent) for level in decoding.tree.levels))
    # complete by construction (the deepest computed level is never MIXED): no check, no host synchronisation
    return Prediction(qt.decode(tree, dtype=torch.int64, check_complete=False), tree, decoding.nodes_per_level)


def check_predict_args(model, images, max_depth, threshold, budget, oracle_tree) -> int:
    """Validate the knobs; return the deepest level to compute."""
    depth = model.config.depth
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a float tensor (B, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if max_depth is None:
        max_depth = depth
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 0 <= max_depth <= depth:
        raise ValueError(f"max_depth must be an integer in 0..{depth} (the model's depth), got {max_depth!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise ValueError(f"threshold is a probability of MIXED in 0..1 (0 expands every node, 1 only certain ones), "
                         f"got {threshold!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise ValueError(f"budget must be a positive number of nodes per image and level, got {budget!r}; "
                         f"use max_depth=0 for the cheapest prediction")
    if oracle_tree is not None and (oracle_tree.depth != depth or oracle_tree.batch_size != images.shape[0]
                                    or oracle_tree.image_size != tuple(images.shape[2:])):
        raise ValueError(f"oracle_tree (depth {oracle_tree.depth}, batch {oracle_tree.batch_size}, size "
                         f"{oracle_tree.image_size}) must match the model depth {depth} and the images "
                         f"(batch {images.shape[0]}, size {tuple(images.shape[2:])})")
    if oracle_tree is not None:  # the decoder takes its children's rows and cells from it (qgn.expansion.FollowTree)
        qt.check_structure_once(oracle_tree)
    return max_depth
