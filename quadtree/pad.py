"""Padding images and masks at the bottom and right to whole root cells (multiples of 2**depth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_MODES = ("constant", "replicate")


def padded_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple` (a positive integer)."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    h, w = size
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0, *, mode: str = "constant",
                    size: tuple[int, int] | None = None) -> torch.Tensor:
    """Pad the last two dimensions (H, W) at the bottom and right to multiples of `multiple`.

    Args:
        x: (..., H, W) of any dtype: a mask (H, W) or (B, H, W), an image (C, H, W) or a batch (B, C, H, W).
        multiple: the output's H and W are multiples of it (1 = no rounding); 2**depth for a quadtree.
        value: what the padding holds in mode "constant" (the ignore index for masks, 0 for images).
        mode: "constant" (`value`) or "replicate" (the nearest edge pixel, e.g. images given to a network).
        size: (H, W) to reach at least before rounding up (e.g. the largest sample of a batch); None = x's own.
    Returns:
        (..., H', W') with (H', W') = padded_size(max((H, W), size), multiple); `x` itself when nothing is added.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"unknown padding mode {mode!r}; valid modes: {', '.join(PAD_MODES)}")
    if x.ndim < 2:
        raise ValueError(f"pad_to_multiple needs a tensor (..., H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if size is not None:
        height, width = max(height, size[0]), max(width, size[1])
    height, width = padded_size((height, width), multiple)
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "replicate":  # F.pad replicates only (C, H, W) or (B, C, H, W): fold the leading dimensions
        padded = F.pad(x.reshape(-1, *x.shape[-2:]), (0, pad_w, 0, pad_h), mode="replicate")
        return padded.reshape(*x.shape[:-2], height, width)
    return F.pad(x, (0, pad_w, 0, pad_h), value=value)
