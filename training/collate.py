"""Batch collation: (image, mask) samples -> (images, masks, quadtree of the masks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import quadtree


@dataclass(frozen=True)
class QuadtreeCollate:
    """collate_fn for a DataLoader over (image float (C, H, W), mask int64 (H, W)) samples.

    Returns (images float32 (B, C, H', W'), masks int64 (B, H', W'), tree) with tree = quadtree.encode(masks,
    depth, ignore_index). Samples of different sizes are padded at the bottom/right to the largest (image with 0,
    mask with ignore_index); with pad_to_multiple (default) H' and W' are further rounded up to multiples of
    2**depth, so the images match the tree's padded grid - or of `multiple` when given (a multiple of 2**depth:
    SegBlocks' block size). A picklable object (not a closure), so it works with DataLoader workers under any start
    method.
    """

    depth: int
    ignore_index: int = 255
    pad_to_multiple: bool = True
    multiple: int | None = None

    def __post_init__(self):
        if self.multiple is not None and self.multiple % (1 << self.depth):
            raise ValueError(f"multiple must be a multiple of 2**depth = {1 << self.depth}, got {self.multiple}")

    def __call__(self, samples) -> tuple[torch.Tensor, torch.Tensor, quadtree.Quadtree]:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty batch")
        images, masks = [], []
        for index, sample in enumerate(samples):
            if not isinstance(sample, (tuple, list)) or len(sample) != 2:
                raise ValueError(f"batch item {index} must be an (image, mask) pair, got {type(sample).__name__}")
            image, mask = (torch.as_tensor(x) for x in sample)
            if image.ndim != 3 or mask.ndim != 2 or image.shape[-2:] != mask.shape:
                raise ValueError(f"batch item {index}: expected image (C, H, W) and mask (H, W) of one size, got "
                                 f"image {tuple(image.shape)} and mask {tuple(mask.shape)}")
            images.append(image.float())
            masks.append(mask.long())
        channels = {image.shape[0] for image in images}
        if len(channels) > 1:
            raise ValueError(f"images of one batch have different channel counts {sorted(channels)}")
        size = (max(mask.shape[0] for mask in masks), max(mask.shape[1] for mask in masks))
        cell = (self.multiple or 1 << self.depth) if self.pad_to_multiple else 1
        images = torch.stack([quadtree.pad_to_multiple(image, cell, 0.0, size=size) for image in images])
        masks = torch.stack([quadtree.pad_to_multiple(mask, cell, self.ignore_index, size=size) for mask in masks])
        tree = quadtree.encode(masks, self.depth, self.ignore_index)
        return images, masks, tree


def collate_quadtree(depth: int, ignore_index: int = 255, pad_to_multiple: bool = True) -> QuadtreeCollate:
    """`QuadtreeCollate(depth, ignore_index, pad_to_multiple)`."""
    return QuadtreeCollate(depth, ignore_index, pad_to_multiple)
