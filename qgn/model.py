"""QGN: a dense encoder, a dense root head, and a sparse decoder that runs only at the nodes of a quadtree.

Level 0 (the root grid, stride 2**depth) is dense: every root cell gets C + 1 logits (the last is MIXED).
Each finer level l = 1 .. depth takes the nodes of level l - 1 chosen for expansion (the MIXED nodes of the
ground-truth tree in training, the predicted ones at inference), gives each four children (a learned
per-quadrant projection, `sparse_ops.expand_children`), adds the encoder features at the children (or, at
strides 2 and 1, a k x k conv of the pixels, `qgn.stem.PixelStem`), runs submanifold residual blocks over the
level's nodes and a head with C + 1 logits per node (C at full resolution, where nothing is MIXED).

The dense twin (`config.model == "dense"`) runs the same layers, with the same weights, at every cell of every
level with dense torch ops, ending in full-resolution logits: the reference for cost and accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from qgn.config import QGNConfig
from qgn.encoder import build_encoder
from qgn.stem import PixelStem
from sparse_ops import ExpandChildren, SparseGeometry, SubMResBlock, gather_dense, select_nodes


@dataclass(frozen=True)
class LevelOutput:
    """What the decoder computed at one level.

    Attributes:
        geometry: the level's nodes (coords int32 (N, 3), grid shape, batch size).
        feats: float (N, C_l) node features.
        logits: float (N, C + 1), or (N, C) at full resolution.
        expanded_from: int64 (N / 4,) rows of the previous level whose children these nodes are (None at level 0).
    """

    geometry: SparseGeometry
    feats: torch.Tensor
    logits: torch.Tensor
    expanded_from: torch.Tensor | None


@dataclass(frozen=True)
class QGNOutput:
    """Per-level logits aligned row by row with `tree.levels[l]`, and (dense model only) full-res logits.

    Attributes:
        level_logits: depth + 1 tensors (N_l, C + 1), the last (N_depth, C).
        full_logits: float (B, C, H, W) for the dense model (every pixel supervised), else None.
    """

    level_logits: list[torch.Tensor]
    full_logits: torch.Tensor | None = None


def dense_conv(conv, x: torch.Tensor) -> torch.Tensor:
    """A `SubMConv2d` applied densely: `F.conv2d` with its weight, bias and dilation, same-size output."""
    return F.conv2d(x, conv.weight, conv.bias, padding=conv.dilation * (conv.kernel_size // 2), dilation=conv.dilation)


def dense_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """A `NodeBatchNorm` applied to a dense (B, C, H, W) map, with its parameters and running statistics."""
    training = bn.training or not bn.track_running_stats
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training, momentum, bn.eps)


def dense_res_block(block: SubMResBlock, x: torch.Tensor) -> torch.Tensor:
    """`SubMResBlock` computed densely at every pixel of (B, C, H, W) with the block's own weights."""
    out = F.relu(dense_batch_norm(block.bn1, dense_conv(block.conv1, x)))
    out = dense_batch_norm(block.bn2, dense_conv(block.conv2, out))
    identity = x if block.shortcut is None else dense_batch_norm(block.shortcut["bn"], dense_conv(block.shortcut["conv"], x))
    return F.relu(out + identity)


