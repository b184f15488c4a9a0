"""gather_dense (dense -> nodes: nearest and bilinear from coarser maps) and scatter_dense (nodes -> dense)."""

import pytest
import torch
import torch.nn.functional as F

from rounding import DEVICES
from sparse_ops import SparseGeometry, gather_dense, scatter_dense


def sites(batch, h, w, fraction, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return SparseGeometry(torch.nonzero(torch.rand(batch, h, w, generator=g) < fraction).to(device), (h, w), batch)


def read(dense, geometry):
    b, y, x = geometry.coords.long().unbind(1)
    return dense[b, :, y, x]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factor", [(1, 1), (2, 2), (4, 4), (2, 3), (8, 1)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_equals_interpolate_read_at_nodes(device, factor, mode):
    dense = torch.randn(3, 4, 5, 6, dtype=torch.float64, device=device)
    h, w = 5 * factor[0], 6 * factor[1]
    coords = sites(3, h, w, 0.3, seed=sum(factor), device=device)
    out = gather_dense(dense, coords, mode)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    upsampled = F.interpolate(dense, size=(h, w), mode=mode, **kwargs)
    torch.testing.assert_close(out, read(upsampled, coords), atol=1e-13, rtol=0)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_bilinear_equals_grid_sample_at_cell_centres(factor):
    dense = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    h, w = 4 * factor, 7 * factor
    geometry = sites(2, h, w, 0.5, seed=factor)
    out = gather_dense(dense, geometry, mode="bilinear")
    coords = geometry.coords.long()
    b = coords[:, 0]
    y, x = coords[:, 1].double(), coords[:, 2].double()
    # normalised coordinates of the level-cell centres, align_corners=False
    grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
    expected = torch.cat([
        F.grid_sample(dense[bi:bi + 1], grid[b == bi][None, None], mode="bilinear", padding_mode="border",
                      align_corners=False)[0, :, 0].T
        for bi in range(2)
    ])
    order = torch.cat([torch.nonzero(b == bi).flatten() for bi in range(2)])
    torch.testing.assert_close(out[order], expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_gradient_equals_interpolate_gradient(mode):
    dense = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    coords = sites(2, 16, 16, 0.4, seed=0)
    assert torch.autograd.gradcheck(lambda d: gather_dense(d, coords, mode), (dense,))
    grad = torch.randn(len(coords), 3, dtype=torch.float64)
    (got,) = torch.autograd.grad(gather_dense(dense, coords, mode), dense, grad)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    (want,) = torch.autograd.grad(read(F.interpolate(dense, size=(16, 16), mode=mode, **kwargs), coords), dense, grad)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_same_resolution_by_default_and_empty():
    dense = torch.randn(1, 2, 5, 5)
    geometry = SparseGeometry(torch.tensor([[0, 4, 1], [0, 0, 3]]), (5, 5), 1)
    assert torch.equal(gather_dense(dense, geometry), dense[0, :, [4, 0], [1, 3]].T)
    empty = SparseGeometry(torch.zeros(0, 3, dtype=torch.int32), (10, 10), 1)
    assert gather_dense(dense, empty, "bilinear").shape == (0, 2)


def test_scatter_then_gather_round_trip():
    coords = sites(2, 9, 8, 0.5, seed=3)
    feats = torch.randn(len(coords), 4, dtype=torch.float64, requires_grad=True)
    dense = scatter_dense(feats, coords)
    assert dense.shape == (2, 4, 9, 8)
    assert torch.equal(gather_dense(dense, coords), feats)
    mask = torch.zeros(2, 9, 8, dtype=torch.bool)
    mask[tuple(coords.coords.long().T)] = True
    assert torch.equal(dense.permute(0, 2, 3, 1)[~mask], torch.zeros((~mask).sum(), 4, dtype=torch.float64))
    filled = scatter_dense(feats, coords, fill_value=float("nan"))
    assert torch.isnan(filled.permute(0, 2, 3, 1)[~mask]).all()
    dense.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))


def test_input_validation():
    dense = torch.randn(1, 2, 4, 4)
    site = SparseGeometry(torch.tensor([[0, 1, 1]]), (4, 4), 1)
    with pytest.raises(ValueError, match="'nearest', 'bilinear'"):
        gather_dense(dense, site, mode="bicubic")
    with pytest.raises(ValueError, match="integer factor"):
        gather_dense(dense, SparseGeometry(torch.tensor([[0, 1, 1]]), (6, 6), 1))
    with pytest.raises(ValueError, match="integer factor"):
        gather_dense(dense, SparseGeometry(torch.tensor([[0, 1, 1]]), (2, 2), 1))
    with pytest.raises(ValueError, match="batch size"):
        gather_dense(dense, SparseGeometry(torch.tensor([[0, 1, 1]]), (4, 4), 2))
    with pytest.raises(ValueError, match="SparseGeometry"):
        gather_dense(dense, torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="SparseGeometry"):
        scatter_dense(torch.randn(1, 2), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="rows"):
        scatter_dense(torch.randn(2, 2), site)
