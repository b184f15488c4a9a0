import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quadtree as qt


def random_masks(seed, batch, h=24, w=40):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 3, (batch, h // 4, w // 4)).repeat(4, 1).repeat(4, 2).astype(np.uint8)
    masks[:, rng.integers(0, h), rng.integers(0, w)] = 7
    return masks


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_split_and_merge_are_inverse(seed, batch):
    masks = random_masks(seed, batch)
    tree = qt.encode(masks, 3)
    parts = tree.split()
    assert len(parts) == batch
    for part, mask in zip(parts, masks):
        assert part.batch_size == 1
        assert part.equal(qt.encode(mask, 3))
        qt.check_structure(part)
    merged = qt.Quadtree.merge(parts)
    assert merged.equal(tree)
    qt.check_structure(merged)


def test_merge_rejects_mismatched_trees():
    a = qt.encode(np.zeros((16, 16), np.uint8), 2)
    with pytest.raises(ValueError, match="one depth, image size"):
        qt.Quadtree.merge([a, qt.encode(np.zeros((16, 24), np.uint8), 2)])
    with pytest.raises(ValueError, match="one depth, image size"):
        qt.Quadtree.merge([a, qt.encode(np.zeros((16, 16), np.uint8), 3)])
    with pytest.raises(ValueError, match="at least one"):
        qt.Quadtree.merge([])


def test_geometry_attributes():
    tree = qt.encode(np.zeros((2, 50, 70), np.uint8), 4)
    assert (tree.depth, tree.batch_size, tree.image_size, tree.num_levels) == (4, 2, (50, 70), 5)
    assert tree.padded_size == (64, 80)
    assert [tree.level_shape(l) for l in range(5)] == [(4, 5), (8, 10), (16, 20), (32, 40), (64, 80)]
    assert [tree.stride(l) for l in range(5)] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="levels 0..4"):
        tree.level_shape(5)


def test_trees_compare_by_identity_and_equal_compares_contents():
    mask = random_masks(0, 1)[0]
    a, b = qt.encode(mask, 2), qt.encode(mask, 2)
    assert a == a and a != b and not a == b  # no "Boolean value of Tensor is ambiguous": identity, like tensors
    assert a.levels[0] != b.levels[0] and len({a, b}) == 2  # hashable by identity
    assert a.equal(b) and a.levels[1].equal(b.levels[1])
    other = mask.copy()
    other[0, 0] = 7
    assert not a.equal(qt.encode(other, 2)) and not a.equal(qt.encode(mask, 3))


def test_flat_index_is_the_row_major_position():
    grid = torch.arange(2 * 3 * 5).reshape(2, 3, 5)
    coords = torch.tensor([[0, 0, 0], [0, 2, 4], [1, 0, 3], [1, 2, 1]], dtype=torch.int32)
    index = qt.flat_index(coords, (3, 5))
    assert index.dtype == torch.int64
    assert index.tolist() == [grid[b, y, x].item() for b, y, x in coords.tolist()]


def test_tree_is_immutable_and_to_returns_a_new_tree():
    tree = qt.encode(random_masks(0, 1)[0], 3)
    with pytest.raises(Exception):
        tree.depth = 2
    moved = tree.to("cpu")
    assert moved is not tree and moved.equal(tree)


def test_child_coords_order():
    parents = torch.tensor([[0, 1, 2], [1, 0, 0]], dtype=torch.int32)
    assert qt.child_coords(parents).tolist() == [
        [0, 2, 4], [0, 2, 5], [0, 3, 4], [0, 3, 5], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1],
    ]


def test_check_structure_catches_broken_trees():
    tree = qt.encode(np.random.default_rng(3).integers(0, 2, (16, 16)).astype(np.uint8), 3)
    level = tree.levels[2]
    assert len(set(level.parent.tolist())) > 1
    bad_parent = qt.QuadtreeLevel(level.coords, level.labels, level.parent.flip(0))
    with pytest.raises(ValueError, match="parent"):
        qt.check_structure(tree._replace(levels=tree.levels[:2] + (bad_parent,) + tree.levels[3:]))
    bad_labels = qt.QuadtreeLevel(tree.levels[3].coords, torch.full_like(tree.levels[3].labels, qt.MIXED),
                                  tree.levels[3].parent)
    with pytest.raises(ValueError, match="MIXED"):
        qt.check_structure(tree._replace(levels=tree.levels[:3] + (bad_labels,)))


@pytest.mark.cuda
def test_to_cuda_and_back():
    tree = qt.encode(random_masks(1, 2), 3)
    assert tree.to("cuda").to("cpu").equal(tree)


@pytest.mark.cuda
def test_pinned_trees_copy_to_cuda_without_blocking():
    """What the trainer's CUDA loader does with a batch's tree: pin it, then copy it asynchronously."""
    tree = qt.encode(random_masks(1, 2), 3)
    pinned = tree.pin_memory()
    assert all(t.is_pinned() for level in pinned.levels for t in (level.coords, level.labels, level.parent))
    moved = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and moved.to("cpu").equal(tree)


def test_to_accepts_non_blocking_on_the_cpu():
    tree = qt.encode(random_masks(1, 2), 3)
    assert tree.to("cpu", non_blocking=True).equal(tree)
