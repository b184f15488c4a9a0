"""sparse_ops.inference_weights: weights derived once for inference, and derived again whenever the parameters change."""

import copy
import pickle

import pytest
import torch

from rounding import AUTOCAST_PARAMS, assert_within_rounding
from sparse_ops import (ExpandChildren, SparseGeometry, SubMConv2d, SubMResBlock, dense_submanifold_conv2d,
                        submanifold_conv2d)
from sparse_ops.inference_weights import clear_derived_weights, derived_weight

BACKENDS = ["spconv", "torch"]


def sites(seed=0, batch=2, h=9, w=8):
    g = torch.Generator().manual_seed(seed)
    return SparseGeometry(torch.nonzero(torch.rand(batch, h, w, generator=g) < 0.5), (h, w), batch)


def test_kept_while_the_sources_are_unchanged_and_derived_again_after_any_change():
    module = torch.nn.Linear(3, 4)
    calls = []

    def build(weight, bias):
        calls.append(1)
        return weight.t() * 2, bias

    with torch.no_grad():
        first = derived_weight(module, "m", build, module.weight, module.bias)
        assert derived_weight(module, "m", build, module.weight, module.bias) is first and len(calls) == 1
        module.weight.add_(1)  # an in-place write: a new version
        second = derived_weight(module, "m", build, module.weight, module.bias)
        assert len(calls) == 2 and torch.equal(second[0], module.weight.t() * 2)
        module.bias = torch.nn.Parameter(torch.zeros(4))  # another tensor
        assert derived_weight(module, "m", build, module.weight, module.bias)[1] is module.bias and len(calls) == 3
        module.weight.data = torch.randn(4, 3)  # same Parameter, other storage
        assert torch.equal(derived_weight(module, "m", build, module.weight, module.bias)[0], module.weight.t() * 2)
        assert len(calls) == 4
        module.weight.data.mul_(3)  # bypasses the version counter: clear_derived_weights is the way out
        clear_derived_weights(module)
        assert torch.equal(derived_weight(module, "m", build, module.weight, module.bias)[0], module.weight.t() * 2)
    # while autograd records, every call derives anew (the result carries the graph to the parameters)
    out = derived_weight(module, "m", build, module.weight, module.bias)
    assert out[0].requires_grad and len(calls) == 6
    assert "_derived_weights" not in "".join(module.state_dict())
    assert "_derived_weights" not in copy.deepcopy(module).__dict__ or not copy.deepcopy(module)._derived_weights
    assert not pickle.loads(pickle.dumps(module))._derived_weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_inference_equals_the_functional_op_and_follows_optimizer_steps(backend, kernel_size):
    torch.manual_seed(0)
    geometry = sites()
    conv = SubMConv2d(3, 5, kernel_size, backend=backend).double()
    feats = torch.randn(len(geometry), 3, dtype=torch.float64)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.5)
    for step in range(3):
        with torch.no_grad():
            kept = conv(feats, geometry)  # derives (after each step) and keeps the weight matrix
            again = conv(feats, geometry)
        expected = submanifold_conv2d(feats, geometry, conv.weight, conv.bias, backend=backend)
        torch.testing.assert_close(kept, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(again, kept, rtol=0, atol=0)
        trained = conv(feats, geometry)  # train-mode forward: autograd records, nothing kept is used
        torch.testing.assert_close(trained, expected, rtol=1e-12, atol=1e-12)
        optimizer.zero_grad()
        trained.square().sum().backward()
        optimizer.step()
    fresh = SubMConv2d(3, 5, kernel_size, backend=backend).double()
    fresh.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conv(feats, geometry), fresh(feats, geometry), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_and_expansion_after_load_state_dict_and_dtype_change(backend):
    torch.manual_seed(0)
    geometry = sites(1)
    block, expand = SubMResBlock(4, backend=backend).eval(), ExpandChildren(4, 3)
    feats = torch.randn(len(geometry), 4)
    with torch.no_grad():
        before = block(feats, geometry), expand(feats)
        other_block, other_expand = SubMResBlock(4, backend=backend).eval(), ExpandChildren(4, 3)
        block.load_state_dict(other_block.state_dict())
        expand.load_state_dict(other_expand.state_dict())
        after = block(feats, geometry), expand(feats)
        assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])
        torch.testing.assert_close(after[0], other_block(feats, geometry), rtol=0, atol=0)
        torch.testing.assert_close(after[1], other_expand(feats), rtol=0, atol=0)
        block.double(), expand.double()  # .data swapped to new storage
        wide = block(feats.double(), geometry), expand(feats.double())
    assert wide[0].dtype == wide[1].dtype == torch.float64
    torch.testing.assert_close(wide[0], block(feats.double(), geometry), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wide[1], expand(feats.double()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
def test_weights_are_kept_per_autocast_dtype(device, dtype):
    torch.manual_seed(0)
    geometry = sites(2).to(device)
    conv = SubMConv2d(3, 4, backend="torch").to(device)
    feats = torch.randn(len(geometry), 3, device=device)
    with torch.no_grad():
        full = conv(feats, geometry)
        with torch.autocast(torch.device(device).type, dtype=dtype):
            low = conv(feats, geometry)
        assert full.dtype == torch.float32 and low.dtype == dtype
        torch.testing.assert_close(conv(feats, geometry), full, rtol=0, atol=0)  # the float32 weights again
        # the kept low-precision weights are the parameters rounded once: within rounding of the exact result
        rounded = [t.to(dtype).double() for t in (feats, conv.weight, conv.bias)]
        exact = dense_submanifold_conv2d(rounded[0], geometry, rounded[1], rounded[2])
        magnitude = dense_submanifold_conv2d(rounded[0].abs(), geometry, rounded[1].abs(), rounded[2].abs())
        assert_within_rounding(low, exact, magnitude, dtype, terms=28)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_level_without_autograd(backend):
    geometry = SparseGeometry(torch.zeros(0, 3, dtype=torch.int32), (4, 4), 1)
    with torch.no_grad():
        for k in (1, 3):
            assert SubMConv2d(3, 5, k, backend=backend)(torch.zeros(0, 3), geometry).shape == (0, 5)
        assert SubMResBlock(3, 4, backend=backend)(torch.zeros(0, 3), geometry).shape == (0, 4)
        assert ExpandChildren(3, 2)(torch.zeros(0, 3)).shape == (0, 2)
