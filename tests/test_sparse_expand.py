"""expand_children / ExpandChildren against F.conv_transpose2d(stride=2), and against the quadtree's layout."""

import numpy as np
import pytest
import torch

import quadtree
from rounding import AUTOCAST_PARAMS, DEVICES, assert_within_rounding
from sparse_ops import (CHILD_OFFSETS, ExpandChildren, SparseGeometry, child_coords, dense_expand_children,
                        expand_children, select_nodes)


def parents(batch, h, w, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nonzero(torch.rand(batch, h, w, generator=g) < fraction)  # column-major int64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_conv_transpose2d(device, batch, with_bias):
    coords = parents(batch, 7, 9, 0.4, seed=batch).to(device)
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(True)

    feats, weight = leaf(coords.shape[0], 5), leaf(5, 3, 2, 2)
    bias = leaf(3) if with_bias else None
    leaves = [t for t in (feats, weight, bias) if t is not None]
    out, children = expand_children(feats, coords, weight, bias)
    ref, ref_children = dense_expand_children(feats, coords, (7, 9), batch, weight, bias)
    assert out.shape == (4 * coords.shape[0], 3)
    assert children.dtype == torch.int32 and children.is_contiguous() and torch.equal(children, ref_children)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_child_order_is_the_quadtree_order():
    coords = torch.tensor([[0, 3, 5], [1, 0, 0]], dtype=torch.int32)
    expected = torch.tensor([[0, 6, 10], [0, 6, 11], [0, 7, 10], [0, 7, 11],
                             [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.int32)
    assert torch.equal(child_coords(coords), expected)
    assert CHILD_OFFSETS is quadtree.CHILD_OFFSETS and CHILD_OFFSETS.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert torch.equal(child_coords(coords), quadtree.child_coords(coords))
    # child (dy, dx) of parent i is row 4i + 2dy + dx and uses weight[:, :, dy, dx]
    weight = torch.zeros(1, 4, 2, 2)
    for q, (dy, dx) in enumerate(CHILD_OFFSETS):
        weight[0, q, dy, dx] = 1.0
    out, _ = expand_children(torch.ones(2, 1), coords, weight)
    assert torch.equal(out, torch.eye(4).repeat(2, 1))


def test_gradcheck():
    coords = parents(2, 4, 4, 0.5, seed=1)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(coords.shape[0], 2, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: expand_children(f, coords, w, b)[0], (feats, weight, bias))


def test_empty():
    feats = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(4, 2, 2, 2, requires_grad=True)
    out, children = expand_children(feats, torch.zeros(0, 3, dtype=torch.int32), weight, torch.zeros(2))
    assert out.shape == (0, 2) and children.shape == (0, 3)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_expanding_mixed_nodes_gives_the_next_quadtree_level(nuclei):
    mask = torch.from_numpy((nuclei["instances"] % 20).astype(np.uint8))
    tree = quadtree.encode(torch.stack([mask, mask.flip(0)]), depth=5)
    layer = ExpandChildren(8, 4).double()
    for level in range(tree.depth):
        geometry = SparseGeometry.from_quadtree(tree, level)
        feats = torch.randn(len(geometry), 8, dtype=torch.float64)
        mixed = select_nodes(feats, geometry, tree.levels[level].labels == quadtree.MIXED)
        child_feats, child_geometry = layer(mixed.feats, mixed.coords)
        assert torch.equal(child_geometry.coords, tree.levels[level + 1].coords)
        assert child_geometry.spatial_shape == tree.level_shape(level + 1)
        ref, _ = dense_expand_children(mixed.feats, mixed.coords, None, None, layer.weight, layer.bias)
        torch.testing.assert_close(child_feats, ref, atol=1e-12, rtol=0)


def test_module_init_like_conv_transpose2d_and_repr():
    torch.manual_seed(0)
    layer = ExpandChildren(16, 8)
    reference = torch.nn.ConvTranspose2d(16, 8, 2, stride=2)
    assert layer.weight.shape == reference.weight.shape and layer.bias.shape == reference.bias.shape
    bound = 1 / (8 * 4) ** 0.5  # ConvTranspose2d's fan_in is weight.size(1) * 2 * 2
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert repr(layer) == "ExpandChildren(16, 8, bias=True)"


def test_input_validation():
    coords = torch.tensor([[0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(C_in, C_out, 2, 2\)"):
        expand_children(torch.randn(1, 3), coords, torch.randn(3, 4, 3, 3))
    with pytest.raises(ValueError, match="C_in=5"):
        expand_children(torch.randn(1, 3), coords, torch.randn(5, 4, 2, 2))
    with pytest.raises(ValueError, match="rows"):
        expand_children(torch.randn(2, 3), coords, torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="bias"):
        expand_children(torch.randn(1, 3), coords, torch.randn(3, 4, 2, 2), torch.randn(3))


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
def test_autocast_runs_in_the_low_precision(device, dtype):
    """Under autocast the projection is a `dtype` matmul with float32 accumulation (tests/rounding.py bound);
    float32 parameters get float32 gradients."""
    coords = parents(2, 30, 40, 0.3, seed=0).to(device)
    g = torch.Generator().manual_seed(1)
    feats, weight, bias = torch.randn(coords.shape[0], 16, generator=g), torch.randn(16, 8, 2, 2, generator=g), \
        torch.randn(8, generator=g)
    leaves = [t.to(device).requires_grad_(True) for t in (feats, weight, bias)]
    with torch.autocast(torch.device(device).type, dtype=dtype):
        out, children = expand_children(leaves[0], coords, leaves[1], leaves[2])
    assert out.dtype == dtype
    grads = torch.autograd.grad(out.float().sum(), leaves)
    assert [grad.dtype for grad in grads] == [torch.float32] * 3
    rounded = [t.to(dtype).double() for t in (feats, weight, bias)]
    exact, _ = dense_expand_children(rounded[0], coords.cpu(), (30, 40), 2, rounded[1], rounded[2])
    magnitude, _ = dense_expand_children(*(t.abs() for t in rounded[:1]), coords.cpu(), (30, 40), 2,
                                         rounded[1].abs(), rounded[2].abs())
    assert_within_rounding(out, exact, magnitude, dtype, terms=17)
