"""Which implementation runs a sparse op, in which precision, and the index format spconv needs.

Everything that depends on spconv being importable, on the device or on autocast is decided here and nowhere else:

- `spconv_available()` / `spconv_api()`: spconv (`spconv-cu120` below Python 3.12, `spconv-cu126` from 3.12; see
  ../shared/notes/spconv.md), imported lazily on first use (its import takes seconds) and guarded, so that the
  pure-PyTorch backend works without it.
- `conv_algo(device, kernel_volume)`: the spconv algorithm for a device - `ConvAlgo.Native` on CPU (the only
  one that runs there), spconv's own default on CUDA (`MaskImplicitGemm` up to 32 kernel taps, else `Native`).
- `resolve_backend(name, device, dtype)`: the implementation that runs. "auto" (the default everywhere) is the
  measured default of the device (`DEFAULT_BACKEND`; benchmarks/bench_backends.py, README "CPU threads and
  backends"), and "torch" on CUDA under `torch.use_deterministic_algorithms(True)`. bfloat16 features always run
  the torch backend: spconv has no bfloat16 kernels. An unknown name raises a ValueError listing the valid ones.
- `autocast_dtype(device)` / `autocast_inputs(device, *tensors)`: the sparse convolutions and matmuls follow
  `torch.autocast`'s rules - float32 inputs are cast to the autocast dtype, float64 and other dtypes are kept.
- `as_int32_coords(coords)`: coordinates as int32, row-major contiguous. spconv reads raw memory: int64 or
  column-major tensors (what `torch.nonzero` returns) give it a garbage rulebook without any error.
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import torch

BACKENDS = ("auto", "spconv", "torch")
"""Valid `backend=` names: the device's measured default, spconv's kernels, or the pure-PyTorch implementation."""

DEFAULT_BACKEND = {"cpu": "torch", "cuda": "spconv"}
"""What "auto" runs on each device type, chosen from benchmarks/bench_backends.py (README "CPU threads and
backends"): on CPU the torch backend trains and predicts faster than spconv's serial Native kernels, and needs no
spconv import (about 4 s); on CUDA spconv's implicit GEMM is the faster one."""

SPCONV_DTYPES = (torch.float16, torch.float32, torch.float64)
"""Feature dtypes spconv's kernels take (bfloat16 raises a KeyError inside spconv)."""


@functools.cache
def _import_spconv() -> tuple[SimpleNamespace | None, Exception | None]:
    """Import spconv once, on first use (it takes seconds: its kernel tables load at import)."""
    try:  # spconv's import emits FutureWarnings about torch.cuda.amp; they are not ours to fix.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import spconv.pytorch as spconv
            from spconv.core import ConvAlgo
            from spconv.pytorch import functional, ops
            from spconv.pytorch.core import ImplicitGemmIndiceData, IndiceData
    except Exception as error:  # ImportError, or a broken CUDA runtime inside the wheel
        return None, error
    return SimpleNamespace(
        spconv=spconv, ConvAlgo=ConvAlgo, functional=functional, ops=ops, IndiceData=IndiceData,
        ImplicitGemmIndiceData=ImplicitGemmIndiceData,
    ), None


def spconv_available() -> bool:
    """True when spconv imports (imports it on the first call)."""
    return _import_spconv()[0] is not None


def spconv_api() -> SimpleNamespace:
    """spconv's pieces used here: `spconv` (spconv.pytorch), `ConvAlgo`, `functional`, `ops`, `IndiceData`,
    `ImplicitGemmIndiceData`. Raises RuntimeError (with the import error) when spconv is not importable."""
    api, error = _import_spconv()
    if api is None:
        raise RuntimeError(f"spconv is not importable ({error!r}); install spconv-cu120 (Python < 3.12) or "
                           f"spconv-cu126 (Python >= 3.12), or use backend='torch'")
    return api


_IMPLICIT_GEMM_MAX_KERNEL_VOLUME = 32
"""spconv's own default: MaskImplicitGemm for kernels of up to 32 taps on CUDA, Native above."""

def check_backend_name(name: str) -> str:
    """`name` when it is one of `BACKENDS` (imports nothing); else ValueError listing the valid names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends are {', '.join(map(repr, BACKENDS))}")
    return name


def resolve_backend(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The implementation that runs a sparse conv of `dtype` features on `device`: "spconv" or "torch".

    "auto" is `DEFAULT_BACKEND` of the device type, or "torch" on CUDA when deterministic algorithms are on
    (`torch.use_deterministic_algorithms(True)`: the torch backend is gathers and matmuls only, spconv's CUDA
    kernels make no such promise). bfloat16 runs "torch" whatever was asked (spconv has no bfloat16 kernels).
    "auto" without an importable spconv runs "torch" with a UserWarning; an explicit "spconv" then raises: spconv is
    a requirement of this package, and code (or a test) that asked for it must not silently run something else.

    Raises:
        ValueError: `name` is not one of `BACKENDS`.
        RuntimeError: `name` is "spconv" (and the dtype one spconv computes) but spconv does not import.
    """
    check_backend_name(name)
    device = torch.device(device)
    asked = name
    if name == "auto":
        name = DEFAULT_BACKEND.get(device.type, "torch")
        if device.type == "cuda" and torch.are_deterministic_algorithms_enabled():
            name = "torch"
    if name == "spconv" and dtype not in SPCONV_DTYPES:
        return "torch"
    if name == "spconv" and not spconv_available():
        if asked == "spconv":
            spconv_api()  # raises, naming the import error and what to install
        warnings.warn(
            f"spconv is not importable ({_import_spconv()[1]!r}); backend='auto' runs backend='torch' on "
            f"{device.type}. Install spconv-cu120 (Python < 3.12) or spconv-cu126 (Python >= 3.12), also on "
            f"CPU-only machines, or pass backend='torch' to silence this.",
            stacklevel=3,
        )
        return "torch"
    return name


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype `torch.autocast` runs convolutions and matmuls in on `device`, or None where it is off."""
    kind = torch.device(device).type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def autocast_inputs(device: torch.device | str, *tensors):
    """`tensors` as autocast casts the inputs of a convolution or matmul on `device`: float32 -> the autocast
    dtype when autocast is enabled there; float64, other dtypes and None unchanged (so are all without autocast)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in tensors)


