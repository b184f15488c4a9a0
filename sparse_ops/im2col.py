"""Im2col over a neighbour table, in row chunks: what the pure-PyTorch sparse convolutions are made of.

A table (M, T) holds, for each output row and tap, the input row it reads, or N (the number of input rows) where
there is none: a zero row padded onto the inputs answers those, so a block of columns is one gather with no
data-dependent index (no host synchronisation on a GPU). Blocks hold about CHUNK_ELEMENTS elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 22
"""Elements of one gathered im2col block (16 MB in float32)."""


def with_zero_row(feats: torch.Tensor) -> torch.Tensor:
    """(N + 1, C): `feats` and a row of zeros, the row the sentinel N of a table reads."""
    return F.pad(feats, (0, 0, 0, 1))


def gather_columns(padded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(n, T * C) im2col block: padded[rows[i, t]] side by side, `padded` (N + 1, C) from `with_zero_row`
    (measured on CPU as fast as or faster than zeroing the missing entries after the gather, which needed a
    nonzero per chunk)."""
    return padded.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1] * padded.shape[1])


def chunk_rows(table: torch.Tensor, channels: int) -> int:
    """Table rows per block of about CHUNK_ELEMENTS gathered elements."""
    return max(1, CHUNK_ELEMENTS // (table.shape[1] * channels))


def im2col_matmul(feats: torch.Tensor, table: torch.Tensor, wmat: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """out[i] = concat_t(feats[table[i, t]] or 0) @ wmat (+ bias, in the same op): (M, D), in row chunks.
    feats (N, C), table (M, T), wmat (T * C, D), bias (D,) or None."""
    padded = with_zero_row(feats)
    rows = table.shape[0]
    step = chunk_rows(table, feats.shape[1])
    if step >= rows:
        cols = gather_columns(padded, table)
        return cols @ wmat if bias is None else torch.addmm(bias, cols, wmat)
    out = feats.new_empty(rows, wmat.shape[1])
    for start in range(0, rows, step):  # no name holds a block: one block is alive at a time
        if bias is None:
            torch.mm(gather_columns(padded, table[start:start + step]), wmat, out=out[start:start + step])
        else:
            torch.addmm(bias, gather_columns(padded, table[start:start + step]), wmat, out=out[start:start + step])
    return out


def gathered_product(left: torch.Tensor, right: torch.Tensor, table: torch.Tensor, gathered_left: bool
                     ) -> torch.Tensor:
    """A weight gradient: the sum over table rows j of cols[j]^T right[j] (gathered_left: cols = the im2col of
    `left` over `table`; (T * C, D)) or of left[j]^T cols[j] (cols = the im2col of `right`; (C, T * D)), in row
    chunks. Half-precision chunk products are summed in float32: a bfloat16 sum over all sites would lose the
    small terms."""
    gathered = left if gathered_left else right
    padded = with_zero_row(gathered)
    taps = table.shape[1]
    shape = (taps * left.shape[1], right.shape[1]) if gathered_left else (left.shape[1], taps * right.shape[1])
    low = left.dtype in (torch.float16, torch.bfloat16)
    acc = left.new_zeros(shape, dtype=torch.float32 if low else left.dtype)
    step = chunk_rows(table, gathered.shape[1])
    for start in range(0, table.shape[0], step):
        cols = gather_columns(padded, table[start:start + step])
        a, b = (cols.t(), right[start:start + step]) if gathered_left else (left[start:start + step].t(), cols)
        if low:
            acc += torch.mm(a, b)
        else:
            acc.addmm_(a, b)
    return acc
