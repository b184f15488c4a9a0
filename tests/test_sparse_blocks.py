"""SubMResBlock against a dense twin built from F.conv2d + BatchNorm1d over the active sites."""

import pytest
import torch
import torch.nn.functional as F

from rounding import DEVICES
from sparse_ops import SparseGeometry, SubMResBlock, dense_submanifold_conv2d
from sparse_ops.backend import spconv_available

BACKENDS = [pytest.param("spconv", marks=pytest.mark.skipif(not spconv_available(), reason="spconv missing")), "torch"]


def dense_twin(block, feats, geometry):
    """The block written with dense convs read at the sites, and plain BatchNorm1d on the site rows."""
    def conv(layer, x):
        return dense_submanifold_conv2d(x, geometry, None, None, layer.weight, layer.bias, layer.dilation)

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
