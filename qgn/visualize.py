"""Pictures a person looks at: palette label PNGs and quadtree cells drawn over an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import quadtree as qt

CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def label_palette() -> np.ndarray:
    """uint8 (256, 3): Cityscapes colours for 0..18, then well-spread colours; 255 (ignore) is black."""
    rng = np.random.default_rng(7)
    palette = rng.integers(40, 256, (256, 3)).astype(np.uint8)
    palette[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
    palette[255] = 0
    return palette


def save_label_png(labels, path: str | Path) -> Path:
    """A (H, W) label map (values 0..255) as a palette PNG: the pixel values are the labels, shown in colour."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"a label PNG holds one (H, W) map of labels 0..255, got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(label_palette().ravel().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def display_image(image: torch.Tensor) -> np.ndarray:
    """A normalised float image (C, H, W) -> uint8 RGB (H, W, 3), contrast-stretched per image for display."""
    array = image.detach().float().cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, 0)
    array = array[:3].transpose(1, 2, 0)
    low, high = np.percentile(array, (1, 99))
    return (np.clip((array - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def quadtree_overlay(image_rgb: np.ndarray, tree: qt.Quadtree, labels=None, alpha: float = 0.45,
                     border_alpha: float = 0.5, min_outlined: int = 4) -> np.ndarray:
    """uint8 (H, W, 3): the image (H, W, 3) uint8 tinted by the colours of `labels` (H, W; default: the tree's
    own), with the borders of the leaf cells of `tree` (one image of the image's size) drawn in white at opacity
    `border_alpha`. Leaves smaller than `min_outlined` pixels per side are not outlined (at full depth the 1- and
    2-pixel leaves along every boundary would otherwise paint the boundaries white)."""
    height, width = image_rgb.shape[:2]
    if tree.batch_size != 1 or tree.image_size != (height, width):
        raise ValueError(f"the overlay needs a one-image tree of size {(height, width)}, got batch "
                         f"{tree.batch_size}, size {tree.image_size}")
    labels = qt.decode(tree) if labels is None else labels
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    colours = label_palette()[labels.reshape(height, width)]
    out = (image_rgb * (1 - alpha) + colours * alpha).astype(np.uint8)
    # Leaf cells: a pixel is on a cell border when its leaf cell differs from its right or lower neighbour's.
    cell_id = leaf_ids(tree, min_outlined)[0, :height, :width].numpy()
    border = np.zeros((height, width), bool)
    border[:, :-1] |= cell_id[:, :-1] != cell_id[:, 1:]
    border[:-1, :] |= cell_id[:-1, :] != cell_id[1:, :]
    border &= cell_id >= 0
    out[border] = (out[border] * (1 - border_alpha) + 255 * border_alpha).astype(np.uint8)
    return out


def leaf_ids(tree: qt.Quadtree, min_size: int = 1) -> torch.Tensor:
    """int64 (B, H_pad, W_pad): a distinct number for every leaf cell of at least `min_size` pixels per side,
    painted over the pixels it covers; -1 where smaller leaves lie.

    A pixel's leaf lies one level below the last level whose `qt.dense_level` is MIXED there; its number packs
    (batch, leaf level, cell row, cell column).
    """
    depth = tree.depth
    batch, (height, width) = tree.batch_size, tree.level_shape(depth)
    leaf_level = torch.zeros(batch, height, width, dtype=torch.int64)
    for l in range(depth):  # full-resolution nodes are never MIXED
        mixed = (qt.dense_level(tree, l) == qt.MIXED).cpu()  # (B, h, w)
        factor, (h, w) = 1 << (depth - l), mixed.shape[1:]
        leaf_level += mixed[:, :, None, :, None].expand(batch, h, factor, w, factor).reshape(batch, height, width)
    shift = depth - leaf_level  # log2 of the side of each pixel's leaf
    rows, cols = torch.arange(height)[:, None] >> shift, torch.arange(width) >> shift  # (B, H_pad, W_pad) each
    ids = ((torch.arange(batch)[:, None, None] * (depth + 1) + leaf_level) * height + rows) * width + cols
    return ids.masked_fill((1 << shift) < min_size, -1)


def save_overlay(image: torch.Tensor, tree: qt.Quadtree, path: str | Path, labels=None) -> Path:
    """`quadtree_overlay` of a normalised image (C, H, W) written as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(quadtree_overlay(display_image(image), tree, labels)).save(path)
    return path


def fine_overlay(image_rgb: np.ndarray, labels, fine, alpha: float = 0.45) -> np.ndarray:
    """uint8 (H, W, 3): the image tinted by the colours of `labels` (H, W), with the pixels where the model spent
    full-resolution compute (`fine`, bool (H, W): SparseRefine's refined pixels, SegBlocks' high-resolution blocks)
    in full brightness and magenta-edged, the rest dimmed."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    fine = fine.cpu().numpy() if isinstance(fine, torch.Tensor) else np.asarray(fine, dtype=bool)
    out = image_rgb * (1 - alpha) + colour_labels(labels) * alpha
    out[~fine] *= 0.55
    edge = fine & ~(np.pad(fine, 1)[2:, 1:-1] & np.pad(fine, 1)[:-2, 1:-1] & np.pad(fine, 1)[1:-1, 2:]
                    & np.pad(fine, 1)[1:-1, :-2])
    out[edge] = (255, 0, 255)
    return out.clip(0, 255).astype(np.uint8)


def save_fine_overlay(image: torch.Tensor, labels, fine, path: str | Path) -> Path:
    """`fine_overlay` of a normalised image (C, H, W) written as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fine_overlay(display_image(image), labels, fine)).save(path)
    return path


def class_legend(num_classes: int, class_names=None):
    """matplotlib legend handles: one colour patch per class (and the ignore label)."""
    from matplotlib.patches import Patch

    palette = label_palette() / 255.0
    names = class_names or [f"class {c}" for c in range(num_classes)]
    return [Patch(color=palette[c], label=f"{c}: {names[c]}") for c in range(num_classes)] + \
        [Patch(color=palette[255], label="ignore / padding")]


def error_map(image_rgb: np.ndarray, predicted: np.ndarray, truth: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The image dimmed, with wrongly labelled pixels red (ignored pixels grey): uint8 (H, W, 3)."""
    out = (image_rgb * 0.35 + 100).astype(np.uint8)
    out[(predicted != truth) & (truth != ignore_index)] = (230, 20, 20)
    out[truth == ignore_index] = (128, 128, 128)
    return out


def colour_labels(labels) -> np.ndarray:
    """(H, W) labels -> uint8 (H, W, 3) palette colours."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return label_palette()[labels.astype(np.int64).clip(0, 255)]
