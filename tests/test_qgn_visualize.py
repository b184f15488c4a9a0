import numpy as np
import pytest
import torch
from PIL import Image

import quadtree as qt
from qgn.visualize import (
    colour_labels, error_map, label_palette, leaf_ids, quadtree_overlay, save_label_png, save_overlay,
)


def reference_leaf_ids(tree: qt.Quadtree, min_size: int) -> np.ndarray:
    """Each leaf node's own window filled with its own number, one node at a time (-1 elsewhere)."""
    out = np.full((tree.batch_size, *tree.level_shape(tree.depth)), -1, np.int64)
    number = 0
    for l, level in enumerate(tree.levels):
        side = tree.stride(l)
        for (b, y, x), label in zip(level.coords.tolist(), level.labels.tolist()):
            if label != qt.MIXED:
                out[b, y * side:(y + 1) * side, x * side:(x + 1) * side] = number if side >= min_size else -1
                number += 1
    return out


def same_cells(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two numberings split the pixels into the same cells (and mark the same pixels -1)."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = np.unique(np.stack([a[a >= 0], b[b >= 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_size", [1, 2, 4])
def test_leaf_ids_number_every_leaf_cell_as_painting_each_leaf_alone_does(seed, min_size):
    rng = np.random.default_rng(seed)
    batch, (height, width) = int(rng.integers(1, 3)), rng.integers(9, 60, 2)
    blocks = rng.integers(0, 3, (batch, height // 4 + 1, width // 4 + 1))
    mask = np.kron(blocks, np.ones((1, 4, 4), np.int64))[:, :height, :width].astype(np.uint8)
    mask[rng.random(mask.shape) < 0.03] = 255  # single ignore pixels: leaves at full resolution
    tree = qt.encode(mask, 3)
    ids = leaf_ids(tree, min_size)
    assert ids.dtype == torch.int64 and ids.shape == (batch, *tree.level_shape(3))
    assert same_cells(ids.numpy(), reference_leaf_ids(tree, min_size))


def test_label_png_holds_the_labels_as_palette_indices(tmp_path):
    labels = torch.tensor([[0, 1, 2], [18, 19, 255]])
    path = save_label_png(labels, tmp_path / "sub" / "l.png")
    image = Image.open(path)
    assert image.mode == "P" and np.array_equal(np.array(image), labels.numpy())
    assert np.array_equal(np.array(image.getpalette()[:6]).reshape(2, 3), label_palette()[:2])
    with pytest.raises(ValueError, match="one \\(H, W\\) map of labels 0..255"):
        save_label_png(torch.zeros(1, 2, 2, dtype=torch.int64), tmp_path / "b.png")


def test_overlay_outlines_leaf_cells_and_refuses_another_size(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[:8, :8] = 1
    mask[0, 0] = 2  # splits the top-left root (stride 4) down to 1-pixel leaves in its corner
    tree = qt.encode(mask, 2)
    out = quadtree_overlay(np.zeros((16, 16, 3), np.uint8), tree, alpha=0.0, border_alpha=1.0, min_outlined=4)
    border = (out == 255).all(-1)
    expected = np.zeros((16, 16), bool)
    expected[[3, 7, 11], :] = expected[:, [3, 7, 11]] = True  # the last row and column of every 4x4 root cell
    expected[:4, :4] = False  # the split root: leaves of 2 and 1 pixels per side, not outlined
    assert np.array_equal(border, expected)
    with pytest.raises(ValueError, match="one-image tree of size \\(8, 8\\)"):
        quadtree_overlay(np.zeros((8, 8, 3), np.uint8), tree)
    path = save_overlay(torch.zeros(3, 16, 16), tree, tmp_path / "o.png")
    assert Image.open(path).size == (16, 16)


def test_error_map_and_colours():
    rgb = np.zeros((1, 3, 3), np.uint8)
    out = error_map(rgb, np.array([[0, 1, 2]]), np.array([[0, 2, 255]]))
    assert out[0, 1].tolist() == [230, 20, 20] and out[0, 2].tolist() == [128, 128, 128]
    assert np.array_equal(colour_labels(torch.tensor([[0, 255]])), label_palette()[[[0, 255]]])
