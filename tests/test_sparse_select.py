"""select_nodes: a subset of a level's nodes by bool mask or index, with features, coords or geometry."""

import pytest
import torch

from sparse_ops import SparseGeometry, select_nodes


def level(n=10):
    coords = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n) // 4, torch.arange(n) % 4], 1)
    return torch.randn(n, 3, requires_grad=True), coords


def test_select_by_mask_keeps_order_and_gradients():
    feats, coords = level()
    which = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    selected = select_nodes(feats, coords, which)
    assert torch.equal(selected.index, torch.tensor([0, 3, 4, 8]))
    assert torch.equal(selected.feats, feats[[0, 3, 4, 8]])
    assert selected.coords.dtype == torch.int32 and selected.coords.is_contiguous()
    assert torch.equal(selected.coords, coords[[0, 3, 4, 8]].int())
    selected.feats.sum().backward()
    assert torch.equal(feats.grad, which.float()[:, None].expand(-1, 3))


def test_select_by_index_and_geometry():
    feats, coords = level()
    geometry = SparseGeometry(coords, (3, 4), 1)
    selected = select_nodes(feats, geometry, torch.tensor([7, 2]))
    assert isinstance(selected.coords, SparseGeometry)
    assert selected.coords.spatial_shape == (3, 4) and selected.coords.batch_size == 1
    assert torch.equal(selected.coords.coords, geometry.coords[[7, 2]])
    assert torch.equal(selected.feats, feats[[7, 2]])
    assert select_nodes(None, coords, torch.tensor([1])).feats is None


def test_select_nothing_and_everything():
    feats, coords = level()
    empty = select_nodes(feats, coords, torch.zeros(10, dtype=torch.bool))
    assert empty.feats.shape == (0, 3) and empty.coords.shape == (0, 3) and empty.index.shape == (0,)
    full = select_nodes(feats, coords, torch.ones(10, dtype=torch.bool))
    assert torch.equal(full.feats, feats)


def test_input_validation():
    feats, coords = level()
    with pytest.raises(ValueError, match="10 nodes"):
        select_nodes(feats, coords, torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        select_nodes(feats, coords, torch.tensor([10]))
    with pytest.raises(ValueError, match="negative"):
        select_nodes(feats, coords, torch.tensor([-1]))
    with pytest.raises(ValueError, match="repeat"):
        select_nodes(feats, SparseGeometry(coords, (3, 4), 1), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="bool or integer"):
        select_nodes(feats, coords, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="N = 10"):
        select_nodes(feats[:5], coords, torch.tensor([1]))
