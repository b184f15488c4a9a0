"""qgn.block_layout: BlockPad against a per-pixel reference of its definition, every op against its dense twin (all
blocks high, all low, mixed layouts), gradients, and property tests over random layouts."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qgn import block_layout as bl
from qgn.block_layout import BlockLayout, BlockMap
from rounding import DEVICES
from sparse_ops import NodeBatchNorm
from sparse_ops.batchnorm import FoldedBatchNorm


def random_map(layout: BlockLayout, channels: int, side: int, dtype=torch.float64, seed: int = 0) -> BlockMap:
    """A BlockMap of random values: high (n_h, C, side, side), low (n_l, C, side/2, side/2)."""
    generator = torch.Generator().manual_seed(seed)
    high = torch.randn(layout.num_high, channels, side, side, generator=generator, dtype=dtype)
    low = torch.randn(layout.num_low, channels, side // 2, side // 2, generator=generator, dtype=dtype)
    return BlockMap(high.to(layout.device), low.to(layout.device), layout)


def reference_block_pad(x: BlockMap, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockPad by its definition, one padded position at a time: find the block holding the image point, then
    copy (same resolution), take the covering low cell (low neighbour of a high block), average the 2x2 high cells
    (high neighbour of a low block), or write zero (outside the image)."""
    layout = x.layout
    gh, gw = layout.grid_shape
    high_rows = {int(k): r for r, k in enumerate(torch.nonzero(layout.high.flatten().cpu()).flatten())}
    low_rows = {int(k): r for r, k in enumerate(torch.nonzero(~layout.high.flatten().cpu()).flatten())}
    high, low = x.high.cpu(), x.low.cpu()

    def value(b, y, x_, side, group):
        """The value of group `group`'s view of the image point (y, x_) (in cells of side `side`)."""
        if not (0 <= y < gh * side and 0 <= x_ < gw * side):
            return torch.zeros(high.shape[1], dtype=high.dtype)
        block = b * gh * gw + (y // side) * gw + x_ // side
        cy, cx = y % side, x_ % side
        if block in high_rows:
            cells = high[high_rows[block]]
            return cells[:, cy, cx] if group == "high" else cells[:, 2 * cy:2 * cy + 2, 2 * cx:2 * cx + 2].mean((1, 2))
        cells = low[low_rows[block]]
        return cells[:, cy // 2, cx // 2] if group == "high" else cells[:, cy, cx]

    out = []
    for group, rows, side in (("high", high_rows, x.size), ("low", low_rows, x.size // 2)):
        padded = torch.zeros(len(rows), high.shape[1], side + 2 * padding, side + 2 * padding, dtype=high.dtype)
        for block, row in rows.items():
            b, by, bx = block // (gh * gw), block % (gh * gw) // gw, block % gw
            for i in range(-padding, side + padding):
                for j in range(-padding, side + padding):
                    padded[row, :, i + padding, j + padding] = value(b, by * side + i, bx * side + j, side, group)
        out.append(padded)
    return out[0], out[1]


def reference_conv2d(x: BlockMap, weight, bias, stride: int, padding: int, dilation: int = 1) -> BlockMap:
    """Per group: the reference padding, then the convolution written out tap by tap."""
    groups = []
    for padded in reference_block_pad(x, padding):
        k = weight.shape[2]
        out_side = (padded.shape[2] - dilation * (k - 1) - 1) // stride + 1
        out = torch.zeros(padded.shape[0], weight.shape[0], out_side, out_side, dtype=padded.dtype)
        for ky in range(k):
            for kx in range(k):
                window = padded[:, :, ky * dilation::stride, kx * dilation::stride][:, :, :out_side, :out_side]
                out += torch.einsum("nchw,oc->nohw", window, weight[:, :, ky, kx].cpu())
        groups.append(out if bias is None else out + bias.cpu()[:, None, None])
    return BlockMap(groups[0], groups[1], BlockLayout(x.layout.high.cpu(), x.layout.block_size))


def test_block_pad_on_a_hand_example():
    """A high block (2x2 cells 1..4) left of a low block (one cell, 10): the high block's right padding is the low
    cell (nearest), the low block's left padding the mean of the high block's 2x2 cells, the rest zeros."""
    layout = BlockLayout(torch.tensor([[[True, False]]]), 8)
    x = BlockMap(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[[10.0]]]]), layout)
    high, low = bl.block_pad(x, 1)
    assert high.tolist() == [[[[0, 0, 0, 0], [0, 1, 2, 10], [0, 3, 4, 10], [0, 0, 0, 0]]]]
    assert low.tolist() == [[[[0, 0, 0], [2.5, 10, 0], [0, 0, 0]]]]
    # two rows of blocks: a low block below a high one reads the high block's bottom 2x2 cells
    layout = BlockLayout(torch.tensor([[[True], [False]]]), 8)
    x = BlockMap(torch.arange(1.0, 17.0).view(1, 1, 4, 4), torch.tensor([[[[20.0, 30.0], [40.0, 50.0]]]]), layout)
    high, low = bl.block_pad(x, 1)
    assert high[0, 0, 5].tolist() == [0, 20, 20, 30, 30, 0]  # the row below: low cells, each covering 2 columns
    assert low[0, 0, 0].tolist() == [0, (9 + 10 + 13 + 14) / 4, (11 + 12 + 15 + 16) / 4, 0]


@pytest.mark.parametrize("side,padding", [(2, 1), (4, 1), (4, 2), (8, 3), (2, 3)])
def test_block_pad_equals_the_per_pixel_definition(side, padding):
    generator = torch.Generator().manual_seed(side * 10 + padding)
    layout = BlockLayout(torch.rand(2, 3, 4, generator=generator) < 0.5, 8)
    x = random_map(layout, 3, side, seed=padding)
    for got, expected in zip(bl.block_pad(x, padding), reference_block_pad(x, padding)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@st.composite
def layouts(draw, max_batch=2, max_grid=3):
    batch, gh, gw = draw(st.integers(1, max_batch)), draw(st.integers(1, max_grid)), draw(st.integers(1, max_grid))
    cells = draw(st.lists(st.booleans(), min_size=batch * gh * gw, max_size=batch * gh * gw))
    return BlockLayout(torch.tensor(cells, dtype=torch.bool).view(batch, gh, gw), 8)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.sampled_from([2, 4, 8]), st.integers(1, 3), st.integers(0, 1000))
def test_block_pad_property_random_layouts(layout, side, padding, seed):
    x = random_map(layout, 2, side, seed=seed)
    got = bl.block_pad(x, padding)
    assert got[0].shape == (layout.num_high, 2, side + 2 * padding, side + 2 * padding)
    assert got[1].shape == (layout.num_low, 2, side // 2 + 2 * padding, side // 2 + 2 * padding)
    for a, b in zip(got, reference_block_pad(x, padding)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the interior of every padded block is the block itself
    assert torch.equal(got[0][:, :, padding:padding + side, padding:padding + side], x.high)
    assert torch.equal(got[1][:, :, padding:padding + side // 2, padding:padding + side // 2], x.low)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.sampled_from([2, 4, 8]), st.integers(0, 1000))
def test_to_blocks_and_combine_properties(layout, side, seed):
    """combine(to_blocks(x)) is x on high blocks and the within-block bilinear upsampling of the 2x2-pooled block
    on low ones; with every block high it is x exactly."""
    gh, gw = layout.grid_shape
    dense = torch.randn(layout.batch_size, 3, gh * side, gw * side, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    blocks = bl.to_blocks(dense, layout)
    assert blocks.high.shape == (layout.num_high, 3, side, side) and blocks.low.shape == (layout.num_low, 3, side // 2,
                                                                                          side // 2)
    assert blocks.stride == 8 // side
    combined = bl.combine(blocks)
    assert combined.shape == dense.shape
    for b in range(layout.batch_size):
        for y in range(gh):
            for x in range(gw):
                window = (b, slice(None), slice(y * side, (y + 1) * side), slice(x * side, (x + 1) * side))
                expected = dense[window] if layout.high[b, y, x] else F.interpolate(
                    F.avg_pool2d(dense[window][None], 2), scale_factor=2, mode="bilinear", align_corners=False)[0]
                assert torch.equal(combined[window], expected)
    everywhere_high = BlockLayout(torch.ones_like(layout.high), 8)
    assert torch.equal(bl.combine(bl.to_blocks(dense, everywhere_high)), dense)


OPS = ["conv3x3", "conv3x3 stride 2", "conv5x5", "conv5x5 stride 2", "conv3x3 dilation 2", "conv3x3 groups 2",
       "conv1x1", "conv1x1 stride 2", "conv_transpose 2x2", "pixel_unshuffle", "avg_pool 2", "avg_pool 3 padded",
       "relu", "add"]


def op_pair(name: str, device="cpu"):
    """(the op over BlockMaps, the dense op) called `name`; weights fixed by the seed, on `device`."""
    generator = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    w3, w1, w5, wt, bias, grouped = w(5, 4, 3, 3), w(5, 4, 1, 1), w(5, 4, 5, 5), w(5, 4, 2, 2), w(5), w(4, 2, 3, 3)
    return {
        "conv3x3": (lambda x: bl.conv2d(x, w3, bias, 1, 1), lambda d: F.conv2d(d, w3, bias, 1, 1)),
        "conv3x3 stride 2": (lambda x: bl.conv2d(x, w3, None, 2, 1), lambda d: F.conv2d(d, w3, None, 2, 1)),
        "conv5x5": (lambda x: bl.conv2d(x, w5, bias, 1, 2), lambda d: F.conv2d(d, w5, bias, 1, 2)),
        "conv5x5 stride 2": (lambda x: bl.conv2d(x, w5, bias, 2, 2), lambda d: F.conv2d(d, w5, bias, 2, 2)),
        "conv3x3 dilation 2": (lambda x: bl.conv2d(x, w3, bias, 1, 2, 2), lambda d: F.conv2d(d, w3, bias, 1, 2, 2)),
        "conv3x3 groups 2": (lambda x: bl.conv2d(x, grouped, None, 1, 1, groups=2),
                             lambda d: F.conv2d(d, grouped, None, 1, 1, groups=2)),
        "conv1x1": (lambda x: bl.conv2d(x, w1, bias), lambda d: F.conv2d(d, w1, bias)),
        "conv1x1 stride 2": (lambda x: bl.conv2d(x, w1, None, 2), lambda d: F.conv2d(d, w1, None, 2)),
        "conv_transpose 2x2": (lambda x: bl.conv_transpose2d(bl.conv2d(x, w1, None, 2), wt, bias[:4]),
                               lambda d: F.conv_transpose2d(F.conv2d(d, w1, None, 2), wt, bias[:4], stride=2)),
        "pixel_unshuffle": (lambda x: bl.pixel_unshuffle(x, 2), lambda d: F.pixel_unshuffle(d, 2)),
        "avg_pool 2": (lambda x: bl.avg_pool2d(x, 2), lambda d: F.avg_pool2d(d, 2)),
        "avg_pool 3 padded": (lambda x: bl.avg_pool2d(x, 3, 1, 1), lambda d: F.avg_pool2d(d, 3, 1, 1)),
        "relu": (bl.relu, F.relu),
        "add": (lambda x: bl.add(x, bl.relu(x)), lambda d: d + F.relu(d)),
    }[name]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("device", DEVICES)
def test_every_op_with_all_blocks_high_is_the_dense_op(name, device):
    """Outputs and input gradients equal the dense op on the whole map, cut into blocks (float64)."""
    block_op, dense_op = op_pair(name, device)
    dense = torch.randn(2, 4, 16, 24, dtype=torch.float64, device=device, requires_grad=True)
    layout = BlockLayout(torch.ones(2, 2, 3, dtype=torch.bool, device=device), 8)
    got = bl.combine(block_op(bl.to_blocks(dense, layout)))
    expected = dense_op(dense)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(expected)
    grad_got, = torch.autograd.grad((got * weights).sum(), dense)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), dense)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPS)
def test_every_op_with_all_blocks_low_is_the_dense_op_on_the_pooled_map(name):
    """All blocks low: the blocks of the 2x2-pooled map, all at one resolution - the dense op on the pooled map."""
    block_op, dense_op = op_pair(name)
    dense = torch.randn(1, 4, 16, 32, dtype=torch.float64)
    layout = BlockLayout(torch.zeros(1, 2, 4, dtype=torch.bool), 8)
    got = block_op(bl.to_blocks(dense, layout))
    pooled_layout = BlockLayout(torch.ones(1, 2, 4, dtype=torch.bool), 8)
    expected = bl.to_blocks(dense_op(F.avg_pool2d(dense, 2)), pooled_layout)
    torch.testing.assert_close(got.low, expected.high, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_layout_matches_on_cpu_and_cuda(device):
    """The same mixed-layout conv and combine on `device` as on the CPU (the gathers are built on the device)."""
    layout = BlockLayout(torch.tensor([[[True, False, True], [False, False, True]]]), 8)
    x = random_map(layout, 4, 8)
    block_op, _ = op_pair("conv3x3")
    expected = bl.combine(block_op(x))
    block_op, _ = op_pair("conv3x3", device)
    moved = BlockMap(x.high.to(device), x.low.to(device), layout.to(device))
    torch.testing.assert_close(bl.combine(block_op(moved)).cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2),
                                                            (1, 2, 0, 1)])
def test_conv2d_on_mixed_layouts_equals_the_slow_reference(kernel, stride, padding, dilation):
    generator = torch.Generator().manual_seed(kernel + stride + padding)
    layout = BlockLayout(torch.rand(2, 3, 3, generator=generator) < 0.5, 16)
    x = random_map(layout, 3, 8)
    weight = torch.randn(4, 3, kernel, kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    got = bl.conv2d(x, weight, bias, stride, padding, dilation)
    expected = reference_conv2d(x, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(got.high, expected.high, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.low, expected.low, rtol=1e-10, atol=1e-10)
    assert got.size == 8 // stride and got.stride == 2 * stride


def test_gradients_of_block_pad_and_conv_on_a_mixed_layout_pass_gradcheck():
    """Analytic gradients (through the gathers, the 2x2 means, the nearest copies and combine) equal numerical ones."""
    layout = BlockLayout(torch.tensor([[[True, False], [False, True]]]), 8)
    x = random_map(layout, 2, 4)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)

    def run(high, low, weight):
        return bl.combine(bl.conv2d(BlockMap(high, low, layout), weight, None, 1, 1))

    inputs = (x.high.clone().requires_grad_(), x.low.clone().requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("kind", ["BatchNorm2d", "NodeBatchNorm"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_all_high_is_the_dense_batch_norm(kind, training):
    """Joint statistics: with every block high, outputs and running statistics equal the dense module's."""
    torch.manual_seed(0)
    norm = (torch.nn.BatchNorm2d(4) if kind == "BatchNorm2d" else NodeBatchNorm(4)).double().train(training)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(0.5, 2)
    twin = type(norm)(4).double().train(training)
    twin.load_state_dict(norm.state_dict())
    dense = torch.randn(2, 4, 16, 24, dtype=torch.float64) * 3 + 1
    layout = BlockLayout(torch.ones(2, 2, 3, dtype=torch.bool), 8)
    got = bl.combine(bl.batch_norm(bl.to_blocks(dense, layout), norm))
    expected = twin.forward_dense(dense) if kind == "NodeBatchNorm" else twin(dense)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(norm.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert int(norm.num_batches_tracked) == int(training)


def test_batch_norm_statistics_are_joint_over_both_resolutions():
    """Training: every cell of both groups is one batch - the mean and variance of all cells together."""
    layout = BlockLayout(torch.tensor([[[True, False, False]]]), 8)
    x = random_map(layout, 3, 4)
    norm = torch.nn.BatchNorm2d(3, affine=False, momentum=1.0).double()
    out = bl.batch_norm(x, norm)
    cells = torch.cat([x.high.transpose(0, 1).flatten(1), x.low.transpose(0, 1).flatten(1)], 1)  # (C, 16 + 2 * 4)
    mean, var = cells.mean(1), cells.var(1, unbiased=False)
    torch.testing.assert_close(out.high, (x.high - mean[:, None, None]) / (var[:, None, None] + 1e-5).sqrt())
    torch.testing.assert_close(out.low, (x.low - mean[:, None, None]) / (var[:, None, None] + 1e-5).sqrt())
    torch.testing.assert_close(norm.running_mean, mean)
    torch.testing.assert_close(norm.running_var, cells.var(1, unbiased=True))
    assert bl.batch_norm(x, FoldedBatchNorm()) is x


def test_block_pad_plans_are_built_once_per_side_and_padding():
    layout = BlockLayout(torch.tensor([[[True, False], [False, False]]]), 8)
    x = random_map(layout, 2, 4)
    first = bl.block_pad(x, 1)
    built = layout.derived(("block_pad", 4, 1), lambda: pytest.fail("rebuilt"))
    second = bl.block_pad(x, 1)
    assert layout.derived(("block_pad", 4, 1), lambda: pytest.fail("rebuilt")) is built
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="bool tensor"):
        BlockLayout(torch.ones(1, 2, 2), 8)
    with pytest.raises(ValueError, match="even"):
        BlockLayout(torch.ones(1, 2, 2, dtype=torch.bool), 7)
    layout = BlockLayout(torch.tensor([[[True, False]]]), 8)
    with pytest.raises(ValueError, match="1 high and 1 low"):
        BlockMap(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 2, 2), layout)
    with pytest.raises(ValueError, match="S/2"):
        BlockMap(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), layout)
    x = random_map(layout, 2, 4)
    with pytest.raises(ValueError, match="'same' geometry"):
        bl.conv2d(x, torch.zeros(2, 2, 3, 3, dtype=torch.float64), padding=0)
    with pytest.raises(ValueError, match="does not fit the layout"):
        bl.to_blocks(torch.zeros(1, 2, 8, 12), layout)
    with pytest.raises(ValueError, match="same layout"):
        bl.add(x, random_map(BlockLayout(torch.tensor([[[False, True]]]), 8), 2, 4))
    with pytest.raises(TypeError, match="batch norm module"):
        bl.batch_norm(x, torch.nn.ReLU())
