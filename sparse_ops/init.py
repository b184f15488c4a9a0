"""The initialisation of the sparse conv modules: PyTorch's own for `nn.Conv2d` and `nn.ConvTranspose2d`."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def reset_conv_parameters(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """Kaiming-uniform weight (a = sqrt(5)) and a bias uniform in +-1/sqrt(fan_in), in place - `nn.Conv2d`'s rule
    (fan_in = C_in * k * k) and `nn.ConvTranspose2d`'s (fan_in = weight.size(1) * k * k = C_out * k * k)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)