class DecoderLevel(nn.Module):
    """One level of the sparse decoder (see the module docstring).

    Shape:
        forward(parent_feats (M, C_prev), parent_geometry (M sites), images, features)
            -> LevelOutput with 4M nodes: feats (4M, C_l), logits (4M, num_outputs)
        forward_dense(parent_map (B, C_prev, h, w), images, features) -> (map (B, C_l, 2h, 2w), logits map)
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

    def forward(self, parent_feats, parent_geometry: SparseGeometry, images, features) -> tuple[torch.Tensor, SparseGeometry, torch.Tensor]:
        feats, geometry = self.expand(parent_feats, parent_geometry)
        if self.encoder_index is None:
            feats = feats + self.skip(images, geometry.coords)
        else:
            feats = feats + self.skip(gather_dense(features[self.encoder_index], geometry))
        for block in self.blocks:
            feats = block(feats, geometry)
        return feats, geometry, self.head(feats)

    def forward_dense(self, parent_map, images, features) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.conv_transpose2d(parent_map, self.expand.weight, self.expand.bias, stride=2)
        if self.encoder_index is None:
            x = x + self.skip.forward_dense(images)
        else:
            x = x + F.conv2d(features[self.encoder_index], self.skip.weight[:, :, None, None], self.skip.bias)
        for block in self.blocks:
            x = dense_res_block(block, x)
        return x, F.conv2d(x, self.head.weight[:, :, None, None], self.head.bias)

    def macs_per_node(self) -> int:
        """Multiply-accumulates per node of this level (submanifold convs counted at all k*k taps)."""
        c_prev, c = self.expand.in_channels, self.expand.out_channels
        macs = c_prev * c  # this node's quadrant of the parent projection
        macs += self.skip.macs_per_node() if isinstance(self.skip, PixelStem) else self.skip.in_features * c
        for block in self.blocks:
            for conv in (block.conv1, block.conv2, None if block.shortcut is None else block.shortcut["conv"]):
                if conv is not None:
                    macs += conv.in_channels * conv.out_channels * conv.kernel_size ** 2
        return macs + c * self.num_outputs


class QGN(nn.Module):
    """The QGN network and its dense twin (chosen by `config.model`).

    Shape:
        forward(images float (B, C_in, H, W), tree: Quadtree of the same batch and padded size) -> QGNOutput.
        H and W must be multiples of 2**depth (`predict` pads other sizes itself).
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
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, {self.config.in_channels}, H, W), got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if images.shape[1] != self.config.in_channels:
            raise ValueError(f"the model takes {self.config.in_channels}-channel images, got {images.shape[1]} "
                             f"channels; convert the images (e.g. gray <-> RGB) or train with in_channels="
                             f"{images.shape[1]}")
        cell = 1 << self.config.depth
        if images.shape[2] % cell or images.shape[3] % cell:
            raise ValueError(f"image size {tuple(images.shape[2:])} must be a multiple of 2**depth = {cell}; crop "
                             f"or pad the images (QGN.predict pads automatically)")

    # ---- the sparse decoder ---------------------------------------------------------------------------------
    def decode_levels(self, images: torch.Tensor, features: list[torch.Tensor],
                      choose_expanded: Callable[[int, torch.Tensor, SparseGeometry], torch.Tensor], last_level: int | None = None,
                      ) -> list[LevelOutput]:
        """Run the root head and the sparse levels 1 .. last_level.

        Args:
            images: (B, C_in, H, W); features: the encoder's maps at strides 4 .. 2**depth.
            choose_expanded: (level, logits (N, C + 1), geometry) -> bool (N,): which nodes of `level` get children.
            last_level: deepest level to compute (default: depth).
        Returns:
            one LevelOutput per computed level; level l + 1 holds the children of the chosen nodes of level l,
            in the quadtree's order.
        """
        last_level = self.config.depth if last_level is None else last_level
        root = self.root(features[-1])
        batch, c0, h0, w0 = root.shape
        logits = self.root_head(root).permute(0, 2, 3, 1).reshape(-1, self.mixed_class + 1)
        geometry = SparseGeometry._trusted(qt.root_coords(batch, h0, w0, root.device), (h0, w0), batch)
        outputs = [LevelOutput(geometry, root.permute(0, 2, 3, 1).reshape(-1, c0), logits, None)]
        for level in self.levels[:last_level]:
            above = outputs[-1]
            chosen = select_nodes(above.feats, above.geometry, choose_expanded(level.level - 1, above.logits, above.geometry))
            feats, geometry, logits = level(chosen.feats, chosen.coords, images, features)
            outputs.append(LevelOutput(geometry, feats, logits, chosen.index))
        return outputs

    def forward(self, images: torch.Tensor, tree: qt.Quadtree) -> QGNOutput:
        self.check_images(images)
        if tree.batch_size != images.shape[0] or tree.padded_size != tuple(images.shape[2:]):
            raise ValueError(f"the tree (batch {tree.batch_size}, padded size {tree.padded_size}) does not match the "
                             f"images (batch {images.shape[0]}, size {tuple(images.shape[2:])}); encode the masks "
                             f"of these images with depth {self.config.depth}")
        if tree.depth != self.config.depth:
            raise ValueError(f"the tree has depth {tree.depth} but the model depth {self.config.depth}")
        features = self.encoder(images)
        if self.config.model == "dense":
            maps = self.forward_dense(images, features)
            level_logits = [gather_dense(m, tree.levels[l].coords, mode="nearest") for l, m in enumerate(maps)]
            return QGNOutput(level_logits, full_logits=maps[-1])
        outputs = self.decode_levels(images, features, lambda l, _logits, _geometry: tree.levels[l].labels == qt.MIXED)
        return QGNOutput([out.logits for out in outputs])

    # ---- the dense twin -------------------------------------------------------------------------------------
    def forward_dense(self, images: torch.Tensor, features: list[torch.Tensor] | None = None,
                      last_level: int | None = None) -> list[torch.Tensor]:
        """Levels 0 .. last_level (default depth) at every cell: logits maps (B, C + 1, h_l, w_l); at full
        resolution (B, C, H, W)."""
        features = self.encoder(images) if features is None else features
        x = self.root(features[-1])
        maps = [self.root_head(x)]
        for level in self.levels[: self.config.depth if last_level is None else last_level]:
            x, logits = level.forward_dense(x, images, features)
            maps.append(logits)
        return maps

    def predict(self, images: torch.Tensor, max_depth: int | None = None, threshold: float | None = None,
                budget: int | None = None, oracle_tree: qt.Quadtree | None = None):
        """Labels at a chosen cost; see `qgn.predict.predict`. Returns a `qgn.predict.Prediction`."""
        from qgn.predict import predict

        return predict(self, images, max_depth, threshold, budget, oracle_tree)
