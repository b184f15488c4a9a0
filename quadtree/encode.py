"""Label mask -> quadtree, exactly as QGN's label generator builds it (see quadtree.tree for the layout)."""

from __future__ import annotations

import numpy as np
import torch

from quadtree.pad import pad_to_multiple
from quadtree.tree import MIXED, Quadtree, QuadtreeLevel, child_coords, flat_index, root_coords

MAX_LABEL = 254
"""Largest class label a mask may hold (besides the ignore index)."""


def as_label_tensor(mask, ignore_index: int = 255, name: str = "mask") -> torch.Tensor:
    """Validate a label mask and return it as an integer torch tensor of shape (B, H, W) on its own device.

    Args:
        mask: integer numpy array or torch tensor, (H, W) or (B, H, W), labels 0..254 plus `ignore_index`.
    Returns:
        the same values as a torch tensor (B, H, W) of the input's integer dtype (numpy memory is shared).
    Raises:
        ValueError: float or bool dtype, wrong number of dimensions, an empty mask, negative labels, or labels
            above 254 other than `ignore_index`. Nothing is cast, clipped or dropped silently.
    """
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool) or not 0 <= ignore_index <= 255:
        raise ValueError(f"ignore_index must be an integer in 0..255, got {ignore_index!r}")
    if getattr(mask, "dtype", None) in (np.bool_, torch.bool):
        raise ValueError(f"{name} is a boolean array; a label mask holds integer classes: convert it explicitly, e.g. "
                         f"mask.astype(np.uint8) (numpy) or mask.to(torch.uint8) (torch) for classes 0 and 1")
    if isinstance(mask, np.ndarray):
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"{name} must hold integer labels, got dtype {mask.dtype}; convert it explicitly, e.g. "
                f"mask.astype(np.uint8) for a binary mask (check that float values are whole numbers first)"
            )
        if mask.dtype == np.uint64:
            raise ValueError(f"{name} has dtype uint64, which torch cannot hold; use mask.astype(np.int64)")
        if mask.dtype in (np.uint16, np.uint32):  # torch's unsigned 16/32-bit support is thin: widen losslessly
            mask = mask.astype(np.int64)
        tensor = torch.from_numpy(np.ascontiguousarray(mask))
    elif isinstance(mask, torch.Tensor):
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(
                f"{name} must hold integer labels, got dtype {mask.dtype}; convert it explicitly, e.g. "
                f"mask.round().to(torch.uint8) once you checked that the values are whole class numbers"
            )
        if mask.dtype == torch.uint64:
            raise ValueError(f"{name} has dtype uint64; use mask.to(torch.int64)")
        tensor = mask.to(torch.int64) if mask.dtype in (torch.uint16, torch.uint32) else mask
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(mask).__name__}")
    if tensor.ndim == 2:
        tensor = tensor[None]
    elif tensor.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W) or (B, H, W), got {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); every dimension must be at least 1")
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0:
        raise ValueError(f"{name} holds negative labels (min {low}); labels must be 0..{MAX_LABEL} or the ignore "
                         f"index {ignore_index}: map them to valid classes or to the ignore index first")
    if high > MAX_LABEL:
        bad = (tensor > MAX_LABEL) & (tensor != ignore_index)
        if bool(bad.any()):
            values = torch.unique(tensor[bad])[:10].tolist()
            hint = ("; if that value marks unlabelled pixels, pass it as ignore_index (--ignore-index)"
                    if len(values) == 1 and values[0] <= 255 else "")
            raise ValueError(
                f"{name} holds labels above {MAX_LABEL} that are not the ignore index {ignore_index}: {values}; "
                f"classes are 0..{MAX_LABEL} and the ignore index one value in 0..255: remap them first (e.g. instance "
                f"ids to classes with a lookup table or mask > 0){hint}"
            )
    return tensor


def check_depth(depth: int, height: int, width: int) -> None:
    """Raise ValueError unless 0 <= depth and a root cell (2**depth pixels) fits in the image's longer side."""
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer, got {depth!r}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0 (0 = the mask itself as one level), got {depth}")
    longest = max(height, width)
    if (1 << depth) > longest:
        deepest = longest.bit_length() - 1
        raise ValueError(
            f"depth {depth} is too deep for a {height}x{width} mask: root cells of {1 << depth} pixels would be "
            f"larger than the mask; use depth <= {deepest}"
        )


def label_pyramid(labels: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Per-level label grids of a padded mask.

    Args:
        labels: int16 (B, H_pad, W_pad), H_pad and W_pad multiples of 2**depth.
    Returns:
        depth + 1 int16 tensors; entry l is (B, H_pad >> (depth - l), W_pad >> (depth - l)) holding the value
        of each level-l window when it is uniform, else MIXED. Entry `depth` is `labels` itself.
    """
    pyramid = [labels]
    for _ in range(depth):
        finer = pyramid[-1]
        b, h, w = finer.shape
        blocks = finer.view(b, h // 2, 2, w // 2, 2)
        top_left = blocks[:, :, 0, :, 0]
        uniform = (
            (top_left == blocks[:, :, 0, :, 1]) & (top_left == blocks[:, :, 1, :, 0])
            & (top_left == blocks[:, :, 1, :, 1]) & (top_left != MIXED)
        )
        pyramid.append(torch.where(uniform, top_left, torch.full_like(top_left, MIXED)))
    return pyramid[::-1]


def encode(mask, depth: int, ignore_index: int = 255) -> Quadtree:
    """Encode label masks as a batch of quadtrees.

    Args:
        mask: integer numpy array or torch tensor (CPU or CUDA), (H, W) or (B, H, W), labels 0..254 plus
            `ignore_index`. Padded at the bottom/right with `ignore_index` to multiples of 2**depth.
        depth: levels below the root grid; level 0 has stride 2**depth, level `depth` is full resolution.
        ignore_index: label of unsupervised pixels, 0..255. It counts as a value: an all-ignore window is a leaf.
    Returns:
        a Quadtree on the mask's device (numpy masks give CPU trees); `decode(encode(mask))` is the mask as
        (B, H, W) (an (H, W) mask comes back as (1, H, W)).
    Raises:
        ValueError: for invalid masks (see `as_label_tensor`) or a depth < 0 or too deep for the mask.
    """
    labels = as_label_tensor(mask, ignore_index)
    batch_size, height, width = labels.shape
    check_depth(depth, height, width)
    labels = pad_to_multiple(labels.to(torch.int16), 1 << depth, ignore_index)
    pyramid = label_pyramid(labels, depth)

    device = labels.device
    h0, w0 = pyramid[0].shape[1:]
    coords = root_coords(batch_size, h0, w0, device)
    node_labels = pyramid[0].reshape(-1).long()
    levels = [QuadtreeLevel(coords, node_labels, torch.full_like(node_labels, -1))]
    for l in range(1, depth + 1):
        above = levels[-1]
        mixed = torch.nonzero(above.labels == MIXED).flatten()
        coords = child_coords(above.coords[mixed])
        grid = pyramid[l]
        node_labels = grid.reshape(-1)[flat_index(coords, grid.shape[1:])].long()
        levels.append(QuadtreeLevel(coords, node_labels, mixed.repeat_interleave(4)))
    return Quadtree(
        levels=tuple(levels), depth=depth, batch_size=batch_size, image_size=(height, width),
        ignore_index=ignore_index,
    )
