"""Stride-2 sparse convolutions between a level and its halved site set: `strided_conv2d` (down) and
`transposed_conv2d` (back up to exactly the recorded finer sites), modules `StridedConv2d` and `TransposedConv2d`.

Geometry. `fine` has the grid (h, w); `coarse` any sites on the grid (ceil(h / 2), ceil(w / 2)) with the same batch
size - normally `fine.downsampled()[0]`, the unique (b, y // 2, x // 2) of the fine sites. With p = (k - 1) // 2,
coarse cell (Y, X) reads fine cells (2Y - p + ky, 2X - p + kx), ky, kx in 0..k-1 (k = 2: its four children; k = 3:
the 3x3 window centred on child (0, 0)). Fine cells outside (h, w) read as zeros.

Definitions (what the tests check against `dense_strided_conv2d` / `dense_transposed_conv2d`):
- `strided_conv2d(feats, fine, coarse, weight, bias)` = `F.conv2d(dense_fine, weight, bias, stride=2, padding=p)`
  read at the coarse sites, where dense_fine (B, C_in, 2 h_c, 2 w_c) holds `feats` at the fine sites and zeros
  elsewhere - the fine map zero-padded at the bottom/right to even size, so the output grid is always (h_c, w_c).
  For odd k or even (h, w) the padding changes nothing; for even k and odd h it adds the last coarse row, whose
  sites have children only in fine row h - 1 (plain `F.conv2d` would drop that row).
- `transposed_conv2d(feats, coarse, fine, weight, bias)` = `F.conv_transpose2d(dense_coarse, weight, bias, stride=2,
  padding=p, output_padding=k % 2)` read at the fine sites. That output_padding makes the output grid exactly
  (2 h_c, 2 w_c) for every k; it is cropped to the fine grid (h, w) (one row / column less when h / w is odd).
  It is the adjoint of `strided_conv2d` over the same (fine, coarse) pair: same taps, weight transposed.

Implementation (pure PyTorch, any device): one neighbour relation per (fine, coarse, k), built once and cached in the
fine geometry (key ("torch", "stride2_k{k}"), one entry per coarse geometry, held weakly):
- `down` (N_coarse, k*k): the fine row under each tap of each coarse site, N_fine where none (a zero row).
  `strided_conv2d` is im2col over it + one matmul.
- `up`: for each of the four parity classes (y % 2, x % 2) of the fine sites, its rows and the taps that can reach
  it (k = 2: one tap, the child's quadrant; k = 3: 1, 2, 2 or 4 taps), with the coarse row under each, N_coarse
  where none. `transposed_conv2d` is one im2col + matmul per class: it computes only the taps that exist, never the
  k*k - 1 structurally empty ones of a plain im2col at the fine sites.
Backward reuses the same two tables (the input gradient of one op is the other op with the weight transposed; the
weight gradients re-gather over `down`), so only the inputs are saved. No host synchronisation per call once the
tables exist. Under `torch.autocast` both follow autocast's rules like `submanifold_conv2d` (float32 inputs cast to
the autocast dtype, output in that dtype; weight gradients accumulated in float32 for half precisions).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sparse_ops import backend as _backend
from sparse_ops.init import reset_conv_parameters
from sparse_ops.gather import scatter_dense
from sparse_ops.geometry import SparseGeometry
from sparse_ops.reference import read_sites
from sparse_ops.im2col import chunk_rows, gather_columns, gathered_product, im2col_matmul, with_zero_row


# ---- functional -------------------------------------------------------------------------------------------------
def strided_conv2d(
    feats: torch.Tensor,
    fine: SparseGeometry,
    coarse: SparseGeometry,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stride-2 sparse convolution from the fine sites to the coarse sites (definition: module docstring).

    Args:
        feats: float (N_fine, C_in), one row per site of `fine`.
        fine: the input sites, grid (h, w).
        coarse: the output sites, grid (ceil(h / 2), ceil(w / 2)), same batch size; normally `fine.downsampled()[0]`.
        weight: (C_out, C_in, k, k) as for `F.conv2d`, any k >= 1 (k = 2: children only; k = 3: padding 1).
        bias: (C_out,) or None.
    Returns:
        (N_coarse, C_out) of `feats`' dtype (the autocast dtype under autocast), rows in the order of `coarse`.
    """
    feats, weight, bias = _prepare("strided_conv2d", feats, fine, coarse, weight, bias, transposed=False)
    k = weight.shape[-1]
    wmat = weight.permute(2, 3, 1, 0).reshape(k * k, weight.shape[1], weight.shape[0])  # (kk, C_in, C_out)
    with torch.autocast(feats.device.type, enabled=False):  # the inputs hold the dtype to compute in
        out = _Stride2Conv.apply(feats, wmat, stride2_tables(fine, coarse, k), False)
        # in place: _Stride2Conv does not save its output for backward
        return out if bias is None else out.add_(bias)


