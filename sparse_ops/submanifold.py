"""Submanifold 2-D convolution over the active sites of a level: functional `submanifold_conv2d`, module `SubMConv2d`.

Definition (what both backends compute, and what the tests check): scatter `feats` into a dense (B, C_in, h, w)
map that is zero at inactive sites, apply `F.conv2d(dense, weight, bias, padding=dilation * (k // 2),
dilation=dilation)`, and read the result back at the active sites only. Weights are in `F.conv2d`'s layout
(C_out, C_in, k, k); conversions to spconv's layouts happen inside.

Backends ("auto", the default, picks one per device: `backend.resolve_backend`):
- "spconv": spconv's kernels (Native on CPU, implicit GEMM on CUDA; see `backend.conv_algo`).
- "torch": pure PyTorch, chunked im2col over a neighbour table. Its backward reuses the same table (the
  submanifold neighbour relation is symmetric), so it saves only the inputs, not the gathered columns.

Under `torch.autocast` the convolution follows autocast's rules: float32 features, weight and bias are cast to the
autocast dtype and the output has that dtype (float64 stays float64). bfloat16 runs the torch backend (spconv
has no bfloat16 kernels); its weight gradient is accumulated over row chunks in float32.

`SubMConv2d` without autograd (inference) keeps its weight in the layout the backend reads, cast to the autocast
dtype (`sparse_ops.inference_weights`), and adds the bias in the matmul: one gather and one matmul per conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sparse_ops import backend as _backend
from sparse_ops.init import reset_conv_parameters
from sparse_ops.geometry import SparseGeometry
from sparse_ops.im2col import gathered_product, im2col_matmul
from sparse_ops.inference_weights import derived_weight, records_autograd

def submanifold_conv2d(
    feats: torch.Tensor,
    geometry: SparseGeometry,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Submanifold convolution of the features of active sites (see the module docstring for the definition).

    Args:
        feats: float (N, C_in), one row per site of `geometry`.
        geometry: the sites (`sparse_ops.level_geometry(tree, level)` for a quadtree level, or
            `SparseGeometry(coords, (h, w), batch_size)`). Its rulebooks are built by the first conv and reused by
            every later one on the same geometry.
        weight: (C_out, C_in, k, k) as for `F.conv2d`, k odd, same dtype and device as `feats`.
        bias: (C_out,) or None.
        dilation: positive int.
        backend: "auto", "spconv" or "torch" (see `backend.BACKENDS` and `backend.resolve_backend`).
    Returns:
        (N, C_out) of `feats`' dtype (the autocast dtype under autocast), rows in the order of the sites.
    """
    _check_geometry(geometry)
    if isinstance(feats, torch.Tensor):
        feats, weight, bias = _backend.autocast_inputs(feats.device, feats, weight, bias)
    _check_conv_args(feats, geometry, weight, bias, dilation)
    name = _backend.resolve_backend(backend, feats.device, feats.dtype)
    with torch.autocast(feats.device.type, enabled=False):  # the inputs hold the dtype to compute in
        return _submanifold_conv2d(feats, geometry, weight, bias, dilation, name)


