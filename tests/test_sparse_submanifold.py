"""submanifold_conv2d / SubMConv2d against the dense definition: outputs and gradients, both backends."""

import math

import numpy as np
import pytest
import torch

import quadtree
from qgn.precision import fp32_math
from rounding import AUTOCAST_PARAMS, DEVICES, assert_within_rounding
from sparse_ops import SparseGeometry, SubMConv2d, dense_submanifold_conv2d, level_geometry, submanifold_conv2d
BACKENDS = ["spconv", "torch"]  # spconv is a requirement: its cases fail, not skip, when it does not import


def random_sites(batch, h, w, fraction, seed):
    """Column-major int64 coords straight from torch.nonzero (the layout spconv silently misreads)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, h, w, generator=g) < fraction
    return torch.nonzero(mask)


def compare_with_dense(feats, geometry, weight, bias, dilation, backend, atol=1e-12, rtol=1e-10):
    feats = feats.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    bias = None if bias is None else bias.clone().requires_grad_(True)
    leaves = [t for t in (feats, weight, bias) if t is not None]
    out = submanifold_conv2d(feats, geometry, weight, bias, dilation, backend)
    ref = dense_submanifold_conv2d(feats, geometry, weight, bias, dilation)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dilation", [1, 2])
def test_matches_dense_conv(backend, batch, k, dilation):
    coords = random_sites(batch, 13, 17, 0.35, seed=k * 10 + dilation + batch)
    n = coords.shape[0]
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(n, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 5, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    geometry = SparseGeometry(coords, (13, 17), batch)
    compare_with_dense(feats, geometry, weight, bias, dilation, backend)
    compare_with_dense(feats, geometry, weight, None, dilation, backend)


def conv_inputs(k, seed=0, channels=32):
    """Sites, float32 features, weight and bias of a 2 x 40 x 50 level, 30% active."""
    coords = random_sites(2, 40, 50, 0.3, seed=k + seed)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(coords.shape[0], channels, generator=g)
    weight = torch.randn(16, channels, k, k, generator=g)
    bias = torch.randn(16, generator=g)
    return coords, feats, weight, bias


def exact_conv_and_grads(coords, feats, weight, bias, dilation, grad, dtype):
    """The dense float64 reference on the inputs rounded to `dtype`: (output, grads of feats/weight/bias) and the
    same for |inputs| (the magnitudes that bound the rounding error, see tests/rounding.py), and the number of
    terms summed into each of the four."""
    results = []
    for absolute in (False, True):
        leaves = [t.to(dtype).double().abs() if absolute else t.to(dtype).double() for t in (feats, weight, bias)]
        leaves = [t.requires_grad_(True) for t in leaves]
        out = dense_submanifold_conv2d(leaves[0], SparseGeometry(coords, (40, 50), 2), leaves[1], leaves[2], dilation)
        g = grad.to(dtype).double()
        results.append((out, torch.autograd.grad(out, leaves, g.abs() if absolute else g)))
    k, sites = weight.shape[-1], feats.shape[0]
    terms = [feats.shape[1] * k * k + 1, weight.shape[0] * k * k, sites, sites]
    return results, terms


def sparse_conv_and_grads(coords, feats, weight, bias, dilation, grad, backend, device, autocast_dtype=None):
    leaves = [t.to(device).requires_grad_(True) for t in (feats, weight, bias)]
    with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = submanifold_conv2d(leaves[0], SparseGeometry(coords.to(device), (40, 50), 2), leaves[1], leaves[2], dilation, backend)
    return out, torch.autograd.grad(out, leaves, grad.to(device).to(out.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 2), (5, 1)])
def test_float32_within_float32_rounding(device, backend, k, dilation):
    """float32 (TF32 off, as tests/conftest.py sets) against the exact conv, outputs and gradients."""
    coords, feats, weight, bias = conv_inputs(k)
    grad = torch.randn(coords.shape[0], 16, generator=torch.Generator().manual_seed(5))
    out, grads = sparse_conv_and_grads(coords, feats, weight, bias, dilation, grad, backend, device)
    assert out.dtype == torch.float32 and out.device.type == device
    ((exact, exact_grads), (magnitude, magnitude_grads)), terms = exact_conv_and_grads(
        coords, feats, weight, bias, dilation, grad, torch.float32)
    assert_within_rounding(out, exact, magnitude, torch.float32, terms[0])
    for got, want, size, count in zip(grads, exact_grads, magnitude_grads, terms[1:]):
        assert got.dtype == torch.float32
        assert_within_rounding(got, want, size, torch.float32, count)


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (5, 1)])
def test_autocast_runs_in_the_low_precision(device, dtype, backend, k, dilation, monkeypatch):
    """Under autocast the conv computes in `dtype` (bf16 through the torch backend, spconv has none) with float32
    accumulation: within `dtype`'s rounding bound of the exact conv of the rounded inputs; gradients too, and
    float32 parameters get float32 gradients. The torch backend works in chunks of 16 rows here, so its
    outputs and gradients go through the chunked paths (the weight gradient is a sum of ~70 chunk products)."""
    monkeypatch.setattr("sparse_ops.im2col.CHUNK_ELEMENTS", 16 * 32 * k * k)
    coords, feats, weight, bias = conv_inputs(k, seed=1)
    grad = torch.randn(coords.shape[0], 16, generator=torch.Generator().manual_seed(6))
    out, grads = sparse_conv_and_grads(coords, feats, weight, bias, dilation, grad, backend, device, dtype)
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [torch.float32] * 3  # the casts' gradients flow back to float32 leaves
    ((exact, exact_grads), (magnitude, magnitude_grads)), terms = exact_conv_and_grads(
        coords, feats, weight, bias, dilation, grad, dtype)
    assert_within_rounding(out, exact, magnitude, dtype, terms[0])
    for got, want, size, count in zip(grads, exact_grads, magnitude_grads, terms[1:]):
        assert_within_rounding(got, want, size, dtype, count)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32_within_tf32_rounding(backend):
    """With TF32 allowed (PyTorch's default for cuDNN convs) the results keep TF32's 10-bit-mantissa bound."""
    coords, feats, weight, bias = conv_inputs(3, seed=2)
    grad = torch.randn(coords.shape[0], 16, generator=torch.Generator().manual_seed(7))
    with fp32_math(tf32=True):
        out, grads = sparse_conv_and_grads(coords, feats, weight, bias, 1, grad, backend, "cuda")
    ((exact, exact_grads), (magnitude, magnitude_grads)), terms = exact_conv_and_grads(
        coords, feats, weight, bias, 1, grad, torch.float32)
    assert_within_rounding(out, exact, magnitude, "tf32", terms[0])
    for got, want, size, count in zip(grads, exact_grads, magnitude_grads, terms[1:]):
        assert_within_rounding(got, want, size, "tf32", count)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,dilation", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_gradcheck(backend, k, dilation):
    coords = random_sites(2, 5, 6, 0.5, seed=k + dilation)
    geometry = SparseGeometry(coords, (5, 6), 2)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(geometry), 2, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def conv(f, w, b):
        return submanifold_conv2d(f, geometry, w, b, dilation, backend)

    assert torch.autograd.gradcheck(conv, (feats, weight, bias))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3])
def test_empty_level(backend, k):
    coords = torch.zeros(0, 3, dtype=torch.int32)
    feats = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = submanifold_conv2d(feats, SparseGeometry(coords, (8, 8), 2), weight, bias, 1, backend)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert feats.grad.shape == (0, 4)
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolated_sites_see_only_themselves(backend):
    coords = torch.tensor([[0, 0, 0], [0, 4, 4], [1, 2, 7]])
    feats = torch.randn(3, 2, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    out = submanifold_conv2d(feats, SparseGeometry(coords, (8, 8), 2), weight, None, 1, backend)
    torch.testing.assert_close(out, feats @ weight[:, :, 1, 1].T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_column_major_and_int32_coords_agree(backend):
    coords = random_sites(2, 15, 11, 0.4, seed=7)
    assert not coords.is_contiguous()  # torch.nonzero's column-major layout
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    from_nonzero = submanifold_conv2d(feats, SparseGeometry(coords, (15, 11), 2), weight, None, 1, backend)
    from_int32 = submanifold_conv2d(feats, SparseGeometry(coords.int().contiguous(), (15, 11), 2), weight, None, 1, backend)
    assert torch.equal(from_nonzero, from_int32)
    torch.testing.assert_close(from_nonzero, dense_submanifold_conv2d(feats, SparseGeometry(coords, (15, 11), 2), weight), atol=1e-12,
                               rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unordered_sites(backend):
    coords = random_sites(3, 9, 9, 0.5, seed=11)
    coords = coords[torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))]
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    compare_with_dense(feats, SparseGeometry(coords, (9, 9), 3), weight, None, 2, backend)


def nuclei_tree(nuclei, batched: bool):
    binary = torch.from_numpy((nuclei["instances"] > 0).astype(np.uint8))
    if not batched:
        return quadtree.encode(binary, depth=5)
    multi = torch.from_numpy((nuclei["instances"] % 20).astype(np.uint8))
    return quadtree.encode(torch.stack([binary, multi]), depth=5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [3, 5])
def test_quadtree_levels_of_real_mask(nuclei, backend, level):
    tree = nuclei_tree(nuclei, batched=True)
    geometry = level_geometry(tree, level)
    assert 0 < len(geometry) < 2 * math.prod(geometry.spatial_shape)  # some nodes, not the whole grid
    g = torch.Generator().manual_seed(level)
    feats = torch.randn(len(geometry), 4, generator=g, dtype=torch.float64)
    for k, dilation in [(3, 1), (5, 2)]:
        weight = torch.randn(3, 4, k, k, generator=g, dtype=torch.float64)
        bias = torch.randn(3, generator=g, dtype=torch.float64)
        compare_with_dense(feats, geometry, weight, bias, dilation, backend)


def test_backends_agree_on_real_mask(nuclei):
    geometry = level_geometry(nuclei_tree(nuclei, batched=False), 5)
    feats = torch.randn(len(geometry), 16)
    weight = torch.randn(16, 16, 3, 3)
    a = submanifold_conv2d(feats, geometry, weight, backend="spconv")
    b = submanifold_conv2d(feats, geometry, weight, backend="torch")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_rulebook_is_built_once_per_level(monkeypatch):
    from sparse_ops import rulebook

    calls = []
    for name in ("neighbour_table", "spconv_rulebook"):
        original = getattr(rulebook, name)
        monkeypatch.setattr(rulebook, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    geometry = SparseGeometry(random_sites(1, 10, 10, 0.5, seed=0), (10, 10), 1)
    feats = torch.randn(len(geometry), 4)
    for backend in BACKENDS:
        layers = [SubMConv2d(4, 4, 3, backend=backend) for _ in range(3)] + [SubMConv2d(4, 4, 3, 2, backend=backend)]
        for layer in layers:
            layer(feats, geometry)
    # one rulebook per (backend, kernel, dilation); keys derived from the kernel geometry
    assert sorted(calls) == sorted(["neighbour_table"] * 2 + ["spconv_rulebook"] * 2)
    assert {key[1] for key in geometry._cache} == {"subm_k3_d1", "subm_k3_d2"}


def test_module_layout_init_and_repr():
    torch.manual_seed(0)
    layer = SubMConv2d(8, 16, 3, dilation=2, backend="torch")
    reference = torch.nn.Conv2d(8, 16, 3)
    assert layer.weight.shape == reference.weight.shape and layer.bias.shape == reference.bias.shape
    bound = 1 / math.sqrt(8 * 9)  # nn.Conv2d's init: both weight and bias lie within 1/sqrt(fan_in)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.std() > bound / 3
    assert "8, 16, kernel_size=3, dilation=2, bias=True, backend='torch'" in repr(layer)
    assert SubMConv2d(2, 2, 1, bias=False).bias is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_equals_dense_conv2d_with_same_parameters(backend):
    coords = random_sites(2, 12, 12, 0.3, seed=5)
    geometry = SparseGeometry(coords, (12, 12), 2)
    layer = SubMConv2d(3, 4, 3, backend=backend).double()
    feats = torch.randn(len(geometry), 3, dtype=torch.float64)
    out = layer(feats, geometry)
    ref = dense_submanifold_conv2d(feats, geometry, layer.weight, layer.bias)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    out.pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_input_validation():
    geometry = SparseGeometry(torch.tensor([[0, 1, 1], [0, 2, 2]]), (4, 4), 1)
    feats = torch.randn(2, 3)
    weight = torch.randn(4, 3, 3, 3)
    conv = submanifold_conv2d
    with pytest.raises(ValueError, match="odd"):
        conv(feats, geometry, torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="C_in=3"):
        conv(torch.randn(2, 5), geometry, weight)
    with pytest.raises(ValueError, match="rows"):
        conv(torch.randn(3, 3), geometry, weight)
    with pytest.raises(ValueError, match="'spconv', 'torch'"):
        conv(feats, geometry, weight, backend="cuda")
    with pytest.raises(ValueError, match="bias"):
        conv(feats, geometry, weight, torch.randn(3))
    with pytest.raises(ValueError, match="dilation"):
        conv(feats, geometry, weight, dilation=0)
    with pytest.raises(ValueError, match="dtype"):
        conv(feats.double(), geometry, weight)
    for not_a_geometry in (geometry.coords, None):
        with pytest.raises(ValueError, match="SparseGeometry"):
            conv(feats, not_a_geometry, weight)
    with pytest.raises(ValueError, match="SparseGeometry"):
        SubMConv2d(3, 4)(feats, geometry.coords)
    with pytest.raises(ValueError, match="odd"):
        SubMConv2d(3, 4, 4)


@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 2)])
def test_forward_dense_is_conv2d_and_sparse_is_it_read_at_the_sites(k, dilation):
    """The module's dense twin is F.conv2d with its weights; the sparse forward equals it wherever every site of
    the grid is active (submanifold = dense on a full grid)."""
    layer = SubMConv2d(3, 4, k, dilation, backend="torch").double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    dense = layer.forward_dense(x)
    torch.testing.assert_close(dense, torch.nn.functional.conv2d(x, layer.weight, layer.bias,
                                                                 padding=dilation * (k // 2), dilation=dilation))
    geometry = SparseGeometry.grid(2, (6, 7))
    sparse = layer(x.permute(0, 2, 3, 1).reshape(-1, 3), geometry)
    torch.testing.assert_close(sparse, dense.permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-12, rtol=0)
    assert layer.macs_per_site() == 3 * 4 * k * k

