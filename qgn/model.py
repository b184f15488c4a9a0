"""QGN: a dense encoder, a dense root head, and a sparse decoder that grows a quadtree level by level.

Level 0 (the root grid, stride 2**depth) is dense: every root cell gets C + 1 logits (the last is MIXED).
An expansion rule (`qgn.expansion`: the ground-truth tree in training; argmax, threshold, budget or an oracle at
inference) picks the nodes of level l that become MIXED; each gets four children at level l + 1 (a learned
per-quadrant projection, `sparse_ops.expand_children`), which add the encoder features at their cells (or, at
strides 2 and 1, a k x k conv of the pixels, `qgn.stem.PixelStem`), run submanifold residual blocks and a head
with C + 1 logits per node (C at full resolution, where nothing is MIXED). Each level computed becomes a
`QuadtreeLevel` of the predicted tree (labels: MIXED where expanded, the best class elsewhere), carrying the
sparse geometry its convolutions used; `decode` returns the tree and the logits of its nodes.

`DenseTwin` (`config.model == "dense"`) runs the same modules, with the same weights, at every cell of every
level through their dense twins (`forward_dense`), ending in full-resolution logits: the reference for cost and
accuracy. It grows the same kind of tree by reading the node logits from its maps. `qgn.registry.build_model`
builds the class a config names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from qgn.config import QGNConfig
from qgn.encoder import build_encoder
from qgn.expansion import ExpansionRule, argmax_rule, cells_in_image, follow_tree
from qgn.predict import Prediction, predict
from qgn.stem import PixelStem, stem_matrix
from sparse_ops import ExpandChildren, SparseGeometry, SubMResBlock, gather_dense, tree_level
from sparse_ops.backend import autocast_inputs
from sparse_ops.expand import expansion_columns
from sparse_ops.inference_weights import derived_weight


@dataclass(frozen=True, eq=False)
class Decoding:
    """What the decoder computed.

    Attributes:
        tree: the grown Quadtree (image_size = the unpadded size; levels beyond the last computed are empty).
            Labels: MIXED where a node was expanded, else its best non-MIXED class, or the ignore index where the
            node lies wholly in the padding.
        level_logits: one float tensor per computed level, row i = node i of `tree.levels[l]`: (N_l, C + 1), and
            (N_depth, C) at full resolution. Empty for the dense twin's own full-resolution prediction (rule None
            at full depth), whose tree is the quadtree of its labels rather than grown.
        nodes_per_level: per level 0..depth, the cells the network computed there: the tree's nodes for QGN,
            every cell of the level grid for the dense twin, 0 below the last computed level.
        full_logits: float (B, C, H_pad, W_pad) full-resolution logits of the dense twin at full depth, else None.
    """

    tree: qt.Quadtree
    level_logits: list[torch.Tensor]
    nodes_per_level: list[int]
    full_logits: torch.Tensor | None = None


class DecoderLevel(nn.Module):
    """One level of the decoder (see the module docstring).

    Shape:
        forward(parent_feats (M, C_prev), geometry: the 4M children's sites, images, features)
            -> (feats (4M, C_l), logits (4M, num_outputs))
        forward_dense(parent_map (B, C_prev, h, w), images, features) -> (map (B, C_l, 2h, 2w), logits map)
    The sparse forward multiplies the weights of expansion, skip and head in matmul layout with the expansion's and
    the skip's biases merged, derived once while autograd records nothing (`sparse_ops.inference_weights`).
    """

    def __init__(self, level: int, config: QGNConfig, encoder_channels: tuple[int, ...]):
        super().__init__()
        self.level = level
        self.stride = 1 << (config.depth - level)
        c_prev, c = config.decoder_channels[level - 1], config.decoder_channels[level]
        self.expand = ExpandChildren(c_prev, c)
        if self.stride >= 4:
            self.encoder_index = self.stride.bit_length() - 3  # stride 4 -> features[0]
            self.skip = nn.Linear(encoder_channels[self.encoder_index], c)
        else:
            self.encoder_index = None
            self.skip = PixelStem(config.in_channels, c, self.stride)
        self.blocks = nn.ModuleList(SubMResBlock(c, backend=config.backend) for _ in range(config.blocks_per_level))
        self.num_outputs = config.num_classes + (0 if level == config.depth else 1)
        self.head = nn.Linear(c, self.num_outputs)

    def forward(self, parent_feats, geometry: SparseGeometry, images, features) -> tuple[torch.Tensor, torch.Tensor]:
        # expand + skip as two matmuls into one output, both biases added by the first; the weights in matmul
        # layout (cast to the autocast dtype) are derived once for inference (sparse_ops.inference_weights)
        columns, bias, skip_matrix, head_matrix, head_bias = derived_weight(
            self, "matrices", _level_matrices, self.expand.weight, self.expand.bias, self.skip.weight,
            self.skip.bias, self.head.weight, self.head.bias)
        (parent_feats,) = autocast_inputs(parent_feats.device, parent_feats)
        feats = torch.addmm(bias, parent_feats, columns).view(4 * parent_feats.shape[0], self.expand.out_channels)
        feats = torch.addmm(feats, self._skip_input(geometry, images, features), skip_matrix)  # input freed here
        for block in self.blocks:
            feats = block(feats, geometry)
        return feats, torch.addmm(head_bias, feats, head_matrix)

    def _skip_input(self, geometry: SparseGeometry, images, features) -> torch.Tensor:
        """What the skip multiplies at the level's nodes: the pixels around them ((N, k * k * C_in), PixelStem) or the
        encoder features at them ((N, C_enc)), in the autocast dtype."""
        if self.encoder_index is None:
            skip = self.skip.patch_rows(images, geometry)
        else:
            skip = gather_dense(features[self.encoder_index], geometry)
        return autocast_inputs(skip.device, skip)[0]

    def forward_dense(self, parent_map, images, features) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dense_features(parent_map, images, features)
        return x, F.conv2d(x, self.head.weight[:, :, None, None], self.head.bias)

    def dense_features(self, parent_map, images, features) -> torch.Tensor:
        """`forward_dense` without the head: the level's map (B, C_l, 2h, 2w)."""
        x = self.expand.forward_dense(parent_map)
        if self.encoder_index is None:
            x = x + self.skip.forward_dense(images)
        else:
            x = x + F.conv2d(features[self.encoder_index], self.skip.weight[:, :, None, None], self.skip.bias)
        for block in self.blocks:
            x = block.forward_dense(x)
        return x

    def macs_per_node(self) -> int:
        """Multiply-accumulates per node of this level (submanifold convs counted at all k*k taps)."""
        c = self.expand.out_channels
        skip = self.skip.macs_per_site() if isinstance(self.skip, PixelStem) else self.skip.in_features * c
        return self.expand.macs_per_child() + skip + sum(b.macs_per_site() for b in self.blocks) + \
            c * self.num_outputs


def check_images(images, in_channels: int, multiple: int = 1, multiple_name: str = "", padder: str = "") -> None:
    """ValueError unless `images` is a float tensor (B, in_channels, H, W) with H and W multiples of `multiple`
    (named `multiple_name` in the message; `padder`: what pads automatically) - the check of every engine model."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, {in_channels}, H, W), got {got}")
    if images.shape[1] != in_channels:
        raise ValueError(f"the model takes {in_channels}-channel images, got {images.shape[1]} channels; convert "
                         f"the images (e.g. gray <-> RGB) or train with in_channels={images.shape[1]}")
    if images.shape[2] % multiple or images.shape[3] % multiple:
        raise ValueError(f"image size {tuple(images.shape[2:])} must be a multiple of {multiple_name} = {multiple}; "
                         f"crop or pad the images ({padder} pads automatically)")


class QGN(nn.Module):
    """The QGN network.

    Shape:
        forward(images float (B, C_in, H, W), tree: Quadtree of the same batch and padded size) -> Decoding whose
        level logits are aligned with the nodes of `tree` (the decoder grows exactly that tree's structure).
        H and W must be multiples of 2**depth (`qgn.predict.predict` pads other sizes itself).
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = build_encoder(config)
        channels = self.encoder.channels
        c0 = config.decoder_channels[0]
        self.root = nn.Sequential(nn.Conv2d(channels[-1], c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0),
                                  nn.ReLU(inplace=True))
        self.root_head = nn.Conv2d(c0, config.num_classes + 1, 1)
        self.levels = nn.ModuleList(DecoderLevel(l, config, channels) for l in range(1, config.depth + 1))

    @property
    def mixed_class(self) -> int:
        """Index of the MIXED logit (= num_classes)."""
        return self.config.num_classes

    def check_images(self, images: torch.Tensor) -> None:
        check_images(images, self.config.in_channels, 1 << self.config.depth, "2**depth", "qgn.predict.predict")

    def forward(self, images: torch.Tensor, tree: qt.Quadtree) -> Decoding:
        self.check_images(images)
        if tree.batch_size != images.shape[0] or tree.padded_size != tuple(images.shape[2:]):
            raise ValueError(f"the tree (batch {tree.batch_size}, padded size {tree.padded_size}) does not match the "
                             f"images (batch {images.shape[0]}, size {tuple(images.shape[2:])}); encode the masks "
                             f"of these images with depth {self.config.depth}")
        if tree.depth != self.config.depth:
            raise ValueError(f"the tree has depth {tree.depth} but the model depth {self.config.depth}")
        return self.decode(images, self.encoder(images), follow_tree(tree), tree.image_size)

    def prediction_macs(self, images_shape: tuple[int, int, int, int], prediction: Prediction) -> int:
        """MACs of `prediction` of images of `images_shape` (B, C, H, W): `qgn.cost.quadtree_macs` on the padded
        size the network ran on and the nodes it computed."""
        from qgn.cost import quadtree_macs

        padded = (*images_shape[:2], *prediction.tree.padded_size)
        return quadtree_macs(self, padded, prediction.nodes_per_level)

    def predict(self, images: torch.Tensor, max_depth: int | None = None, threshold: float | None = None,
                budget: int | None = None, oracle_tree: qt.Quadtree | None = None) -> Prediction:
        """Labels at a chosen cost: `qgn.predict.predict(self, images, ...)`."""
        return predict(self, images, max_depth, threshold, budget, oracle_tree)

    def decode(self, images: torch.Tensor, features: list[torch.Tensor], rule: ExpansionRule | None,
               image_size: tuple[int, int], last_level: int | None = None) -> Decoding:
        """Grow the tree: the root head, then levels 1 .. last_level at the children of the nodes `rule` expands.

        Args:
            images: (B, C_in, H_pad, W_pad); features: the encoder's maps at strides 4 .. 2**depth.
            rule: an `qgn.expansion` rule; None: `argmax_rule` (expand where MIXED is the argmax).
            image_size: (H, W) before padding: nodes wholly in the padding are ignore leaves.
            last_level: deepest level to compute (default: depth).
        """
        rule = argmax_rule(self.mixed_class) if rule is None else rule
        last_level = self.config.depth if last_level is None else last_level
        root = self.root(features[-1])
        batch, c0, h0, w0 = root.shape
        geometry = SparseGeometry.grid(batch, (h0, w0), root.device)
        feats = root.permute(0, 2, 3, 1).reshape(-1, c0)
        logits = self.root_head(root).permute(0, 2, 3, 1).reshape(-1, self.mixed_class + 1)
        growth = _TreeGrowth(self.config, batch, image_size, root.device)
        chosen = None
        for level in range(last_level + 1):
            if level > 0:  # the children of the nodes chosen at the level above
                if chosen.shape[0] == 0 and not torch.is_grad_enabled():
                    # no node left to grow (its count is known on the host since the rule's nonzero): the deeper
                    # levels are empty - without autograd nothing needs their (empty) computation
                    growth.add_empty_levels(last_level, logits)
                    break
                feats, logits = self.levels[level - 1](feats[chosen], geometry, images, features)
            chosen = growth.add_level(geometry, logits, rule if level < last_level else None)
            if level < last_level:
                geometry = geometry.children(chosen, growth.child_coords)
        return Decoding(growth.tree(), growth.level_logits, growth.nodes_per_level())


class DenseTwin(QGN):
    """QGN's layers with the same weights, run at every cell of every level with dense torch ops.

    Shape:
        forward(images, tree) -> Decoding with full_logits (B, C, H, W) and level logits read at `tree`'s nodes.
    """

    def dense_maps(self, images: torch.Tensor, features: list[torch.Tensor], last_level: int | None = None
                   ) -> list[torch.Tensor]:
        """Logits maps of levels 0 .. last_level (default depth) at every cell: (B, C + 1, h_l, w_l); at full
        resolution (B, C, H, W)."""
        x = self.root(features[-1])
        maps = [self.root_head(x)]
        for level in self.levels[: self.config.depth if last_level is None else last_level]:
            x, logits = level.forward_dense(x, images, features)
            maps.append(logits)
        return maps

    def decode(self, images: torch.Tensor, features: list[torch.Tensor], rule: ExpansionRule | None,
               image_size: tuple[int, int], last_level: int | None = None) -> Decoding:
        """Every level at every cell, then the tree `rule` grows over the maps. With rule None at full depth the
        labels are the dense baseline's own: the argmax of the full-resolution logits, wherever the coarser
        levels would have stopped (the tree is then the quadtree of those labels)."""
        depth = self.config.depth
        last_level = depth if last_level is None else last_level
        maps = self.dense_maps(images, features, last_level)
        batch = images.shape[0]
        cells = [batch * m.shape[2] * m.shape[3] for m in maps] + [0] * (depth - last_level)
        full_logits = maps[-1] if last_level == depth else None
        if rule is None and last_level == depth:
            labels = full_logits.argmax(1)  # on the padded grid: images smaller than a root cell work too
            labels[:, image_size[0]:] = self.config.ignore_index
            labels[:, :, image_size[1]:] = self.config.ignore_index
            tree = qt.encode(labels, depth, ignore_index=self.config.ignore_index)
            return Decoding(dataclasses.replace(tree, image_size=tuple(image_size)), [], cells, full_logits)
        rule = argmax_rule(self.mixed_class) if rule is None else rule
        h0, w0 = maps[0].shape[2:]
        geometry = SparseGeometry.grid(batch, (h0, w0), images.device)
        growth = _TreeGrowth(self.config, batch, image_size, images.device)
        for level in range(last_level + 1):
            logits = gather_dense(maps[level], geometry)
            chosen = growth.add_level(geometry, logits, rule if level < last_level else None)
            if level < last_level:
                geometry = geometry.children(chosen, growth.child_coords)
        return Decoding(growth.tree(), growth.level_logits, cells, full_logits)


def _level_matrices(expand_weight, expand_bias, skip_weight, skip_bias, head_weight, head_bias):
    """A decoder level's weights as its sparse forward multiplies them: the expansion's columns with the bias of
    expansion and skip (repeated per child), the skip's matrix (nn.Linear's, or the PixelStem's), the head's."""
    expand_weight, expand_bias, skip_weight, skip_bias, head_weight, head_bias = autocast_inputs(
        expand_weight.device, expand_weight, expand_bias, skip_weight, skip_bias, head_weight, head_bias)
    columns, bias = expansion_columns(expand_weight, expand_bias)
    if skip_bias is not None:
        bias = skip_bias.repeat(4) if bias is None else bias + skip_bias.repeat(4)
    skip_matrix = skip_weight.t() if skip_weight.ndim == 2 else stem_matrix(skip_weight)
    return columns, bias, skip_matrix, head_weight.t(), head_bias


class _TreeGrowth:
    """The levels of the tree a decoder grows, and their logits: one `add_level` per computed level, `tree()` at
    the end - the one place a predicted tree is assembled."""

    def __init__(self, config: QGNConfig, batch_size: int, image_size: tuple[int, int], device: torch.device):
        self.config, self.batch_size, self.image_size = config, batch_size, tuple(int(s) for s in image_size)
        self.padded = qt.padded_size(self.image_size, 1 << config.depth) != self.image_size
        self.levels: list[qt.QuadtreeLevel] = []
        self.level_logits: list[torch.Tensor] = []
        self._parent: torch.Tensor | None = None  # parent rows of the next level's nodes
        self.child_coords: torch.Tensor | None = None  # their coords, when the rule knows them (else computed)
        self._empty: qt.QuadtreeLevel | None = None  # an empty level: views of the root's tensors (set at level 0)

    def add_level(self, geometry: SparseGeometry, logits: torch.Tensor, rule: ExpansionRule | None) -> torch.Tensor:
        """Record the next level (its nodes: `geometry`, children of the nodes chosen at the previous call); label
        it, let `rule` pick the nodes to expand (none when rule is None). Returns int64 (M,) their rows."""
        level = len(self.levels)
        if level == 0:  # the roots' parents (-1), kept with the root grid's geometry: made once per grid
            parent = geometry.derived(("tree", "root_parent"), lambda: torch.full(
                (geometry.num_sites,), -1, dtype=torch.long, device=geometry.device))
            self._empty = qt.QuadtreeLevel(geometry.coords[:0], parent[:0], parent[:0])
        else:
            parent = self._parent
        leaves = logits[:, :self.config.num_classes].argmax(1)
        if self.padded:  # nodes wholly in the padding are ignore leaves
            inside = cells_in_image(geometry.coords, 1 << (self.config.depth - level), self.image_size)
            leaves = torch.where(inside, leaves, self.config.ignore_index)
        self.levels.append(tree_level(geometry, leaves, parent))
        self.level_logits.append(logits)
        if rule is None:
            return self._empty.parent
        expand = rule(level, logits, self.tree())
        self.levels[-1] = tree_level(geometry, leaves.masked_fill(expand, qt.MIXED), parent)
        if hasattr(rule, "children_of"):  # a rule that knows its children (a target tree): no synchronisation
            chosen, self._parent, self.child_coords = rule.children_of(level, logits.device)
            return chosen
        chosen = torch.nonzero(expand).flatten()  # the one host synchronisation of a level: its number of children
        self._parent, self.child_coords = chosen.repeat_interleave(4), None
        return chosen

    def add_empty_levels(self, last_level: int, logits: torch.Tensor) -> None:
        """Record levels len(levels) .. last_level as empty (nothing expanded above them): their logits are empty
        views of `logits` (any computed level's), their nodes the empty level of `tree()`."""
        for level in range(len(self.level_logits), last_level + 1):
            outputs = self.config.num_classes + (0 if level == self.config.depth else 1)
            self.level_logits.append(logits[:0, :outputs])

    def tree(self) -> qt.Quadtree:
        levels = tuple(self.levels) + (self._empty,) * (self.config.depth + 1 - len(self.levels))
        return qt.Quadtree(levels, self.config.depth, self.batch_size, self.image_size, self.config.ignore_index)

    def nodes_per_level(self) -> list[int]:
        return [level.num_nodes for level in self.tree().levels]
