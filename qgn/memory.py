"""Peak tensor memory of a block of code, in-process, on CPU and CUDA.

On CUDA this is the allocator's own peak (`torch.cuda.max_memory_allocated`, reset at entry). On CPU, torch keeps
no allocator statistics and the process RSS is useless in-process (freed memory is not always returned to the
OS), so `TensorMemoryTracker` counts the bytes of live tensor storages created inside the block (a
TorchDispatchMode sees every op's outputs; a storage is freed when the last tensor on it dies). Workspaces that
an op allocates and frees internally are not seen; for process-level figures use the benchmarks, which run each
configuration in a fresh subprocess and read its peak RSS.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
