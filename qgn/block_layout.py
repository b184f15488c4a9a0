"""Images as blocks at two resolutions (SegBlocks): `BlockLayout`, `BlockMap`, and the dense ops' twins over them.

An image batch (B, C, gh * b, gw * b) is cut into a (B, gh, gw) grid of square blocks of `block_size` b pixels; a
`BlockLayout` says which blocks are high-resolution. At a feature stride s a high block holds (b/s x b/s) cells,
a low block (b/(2s) x b/(2s)): the same window at half the resolution. A `BlockMap` holds one feature map in that
form - `high` (n_h, C, S, S) and `low` (n_l, C, S/2, S/2), blocks in (batch, y, x) order within each group - so a
layer runs once per resolution (one `F.conv2d` for all high blocks, one for all low blocks).

BlockPad (`block_pad`): before a convolution or pooling with padding p > 0, each block is padded from its
neighbours instead of with zeros. A padding position of a block lies in a neighbouring block (the one holding that
point of the image); its value is
- same resolution as the padded block: the neighbour's cell, copied;
- a low-resolution neighbour of a high-resolution block: the low cell covering it (nearest-neighbour upsampling);
- a high-resolution neighbour of a low-resolution block: the mean of the 2x2 high cells it covers;
- outside the image: zero (the dense op's zero padding).
This is a gather precomputed per (layout, block side, padding) and cached with the layout (`BlockLayout.derived`),
so a forward pass builds each index once; only the border is gathered (the interior is the block itself).

Ops (each the twin of a dense op: with every block high they compute exactly the dense op, cut into blocks):
`conv2d` (stride 1 or 2, any padding: BlockPad then one conv per group), `conv_transpose2d` (kernel = stride, per
block), `pixel_unshuffle`, `avg_pool2d`, `relu`, `add`, and `batch_norm` with joint statistics over the cells of
both resolutions (the module itself normalises them as one batch, so its running statistics, momentum and
`num_batches_tracked` follow its own rules). `to_blocks` cuts a dense map into blocks (low blocks 2x2
average-pooled); `combine` (BlockCombine) assembles blocks into a dense map, low blocks bilinearly upsampled within
the block (align_corners=False). Everything is plain PyTorch: CPU and CUDA, autograd throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops.batchnorm import NodeBatchNorm

GROUPS = ("high", "low")
"""The two resolution groups of a BlockMap, in the order of its fields."""


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Which blocks of an image batch are high-resolution.

    Attributes:
        high: bool (B, gh, gw), True where the block runs at full resolution.
        block_size: b, the block side in pixels (even: a low block holds b/2 pixels a side).
    Derived structures (group indices, BlockPad gathers) are built on first use and kept with the layout
    (`derived`); the layout itself is immutable.
    """

    high: torch.Tensor
    block_size: int
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.high, torch.Tensor) or self.high.dtype != torch.bool or self.high.ndim != 3:
            raise ValueError(f"high must be a bool tensor (B, gh, gw), got "
                             f"{describe(self.high)}")
        if min(self.high.shape) < 1:
            raise ValueError(f"a block layout needs at least one block per image, got grid {tuple(self.high.shape)}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 2 \
                or self.block_size % 2:
            raise ValueError(f"block_size must be an even int >= 2 (a low block holds block_size / 2 pixels a "
                             f"side), got {self.block_size!r}")
        object.__setattr__(self, "high", self.high.contiguous())

    @property
    def batch_size(self) -> int:
        return int(self.high.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(gh, gw): blocks per image column and row."""
        return int(self.high.shape[1]), int(self.high.shape[2])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) = (gh * b, gw * b) in pixels."""
        return self.grid_shape[0] * self.block_size, self.grid_shape[1] * self.block_size

    @property
    def num_blocks(self) -> int:
        return int(self.high.numel())

    @property
    def num_high(self) -> int:
        return int(self.block_index()[0].numel())

    @property
    def num_low(self) -> int:
        return int(self.block_index()[1].numel())

    @property
    def device(self) -> torch.device:
        return self.high.device

    def derived(self, key: tuple, build):
        """What `build()` derives from this layout, built on first use and kept under `key` (a tuple naming what it
        derives from, e.g. ("block_pad", side, padding)): later calls with the key return the same object."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def block_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 (n_h,) and (n_l,): flat indices b * gh * gw + y * gw + x of the high and of the low blocks,
        ascending - the row order of a BlockMap's groups."""
        def build():
            flat = self.high.flatten()
            return torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()
        return self.derived(("block_index",), build)

    def slots(self) -> torch.Tensor:
        """int64 (B * gh * gw,): each block's row in its own group (high or low)."""
        def build():
            high_blocks, low_blocks = self.block_index()
            slots = torch.empty(self.num_blocks, dtype=torch.long, device=self.device)
            slots[high_blocks] = torch.arange(high_blocks.numel(), device=self.device)
            slots[low_blocks] = torch.arange(low_blocks.numel(), device=self.device)
            return slots
        return self.derived(("slots",), build)

    def to(self, device: torch.device | str) -> BlockLayout:
        """The same layout on `device` (derived structures are rebuilt there on first use)."""
        return self if torch.device(device) == self.device else BlockLayout(self.high.to(device), self.block_size)


@dataclass(frozen=True, eq=False)
class BlockMap:
    """One feature map of an image batch in blocks at two resolutions.

    Attributes:
        high: float (n_h, C, S, S), the high blocks in the order of `layout.block_index()[0]`.
        low: float (n_l, C, S/2, S/2), the low blocks likewise.
        layout: the BlockLayout; S = block_size / stride, the high block side at this map's stride.
    """

    high: torch.Tensor
    low: torch.Tensor
    layout: BlockLayout

    def __post_init__(self):
        for name in GROUPS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[2] != value.shape[3]:
                raise ValueError(f"BlockMap.{name} must be a tensor (n, C, side, side), got {describe(value)}")
        high, low = self.high, self.low
        if high.shape[0] != self.layout.num_high or low.shape[0] != self.layout.num_low:
            raise ValueError(f"the layout has {self.layout.num_high} high and {self.layout.num_low} low blocks, got "
                             f"{high.shape[0]} and {low.shape[0]}")
        if high.shape[1] != low.shape[1]:
            raise ValueError(f"high and low blocks have different channel counts {high.shape[1]} and {low.shape[1]}")
        if high.shape[2] != 2 * low.shape[2] or low.shape[2] < 1 or self.layout.block_size % high.shape[2]:
            raise ValueError(f"block sides must be S (high) and S/2 (low) with S dividing block_size "
                             f"{self.layout.block_size}, got {high.shape[2]} and {low.shape[2]}")

    @property
    def channels(self) -> int:
        return int(self.high.shape[1])

    @property
    def size(self) -> int:
        """S, the high blocks' side in cells (the low blocks': S / 2)."""
        return int(self.high.shape[2])

    @property
    def stride(self) -> int:
        """Pixels per cell of a high block."""
        return self.layout.block_size // self.size

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    @property
    def device(self) -> torch.device:
        return self.high.device

    def with_groups(self, high: torch.Tensor, low: torch.Tensor) -> BlockMap:
        """A new map of the same layout."""
        return BlockMap(high, low, self.layout)

    def apply(self, fn) -> BlockMap:
        """`fn` applied to each group: fn(high), fn(low) (an op that maps blocks to blocks)."""
        return BlockMap(fn(self.high), fn(self.low), self.layout)


def describe(value) -> str:
    """A tensor's dtype and shape, or a non-tensor's type name (for error messages)."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


# ---- dense <-> blocks -------------------------------------------------------------------------------------------

def to_blocks(dense: torch.Tensor, layout: BlockLayout) -> BlockMap:
    """Cut a dense map into the layout's blocks: high blocks copied, low blocks 2x2 average-pooled.

    Args:
        dense: float (B, C, gh * S, gw * S) - images (S = block_size) or features at stride block_size / S.
    Returns:
        a BlockMap with high (n_h, C, S, S) and low (n_l, C, S/2, S/2).
    """
    if not isinstance(dense, torch.Tensor) or dense.ndim != 4:
        raise ValueError(f"to_blocks takes a dense map (B, C, H, W), got {describe(dense)}")
    batch, channels, height, width = dense.shape
    gh, gw = layout.grid_shape
    side = height // gh
    if batch != layout.batch_size or height != gh * side or width != gw * side or side % 2 or \
            layout.block_size % max(side, 1):
        raise ValueError(f"a dense map (B, C, H, W) = {tuple(dense.shape)} does not fit the layout (batch "
                         f"{layout.batch_size}, grid {layout.grid_shape}, block_size {layout.block_size}): H and W "
                         f"must be gh * S and gw * S with S even and dividing the block size")
    layout = layout.to(dense.device)
    grid = dense.view(batch, channels, gh, side, gw, side)
    b, y, x = block_coords(layout)
    high_blocks, low_blocks = layout.block_index()
    # advanced indices around slices: the indexed dims come first -> (n, C, S, S)
    high = grid[b[high_blocks], :, y[high_blocks], :, x[high_blocks], :]
    low = F.avg_pool2d(grid[b[low_blocks], :, y[low_blocks], :, x[low_blocks], :], 2)
    return BlockMap(high, low, layout)


def combine(x: BlockMap) -> torch.Tensor:
    """BlockCombine: the dense map (B, C, gh * S, gw * S) of a BlockMap, each low block bilinearly upsampled by 2
    within itself (`F.interpolate(..., align_corners=False)` on the block alone: its edge cells are clamped to the
    block, never mixed with a neighbour)."""
    layout = x.layout
    gh, gw = layout.grid_shape
    side = x.size
    low = F.interpolate(x.low, scale_factor=2, mode="bilinear", align_corners=False) if x.low.shape[0] else None
    if low is None:
        blocks = x.high  # every block high: already in flat block order
    elif x.high.shape[0] == 0:
        blocks = low
    else:
        high_blocks, low_blocks = layout.block_index()
        blocks = x.high.new_empty(layout.num_blocks, x.channels, side, side)
        blocks[high_blocks] = x.high
        blocks[low_blocks] = low.to(blocks.dtype)
    return blocks.view(layout.batch_size, gh, gw, x.channels, side, side).permute(0, 3, 1, 4, 2, 5) \
        .reshape(layout.batch_size, x.channels, gh * side, gw * side)


def block_coords(layout: BlockLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int64 (B * gh * gw,) each: batch index, block row and block column of the blocks in flat order."""
    def build():
        gh, gw = layout.grid_shape
        flat = torch.arange(layout.num_blocks, device=layout.device)
        return flat // (gh * gw), flat % (gh * gw) // gw, flat % gw
    return layout.derived(("block_coords",), build)


# ---- BlockPad ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BorderGather:
    """Padding cells read from one source group.

    Attributes:
        source: "high" or "low", the group read; "zero": outside the image.
        source_block, source_cell: int64 (m,) - or (m, 4) for a 2x2 mean - rows of the source group and flat cells
            (y * side + x) within those blocks; None for "zero" (then `count` zeros).
        count: m.
    """

    source: str
    source_block: torch.Tensor | None
    source_cell: torch.Tensor | None
    count: int

    def values(self, sources: dict[str, torch.Tensor]) -> torch.Tensor:
        """(m, C): the gathered (or 2x2-averaged) source cells, from sources[name] (n, C, side * side)."""
        if self.source == "zero":
            return sources["high"].new_zeros(self.count, sources["high"].shape[1])
        gathered = sources[self.source][self.source_block, :, self.source_cell]  # (m, C) or (m, 4, C)
        return gathered.mean(1) if self.source_block.ndim == 2 else gathered


@dataclass(frozen=True, eq=False)
class BorderPlan:
    """How BlockPad fills the padding of one group's blocks: the gathers, and where their values go.

    Attributes:
        gathers: the BorderGathers, in the order their values are concatenated.
        target_block, target_cell: int64 (P,): for each concatenated value, the row of the padded group and the flat
            cell of its padded block ((y + p) * (side + 2p) + x + p); every padding position exactly once.
    """

    gathers: tuple[BorderGather, ...]
    target_block: torch.Tensor
    target_cell: torch.Tensor

    def fill(self, padded: torch.Tensor, sources: dict[str, torch.Tensor]) -> None:
        """Write the padding of `padded` (n, C, side + 2p, side + 2p) in place."""
        if self.target_block.numel():
            values = torch.cat([gather.values(sources) for gather in self.gathers]).to(padded.dtype)
            padded.flatten(2)[self.target_block, :, self.target_cell] = values


def border_offsets(side: int, padding: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 (q,) rows and columns, relative to a block's origin, of its padding: [-p, side + p)^2 less the block,
    row-major."""
    span = torch.arange(-padding, side + padding, device=device)
    i, j = span[:, None].expand(-1, span.numel()).flatten(), span[None, :].expand(span.numel(), -1).flatten()
    border = (i < 0) | (i >= side) | (j < 0) | (j >= side)
    return i[border], j[border]


def block_pad_plans(layout: BlockLayout, size: int, padding: int) -> dict[str, BorderPlan]:
    """How BlockPad fills the padding of the high blocks (side `size`) and of the low blocks (side size / 2) - the
    definition of the module docstring; positions outside the image read zeros. Returns {"high": .., "low": ..}."""
    gh, gw = layout.grid_shape
    high_flat, slots = layout.high.flatten(), layout.slots()
    plans = {}
    for group, blocks, side in zip(GROUPS, layout.block_index(), (size, size // 2)):
        i, j = border_offsets(side, padding, layout.device)
        b, by, bx = blocks // (gh * gw), blocks % (gh * gw) // gw, blocks % gw
        rows = by[:, None] * side + i  # (n, q): image rows and columns in units of this group's cells
        cols = bx[:, None] * side + j
        target_block = torch.arange(blocks.numel(), device=layout.device)[:, None].expand_as(rows)
        target_cell = ((i + padding) * (side + 2 * padding) + (j + padding))[None, :].expand_as(rows)
        inside = (rows >= 0) & (rows < gh * side) & (cols >= 0) & (cols < gw * side)
        b, rows, cols = b[:, None].expand_as(rows)[inside], rows[inside], cols[inside]
        ny, nx = rows.div(side, rounding_mode="floor"), cols.div(side, rounding_mode="floor")  # the neighbour
        cy, cx = rows - ny * side, cols - nx * side  # the point within it, in this group's cells
        neighbour = b * gh * gw + ny * gw + nx
        neighbour_high, neighbour_slot = high_flat[neighbour], slots[neighbour]
        same = neighbour_high if group == "high" else ~neighbour_high
        other = ~same
        if group == "high":  # a low neighbour: the low cell covering the point (nearest-neighbour upsampling)
            other_cells = (cy[other] // 2) * (side // 2) + cx[other] // 2
            other_slots = neighbour_slot[other]
        else:  # a high neighbour: the 2x2 high cells the low cell covers, averaged
            quad = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=layout.device)
            other_cells = (2 * cy[other][:, None] + quad[:, 0]) * (2 * side) + 2 * cx[other][:, None] + quad[:, 1]
            other_slots = neighbour_slot[other][:, None].expand_as(other_cells)
        inside_block, inside_cell = target_block[inside], target_cell[inside]
        gathers = (BorderGather(group, neighbour_slot[same], (cy * side + cx)[same], int(same.sum())),
                   BorderGather("low" if group == "high" else "high", other_slots, other_cells, int(other.sum())),
                   BorderGather("zero", None, None, int((~inside).sum())))
        plans[group] = BorderPlan(
            tuple(gather for gather in gathers if gather.count),
            torch.cat([inside_block[same], inside_block[other], target_block[~inside]]),
            torch.cat([inside_cell[same], inside_cell[other], target_cell[~inside]]))
    return plans


def block_pad(x: BlockMap, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockPad (module docstring): each block padded by `padding` cells from its neighbours.

    Returns:
        (high_padded (n_h, C, S + 2p, S + 2p), low_padded (n_l, C, S/2 + 2p, S/2 + 2p)).
    """
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x.high, x.low
    plans = x.layout.derived(("block_pad", x.size, padding), lambda: block_pad_plans(x.layout, x.size, padding))
    sources = {"high": x.high.flatten(2), "low": x.low.flatten(2)}  # (n, C, side * side) views
    padded = []
    for group in GROUPS:
        out = padded_copy(getattr(x, group), padding)
        plans[group].fill(out, sources)
        padded.append(out)
    return padded[0], padded[1]


def padded_copy(blocks: torch.Tensor, padding: int) -> torch.Tensor:
    """(n, C, side + 2p, side + 2p): the blocks in the middle, the padding uninitialised (BlockPad writes all of
    it)."""
    n, channels, side, _ = blocks.shape
    out = blocks.new_empty(n, channels, side + 2 * padding, side + 2 * padding)
    out[:, :, padding:side + padding, padding:side + padding] = blocks
    return out


# ---- ops --------------------------------------------------------------------------------------------------------

def as_square(value, name: str) -> int:
    """An int, or a pair of equal ints (nn.Conv2d's stride / padding / dilation) -> int."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"block ops take square {name}s, got {tuple(value)}")
        value = value[0]
    if isinstance(value, str):
        raise ValueError(f"{name} must be an int for block ops, got {value!r}")
    return int(value)


def _check_same_geometry(x: BlockMap, kernel_size: int, stride: int, padding: int, dilation: int, op: str) -> None:
    """Block ops must map each block onto the block of the output stride: out side = in side / stride (both groups)."""
    for side in (x.size, x.size // 2):
        out = (side + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
        if side % stride or out != side // stride:
            raise ValueError(f"{op} over blocks needs a 'same' geometry (output side = input side / stride): kernel "
                             f"{kernel_size}, stride {stride}, padding {padding}, dilation {dilation} on blocks of "
                             f"side {x.size} and {x.size // 2} gives {out}; use padding = dilation * (kernel // 2) "
                             f"and a stride dividing {x.size // 2}")


def conv2d(x: BlockMap, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> BlockMap:
    """`F.conv2d` over blocks: BlockPad, then one convolution per resolution group.

    Args:
        weight: (C_out, C_in / groups, k, k); bias (C_out,) or None; stride, padding, dilation: ints (or pairs of
            equal ints), with output side = input side / stride.
    Returns:
        a BlockMap of C_out channels at `stride` times x's stride.
    """
    stride, padding, dilation = as_square(stride, "stride"), as_square(padding, "padding"), \
        as_square(dilation, "dilation")
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"conv2d over blocks takes a square kernel (C_out, C_in, k, k), got {tuple(weight.shape)}")
    _check_same_geometry(x, int(weight.shape[2]), stride, padding, dilation, "conv2d")
    high, low = block_pad(x, padding)
    return x.with_groups(F.conv2d(high, weight, bias, stride, 0, dilation, groups),
                         F.conv2d(low, weight, bias, stride, 0, dilation, groups))


def conv_transpose2d(x: BlockMap, weight: torch.Tensor, bias: torch.Tensor | None = None) -> BlockMap:
    """`F.conv_transpose2d(x, weight, bias, stride=k)` with kernel k = stride (no overlap, no padding): each block
    maps onto itself at k times the resolution.

    Args:
        weight: (C_in, C_out, k, k); bias (C_out,) or None.
    """
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"conv_transpose2d over blocks takes a square kernel (C_in, C_out, k, k), got "
                         f"{tuple(weight.shape)}")
    stride = int(weight.shape[2])
    if x.layout.block_size % (x.size * stride):
        raise ValueError(f"conv_transpose2d by {stride} would make blocks of {x.size * stride} cells, finer than the "
                         f"block size {x.layout.block_size} allows")
    return x.apply(lambda t: F.conv_transpose2d(t, weight, bias, stride=stride))


def pixel_unshuffle(x: BlockMap, factor: int) -> BlockMap:
    """`F.pixel_unshuffle(x, factor)` per block: (C, S, S) -> (C * factor**2, S / factor, S / factor)."""
    if (x.size // 2) % factor:
        raise ValueError(f"pixel_unshuffle by {factor} needs block sides divisible by it, got {x.size} and "
                         f"{x.size // 2}")
    return x.apply(lambda t: _pixel_unshuffle(t, factor))


def _pixel_unshuffle(t: torch.Tensor, factor: int) -> torch.Tensor:
    """F.pixel_unshuffle, also for an empty group (torch returns an empty input's shape unchanged)."""
    if t.shape[0]:
        return F.pixel_unshuffle(t, factor)
    return t.new_empty(0, t.shape[1] * factor ** 2, t.shape[2] // factor, t.shape[3] // factor)


def avg_pool2d(x: BlockMap, kernel_size: int, stride: int | None = None, padding: int = 0) -> BlockMap:
    """`F.avg_pool2d(x, kernel_size, stride, padding)` (count_include_pad=True, its default) over blocks: BlockPad
    when padding > 0 (zeros at the image border, counted, as the dense op's), then the pooling per group."""
    kernel_size = as_square(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else as_square(stride, "stride")
    padding = as_square(padding, "padding")
    _check_same_geometry(x, kernel_size, stride, padding, 1, "avg_pool2d")
    high, low = block_pad(x, padding)
    return x.with_groups(F.avg_pool2d(high, kernel_size, stride), F.avg_pool2d(low, kernel_size, stride))


def relu(x: BlockMap, inplace: bool = False) -> BlockMap:
    """F.relu per group (inplace: overwrite x's tensors, as nn.ReLU(inplace=True) does)."""
    return x.apply(lambda t: F.relu(t, inplace=inplace))


def add(a: BlockMap, b: BlockMap) -> BlockMap:
    """a + b, blockwise (the same layout and sides)."""
    if a.layout is not b.layout and not torch.equal(a.layout.high, b.layout.high):
        raise ValueError("add needs two BlockMaps of the same layout")
    return BlockMap(a.high + b.high, a.low + b.low, a.layout)


def batch_norm(x: BlockMap, norm: nn.Module) -> BlockMap:
    """The batch norm module `norm` over blocks, with joint statistics over both resolutions.

    In training (or without running statistics) every cell of both groups is one batch: the module itself runs on
    their concatenation, (1, C, P, 1) (`NodeBatchNorm` through its `forward_dense`), so its running statistics,
    momentum and num_batches_tracked follow its own rules, and with every block high the statistics are the dense
    map's. With running statistics in evaluation the module is an affine map per channel, applied per group. A
    `FoldedBatchNorm` (folded into the convolution before it) and any `nn.Identity` return x.

    Args:
        norm: nn.BatchNorm2d, NodeBatchNorm (BatchNorm1d), FoldedBatchNorm or nn.Identity.
    """
    if isinstance(norm, nn.Identity):
        return x
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"batch_norm over blocks takes a batch norm module, got {type(norm).__name__}")
    apply = norm.forward_dense if isinstance(norm, NodeBatchNorm) else norm
    if not norm.training and norm.running_mean is not None:
        return x.apply(apply)
    channels, side = x.channels, x.size
    n_high, n_low = x.high.shape[0], x.low.shape[0]
    cells = torch.cat([x.high.transpose(0, 1).reshape(channels, -1), x.low.transpose(0, 1).reshape(channels, -1)], 1)
    out = apply(cells[None, :, :, None])[0, :, :, 0]  # (C, P): P = n_h * S * S + n_l * S/2 * S/2
    split = n_high * side * side
    high = out[:, :split].reshape(channels, n_high, side, side).transpose(0, 1).contiguous()
    low = out[:, split:].reshape(channels, n_low, side // 2, side // 2).transpose(0, 1).contiguous()
    return x.with_groups(high, low)
