"""expand_children / ExpandChildren against F.conv_transpose2d(stride=2), and against the quadtree's layout."""

import numpy as np
import pytest
import torch

import quadtree
from rounding import AUTOCAST_PARAMS, DEVICES, assert_within_rounding
from sparse_ops import ExpandChildren, SparseGeometry, dense_expand_children, expand_children, level_geometry


def parents(batch, h, w, fraction, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return SparseGeometry(torch.nonzero(torch.rand(batch, h, w, generator=g) < fraction).to(device), (h, w), batch)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_conv_transpose2d(device, batch, with_bias):
    geometry = parents(batch, 7, 9, 0.4, seed=batch, device=device)
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_(True)

    feats, weight = leaf(len(geometry), 5), leaf(5, 3, 2, 2)
    bias = leaf(3) if with_bias else None
    leaves = [t for t in (feats, weight, bias) if t is not None]
    out = expand_children(feats, weight, bias)
    ref = dense_expand_children(feats, geometry, weight, bias)
    assert out.shape == (4 * len(geometry), 3)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_child_order_is_the_quadtree_order():
    # child (dy, dx) of parent i is row 4i + 2dy + dx and uses weight[:, :, dy, dx]: quadtree.CHILD_OFFSETS' order
    weight = torch.zeros(1, 4, 2, 2)
    for q, (dy, dx) in enumerate(quadtree.CHILD_OFFSETS):
        weight[0, q, dy, dx] = 1.0
    out = expand_children(torch.ones(2, 1), weight)
    assert torch.equal(out, torch.eye(4).repeat(2, 1))


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: expand_children(f, w, b), (feats, weight, bias))


def test_empty():
    feats = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(4, 2, 2, 2, requires_grad=True)
    out = expand_children(feats, weight, torch.zeros(2))
    assert out.shape == (0, 2)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_expanding_mixed_nodes_gives_the_next_quadtree_level(nuclei):
    mask = torch.from_numpy((nuclei["instances"] % 20).astype(np.uint8))
    tree = quadtree.encode(torch.stack([mask, mask.flip(0)]), depth=5)
    layer = ExpandChildren(8, 4).double()
    for level in range(tree.depth):
        geometry = level_geometry(tree, level)
        mixed = torch.nonzero(tree.levels[level].labels == quadtree.MIXED).flatten()
        parents = SparseGeometry(geometry.coords[mixed], geometry.spatial_shape, geometry.batch_size)
        feats = torch.randn(len(parents), 8, dtype=torch.float64)
        # the children's rows are the next level's nodes, in its order
        assert torch.equal(geometry.children(mixed).coords, tree.levels[level + 1].coords)
        ref = dense_expand_children(feats, parents, layer.weight, layer.bias)
        torch.testing.assert_close(layer(feats), ref, atol=1e-12, rtol=0)


def test_module_init_like_conv_transpose2d_and_repr():
    torch.manual_seed(0)
    layer = ExpandChildren(16, 8)
    reference = torch.nn.ConvTranspose2d(16, 8, 2, stride=2)
    assert layer.weight.shape == reference.weight.shape and layer.bias.shape == reference.bias.shape
    bound = 1 / (8 * 4) ** 0.5  # ConvTranspose2d's fan_in is weight.size(1) * 2 * 2
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert repr(layer) == "ExpandChildren(16, 8, bias=True)"


def test_input_validation():
    with pytest.raises(ValueError, match=r"\(C_in, C_out, 2, 2\)"):
        expand_children(torch.randn(1, 3), torch.randn(3, 4, 3, 3))
    with pytest.raises(ValueError, match="C_in=5"):
        expand_children(torch.randn(1, 3), torch.randn(5, 4, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, C_in\)"):
        expand_children(torch.randn(3), torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="bias"):
        expand_children(torch.randn(1, 3), torch.randn(3, 4, 2, 2), torch.randn(3))


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
def test_autocast_runs_in_the_low_precision(device, dtype):
    """Under autocast the projection is a `dtype` matmul with float32 accumulation (tests/rounding.py bound);
    float32 parameters get float32 gradients."""
    geometry = parents(2, 30, 40, 0.3, seed=0)
    g = torch.Generator().manual_seed(1)
    feats, weight, bias = torch.randn(len(geometry), 16, generator=g), torch.randn(16, 8, 2, 2, generator=g), \
        torch.randn(8, generator=g)
    leaves = [t.to(device).requires_grad_(True) for t in (feats, weight, bias)]
    with torch.autocast(torch.device(device).type, dtype=dtype):
        out = expand_children(leaves[0], leaves[1], leaves[2])
    assert out.dtype == dtype
    grads = torch.autograd.grad(out.float().sum(), leaves)
    assert [grad.dtype for grad in grads] == [torch.float32] * 3
    rounded = [t.to(dtype).double() for t in (feats, weight, bias)]
    exact = dense_expand_children(rounded[0], geometry, rounded[1], rounded[2])
    magnitude = dense_expand_children(rounded[0].abs(), geometry, rounded[1].abs(), rounded[2].abs())
    assert_within_rounding(out, exact, magnitude, dtype, terms=17)


def test_forward_dense_is_conv_transpose2d():
    layer = ExpandChildren(3, 2).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer.forward_dense(x),
                               torch.nn.functional.conv_transpose2d(x, layer.weight, layer.bias, stride=2))
    assert layer.macs_per_child() == 3 * 2
