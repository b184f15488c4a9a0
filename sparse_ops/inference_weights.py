"""Tensors that depend only on a module's parameters (a weight matrix in the layout a matmul reads, a bias repeated
per child, both cast to the autocast dtype), derived once and reused by every inference call: `derived_weight`.

A derived tensor is kept only while autograd records nothing through it (`torch.no_grad`, `torch.inference_mode`,
or sources that do not require grad): a training forward derives it anew, so its gradient reaches the parameters.
A kept tensor is returned again while every source is the same tensor object with the same storage, dtype, shape
and version (`Tensor._version`, which every in-place write that autograd sees bumps: an optimizer step,
`load_state_dict`, `qgn.fold.fold_batch_norm`, `module.to(...)` swapping `.data`) and the autocast dtype of the
sources' device is the same; otherwise it is derived again. Writes through `.data` bypass the version counter, and
so do the fused optimizers (`torch.optim.AdamW(..., fused=True)`, torch 2.13): code that changes parameters that
way must call `clear_derived_weights(model)` or `torch.autograd.graph.increment_version(params)` after the write
(`training.trainer.build_optimizer` registers the latter as a step post-hook of the fused optimizers it builds).

The kept tensors live on the module (attribute `_derived_weights`, not in the state dict; a `copy.deepcopy` or a
pickle of the module starts with none).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sparse_ops import backend as _backend

_ATTRIBUTE = "_derived_weights"


class DerivedWeights(dict):
    """name -> (stamps of the sources, derived tensors); copied and pickled empty."""

    def __deepcopy__(self, memo):
        return DerivedWeights()

    def __reduce__(self):
        return DerivedWeights, ()


def records_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on `tensors` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def derived_weight(module: nn.Module, name: str, build: Callable, *sources: torch.Tensor | None):
    """`build(*sources)`, kept on `module` under `name` while the sources stay unchanged (module docstring).

    Args:
        module: the module whose parameters `sources` are.
        name: what `build` derives (one name per kind of derived tensor of the module).
        build: a pure function of the sources (None passes through); it reads the autocast dtype itself if it casts.
        sources: the tensors `build` reads (parameters, buffers, or None).
    """
    if records_autograd(*sources):
        return build(*sources)
    device = next((s.device for s in sources if s is not None), None)
    key = (name, None if device is None else _backend.autocast_dtype(device))
    cache = module.__dict__.get(_ATTRIBUTE)
    if cache is None:
        cache = module.__dict__[_ATTRIBUTE] = DerivedWeights()
    entry = cache.get(key)
    if entry is not None and all(_unchanged(stamp, source) for stamp, source in zip(entry[0], sources)):
        return entry[1]
    value = build(*sources)
    cache[key] = (tuple(_stamp(source) for source in sources), value)
    return value


def clear_derived_weights(model: nn.Module) -> None:
    """Forget every tensor derived from the parameters of `model` and its submodules (after writes through `.data`)."""
    for module in model.modules():
        module.__dict__.pop(_ATTRIBUTE, None)


def _stamp(source: torch.Tensor | None):
    # the detached alias keeps the storage alive, so no later tensor can take its address while the stamp exists
    return None if source is None else (source, source._version, source.detach())


def _unchanged(stamp, source: torch.Tensor | None) -> bool:
    if stamp is None or source is None:
        return stamp is None and source is None
    tensor, version, alias = stamp
    return (tensor is source and version == source._version and alias.data_ptr() == source.data_ptr()
            and alias.dtype == source.dtype and alias.shape == source.shape and alias.device == source.device)
