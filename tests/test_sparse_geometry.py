"""SparseGeometry: validation at construction, rulebook caching by kernel geometry, spconv interop, quadtrees."""

import dataclasses

import numpy as np
import pytest
import torch

import quadtree
from sparse_ops import SparseGeometry, level_geometry, rulebook, submanifold_conv2d, tree_level
from sparse_ops.backend import spconv_api


def test_construction_normalises_coords():
    coords = torch.nonzero(torch.rand(2, 6, 5) < 0.5)
    geometry = SparseGeometry(coords, (6, 5), 2)
    assert geometry.coords.dtype == torch.int32 and geometry.coords.is_contiguous()
    assert geometry.spatial_shape == (6, 5) and geometry.batch_size == 2 and len(geometry) == coords.shape[0]
    assert len(SparseGeometry(torch.zeros(0, 3, dtype=torch.int32), (3, 3), 1)) == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        geometry.coords = coords


def test_validation():
    coords = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="outside the grid"):
        SparseGeometry(coords, (2, 2), 1)
    with pytest.raises(ValueError, match="duplicate"):
        SparseGeometry(torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1]]), (2, 2), 2)
    with pytest.raises(ValueError, match="spatial_shape"):
        SparseGeometry(coords, (4,), 1)
    with pytest.raises(ValueError, match="batch_size"):
        SparseGeometry(coords, (4, 4), 0)
    with pytest.raises(ValueError, match="outside the grid"):
        SparseGeometry(torch.tensor([[0, 1, 1], [0, -1, 0]]), (4, 4), 1)
    with pytest.raises(ValueError, match="integer"):
        SparseGeometry(coords.float(), (4, 4), 1)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        SparseGeometry(coords[:, :2], (4, 4), 1)


def test_cache_keys_derive_from_kernel_geometry():
    geometry = SparseGeometry(torch.nonzero(torch.rand(1, 8, 8) < 0.5), (8, 8), 1)
    table = geometry.neighbour_table(3, 1)
    assert geometry.neighbour_table(3, 1) is table
    assert geometry.neighbour_table(3, 2) is not table
    assert SparseGeometry.indice_key(5, 2) == "subm_k5_d2"
    assert {key for key in geometry._cache} == {("torch", "subm_k3_d1"), ("torch", "subm_k3_d2")}
    moved = geometry.to("cpu")
    assert moved is geometry


def test_spconv_modules_reuse_our_rulebook():
    api = spconv_api()
    g = torch.Generator().manual_seed(0)
    geometry = SparseGeometry(torch.nonzero(torch.rand(2, 10, 9, generator=g) < 0.4), (10, 9), 2)
    feats = torch.randn(len(geometry), 4, dtype=torch.float64, generator=g)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=g)
    ours = submanifold_conv2d(feats, geometry, weight, dilation=2)
    data = geometry.spconv_rulebook(3, 2)
    layer = api.spconv.SubMConv2d(4, 6, 3, dilation=2, bias=False, indice_key=geometry.indice_key(3, 2),
                                  algo=api.ConvAlgo.Native).double()
    with torch.no_grad():
        layer.weight.copy_(weight.permute(0, 2, 3, 1))  # F.conv2d layout -> spconv's (out, kh, kw, in)
    tensor = geometry.to_spconv_tensor(feats)
    assert tensor.indice_dict["subm_k3_d2"] is data
    out = layer(tensor)
    assert out.indice_dict["subm_k3_d2"] is data  # reused, not rebuilt
    torch.testing.assert_close(out.features, ours, atol=1e-12, rtol=0)


def test_level_geometry_is_kept_with_the_tree(nuclei):
    tree = quadtree.encode((nuclei["instances"] > 0).astype(np.uint8), depth=5)
    for level in range(tree.depth + 1):
        geometry = level_geometry(tree, level)
        assert geometry.spatial_shape == tree.level_shape(level) and geometry.batch_size == 1
        assert torch.equal(geometry.coords, tree.levels[level].coords)
        assert level_geometry(tree, level) is geometry  # built once, rulebooks shared by every op of the level
    # a tree on another device, or a split/merged one, has new levels and so builds its own
    assert level_geometry(tree.to("cpu"), 5) is not level_geometry(tree, 5)


def test_grid_and_children_are_the_quadtree_levels(nuclei):
    """grid() is the root level and children(index) of the MIXED nodes is the next level, sites and order."""
    mask = torch.from_numpy((nuclei["instances"] % 20).astype(np.uint8))
    tree = quadtree.encode(torch.stack([mask, mask.flip(0)]), depth=5)
    geometry = SparseGeometry.grid(2, tree.level_shape(0))
    assert torch.equal(geometry.coords, tree.levels[0].coords)
    for level in range(tree.depth):
        mixed = torch.nonzero(tree.levels[level].labels == quadtree.MIXED).flatten()
        geometry = geometry.children(mixed)
        assert geometry.spatial_shape == tree.level_shape(level + 1)
        assert torch.equal(geometry.coords, tree.levels[level + 1].coords)
    whole = SparseGeometry(torch.tensor([[0, 0, 1], [1, 1, 0]]), (2, 3), 2).children()
    assert whole.spatial_shape == (4, 6) and whole.coords.tolist() == [
        [0, 0, 2], [0, 0, 3], [0, 1, 2], [0, 1, 3], [1, 2, 0], [1, 2, 1], [1, 3, 0], [1, 3, 1]]


def test_grown_levels_derive_the_tables_of_their_sites(nuclei):
    """grid() and children() build their neighbour tables without an index map of the grid (windows of the root's,
    then each level's from the level above): exactly the tables of their coords; grid() is built once per grid."""
    mask = torch.from_numpy((nuclei["instances"][:256, :320] % 7).astype(np.uint8))
    tree = quadtree.encode(torch.stack([mask, mask.flip(1)]), depth=5)
    geometry = SparseGeometry.grid(2, tree.level_shape(0))
    assert SparseGeometry.grid(2, tree.level_shape(0)) is geometry
    assert SparseGeometry.grid(1, tree.level_shape(0)) is not geometry
    levels = [geometry]
    for level in range(tree.depth):
        mixed = torch.nonzero(tree.levels[level].labels == quadtree.MIXED).flatten()
        levels.append(levels[-1].children(mixed))
    levels.append(levels[-1].children())  # every site's children (index None)
    for geometry in reversed(levels):  # finest first: each builds the tables it reads above it
        for k, dilation in [(3, 1), (3, 2), (5, 1), (1, 1)]:
            expected = rulebook.neighbour_table(geometry.coords, geometry.spatial_shape, 2, k, dilation)
            assert torch.equal(geometry.neighbour_table(k, dilation), expected)


def test_tree_level_keeps_the_geometry_it_was_computed_with():
    geometry = SparseGeometry.grid(1, (2, 2))
    nodes = tree_level(geometry, torch.zeros(4, dtype=torch.long), torch.full((4,), -1))
    empty = quadtree.QuadtreeLevel(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.long),
                                   torch.zeros(0, dtype=torch.long))
    tree = quadtree.Quadtree((nodes, empty), depth=1, batch_size=1, image_size=(4, 4))
    assert level_geometry(tree, 0) is geometry
