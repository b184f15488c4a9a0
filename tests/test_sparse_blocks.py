"""SubMResBlock against a dense twin built from F.conv2d + BatchNorm1d over the active sites."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rounding import DEVICES
from sparse_ops import SparseGeometry, SubMResBlock, dense_submanifold_conv2d

BACKENDS = ["spconv", "torch"]  # spconv is a requirement: its cases fail, not skip, when it does not import


def dense_twin(block, feats, geometry):
    """The block written with dense convs read at the sites, and plain BatchNorm1d on the site rows."""
    def conv(layer, x):
        return dense_submanifold_conv2d(x, geometry, layer.weight, layer.bias, layer.dilation)

    def bn(layer, x):
        return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)

    out = F.relu(bn(block.bn1, conv(block.conv1, feats)))
    out = bn(block.bn2, conv(block.conv2, out))
    identity = feats if block.shortcut is None else bn(block.shortcut["bn"], conv(block.shortcut["conv"], feats))
    return F.relu(out + identity)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [(4, 4), (3, 6)])
def test_block_equals_dense_twin(device, backend, channels):
    g = torch.Generator().manual_seed(0)
    coords = torch.nonzero(torch.rand(2, 12, 10, generator=g) < 0.4)
    geometry = SparseGeometry(coords.to(device), (12, 10), 2)
    block = SubMResBlock(*channels, dilation=2, backend=backend).double().train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(generator=g)
    block.to(device)
    feats = torch.randn(len(geometry), channels[0], generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    out = block(feats, geometry)
    ref = dense_twin(block, feats, geometry)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    params = [feats] + list(block.parameters())
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert {key[1] for key in geometry._cache} == {"subm_k3_d2"}  # the block's two convs shared one rulebook


@pytest.mark.parametrize("n", [0, 1])
def test_block_on_tiny_levels(n):
    geometry = SparseGeometry(torch.zeros(n, 3, dtype=torch.int32), (4, 4), 1)
    block = SubMResBlock(4, 8).train()
    out = block(torch.randn(n, 4), geometry)
    assert out.shape == (n, 8)
    out.sum().backward()


@pytest.mark.parametrize("channels", [(4, 4), (3, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_forward_dense_equals_sparse_on_a_full_grid(channels, training):
    """With every cell of the grid active the sparse block is the dense twin (outputs, gradients and the running
    statistics both update)."""
    g = torch.Generator().manual_seed(1)
    block = SubMResBlock(*channels, backend="torch").double().train(training)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(generator=g)
    twin = copy.deepcopy(block)
    x = torch.randn(2, channels[0], 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    dense = twin.forward_dense(x)
    sparse = block(x.permute(0, 2, 3, 1).reshape(-1, channels[0]), SparseGeometry.grid(2, (5, 6)))
    torch.testing.assert_close(sparse, dense.permute(0, 2, 3, 1).reshape(-1, channels[1]), atol=1e-12, rtol=0)
    grad = torch.randn_like(sparse)
    (a,) = torch.autograd.grad(sparse, x, grad)
    (b,) = torch.autograd.grad(dense, x, grad.reshape(2, 5, 6, -1).permute(0, 3, 1, 2))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for name, buffer in block.named_buffers():
        torch.testing.assert_close(buffer, dict(twin.named_buffers())[name], atol=1e-12, rtol=0)
    assert block.macs_per_site() == sum(c.in_channels * c.out_channels * 9 for c in (block.conv1, block.conv2)) + (
        0 if block.shortcut is None else channels[0] * channels[1])
