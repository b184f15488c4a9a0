"""Tolerances that follow from a dtype's precision, for comparing low-precision results with exact references.

Rounding the two factors of every term of a sum of products (a convolution, a matmul) to a dtype with machine
epsilon eps changes the result by at most eps * (sum of |terms|); rounding the result adds at most eps/2 * |result|;
summing K terms in float32 adds at most K * 2**-24 * (sum of |terms|). So a result computed from rounded inputs
with float32 accumulation satisfies, elementwise,
    |got - exact| <= eps * (|exact| + magnitude) + K * 2**-24 * magnitude,
where magnitude is the same op applied to |inputs| (the sum of |terms|) and exact is computed in float64. An
accumulation in the low precision itself could be off by K * eps / 2 * magnitude, far beyond this bound.
"""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
"""Devices of tests that run everywhere they can: CPU always, CUDA where a GPU is (same tolerances on both)."""

AUTOCAST_CASES = [
    ("cpu", torch.bfloat16),
    ("cuda", torch.float16),
    ("cuda", torch.bfloat16),
]
"""(device, autocast dtype) pairs the engine supports (fp16 autocast is CUDA only)."""

AUTOCAST_PARAMS = [pytest.param(device, dtype, marks=[pytest.mark.cuda] if device == "cuda" else [],
                                id=f"{device}-{str(dtype).removeprefix('torch.')}") for device, dtype in AUTOCAST_CASES]
"""AUTOCAST_CASES as parameters of `@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)`."""


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a float dtype; TF32 (a 10-bit mantissa) is given as the string "tf32"."""
    return 2.0 ** -10 if dtype == "tf32" else torch.finfo(dtype).eps


def assert_within_rounding(got: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor, dtype, terms: int):
    """The bound of the module docstring, elementwise, for sums of `terms` products."""
    got, exact, magnitude = (t.detach().double().cpu() for t in (got, exact, magnitude))
    assert got.shape == exact.shape, (got.shape, exact.shape)
    bound = eps(dtype) * (exact.abs() + magnitude) + terms * 2.0 ** -24 * magnitude
    excess = (got - exact).abs() - bound
    worst = int(excess.flatten().argmax())
    assert bool((excess <= 0).all()), (
        f"{int((excess > 0).sum())} of {excess.numel()} entries exceed the {dtype} rounding bound; worst: got "
        f"{got.flatten()[worst]:.6g}, exact {exact.flatten()[worst]:.6g}, bound {bound.flatten()[worst]:.3g}")
