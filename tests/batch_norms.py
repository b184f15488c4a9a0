"""Batch norms with statistics that are not the identity, for tests of folding and of the networks' dense twins."""

import torch


@torch.no_grad()
def randomize_batch_norms(module: torch.nn.Module, mean: float = 1.0, affine: bool = True) -> None:
    """Every batch norm inside `module`: running mean uniform in (-mean, mean), running variance in (0.5, 2), and
    with `affine` weight in (0.5, 1.5) and bias in (-0.5, 0.5) (drawn in that order, module by module)."""
    for norm in module.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.running_mean.uniform_(-mean, mean)
            norm.running_var.uniform_(0.5, 2)
            if affine:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
