"""Inference at a chosen cost: a depth cap, a MIXED-probability threshold, a node budget, or an oracle tree.

Expansion rule at each level (QGN's, with the knobs it lacked): a node gets children when argmax of its logits
is MIXED (default), or when P(MIXED) >= `threshold`; with a `budget` K, at most K nodes per image and level are
expanded, the most probably MIXED first; with `oracle_tree`, exactly that tree's MIXED nodes are expanded.
Nodes that are not expanded take their best non-MIXED class. The deepest computed level is `max_depth`; a pixel
takes the class of the deepest non-MIXED node covering it, so at max_depth = k the labels are painted at stride
2**(depth - k).

Images of any size: they are padded at the bottom/right to multiples of 2**depth by repeating their last row and
column (no artificial edge for the network to see), and a node whose window lies wholly in that padding is never
expanded and is an ignore leaf of the predicted tree - what `quadtree.encode` gives for padding - so the padding
costs nothing beyond the root cells that hold it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from sparse_ops import gather_dense


@dataclass(frozen=True)
class Prediction:
    """What a prediction produced and cost.

    Attributes:
        labels: int64 (B, H, W) at the input size.
        tree: the predicted Quadtree (image_size = (H, W); levels below max_depth are empty).
        nodes_per_level: nodes computed at each level 0..depth (cells of the grid for the dense model).
        macs: multiply-accumulates spent (convolutions and linear layers; submanifold convs at all k*k taps).
        seconds: wall time of the call (CUDA synchronised).
    """

    labels: torch.Tensor
    tree: qt.Quadtree
    nodes_per_level: list[int]
    macs: int
    seconds: float


@contextmanager
def count_dense_conv_macs(module: nn.Module):
    """Sum out_elements * in_channels / groups * kh * kw over every nn.Conv2d call inside `module`.

    Yields a one-element list whose item holds the running total.
    """
    total = [0]

    def hook(conv, inputs, output):
        kh, kw = conv.kernel_size
        total[0] += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


def check_predict_args(model, images, max_depth, threshold, budget, oracle_tree) -> int:
    """Validate the knobs; return the deepest level to compute."""
    depth = model.config.depth
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
    if oracle_tree is not None:
        if model.config.model != "qgn":
            raise ValueError("oracle_tree is for the sparse QGN model; the dense model computes every cell")
        if oracle_tree.depth != depth or oracle_tree.batch_size != images.shape[0] or \
                oracle_tree.image_size != tuple(images.shape[2:]):
            raise ValueError(f"oracle_tree (depth {oracle_tree.depth}, batch {oracle_tree.batch_size}, size "
                             f"{oracle_tree.image_size}) must match the model depth {depth} and the images "
                             f"(batch {images.shape[0]}, size {tuple(images.shape[2:])})")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a float tensor (B, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    return max_depth


def in_image(coords: torch.Tensor, stride: int, image_size: tuple[int, int]) -> torch.Tensor:
    """bool (N,): which nodes (coords (N, 3) at a level of `stride`) have pixels inside the unpadded image."""
    height, width = image_size
    return (coords[:, 1].long() * stride < height) & (coords[:, 2].long() * stride < width)


def expansion_rule(mixed_class: int, threshold: float | None, budget: int | None, oracle_tree: qt.Quadtree | None,
                   depth: int, image_size: tuple[int, int]):
    """(level, logits (N, C + 1), coords (N, 3)) -> bool (N,): which nodes get children. Nodes wholly in the
    padding never do; the budget counts only nodes of the image."""

    def choose(level: int, logits: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if oracle_tree is not None:
            return oracle_tree.levels[level].labels.to(logits.device) == qt.MIXED
        p_mixed = torch.softmax(logits.float(), 1)[:, mixed_class]
        expand = p_mixed >= threshold if threshold is not None else logits.argmax(1) == mixed_class
        expand &= in_image(coords, 1 << (depth - level), image_size)
        if budget is not None and bool(expand.any()):
            expand = within_budget(expand, p_mixed, coords[:, 0].long(), budget)
        return expand

    return choose


def within_budget(expand: torch.Tensor, score: torch.Tensor, batch: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep at most `budget` of the `expand` nodes per batch index, those of highest `score`."""
    candidates = torch.nonzero(expand).flatten()
    # Sort candidates by (batch, -score); a node's rank within its image is its position minus the image's start.
    order = torch.argsort(score[candidates], descending=True, stable=True)
    order = order[torch.argsort(batch[candidates][order], stable=True)]
    ranked = candidates[order]
    images = batch[ranked]
    counts = torch.bincount(images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(ranked.numel(), device=ranked.device) - starts[images]
    kept = torch.zeros_like(expand)
    kept[ranked[rank < budget]] = True
    return kept


def build_tree(levels_coords, levels_logits, levels_expanded, expanded_from, depth, batch_size, image_size,
               num_classes, ignore_index) -> qt.Quadtree:
    """The predicted Quadtree: expanded nodes are MIXED, nodes wholly in the padding ignore leaves, the others take
    their best non-MIXED class."""
    levels = []
    for l in range(depth + 1):
        if l < len(levels_coords):
            labels = levels_logits[l][:, :num_classes].argmax(1)
            labels[~in_image(levels_coords[l], 1 << (depth - l), image_size)] = ignore_index
            if l < len(levels_expanded):
                labels[levels_expanded[l]] = qt.MIXED
            parent = torch.full_like(labels, -1) if l == 0 else expanded_from[l].repeat_interleave(4)
            levels.append(qt.QuadtreeLevel(levels_coords[l].contiguous(), labels, parent))
        else:
            device = levels_coords[0].device
            levels.append(qt.QuadtreeLevel(torch.zeros(0, 3, dtype=torch.int32, device=device),
                                           torch.zeros(0, dtype=torch.long, device=device),
                                           torch.zeros(0, dtype=torch.long, device=device)))
    return qt.Quadtree(tuple(levels), depth, batch_size, tuple(image_size), ignore_index, batched=True)


@torch.no_grad()
def predict(model, images: torch.Tensor, max_depth: int | None = None, threshold: float | None = None,
            budget: int | None = None, oracle_tree: qt.Quadtree | None = None) -> Prediction:
    """Predict labels at a chosen cost (see the module docstring). Works for QGN and its dense twin.

    Args:
        model: a `qgn.QGN` (put in eval mode by the caller for BatchNorm's running statistics).
        images: float (B, C_in, H, W); any H, W (padded to multiples of 2**depth, the result cropped back).
        max_depth: deepest level computed, 0..depth (default depth).
        threshold: expand when P(MIXED) >= threshold (default: when MIXED is the argmax).
        budget: at most this many expanded nodes per image per level.
        oracle_tree: expand exactly the MIXED nodes of this tree (QGN only; its image size must be (H, W)).
    Returns:
        a `Prediction`.
    """
    max_depth = check_predict_args(model, images, max_depth, threshold, budget, oracle_tree)
    device = images.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    height, width = images.shape[2:]
    padded = _pad(images, model.config.depth)
    model.check_images(padded)
    depth, num_classes, mixed = model.config.depth, model.config.num_classes, model.mixed_class
    rule = expansion_rule(mixed, threshold, budget, oracle_tree, depth, (height, width))
    with count_dense_conv_macs(model) as dense_macs:
        features = model.encoder(padded)
        if model.config.model == "dense":
            maps = model.forward_dense(padded, features, last_level=max_depth)
            cells = [images.shape[0] * m.shape[2] * m.shape[3] for m in maps]  # every cell of every level computed
            dense_total = dense_macs[0] + sum(c * level.macs_per_node() for c, level in zip(cells[1:], model.levels))
    if model.config.model == "dense" and max_depth == depth and threshold is None and budget is None:
        labels = maps[-1].argmax(1)[:, :height, :width]  # the dense baseline's own prediction
        return Prediction(labels, qt.encode(labels, depth), cells, dense_total, _elapsed(start, device))

    coords, logits, expanded, expanded_from = [], [], [], [None]
    if model.config.model == "dense":
        # The composition rule over the dense maps (every cell computed; nodes read from the maps).
        batch = images.shape[0]
        h0, w0 = maps[0].shape[2:]
        level_coords = qt.root_coords(batch, h0, w0, device)
        for l in range(max_depth + 1):
            level_logits = gather_dense(maps[l], level_coords)
            coords.append(level_coords)
            logits.append(level_logits)
            if l < max_depth:
                chosen = torch.nonzero(rule(l, level_logits, level_coords)).flatten()
                expanded.append(chosen)
                expanded_from.append(chosen)
                level_coords = qt.child_coords(level_coords[chosen])
        macs, nodes = dense_total, cells + [0] * (depth - max_depth)
    else:
        with count_dense_conv_macs(model) as root_macs:  # the dense root conv and head
            outputs = model.decode_levels(
                padded, features, lambda l, lg, geometry: rule(l, lg, geometry.coords), max_depth)
        for l, out in enumerate(outputs):
            coords.append(out.geometry.coords)
            logits.append(out.logits)
            if l + 1 < len(outputs):
                expanded.append(outputs[l + 1].expanded_from)
                expanded_from.append(outputs[l + 1].expanded_from)
        nodes = [out.geometry.num_sites for out in outputs] + [0] * (depth - max_depth)
        macs = dense_macs[0] + root_macs[0] + sum(n * level.macs_per_node() for n, level in zip(nodes[1:], model.levels))
    tree = build_tree(coords, logits, expanded, expanded_from, depth, images.shape[0], (height, width), num_classes,
                      model.config.ignore_index)
    labels = qt.decode(tree, dtype=torch.int64)
    return Prediction(labels, tree, nodes, macs, _elapsed(start, device))


def _pad(images: torch.Tensor, depth: int) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom/right to multiples of 2**depth with copies of the last row and column."""
    cell = 1 << depth
    h, w = images.shape[2:]
    return F.pad(images, (0, -w % cell, 0, -h % cell), mode="replicate") if (h % cell or w % cell) else images


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
