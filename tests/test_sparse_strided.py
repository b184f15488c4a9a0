"""strided_conv2d / transposed_conv2d / SparseGeometry.downsampled against their dense definitions."""

import gc
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quadtree
from rounding import AUTOCAST_PARAMS, assert_within_rounding
from sparse_ops import (SparseGeometry, StridedConv2d, TransposedConv2d, dense_strided_conv2d, dense_transposed_conv2d,
                        level_geometry, strided_conv2d, transposed_conv2d)
from sparse_ops import strided

KERNELS = [2, 3]
SHAPES = [(13, 17), (12, 9), (1, 1)]  # odd, mixed and degenerate grids


def random_geometry(batch, h, w, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    return SparseGeometry(torch.nonzero(torch.rand(batch, h, w, generator=g) < fraction), (h, w), batch)


def parameters(c_in, c_out, k, transposed, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (c_in, c_out, k, k) if transposed else (c_out, c_in, k, k)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(c_out, generator=g, dtype=dtype)


def compare_with_dense(op, reference, feats, source, target, weight, bias, atol=1e-12, rtol=1e-10):
    """Outputs and the gradients of feats, weight and bias of `op` against `reference` (float64)."""
    leaves = [t.clone().requires_grad_(True) for t in (feats, weight, bias) if t is not None]
    args = leaves if bias is not None else leaves + [None]
    out = op(args[0], source, target, args[1], args[2])
    ref = reference(args[0], source, target, args[1], args[2])
    assert out.shape == ref.shape == (len(target), weight.shape[1 if op is transposed_conv2d else 0])
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def check_both_ops(fine, coarse, k, seed=0, channels=(3, 4), with_bias=True):
    c_in, c_out = channels
    g = torch.Generator().manual_seed(seed)
    weight, bias = parameters(c_in, c_out, k, False, seed)
    compare_with_dense(strided_conv2d, dense_strided_conv2d, torch.randn(len(fine), c_in, generator=g,
                       dtype=torch.float64), fine, coarse, weight, bias if with_bias else None)
    weight, bias = parameters(c_in, c_out, k, True, seed + 1)
    compare_with_dense(transposed_conv2d, dense_transposed_conv2d, torch.randn(len(coarse), c_in, generator=g,
                       dtype=torch.float64), coarse, fine, weight, bias if with_bias else None)


# ---- downsampled ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", SHAPES + [(16, 16)])
def test_downsampled_sites_parents_and_order(h, w):
    fine = random_geometry(3, h, w, 0.3, seed=h * w)
    coarse, parent = fine.downsampled()
    assert coarse.spatial_shape == (math.ceil(h / 2), math.ceil(w / 2)) and coarse.batch_size == 3
    assert coarse.coords.dtype == torch.int32 and coarse.coords.is_contiguous()
    assert parent.dtype == torch.int64 and parent.shape == (len(fine),)
    halved = fine.coords.long() // torch.tensor([1, 2, 2])
    expected = sorted(set(map(tuple, halved.tolist())))  # unique, in (batch, y, x) order
    assert coarse.coords.tolist() == [list(site) for site in expected]
    assert torch.equal(coarse.coords[parent].long(), halved)
    SparseGeometry(coarse.coords, coarse.spatial_shape, 3)  # passes the public validation (in-grid, unique)


def test_downsampled_is_cached_and_keeps_a_quadtree_level_complete(nuclei):
    tree = quadtree.encode(torch.from_numpy((nuclei["instances"] > 0).astype(np.uint8)), depth=5)
    fine = level_geometry(tree, 5)
    coarse, parent = fine.downsampled()
    assert fine.downsampled()[0] is coarse and fine.downsampled()[1] is parent
    assert ("geometry", "downsampled") in fine._cache and "downsampled" in repr(fine)
    # level 5 holds the four children of every mixed level-4 node (in Z order): their halved sites are those
    # parents, here in (batch, y, x) order
    assert len(fine) == 4 * len(coarse)
    assert torch.equal(torch.bincount(parent), torch.full((len(coarse),), 4))
    mixed = tree.levels[4].coords[tree.levels[4].labels == quadtree.MIXED]
    assert torch.equal(coarse.coords, mixed[torch.argsort(quadtree.flat_index(mixed, (256, 256)))])


def test_downsampled_of_an_empty_geometry():
    coarse, parent = SparseGeometry(torch.zeros(0, 3, dtype=torch.int64), (5, 7), 2).downsampled()
    assert len(coarse) == 0 and coarse.spatial_shape == (3, 4) and coarse.batch_size == 2
    assert parent.shape == (0,) and parent.dtype == torch.int64


# ---- against the dense definitions --------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("h,w", SHAPES)
def test_matches_dense_on_random_sites(k, batch, h, w):
    fine = random_geometry(batch, h, w, 0.35, seed=k + 10 * batch + h)
    coarse, _ = fine.downsampled()
    check_both_ops(fine, coarse, k, seed=k)
    check_both_ops(fine, coarse, k, seed=k, with_bias=False)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_other_kernel_sizes_match_dense(k):
    fine = random_geometry(2, 11, 10, 0.4, seed=k)
    check_both_ops(fine, fine.downsampled()[0], k, seed=k)


@pytest.mark.parametrize("k", KERNELS)
def test_any_coarse_sites_on_the_coarse_grid(k):
    """The coarse sites need not be the fine sites halved: coarse sites without fine children get the bias only
    (strided) and give nothing (transposed); fine sites without a coarse parent get the bias only."""
    fine = random_geometry(2, 9, 11, 0.3, seed=1)
    coarse = random_geometry(2, 5, 6, 0.5, seed=2)
    check_both_ops(fine, coarse, k, seed=3)


@pytest.mark.parametrize("k", KERNELS)
def test_sites_in_any_order(k):
    fine = random_geometry(2, 10, 9, 0.5, seed=4)
    shuffled = SparseGeometry(fine.coords[torch.randperm(len(fine), generator=torch.Generator().manual_seed(0))],
                              (10, 9), 2)
    coarse = fine.downsampled()[0]
    coarse = SparseGeometry(coarse.coords.flip(0), coarse.spatial_shape, 2)
    check_both_ops(shuffled, coarse, k, seed=5)


@pytest.mark.parametrize("k", KERNELS)
def test_chunked_paths_match_dense(k, monkeypatch):
    """Blocks of a few rows: the chunk loops of the forward, input- and weight-gradient passes."""
    monkeypatch.setattr("sparse_ops.im2col.CHUNK_ELEMENTS", 5 * 3 * k * k)
    fine = random_geometry(2, 15, 13, 0.4, seed=6)
    check_both_ops(fine, fine.downsampled()[0], k, seed=7)


def nuclei_tree(nuclei):
    binary = torch.from_numpy((nuclei["instances"] > 0).astype(np.uint8))
    multi = torch.from_numpy((nuclei["instances"] % 20).astype(np.uint8))
    return quadtree.encode(torch.stack([binary, multi]), depth=5)


@pytest.mark.parametrize("k", KERNELS)
def test_full_resolution_quadtree_level(nuclei, k):
    """The full-resolution nodes of the real mask's tree, down to their halved sites and back; and down to the tree's
    own level 4 (a different coarse site set on the same grid)."""
    tree = nuclei_tree(nuclei)
    fine = level_geometry(tree, 5)
    assert 0 < len(fine) < 0.2 * 2 * math.prod(fine.spatial_shape)
    check_both_ops(fine, fine.downsampled()[0], k, seed=k)
    check_both_ops(fine, level_geometry(tree, 4), k, seed=k + 1)


@pytest.mark.parametrize("k", KERNELS)
def test_transposed_is_the_adjoint_of_strided(k):
    """<strided(x, W), y> = <x, transposed(y, W)>: the same taps, W read as (C_in, C_out, k, k) of the way up."""
    fine = random_geometry(2, 11, 13, 0.4, seed=8)
    coarse = fine.downsampled()[0]
    weight, _ = parameters(3, 5, k, False, seed=9)
    x, y = torch.randn(len(fine), 3, dtype=torch.float64), torch.randn(len(coarse), 5, dtype=torch.float64)
    left = (strided_conv2d(x, fine, coarse, weight) * y).sum()
    right = (x * transposed_conv2d(y, coarse, fine, weight)).sum()
    torch.testing.assert_close(left, right, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("k", KERNELS)
def test_gradcheck(k):
    fine = random_geometry(2, 5, 7, 0.5, seed=k)
    coarse = fine.downsampled()[0]
    g = torch.Generator().manual_seed(0)
    for op, source, target, transposed in ((strided_conv2d, fine, coarse, False),
                                           (transposed_conv2d, coarse, fine, True)):
        feats = torch.randn(len(source), 2, generator=g, dtype=torch.float64, requires_grad=True)
        weight, bias = (t.requires_grad_(True) for t in parameters(2, 3, k, transposed, seed=k))
        assert torch.autograd.gradcheck(lambda f, w, b: op(f, source, target, w, b), (feats, weight, bias))


@pytest.mark.parametrize("k", KERNELS)
def test_empty_inputs_keep_the_parameters_in_the_graph(k):
    empty = SparseGeometry(torch.zeros(0, 3, dtype=torch.int32), (7, 8), 2)
    some = SparseGeometry(torch.tensor([[0, 1, 2], [1, 3, 3]]), (4, 4), 2)
    for fine, coarse in ((empty, empty.downsampled()[0]), (empty, some)):
        check_both_ops(fine, coarse, k, seed=k)
        for op, source, target, transposed in ((strided_conv2d, fine, coarse, False),
                                               (transposed_conv2d, coarse, fine, True)):
            feats = torch.zeros(len(source), 3, dtype=torch.float64, requires_grad=True)
            weight, bias = (t.requires_grad_(True) for t in parameters(3, 4, k, transposed, seed=0))
            out = op(feats, source, target, weight, bias)
            assert out.shape == (len(target), 4)
            out.sum().backward()
            assert feats.grad.shape == feats.shape
            assert torch.equal(weight.grad, torch.zeros_like(weight))
            assert torch.equal(bias.grad, torch.full_like(bias, len(target)))


# ---- precision ----------------------------------------------------------------------------------------------------
def exact_and_magnitude(op, reference, leaves, source, target, grad, dtype):
    """The dense float64 reference on the inputs rounded to `dtype`, and the same on |inputs| (tests/rounding.py)."""
    results = []
    for absolute in (False, True):
        rounded = [t.to(dtype).double() for t in leaves]
        rounded = [(t.abs() if absolute else t).requires_grad_(True) for t in rounded]
        out = reference(rounded[0], source, target, rounded[1], rounded[2])
        g = grad.to(dtype).double()
        results.append((out, torch.autograd.grad(out, rounded, g.abs() if absolute else g)))
    return results


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("transposed", [False, True], ids=["strided", "transposed"])
def test_autocast_runs_in_the_low_precision(device, dtype, k, transposed, monkeypatch):
    """Under autocast the op computes in `dtype` with float32 accumulation (chunked here: the weight gradient is a
    sum of chunk products): outputs and gradients within `dtype`'s rounding bound of the exact op on the rounded
    inputs, and float32 leaves get float32 gradients."""
    monkeypatch.setattr("sparse_ops.im2col.CHUNK_ELEMENTS", 16 * 32 * k * k)
    fine = random_geometry(2, 41, 39, 0.3, seed=k)
    coarse = fine.downsampled()[0]
    op, reference = (transposed_conv2d, dense_transposed_conv2d) if transposed else (strided_conv2d,
                                                                                      dense_strided_conv2d)
    source, target = (coarse, fine) if transposed else (fine, coarse)
    g = torch.Generator().manual_seed(k)
    weight, bias = parameters(32, 16, k, transposed, seed=k, dtype=torch.float32)
    leaves = [torch.randn(len(source), 32, generator=g), weight, bias]
    grad = torch.randn(len(target), 16, generator=g)
    on_device = [t.to(device).requires_grad_(True) for t in leaves]
    with torch.autocast(device, dtype=dtype):
        out = op(on_device[0], source.to(device), target.to(device), on_device[1], on_device[2])
    assert out.dtype == dtype
    grads = torch.autograd.grad(out, on_device, grad.to(device).to(dtype))
    assert [t.dtype for t in grads] == [torch.float32] * 3
    (exact, exact_grads), (magnitude, magnitude_grads) = exact_and_magnitude(
        op, reference, leaves, source, target, grad, dtype)
    kk = k * k
    terms = [32 * kk + 1, 16 * kk, len(coarse) * kk, len(target)]  # bounds on the terms summed into each
    assert_within_rounding(out, exact, magnitude, dtype, terms[0])
    for got, want, size, count in zip(grads, exact_grads, magnitude_grads, terms[1:]):
        assert_within_rounding(got, want, size, dtype, count)


# ---- caching ------------------------------------------------------------------------------------------------------
def test_tables_are_built_once_per_fine_coarse_and_kernel(monkeypatch):
    calls = []
    build = strided.build_stride2_tables
    monkeypatch.setattr(strided, "build_stride2_tables", lambda *a: calls.append(a[2]) or build(*a))
    fine = random_geometry(1, 10, 10, 0.5, seed=0)
    coarse = fine.downsampled()[0]
    feats = torch.randn(len(fine), 4)
    for k in (2, 2, 3):
        up = TransposedConv2d(4, 4, k)
        up(StridedConv2d(4, 4, k)(feats, fine, coarse), coarse, fine).sum().backward()
    assert calls == [2, 3]  # both ops and their backward passes share one table per kernel size
    assert {key for key in fine._cache} == {("geometry", "downsampled"), ("torch", "stride2_k2"),
                                            ("torch", "stride2_k3")}
    other = SparseGeometry(coarse.coords, coarse.spatial_shape, 1)  # another coarse geometry: its own entry
    strided_conv2d(feats, fine, other, torch.randn(4, 4, 2, 2))
    assert calls == [2, 3, 2] and len(fine._cache[("torch", "stride2_k2")]) == 2
    del other
    gc.collect()
    assert len(fine._cache[("torch", "stride2_k2")]) == 1  # held weakly: gone with the coarse geometry


def test_tables_of_a_level():
    """k = 2: each coarse site's taps are its four children; each fine site has one tap, its quadrant."""
    fine = SparseGeometry(torch.tensor([[0, 0, 0], [0, 0, 1], [0, 3, 2], [1, 4, 4]]), (5, 5), 2)
    coarse, parent = fine.downsampled()
    tables = strided.stride2_tables(fine, coarse, 2)
    assert tables.down.tolist() == [[0, 1, 4, 4], [4, 4, 2, 4], [3, 4, 4, 4]]
    by_class = {tuple(rows.tolist()): (taps.tolist(), table.tolist()) for rows, taps, table in tables.up}
    assert by_class == {(0, 3): ([0], [[0], [2]]), (1,): ([1], [[0]]), (2,): ([2], [[1]]), (): ([3], [])}
    assert parent.tolist() == [0, 0, 1, 2]


# ---- validation ---------------------------------------------------------------------------------------------------
def test_input_validation():
    fine = random_geometry(2, 7, 8, 0.5, seed=0)
    coarse = fine.downsampled()[0]
    feats, weight = torch.randn(len(fine), 3), torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"grid \(4, 4\).*fine.downsampled\(\)\[0\]"):
        strided_conv2d(feats, fine, SparseGeometry.grid(2, (3, 4)), weight)
    with pytest.raises(ValueError, match="batch size 2"):
        strided_conv2d(feats, fine, SparseGeometry.grid(1, (4, 4)), weight)
    with pytest.raises(ValueError, match=r"\(feats, coarse, fine, ...\)"):  # fine and coarse swapped
        transposed_conv2d(torch.randn(len(coarse), 3), fine, coarse, torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="C_in=3 input channels, but feats has 5"):
        strided_conv2d(torch.randn(len(fine), 5), fine, coarse, weight)
    with pytest.raises(ValueError, match=r"\(C_in, C_out, k, k\) as for F.conv_transpose2d.*C_in=4"):
        transposed_conv2d(torch.randn(len(coarse), 3), coarse, fine, torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="rows but the fine geometry"):
        strided_conv2d(torch.randn(len(fine) + 1, 3), fine, coarse, weight)
    with pytest.raises(ValueError, match="rows but the coarse geometry"):
        transposed_conv2d(feats, coarse, fine, torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match=r"bias must be None or of shape \(4,\)"):
        strided_conv2d(feats, fine, coarse, weight, torch.randn(3))
    with pytest.raises(ValueError, match="dtype"):
        strided_conv2d(feats.double(), fine, coarse, weight)
    with pytest.raises(ValueError, match="square"):
        strided_conv2d(feats, fine, coarse, torch.randn(4, 3, 2, 3))
    with pytest.raises(ValueError, match="SparseGeometry"):
        strided_conv2d(feats, fine.coords, coarse, weight)
    with pytest.raises(ValueError, match="kernel_size"):
        StridedConv2d(3, 4, 0)
    with pytest.raises(ValueError, match="kernel_size"):
        TransposedConv2d(3, 4, 2.0)


# ---- modules ------------------------------------------------------------------------------------------------------
def test_modules_layout_init_repr_and_macs():
    torch.manual_seed(0)
    down, up = StridedConv2d(8, 16, 3), TransposedConv2d(16, 8, 2)
    assert down.weight.shape == torch.nn.Conv2d(8, 16, 3).weight.shape
    assert up.weight.shape == torch.nn.ConvTranspose2d(16, 8, 2).weight.shape
    for layer, fan_in in ((down, 8 * 9), (up, 8 * 4)):  # nn.Conv2d / nn.ConvTranspose2d: within 1/sqrt(fan_in)
        bound = 1 / math.sqrt(fan_in)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.std() > bound / 3
    assert "8, 16, kernel_size=3, stride=2, bias=True" in repr(down)
    assert "16, 8, kernel_size=2, stride=2, bias=True" in repr(up)
    assert StridedConv2d(2, 2, bias=False).bias is None and TransposedConv2d(2, 2, bias=False).bias is None
    assert StridedConv2d(2, 2).kernel_size == TransposedConv2d(2, 2).kernel_size == 2
    assert down.macs_per_site() == 8 * 16 * 9 and up.macs_per_site() == 16 * 8
    assert TransposedConv2d(4, 4, 3).macs_per_site() == 4 * 4 * 9 / 4


@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("h,w", [(6, 8), (7, 5)])
def test_dense_twins_and_full_grids(k, h, w):
    """forward_dense is F.conv2d / F.conv_transpose2d with the module's weights; on a full grid the sparse ops equal
    them (the strided twin drops the last coarse row / column for even k and odd size; the transposed twin's 2x
    output is cropped to the fine grid)."""
    down, up = StridedConv2d(3, 4, k).double(), TransposedConv2d(4, 3, k).double()
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    dense = down.forward_dense(x)
    torch.testing.assert_close(dense, F.conv2d(x, down.weight, down.bias, stride=2, padding=(k - 1) // 2))
    fine = SparseGeometry.grid(2, (h, w))
    coarse = fine.downsampled()[0]
    assert coarse.coords.tolist() == SparseGeometry.grid(2, coarse.spatial_shape).coords.tolist()
    sparse = down(x.permute(0, 2, 3, 1).reshape(-1, 3), fine, coarse)
    hc, wc = coarse.spatial_shape
    sparse = sparse.view(2, hc, wc, 4).permute(0, 3, 1, 2)
    assert dense.shape[2:] == ((h // 2, w // 2) if k % 2 == 0 else (hc, wc))
    torch.testing.assert_close(sparse[:, :, :dense.shape[2], :dense.shape[3]], dense, atol=1e-12, rtol=0)

    back = up.forward_dense(sparse)
    assert back.shape == (2, 3, 2 * hc, 2 * wc)
    torch.testing.assert_close(back, F.conv_transpose2d(sparse, up.weight, up.bias, stride=2, padding=(k - 1) // 2,
                                                        output_padding=k % 2))
    fine_out = up(sparse.permute(0, 2, 3, 1).reshape(-1, 4), coarse, fine)
    torch.testing.assert_close(fine_out, back[:, :, :h, :w].permute(0, 2, 3, 1).reshape(-1, 3), atol=1e-12, rtol=0)
