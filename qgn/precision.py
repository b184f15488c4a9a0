"""The precision policy: one home for what "fp32", "fp16" and "bf16" mean for every command and the Python API.

- Default: fp32. Parameters, optimizer state and checkpoints are always float32.
- TF32 (`tf32=True`, CLI `--tf32`): Ampere and newer NVIDIA GPUs may run float32 convolutions and matmuls with a
  10-bit mantissa. PyTorch's own default lets cuDNN convolutions do so; this engine's commands turn TF32 off
  unless asked (`fp32_math(tf32)`), so "fp32" means IEEE float32 on every device. No effect on CPU.
- Mixed precision (`amp="fp16"` or `"bf16"`, CLI `--amp`): `torch.autocast` around the forward pass and the loss.
  Dense and sparse convolutions and matmuls run in the low precision (sparse ops follow autocast's rules, see
  `sparse_ops.backend.autocast_inputs`); batch-norm statistics are accumulated in float32 into float32 buffers;
  softmax and the losses are computed in float32. spconv has no bfloat16 kernels: under bf16 the submanifold
  convolutions run the pure-PyTorch backend. fp16 training scales the loss with `torch.amp.GradScaler`
  (`grad_scaler`); bf16 needs no scaling. fp16 is CUDA only (CPUs have no fast fp16 matmul): use bf16 on CPU.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Valid `amp` names and the autocast dtype of each ("off" = float32)."""


def check_amp(amp: str, device: torch.device | str) -> str:
    """`amp` when it is valid on `device`; ValueError naming the valid choices otherwise."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp {amp!r}; valid: {', '.join(AMP_DTYPES)} (off = float32)")
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device (CPUs have no fast float16 matmul); use 'bf16' on CPU "
                         "or 'off'")
    return amp


def autocast(amp: str, device: torch.device | str):
    """A context that runs its block in `amp`'s precision on `device` (`torch.autocast`), or does nothing for "off".

    Example: `with qgn.autocast("bf16", "cpu"): prediction = model.predict(images)`.
    """
    device = torch.device(device)
    dtype = AMP_DTYPES[check_amp(amp, device)]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler that scales the loss for fp16 training and passes everything through otherwise."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=check_amp(amp, device) == "fp16")


def _tf32_switches() -> tuple[list[tuple[object, str]], tuple]:
    """The (object, attribute) pairs that allow TF32 in float32 cuBLAS matmuls and cuDNN convolutions, and their
    (on, off) values: the `fp32_precision` settings of torch >= 2.9, else the older `allow_tf32` flags."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        return [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision")], ("tf32", "ieee")
    return [(matmul, "allow_tf32"), (cudnn, "allow_tf32")], (True, False)


def set_fp32_math(tf32: bool) -> None:
    """Let (True) or forbid (False) TF32 in float32 cuDNN convolutions and cuBLAS matmuls, process-wide."""
    switches, (on, off) = _tf32_switches()
    for owner, name in switches:
        setattr(owner, name, on if tf32 else off)


def tf32_enabled() -> bool:
    """Whether float32 cuDNN convolutions may use TF32 now (PyTorch's default is yes)."""
    switches, (on, _) = _tf32_switches()
    owner, name = switches[1]
    return getattr(owner, name) == on


@contextmanager
def fp32_math(tf32: bool):
    """`set_fp32_math(tf32)` for the block; the previous settings are restored after it."""
    switches, _ = _tf32_switches()
    saved = [getattr(owner, name) for owner, name in switches]
    set_fp32_math(tf32)
    try:
        yield
    finally:
        for (owner, name), value in zip(switches, saved):
            setattr(owner, name, value)
