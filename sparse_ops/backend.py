"""Which implementation runs a sparse op, and the index format spconv needs.

Everything that depends on spconv being importable, or on the device, is decided here and nowhere else:

- `spconv_available()` / `spconv_api()`: spconv (the `spconv-cu120` build; see /work/shared/notes/spconv.md),
  imported lazily on first use (its import takes seconds) and guarded, so that the pure-PyTorch backend works
  without it.
- `conv_algo(device, kernel_volume)`: the spconv algorithm for a device - `ConvAlgo.Native` on CPU (the only
  one that runs there), spconv's own default on CUDA (`MaskImplicitGemm` up to 32 kernel taps, else `Native`).
- `resolve_backend(name)`: "spconv" or "torch"; an unknown name raises a ValueError listing the valid ones.
- `as_int32_coords(coords)`: coordinates as int32, row-major contiguous. spconv reads raw memory: int64 or
  column-major tensors (what `torch.nonzero` returns) give it a garbage rulebook without any error.
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import torch

BACKENDS = ("spconv", "torch")
"""Valid `backend=` names: spconv's kernels, or the pure-PyTorch reference implementation."""


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
        raise RuntimeError(f"spconv is not importable ({error!r}); install spconv-cu120 or use backend='torch'")
    return api


_IMPLICIT_GEMM_MAX_KERNEL_VOLUME = 32
"""spconv's own default: MaskImplicitGemm for kernels of up to 32 taps on CUDA, Native above."""

def check_backend_name(name: str) -> str:
    """`name` when it is one of `BACKENDS` (imports nothing); else ValueError listing the valid names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends are {', '.join(map(repr, BACKENDS))}")
    return name


def resolve_backend(name: str) -> str:
    """The backend that will run: `name` itself, or "torch" when "spconv" is asked for but not importable.

    Raises:
        ValueError: `name` is not one of `BACKENDS`.
    The fallback is announced with a UserWarning (shown once per call site by Python's default filter).
    """
    if check_backend_name(name) == "spconv" and not spconv_available():
        warnings.warn(
            f"spconv is not importable ({_import_spconv()[1]!r}); sparse_ops falls back to backend='torch'. "
            f"Install spconv-cu120 (also on CPU-only machines) or pass backend='torch' to silence this.",
            stacklevel=3,
        )
        return "torch"
    return name


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