def _submanifold_conv2d(feats, geometry: SparseGeometry, weight, bias, dilation: int, backend: str) -> torch.Tensor:
    """`submanifold_conv2d` on validated arguments and a resolved backend name."""
    k = weight.shape[-1]
    if k == 1 or feats.shape[0] == 0:
        # A 1x1 conv is a per-site linear map: no rulebook. An empty level takes the same path, which keeps the
        # autograd graph connected to weight and bias (zero gradients).
        out = feats @ weight[:, :, k // 2, k // 2].t()
    elif backend == "spconv":
        out = _spconv_subm(feats, geometry, weight, dilation)
    else:
        table = geometry.neighbour_table(k, dilation)
        out = _TorchSubmConv.apply(feats, weight, table)
    # in place: none of the ops above saves its output for backward, so this saves an (N, C_out) copy
    return out if bias is None else out.add_(bias)


def _check_geometry(geometry) -> None:
    if not isinstance(geometry, SparseGeometry):
        raise ValueError(f"geometry must be a SparseGeometry, got {type(geometry).__name__}; build one with "
                         f"SparseGeometry(coords, (h, w), batch_size) or sparse_ops.level_geometry(tree, level)")


def _spconv_filters(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, k, k) -> (C_out, k, k, C_in): spconv's KRSC layout."""
    return weight.permute(0, 2, 3, 1).contiguous()


def _spconv_subm(feats: torch.Tensor, geometry: SparseGeometry, weight: torch.Tensor, dilation: int,
                 filters: torch.Tensor | None = None) -> torch.Tensor:
    if feats.dtype not in _backend.SPCONV_DTYPES:
        raise ValueError(f"backend='spconv' supports {', '.join(map(str, _backend.SPCONV_DTYPES))}, got "
                         f"{feats.dtype}; cast the features and weights or use backend='torch'")
    k = weight.shape[-1]
    data = geometry.spconv_rulebook(k, dilation)
    filters = _spconv_filters(weight) if filters is None else filters
    feats = feats.contiguous()
    n = geometry.num_sites
    api = _backend.spconv_api()
    if data.algo == api.ConvAlgo.Native:
        return api.functional.indice_subm_conv(
            feats, filters, data.indice_pairs, data.indice_pair_num, n, data.algo
        )
    return api.functional.implicit_gemm(
        feats, filters, data.pair_fwd, data.pair_bwd, data.pair_mask_fwd_splits, data.pair_mask_bwd_splits,
        data.mask_argsort_fwd_splits, data.mask_argsort_bwd_splits, n, data.masks, True, True,
    )


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, k, k) -> (k*k*C_in, C_out), rows ordered (tap, c_in) like the gathered columns."""
    c_out, c_in, k, _ = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out)


def _inference_weights(spconv: bool):
    """build(weight, bias) -> (weight, bias, matrix) for `derived_weight`: the parameters cast as autocast casts
    a convolution's inputs, and the weight as the backend reads it (spconv's filters, or `_weight_matrix`)."""

    def build(weight, bias):
        weight, bias = _backend.autocast_inputs(weight.device, weight, bias)
        return weight, bias, _spconv_filters(weight) if spconv else _weight_matrix(weight)

    return build


class _TorchSubmConv(torch.autograd.Function):
    """Pure-PyTorch submanifold conv. Backward: the input gradient is the same conv with the weight flipped and
    transposed over the same table (neighbour relation symmetric); the weight gradient re-gathers per chunk."""

    @staticmethod
    def forward(ctx, feats, weight, table):
        ctx.save_for_backward(feats, weight, table)
        return im2col_matmul(feats, table, _weight_matrix(weight))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        feats, weight, table = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3).transpose(0, 1)  # (C_in, C_out, k, k)
            grad_feats = im2col_matmul(grad_out, table, _weight_matrix(flipped))
        if ctx.needs_input_grad[1]:
            c = feats.shape[1]
            c_out, _, k, _ = weight.shape
            gmat = gathered_product(feats, grad_out, table, gathered_left=True)  # (k * k * C_in, C_out)
            grad_weight = gmat.reshape(k, k, c, c_out).permute(3, 2, 0, 1).to(weight.dtype)
        return grad_feats, grad_weight, None


def _check_conv_args(feats, geometry: SparseGeometry, weight, bias, dilation) -> None:
    """Raise ValueError with the expected shapes when the arguments of a submanifold conv do not fit."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or not feats.is_floating_point():
        raise ValueError(f"feats must be a float tensor (N, C_in), got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}"
                         f"{'' if not isinstance(feats, torch.Tensor) else ' ' + str(feats.dtype)}")
    if feats.shape[0] != geometry.num_sites:
        raise ValueError(f"feats has {feats.shape[0]} rows but there are {geometry.num_sites} active sites; "
                         f"pass one feature row per coords row")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"weight must be (C_out, C_in, k, k) as for F.conv2d, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"the kernel must be square with an odd size k (1, 3, 5, ...), got {kh}x{kw}; "
                         f"a submanifold conv with an even kernel has no centre tap")
    if c_in != feats.shape[1]:
        raise ValueError(f"weight expects C_in={c_in} input channels (weight shape {tuple(weight.shape)} is "
                         f"(C_out, C_in, k, k)) but feats has {feats.shape[1]}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (c_out,)):
        raise ValueError(f"bias must be None or of shape ({c_out},), got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    _backend.check_like_feats(feats, weight=weight, bias=bias)
    if geometry.device != feats.device:
        raise ValueError(f"coords are on {geometry.device} but feats on {feats.device}; use geometry.to(device)")


class SubMConv2d(nn.Module):
    """Submanifold 2-D convolution module; the weight is stored in `F.conv2d`'s layout.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: odd k.
        dilation: positive int.
        bias: learn a (C_out,) bias.
        backend: "auto" (the device's default), "spconv" or "torch".
    Shape:
        forward(feats (N, C_in), geometry: SparseGeometry) -> (N, C_out).
        forward_dense(x (B, C_in, H, W)) -> (B, C_out, H, W): the dense twin, same weights.
    Attributes:
        weight: (C_out, C_in, k, k), initialised like `nn.Conv2d`'s.
        bias: (C_out,) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True, backend: str = "auto"):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive (1, 3, 5, ...), got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {dilation}")
        _backend.check_backend_name(backend)  # fail early on an unknown name (spconv is imported on first use)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation, self.backend = kernel_size, dilation, backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of `nn.Conv2d`."""
        reset_conv_parameters(self.weight, self.bias, self.in_channels * self.kernel_size ** 2)

    def forward(self, feats: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor) or records_autograd(feats, self.weight, self.bias):
            return submanifold_conv2d(feats, geometry, self.weight, self.bias, self.dilation, self.backend)
        return self._inference_forward(feats, geometry)

    def _inference_forward(self, feats: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        """`submanifold_conv2d` where autograd records nothing: the weight in the layout the backend reads (cast to
        the autocast dtype) is derived once (`sparse_ops.inference_weights`), and the bias is added by the matmul."""
        _check_geometry(geometry)
        (feats,) = _backend.autocast_inputs(feats.device, feats)
        name = _backend.resolve_backend(self.backend, feats.device, feats.dtype)
        k = self.kernel_size
        spconv = name == "spconv" and k > 1
        weight, bias, matrix = derived_weight(self, "spconv" if spconv else "torch", _inference_weights(spconv),
                                              self.weight, self.bias)
        _check_conv_args(feats, geometry, weight, bias, self.dilation)
        with torch.autocast(feats.device.type, enabled=False):
            if spconv:
                if feats.shape[0] == 0:
                    return feats.new_zeros(0, self.out_channels)
                out = _spconv_subm(feats, geometry, weight, self.dilation, matrix)
                return out if bias is None else out.add_(bias)
            if k == 1:
                return feats @ matrix if bias is None else torch.addmm(bias, feats, matrix)
            return im2col_matmul(feats, geometry.neighbour_table(k, self.dilation), matrix, bias)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense twin: the same convolution at every pixel of x (B, C_in, H, W) -> (B, C_out, H, W)."""
        return F.conv2d(x, self.weight, self.bias, padding=self.dilation * (self.kernel_size // 2),
                        dilation=self.dilation)

    def macs_per_site(self) -> int:
        """Multiply-accumulates per output site, all k*k taps counted (as the dense twin computes them)."""
        return self.in_channels * self.out_channels * self.kernel_size ** 2

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, bias={self.bias is not None}, backend={self.backend!r}")