def conv_algo(device: torch.device, kernel_volume: int):
    """The spconv `ConvAlgo` for convolutions on `device` with `kernel_volume` (k*k) taps.

    Native on CPU (spconv's implicit-GEMM algorithms need CUDA); on CUDA spconv's default: MaskImplicitGemm
    for up to 32 taps, Native for larger kernels.
    """
    algo = spconv_api().ConvAlgo
    if torch.device(device).type == "cuda" and kernel_volume <= _IMPLICIT_GEMM_MAX_KERNEL_VOLUME:
        return algo.MaskImplicitGemm
    return algo.Native


def as_int32_coords(coords: torch.Tensor, name: str = "coords") -> torch.Tensor:
    """`coords` as an int32, row-major contiguous (N, 3) tensor (a copy only when needed).

    Accepts any integer dtype and any memory layout (e.g. `torch.nonzero`'s column-major output). Values are
    checked to fit in int32 rather than wrapped.

    Raises:
        ValueError: not a tensor, not an integer dtype, not of shape (N, 3), or values outside int32.
    """
    if not isinstance(coords, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of shape (N, 3), got {type(coords).__name__}")
    if coords.dtype == torch.bool or coords.is_floating_point() or coords.is_complex():
        raise ValueError(f"{name} must hold integer (batch, y, x) indices, got dtype {coords.dtype}")
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) with columns (batch, y, x), got {tuple(coords.shape)}")
    if coords.dtype != torch.int32:
        if coords.numel() > 0:
            info = torch.iinfo(torch.int32)
            low, high = int(coords.min()), int(coords.max())
            if low < info.min or high > info.max:
                raise ValueError(f"{name} holds values outside int32 ({low}..{high})")
        coords = coords.to(torch.int32)
    # is_contiguous() is also True for an (N, 3) tensor with N <= 1 whatever its strides; spconv is fine then.
    return coords.contiguous()


def check_like_feats(feats: torch.Tensor, prefix: str = "", **tensors) -> None:
    """Raise ValueError unless every given tensor (None skipped) has `feats`' dtype and device (`prefix` starts the
    message, e.g. the op's name)."""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dtype != feats.dtype:
            raise ValueError(f"{prefix}{name} has dtype {tensor.dtype} but feats has {feats.dtype}; cast one of them")
        if tensor.device != feats.device:
            raise ValueError(f"{prefix}{name} is on {tensor.device} but feats on {feats.device}")
