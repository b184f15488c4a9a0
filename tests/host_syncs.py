"""Counting the ops that force a host synchronisation on a GPU, on any device (shared by the tests that assert
how many a prediction, a training step or a loss may force; benchmarks/bench_dispatch.py counts every op)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"nonzero", "_local_scalar_dense", "is_nonzero", "equal", "masked_select", "_unique2", "unique_dim",
            "unique_consecutive", "bincount"}
"""Ops whose output size or value the host needs before it can go on (on a GPU: it waits for the device)."""


class HostSyncs(TorchDispatchMode):
    """`names`: the sync-forcing ops dispatched inside the block, in order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.names.append(name)
        return func(*args, **(kwargs or {}))
