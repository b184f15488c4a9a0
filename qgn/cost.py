"""What a prediction costs: multiply-accumulates, wall time and peak memory, measured around it.

One counting method for QGN and its dense twin: the MACs of a prediction are those of the dense part (every
`nn.Conv2d` of the encoder and the root, counted by forward hooks in a shape-only run on the meta device, where
neither the input's values nor the stem's stripes change the count) plus, per decoder level, the nodes computed
times the level's MACs per node (`DecoderLevel.macs_per_node`: submanifold convs at all k*k taps, the dense twin's
cells likewise). tests/test_qgn_cost.py checks this against torch's own `FlopCounterMode` for both models.
Batch norm, activations and indexing are not counted (they are not multiply-accumulates of a layer).

Host synchronisations (`HostSyncs`): the ops whose output size or value the host needs before it can go on - on a
GPU each one stalls the host until the device has caught up - counted on any device from the ops dispatched.

Peak memory: on CUDA the allocator's own peak (`torch.cuda.max_memory_allocated`, reset at entry). On CPU, torch
keeps no allocator statistics and the process RSS is useless in-process (freed memory is not always returned to
the OS), so `TensorMemoryTracker` counts the bytes of live tensor storages created inside the block (a
TorchDispatchMode sees every op's outputs; a storage is freed when the last tensor on it dies). Workspaces that an
op allocates and frees internally are not seen; for process-level figures use the benchmarks, which run each
configuration in a fresh subprocess and read its peak RSS.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qgn.predict import Prediction


@dataclass(frozen=True)
class Cost:
    """macs: multiply-accumulates; seconds: wall time (CUDA synchronised); peak_memory_mb: see the module docstring."""

    macs: int
    seconds: float
    peak_memory_mb: float


def measure_predict(model, images: torch.Tensor, **knobs) -> tuple[Prediction, Cost]:
    """`model.predict(images, **knobs)` (any of the engine's models) and what it cost (time and memory of the call
    itself; on CPU the memory tracker's bookkeeping is inside the time - time a second call under `stopwatch` alone
    for latency)."""
    with peak_memory(images.device) as memory, stopwatch(images.device) as clock:
        prediction = model.predict(images, **knobs)
    return prediction, Cost(prediction_macs(model, tuple(images.shape), prediction), clock["seconds"],
                            memory["peak_mb"])


@contextmanager
def stopwatch(device: torch.device | str):
    """Yields a dict whose "seconds" holds, after the block, its wall time (CUDA synchronised at both ends)."""
    device = torch.device(device)
    result = {"seconds": float("nan")}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    yield result
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result["seconds"] = time.perf_counter() - started


def prediction_macs(model, images_shape: tuple[int, int, int, int], prediction: Prediction) -> int:
    """MACs of `prediction`, made by `model` (any of the engine's models) of images of `images_shape` (B, C, H, W):
    the model's own `prediction_macs` (QGN and the dense twin: `quadtree_macs`)."""
    return model.prediction_macs(tuple(images_shape), prediction)


def quadtree_macs(model, padded_shape: tuple[int, int, int, int], nodes_per_level: list[int]) -> int:
    """MACs of a QGN or dense-twin prediction on images of `padded_shape` (B, C, H_pad, W_pad) that computed
    `nodes_per_level`: the dense part (`dense_conv_macs`) plus nodes x MACs per node per decoder level."""
    decoder = sum(n * level.macs_per_node() for n, level in zip(nodes_per_level[1:], model.levels))
    return dense_conv_macs(model, padded_shape) + decoder


class _DensePart(nn.Module):
    """The encoder, root and root head of a model: what both models run densely on the root grid."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.root_head(self.model.root(self.model.encoder(images)[-1]))


def dense_conv_macs(model, padded_shape: tuple[int, int, int, int]) -> int:
    """MACs of every nn.Conv2d of the encoder, root and root head on images of `padded_shape` (`meta_conv2d_macs`)."""
    return meta_conv2d_macs(_DensePart(model), padded_shape)


def meta_conv2d_macs(module: nn.Module, inputs_shape: tuple[int, ...], *args) -> int:
    """MACs of every nn.Conv2d inside `module` called on a tensor of `inputs_shape` (and `args`), counted by
    `conv2d_macs` in a run on the meta device (shapes only; no memory, no arithmetic; grad mode, so the encoder's
    stem is never striped)."""
    state = {name: t.to("meta") for name, t in [*module.named_parameters(), *module.named_buffers()]}

    def run():
        with torch.enable_grad():
            torch.func.functional_call(module, state, (torch.empty(inputs_shape, device="meta"), *args))

    return conv2d_macs(module, run)


def conv2d_macs(module: nn.Module, run) -> int:
    """MACs of every nn.Conv2d call inside `module` while `run()` runs: output elements x C_in / groups x kh x kw
    (the count of both QGN's dense part and the benchmarks' Unet peer)."""
    total = 0

    def hook(conv, inputs, output):
        nonlocal total
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


SYNC_OPS = {"nonzero", "_local_scalar_dense", "is_nonzero", "equal", "masked_select", "_unique2", "unique_dim",
            "unique_consecutive", "bincount", "nonzero_static"}
"""Ops that always make the host wait for the device (their output size or value); `forces_host_sync` adds the
calls that do depending on their arguments."""


def forces_host_sync(func, args, kwargs) -> bool:
    """Whether an aten op (`func`, an OpOverload, with its arguments) makes the host wait for the device: the ops of
    SYNC_OPS; indexing with a boolean mask (its output size); `repeat_interleave` with a tensor of repeats and no
    `output_size`; a copy from a CUDA tensor to the CPU."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    if name == "repeat_interleave":  # (repeats, *, output_size) or (self, repeats, dim, *, output_size)
        repeats = args[1] if len(args) > 1 else args[0] if args else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
    if name in ("_to_copy", "copy_") and args:
        source = args[1] if name == "copy_" else args[0]
        target = args[0].device if name == "copy_" else kwargs.get("device")
        return (isinstance(source, torch.Tensor) and source.device.type == "cuda" and target is not None
                and torch.device(target).type == "cpu")
    return False


class HostSyncs(TorchDispatchMode):
    """Inside the block, `names` lists the ops that made (or on a GPU would make) the host wait for the device
    (`forces_host_sync`), in order. Counted on any device: on a CPU they are the ops a GPU run would stall on."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if forces_host_sync(func, args, kwargs):
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **kwargs)


class TensorMemoryTracker(TorchDispatchMode):
    """Counts live bytes of storages created by ops while active; `peak_bytes` is the maximum seen."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tensors_per_storage: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        count = self._tensors_per_storage.get(key, 0) - 1
        if count <= 0:
            self._tensors_per_storage.pop(key, None)
            self.live_bytes -= nbytes
        else:
            self._tensors_per_storage[key] = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {id(t) for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or id(tensor) in inputs or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key == 0:
                continue
            if key not in self._tensors_per_storage:
                self._tensors_per_storage[key] = 0
                self.live_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self._tensors_per_storage[key] += 1
            weakref.finalize(tensor, self._release, key, nbytes)
        return out


@contextmanager
def peak_memory(device: torch.device | str):
    """Yields a dict whose "peak_mb" holds, after the block, the peak tensor memory it allocated (MiB)."""
    device = torch.device(device)
    result = {"peak_mb": float("nan"), "method": ""}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        result["method"] = "cuda max_memory_allocated"
        return
    tracker = TensorMemoryTracker()
    with tracker:
        yield result
    result["peak_mb"] = tracker.peak_bytes / 2 ** 20
    result["method"] = "live tensor storages (dispatch tracker)"
