"""A slow, obviously-correct quadtree builder used as the reference in tests: one node at a time."""

import numpy as np

MIXED = -1


def reference_levels(mask: np.ndarray, depth: int, ignore_index: int = 255):
    """Per level, lists of (batch, y, x), labels and parent rows, built node by node with np.unique."""
    masks = mask[None] if mask.ndim == 2 else mask
    b, h, w = masks.shape
    cell = 2 ** depth
    hp, wp = -(-h // cell) * cell, -(-w // cell) * cell
    padded = np.full((b, hp, wp), ignore_index, dtype=np.int64)
    padded[:, :h, :w] = masks

    def label_of(batch, y, x, size):
        values = np.unique(padded[batch, y * size:(y + 1) * size, x * size:(x + 1) * size])
        return int(values[0]) if len(values) == 1 else MIXED

    levels = []
    nodes = [(bi, y, x) for bi in range(b) for y in range(hp // cell) for x in range(wp // cell)]
    parents = [-1] * len(nodes)
    for level in range(depth + 1):
        size = 2 ** (depth - level)
        labels = [label_of(bi, y, x, size) for bi, y, x in nodes]
        levels.append((nodes, labels, parents))
        next_nodes, next_parents = [], []
        for row, ((bi, y, x), label) in enumerate(zip(nodes, labels)):
            if label == MIXED:
                for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
                    next_nodes.append((bi, 2 * y + dy, 2 * x + dx))
                    next_parents.append(row)
        nodes, parents = next_nodes, next_parents
    return levels
