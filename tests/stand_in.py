"""A stand-in QGN whose heads emit the ground truth of a mask, for tests of prediction and evaluation: what they
compute is then known exactly (the mask, or the mask coarsened by the tree rule)."""

import numpy as np
import torch
from torch import nn

import quadtree as qt
from qgn import QGN, QGNConfig, build_model
from sparse_ops import expand_children

C = 4  # classes
DEPTH = 3


def small_model(kind="qgn") -> QGN:
    torch.manual_seed(0)
    return build_model(QGNConfig(num_classes=C, depth=DEPTH, model=kind, encoder_channels=(8, 12),
                                 decoder_channels=(12, 10, 8, 6))).eval()


def majority(mask: np.ndarray, stride: int) -> np.ndarray:
    """(B, H/stride, W/stride): the most frequent label of each window (ties: the smaller label)."""
    b, h, w = mask.shape
    windows = mask.reshape(b, h // stride, stride, w // stride, stride).transpose(0, 1, 3, 2, 4)
    windows = windows.reshape(b, h // stride, w // stride, -1)
    counts = (windows[..., None] == np.arange(C)).sum(-2)
    return counts.argmax(-1)


def ground_truth_logits(mask: np.ndarray, level: int, coords: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """10 on the node's true label (MIXED = index C), 5 on the majority class of a MIXED node's window."""
    tree = qt.encode(mask, DEPTH)
    grid = qt.dense_level(tree, level)
    major = torch.from_numpy(majority(mask, 2 ** (DEPTH - level)))
    b, y, x = coords.long().unbind(1)
    labels, second = grid[b, y, x], major[b, y, x]
    logits = torch.zeros(len(labels), num_outputs)
    mixed = labels == qt.MIXED
    logits[~mixed, labels[~mixed]] = 10.0
    if bool(mixed.any()):  # never at full resolution, where there is no MIXED logit
        logits[mixed, C] = 10.0
        logits[mixed, second[mixed]] = 5.0
    return logits


class RootStandIn(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, root_feats):
        b, _, h, w = root_feats.shape
        coords = qt.root_coords(b, h, w)
        logits = ground_truth_logits(self.mask, 0, coords, C + 1)
        return logits.reshape(b, h, w, C + 1).permute(0, 3, 1, 2)


class LevelStandIn(nn.Module):
    def __init__(self, mask, level):
        super().__init__()
        self.mask, self.level = mask, level

    def forward(self, parent_feats, geometry, images, features):
        feats = expand_children(parent_feats[:, :1], torch.ones(1, 1, 2, 2))
        outputs = C if self.level == DEPTH else C + 1
        return feats, ground_truth_logits(self.mask, self.level, geometry.coords, outputs)

    def macs_per_node(self):
        return 0


def stand_in(mask: np.ndarray) -> QGN:
    """A QGN whose heads emit the ground truth of `mask` (B, H, W)."""
    model = small_model()
    model.root_head = RootStandIn(mask)
    model.levels = nn.ModuleList(LevelStandIn(mask, l) for l in range(1, DEPTH + 1))
    return model


def coarsened(mask: np.ndarray, k: int) -> np.ndarray:
    """The mask as the tree's rule paints it at depth k: the deepest leaf at level <= k, else the majority."""
    grid = qt.dense_level(qt.encode(mask, DEPTH), k).numpy()
    grid = np.where(grid == qt.MIXED, majority(mask, 2 ** (DEPTH - k)), grid)
    stride = 2 ** (DEPTH - k)
    return grid.repeat(stride, 1).repeat(stride, 2)


def example_masks() -> np.ndarray:
    """(2, 24, 32) uint8 masks of C classes: regions of 4x4 pixels, a one-pixel region and a thin line."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, C, (2, 6, 8)).repeat(4, 1).repeat(4, 2)  # (2, 24, 32): regions of 4x4 pixels
    base[0, 5, 7] = (base[0, 5, 7] + 1) % C  # a one-pixel region
    base[1, 10:14, 3] = 3  # a thin line
    return base.astype(np.uint8)
