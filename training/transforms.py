"""Joint image/mask augmentation (random scale, crop, horizontal flip); normalisation lives in qgn.normalize
(re-exported here). Augmentation works on torch tensors, image float (C, H, W) and mask int64 (H, W), and keeps
them pixel-aligned: the image is resized bilinearly and the mask with "nearest-exact" (both sample at pixel
centres), the crop window and the flip are shared. Crops are multiples of 2**depth: whole forests of quadtrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quadtree import pad_to_multiple
from qgn.normalize import (  # noqa: F401  (re-exported)
    GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, NORMALIZERS, NormalizeConfig, intensity_scale, normalize_image,
)


def check_crop(crop, depth: int) -> tuple[int, int] | None:
    """`crop` (None, an int for a square, or (H, W)) as None or (H, W) ints; ValueError, naming the nearest valid
    sizes, for a side that is not a positive multiple of 2**depth."""
    if crop is None:
        return None
    if isinstance(crop, (int, np.integer)):
        crop = (int(crop), int(crop))
    crop = tuple(int(c) for c in crop)
    if len(crop) != 2:
        raise ValueError(f"crop must be an int or (H, W), got {crop}")
    cell = 1 << depth
    for name, side in zip(("height", "width"), crop):
        if side <= 0 or side % cell:
            below = max(cell, side // cell * cell)
            above = max(cell, -(-side // cell) * cell)
            nearest = f"{below}" if below == above else f"{below} or {above}"
            raise ValueError(f"crop {name} {side} is not a positive multiple of 2**depth = {cell} (depth {depth}); "
                             f"nearest valid {name}: {nearest}")
    return crop


@dataclass
class AugmentConfig:
    crop: tuple[int, int] | None = None  # output (H, W), each a multiple of 2**depth; None = keep the size
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor, uniform in [low, high]; (1, 1) = off
    hflip: bool = True  # flip left-right with probability 0.5

    def __post_init__(self):
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")


def augment(image: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, ignore_index: int = 255,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, crop (padding when smaller: image with 0, mask with ignore_index) and horizontal flip.

    Args:
        image: float (C, H, W).
        mask: int64 (H, W).
        cfg: the AugmentConfig (crop already checked against the depth, see `check_crop`).
        generator: torch.Generator for the random draws; None uses torch's global RNG (distinct in every
            DataLoader worker and reproducible under torch.manual_seed).
    Returns:
        image float (C, h, w) and mask int64 (h, w), (h, w) = cfg.crop when set, else the rescaled size.
    """
    if image.ndim != 3 or mask.ndim != 2 or image.shape[-2:] != mask.shape:
        raise ValueError(f"augment expects image (C, H, W) and mask (H, W) of one size, got image "
                         f"{tuple(image.shape)} and mask {tuple(mask.shape)}")
    low, high = cfg.scale_range
    if (low, high) != (1.0, 1.0):
        factor = low + (high - low) * float(torch.rand((), generator=generator))
        h, w = mask.shape
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        if size != (h, w):
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    if cfg.crop is not None:
        ch, cw = cfg.crop
        image = pad_to_multiple(image, 1, 0.0, size=cfg.crop)  # up to the crop size when smaller
        mask = pad_to_multiple(mask, 1, ignore_index, size=cfg.crop)
        h, w = mask.shape
        top = int(torch.randint(h - ch + 1, (), generator=generator))
        left = int(torch.randint(w - cw + 1, (), generator=generator))
        image = image[:, top:top + ch, left:left + cw]
        mask = mask[top:top + ch, left:left + cw]
    if cfg.hflip and float(torch.rand((), generator=generator)) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    return image.contiguous(), mask.contiguous()


class Augment:
    """Callable (image, mask) -> (image, mask) applying `augment` with a crop checked against `depth` (ValueError
    at construction). `generator`: deterministic sequences in one process; None = torch's global RNG, the right
    choice with DataLoader workers (a generator would be copied into every worker)."""

    def __init__(self, cfg: AugmentConfig, depth: int, ignore_index: int = 255,
                 generator: torch.Generator | None = None):
        self.cfg = AugmentConfig(crop=check_crop(cfg.crop, depth), scale_range=tuple(cfg.scale_range),
                                 hflip=cfg.hflip)
        self.depth, self.ignore_index, self.generator = depth, ignore_index, generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(image, mask, self.cfg, self.ignore_index, self.generator)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Augment(crop={c.crop}, scale_range={c.scale_range}, hflip={c.hflip}, depth={self.depth}, "
                f"ignore_index={self.ignore_index})")
