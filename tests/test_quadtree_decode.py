import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import quadtree as qt
from quadtree_reference import reference_levels


@st.composite
def masks(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    values = st.sampled_from(draw(st.lists(st.integers(0, 255), min_size=1, max_size=5, unique=True)))
    block = draw(st.sampled_from([1, 3, 4, 16]))
    coarse = draw(arrays(np.uint8, (shape[0], -(-shape[1] // block), -(-shape[2] // block)), elements=values))
    mask = coarse.repeat(block, 1).repeat(block, 2)[:, : shape[1], : shape[2]]
    depth = draw(st.integers(0, max(shape[1:]).bit_length() - 1))
    return mask, depth


@settings(max_examples=200, deadline=None)
@given(masks())
def test_decode_inverts_encode(case):
    mask, depth = case
    tree = qt.encode(mask, depth)
    assert np.array_equal(qt.decode(tree).numpy(), mask)
    assert np.array_equal(qt.decode(tree, torch.int64, check_complete=False).numpy(), mask)
    single = qt.decode(qt.encode(mask[0], depth))  # the rank depends on the tree only: (1, H, W) for one mask
    assert np.array_equal(single.numpy(), mask[:1])
    assert all(np.array_equal(qt.decode(part).numpy(), m[None]) for part, m in zip(tree.split(), mask))


@settings(max_examples=100, deadline=None)
@given(masks())
def test_dense_level_matches_slow_reference(case):
    mask, depth = case
    tree = qt.encode(mask, depth)
    reference = reference_levels(mask, depth)
    for level in range(depth + 1):
        grid = qt.dense_level(tree, level)
        assert grid.dtype == torch.int64 and tuple(grid.shape[1:]) == tree.level_shape(level)
        # Every cell shows its node's label where a node exists there; else its coarser leaf's label.
        expected = np.full(grid.shape, -2, np.int64)
        for coarse in range(level + 1):
            nodes, labels, _ = reference[coarse]
            scale = 2 ** (level - coarse)
            for (b, y, x), label in zip(nodes, labels):
                if label != qt.MIXED or coarse == level:
                    expected[b, y * scale:(y + 1) * scale, x * scale:(x + 1) * scale] = label
        assert np.array_equal(grid.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_decode_dtype(dtype):
    mask = np.random.default_rng(0).integers(0, 3, (20, 30)).astype(np.uint8)
    out = qt.decode(qt.encode(mask, 3), dtype=dtype)
    assert out.dtype == dtype and np.array_equal(out.numpy(), mask[None])


def test_decode_rejects_unresolved_mixed_nodes():
    tree = qt.encode(np.eye(8, dtype=np.uint8), 3)
    cut = qt.Quadtree(levels=tree.levels[:1] + tuple(
        qt.QuadtreeLevel(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, dtype=torch.long)) for _ in range(3)), depth=3, batch_size=1,
        image_size=(8, 8))
    with pytest.raises(ValueError, match="MIXED"):
        qt.decode(cut)


def test_decode_real_mask_tiled(nuclei):
    mask = (nuclei["instances"] % 20).astype(np.uint8)
    big = np.tile(mask, (2, 4))[:1000, :2000]  # 1000x2000: padded to 1024x2016 at depth 5
    assert np.array_equal(qt.decode(qt.encode(big, 5))[0].numpy(), big)


def test_painted_grids_are_new_contiguous_tensors():
    """Painting in the tree's own dtype (int64) starts from its root labels: what it returns must never alias them
    (a tree is immutable), and a cropped result is contiguous."""
    mask = np.random.default_rng(0).integers(0, 3, (20, 30)).astype(np.uint8)
    tree = qt.encode(mask, 2)  # padded to 20x32
    before = tree.levels[0].labels.clone()
    roots = qt.dense_level(tree, 0)
    roots.fill_(7)
    pixels = qt.encode(mask, 0)  # depth 0: the roots are the pixels
    qt.decode(pixels, torch.int64, check_complete=False).fill_(7)  # painted in int64 from the labels themselves
    assert torch.equal(tree.levels[0].labels, before) and np.array_equal(qt.decode(pixels)[0].numpy(), mask)
    labels = qt.decode(tree, torch.int64)
    assert labels.is_contiguous() and np.array_equal(labels[0].numpy(), mask)