def transposed_conv2d(
    feats: torch.Tensor,
    coarse: SparseGeometry,
    fine: SparseGeometry,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stride-2 transposed sparse convolution from the coarse sites back to exactly the fine sites (definition:
    module docstring; the adjoint of `strided_conv2d`).

    Args:
        feats: float (N_coarse, C_in), one row per site of `coarse`.
        coarse: the input sites, grid (ceil(h / 2), ceil(w / 2)); normally `fine.downsampled()[0]`.
        fine: the output sites (the ones recorded on the way down), grid (h, w), same batch size.
        weight: (C_in, C_out, k, k) as for `F.conv_transpose2d`, any k >= 1.
        bias: (C_out,) or None.
    Returns:
        (N_fine, C_out) of `feats`' dtype (the autocast dtype under autocast), rows in the order of `fine`.
    """
    feats, weight, bias = _prepare("transposed_conv2d", feats, fine, coarse, weight, bias, transposed=True)
    k = weight.shape[-1]
    wmat = weight.permute(2, 3, 0, 1).reshape(k * k, weight.shape[0], weight.shape[1])  # (kk, C_in, C_out)
    with torch.autocast(feats.device.type, enabled=False):
        out = _Stride2Conv.apply(feats, wmat, stride2_tables(fine, coarse, k), True)
        return out if bias is None else out.add_(bias)


# ---- dense definitions (tests, checking models) ---------------------------------------------------------------
def dense_strided_conv2d(feats, fine: SparseGeometry, coarse: SparseGeometry, weight, bias=None):
    """`F.conv2d(dense_fine, weight, bias, stride=2, padding=(k - 1) // 2)` at the coarse sites, dense_fine the
    (B, C_in, 2 h_c, 2 w_c) map holding `feats` at the fine sites and zeros elsewhere. Returns (N_coarse, C_out)."""
    dense = scatter_dense(feats, fine)
    (h, w), (hc, wc) = fine.spatial_shape, coarse.spatial_shape
    dense = F.pad(dense, (0, 2 * wc - w, 0, 2 * hc - h))
    k = weight.shape[-1]
    return read_sites(F.conv2d(dense, weight, bias, stride=2, padding=(k - 1) // 2), coarse.coords)


def dense_transposed_conv2d(feats, coarse: SparseGeometry, fine: SparseGeometry, weight, bias=None):
    """`F.conv_transpose2d(dense_coarse, weight, bias, stride=2, padding=(k - 1) // 2, output_padding=k % 2)`
    (output (B, C_out, 2 h_c, 2 w_c)) cropped to the fine grid and read at the fine sites. Returns (N_fine, C_out)."""
    dense = scatter_dense(feats, coarse)
    k = weight.shape[-1]
    h, w = fine.spatial_shape
    out = F.conv_transpose2d(dense, weight, bias, stride=2, padding=(k - 1) // 2, output_padding=k % 2)
    return read_sites(out[:, :, :h, :w], fine.coords)


# ---- neighbour tables ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Stride2Tables:
    """The tap relation between a fine and a coarse geometry for a k x k stride-2 kernel (module docstring).

    Attributes:
        down: int64 (N_coarse, k*k): fine row under tap (ky, kx) (row-major) of each coarse site, or N_fine.
        up: four (rows, taps, table) per fine parity class (y % 2, x % 2): int64 (M,) fine rows of the class,
            int64 (T,) the taps that reach it, int64 (M, T) the coarse row under each, or N_coarse.
        num_fine, num_coarse: N_fine, N_coarse.
    """

    down: torch.Tensor
    up: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
    num_fine: int
    num_coarse: int


def build_stride2_tables(fine: SparseGeometry, coarse: SparseGeometry, kernel_size: int) -> Stride2Tables:
    """`Stride2Tables` of (fine, coarse, k) (a pure function; `stride2_tables` caches it). Uses one dense int64
    index map of the fine grid padded to (2 h_c + k - 1, 2 w_c + k - 1) and one sort-free scatter."""
    k, p = kernel_size, (kernel_size - 1) // 2
    hc, wc = coarse.spatial_shape
    n_fine, n_coarse = fine.num_sites, coarse.num_sites
    device = fine.device
    # fine row y sits at map row y + p: tap (ky, kx) of coarse (Y, X) is map cell (2Y + ky, 2X + kx), always inside
    hp, wp = 2 * hc + k - 1, 2 * wc + k - 1
    index_map = torch.full((fine.batch_size * hp * wp,), n_fine, dtype=torch.int64, device=device)
    b, y, x = fine.coords.long().unbind(1)
    index_map[(b * hp + y + p) * wp + x + p] = torch.arange(n_fine, device=device)
    b, y, x = coarse.coords.long().unbind(1)
    taps = torch.tensor([ky * wp + kx for ky in range(k) for kx in range(k)], dtype=torch.int64, device=device)
    down = index_map[((b * hp + 2 * y) * wp + 2 * x)[:, None] + taps]  # (N_coarse, kk)

    # up: invert down. Fine row i under tap t of coarse j <=> up[i, t] = j (unique: the tap fixes j); the sentinel
    # row N_fine collects the missing taps and is dropped.
    full = torch.full((n_fine + 1, k * k), n_coarse, dtype=torch.int64, device=device)
    full[down, torch.arange(k * k, device=device)] = torch.arange(n_coarse, device=device)[:, None].expand_as(down)
    full = full[:n_fine]
    parity = (fine.coords[:, 1].long() % 2) * 2 + fine.coords[:, 2].long() % 2
    up = []
    for py in (0, 1):
        for px in (0, 1):
            # the taps whose fine cell 2Y - p + ky has the class's parity
            tap_list = [ky * k + kx for ky in range(k) for kx in range(k) if (ky - p - py) % 2 == 0
                        and (kx - p - px) % 2 == 0]
            rows = torch.nonzero(parity == 2 * py + px).flatten()
            tap_index = torch.tensor(tap_list, dtype=torch.int64, device=device)
            up.append((rows, tap_index, full[rows][:, tap_index]))
    return Stride2Tables(down, tuple(up), n_fine, n_coarse)


def stride2_tables(fine: SparseGeometry, coarse: SparseGeometry, kernel_size: int) -> Stride2Tables:
    """`build_stride2_tables(fine, coarse, k)`, cached in `fine` under ("torch", "stride2_k{k}"), per coarse geometry
    (held weakly: the entry goes when the coarse geometry does). `fine.downsampled()[0]` is kept by `fine`, so its
    tables live as long as `fine`."""
    key = ("torch", f"stride2_k{int(kernel_size)}")
    per_coarse = fine.derived(key, weakref.WeakKeyDictionary)
    if coarse not in per_coarse:
        per_coarse[coarse] = build_stride2_tables(fine, coarse, kernel_size)
    return per_coarse[coarse]


# ---- autograd implementation --------------------------------------------------------------------------------------
def _gather_down(x: torch.Tensor, tables: Stride2Tables, wmat: torch.Tensor) -> torch.Tensor:
    """out[j] = sum_t x[down[j, t]] @ wmat[t] (the zero row where down is N): (N_coarse, D). x (N_fine, C), wmat
    (kk, C, D)."""
    return im2col_matmul(x, tables.down, wmat.reshape(-1, wmat.shape[2]))


def _gather_up(x: torch.Tensor, tables: Stride2Tables, wmat: torch.Tensor) -> torch.Tensor:
    """out[i] = sum_t x[up[i, t]] @ wmat[t] over the taps of i's parity class: (N_fine, D). x (N_coarse, C)."""
    padded = with_zero_row(x)
    # a class that no tap reaches (k = 1: the odd rows and columns) stays zero
    reached = all(taps.shape[0] > 0 for _, taps, _ in tables.up)
    out = (x.new_empty if reached else x.new_zeros)(tables.num_fine, wmat.shape[2])
    for rows, taps, table in tables.up:
        if rows.shape[0] == 0 or taps.shape[0] == 0:
            continue
        w2 = wmat[taps].reshape(-1, wmat.shape[2])  # (T * C, D): the class's taps only
        step = chunk_rows(table, x.shape[1])
        for start in range(0, rows.shape[0], step):
            out.index_copy_(0, rows[start:start + step], gather_columns(padded, table[start:start + step]) @ w2)
    return out


class _Stride2Conv(torch.autograd.Function):
    """out = strided (gather over `down`) or transposed (gather over the parity classes of `up`) conv of feats with
    the tap-major weight wmat (kk, C_in, C_out). The input gradient is the other direction with wmat transposed;
    the weight gradient re-gathers over `down` in chunks."""

    @staticmethod
    def forward(ctx, feats, wmat, tables: Stride2Tables, transposed: bool):
        ctx.save_for_backward(feats, wmat)
        ctx.tables, ctx.transposed = tables, transposed
        return _gather_up(feats, tables, wmat) if transposed else _gather_down(feats, tables, wmat)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        feats, wmat = ctx.saved_tensors
        tables, transposed = ctx.tables, ctx.transposed
        grad_out = grad_out.contiguous()
        grad_feats = grad_wmat = None
        if ctx.needs_input_grad[0]:
            adjoint = wmat.transpose(1, 2)  # (kk, C_out, C_in)
            grad_feats = (_gather_down(grad_out, tables, adjoint) if transposed
                          else _gather_up(grad_out, tables, adjoint))
        if ctx.needs_input_grad[1]:
            kk, c_in, c_out = wmat.shape
            if transposed:  # grad_wmat[t] = sum_j feats[j]^T grad_out[down[j, t]]: coarse feats x gathered grad
                grad_wmat = gathered_product(feats, grad_out, tables.down, gathered_left=False)
                grad_wmat = grad_wmat.view(c_in, kk, c_out).transpose(0, 1)
            else:  # grad_wmat[t] = sum_j feats[down[j, t]]^T grad_out[j]: gathered fine feats x coarse grad
                grad_wmat = gathered_product(feats, grad_out, tables.down, gathered_left=True).view(kk, c_in, c_out)
            grad_wmat = grad_wmat.to(wmat.dtype)
        return grad_feats, grad_wmat, None, None


# ---- validation -----------------------------------------------------------------------------------------------------
def _prepare(op: str, feats, fine, coarse, weight, bias, transposed: bool):
    """Autocast casts, then ValueErrors that say what to pass instead; returns (feats, weight, bias) to compute with."""
    for name, geometry in (("fine", fine), ("coarse", coarse)):
        if not isinstance(geometry, SparseGeometry):
            raise ValueError(f"{op}: {name} must be a SparseGeometry, got {type(geometry).__name__}; the coarse sites "
                             f"of a fine geometry are fine.downsampled()[0]")
    h, w = fine.spatial_shape
    expected = ((h + 1) // 2, (w + 1) // 2)
    order = "(feats, coarse, fine, ...)" if transposed else "(feats, fine, coarse, ...)"
    if coarse.spatial_shape != expected or coarse.batch_size != fine.batch_size:
        raise ValueError(
            f"{op}: the coarse geometry must lie on the grid {expected} (ceil of half the fine grid {(h, w)}) with "
            f"batch size {fine.batch_size}, got grid {coarse.spatial_shape} and batch size {coarse.batch_size}; "
            f"pass fine.downsampled()[0] as coarse, in the order {order}")
    if coarse.device != fine.device:
        raise ValueError(f"{op}: fine is on {fine.device} but coarse on {coarse.device}; use geometry.to(device)")
    if isinstance(feats, torch.Tensor):
        feats, weight, bias = _backend.autocast_inputs(feats.device, feats, weight, bias)
    source, source_name = (coarse, "coarse") if transposed else (fine, "fine")
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or not feats.is_floating_point():
        raise ValueError(f"{op}: feats must be a float tensor (N_{source_name}, C_in), got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
    if feats.shape[0] != source.num_sites:
        raise ValueError(f"{op}: feats has {feats.shape[0]} rows but the {source_name} geometry {source.num_sites} "
                         f"sites; pass one feature row per {source_name} site, in the order {order}")
    layout = "(C_in, C_out, k, k) as for F.conv_transpose2d" if transposed else "(C_out, C_in, k, k) as for F.conv2d"
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must be {layout} with a square kernel, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    c_in, c_out = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    if c_in != feats.shape[1]:
        raise ValueError(f"{op}: weight {tuple(weight.shape)} is {layout}, so it expects C_in={c_in} input "
                         f"channels, but feats has {feats.shape[1]}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (c_out,)):
        raise ValueError(f"{op}: bias must be None or of shape ({c_out},) (C_out), got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    _backend.check_like_feats(feats, f"{op}: ", weight=weight, bias=bias)
    if fine.device != feats.device:
        raise ValueError(f"{op}: the geometries are on {fine.device} but feats on {feats.device}; use "
                         f"geometry.to(device)")
    return feats, weight, bias


def _check_kernel_size(kernel_size) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive int (2: children only, 3: padding 1), got {kernel_size!r}")
    return kernel_size


# ---- modules ------------------------------------------------------------------------------------------------------
class StridedConv2d(nn.Module):
    """Stride-2 sparse convolution module (`strided_conv2d`); the weight is stored in `F.conv2d`'s layout.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: k >= 1 (2: each coarse site sums its up to four children; 3: padding 1).
        bias: learn a (C_out,) bias.
    Shape:
        forward(feats (N_fine, C_in), fine, coarse) -> (N_coarse, C_out); coarse normally `fine.downsampled()[0]`.
        forward_dense(x (B, C_in, H, W)) -> (B, C_out, H', W'): the dense twin `F.conv2d(x, weight, bias, stride=2,
        padding=(k - 1) // 2)`. H' = ceil(H / 2) for odd k or even H; for even k and odd H it is floor(H / 2): the
        sparse op then also has the last coarse row (the twin applied to x zero-padded to even size).
    Attributes:
        weight: (C_out, C_in, k, k), initialised like `nn.Conv2d`'s.
        bias: (C_out,) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _check_kernel_size(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of `nn.Conv2d`."""
        reset_conv_parameters(self.weight, self.bias, self.in_channels * self.kernel_size ** 2)

    def forward(self, feats: torch.Tensor, fine: SparseGeometry, coarse: SparseGeometry) -> torch.Tensor:
        return strided_conv2d(feats, fine, coarse, self.weight, self.bias)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense twin (see the class docstring for its output size)."""
        return F.conv2d(x, self.weight, self.bias, stride=2, padding=(self.kernel_size - 1) // 2)

    def macs_per_site(self) -> int:
        """Multiply-accumulates per output (coarse) site, all k*k taps counted (as the dense twin computes them)."""
        return self.in_channels * self.out_channels * self.kernel_size ** 2

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride=2, "
                f"bias={self.bias is not None}")


class TransposedConv2d(nn.Module):
    """Stride-2 transposed sparse convolution module (`transposed_conv2d`): back up to exactly the recorded fine
    sites. The weight is stored in `F.conv_transpose2d`'s layout.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size: k >= 1 (2: each fine site is a projection of its parent; 3: padding 1).
        bias: learn a (C_out,) bias.
    Shape:
        forward(feats (N_coarse, C_in), coarse, fine) -> (N_fine, C_out).
        forward_dense(x (B, C_in, H, W)) -> (B, C_out, 2H, 2W): the dense twin `F.conv_transpose2d(x, weight, bias,
        stride=2, padding=(k - 1) // 2, output_padding=k % 2)`, always exactly twice the input size; the sparse op
        is it read at the fine sites (a fine grid of odd size is its top-left crop).
    Attributes:
        weight: (C_in, C_out, k, k), initialised like `nn.ConvTranspose2d`'s.
        bias: (C_out,) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _check_kernel_size(kernel_size)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.ConvTranspose2d`'s initialisation (its fan_in is weight.size(1) * k * k = C_out * k * k)."""
        reset_conv_parameters(self.weight, self.bias, self.out_channels * self.kernel_size ** 2)

    def forward(self, feats: torch.Tensor, coarse: SparseGeometry, fine: SparseGeometry) -> torch.Tensor:
        return transposed_conv2d(feats, coarse, fine, self.weight, self.bias)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense twin (see the class docstring for its output size)."""
        k = self.kernel_size
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=(k - 1) // 2, output_padding=k % 2)

    def macs_per_site(self) -> float:
        """Multiply-accumulates per output (fine) site as the dense twin computes them: C_in * C_out * k*k / 4 (every
        input pixel feeds k*k outputs, four outputs per input). Exact for even k (k = 2: one tap per fine site);
        for odd k the mean over the four parity classes (k = 3: 1, 2, 2 or 4 taps)."""
        return self.in_channels * self.out_channels * self.kernel_size ** 2 / 4

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride=2, "
                f"bias={self.bias is not None}")
