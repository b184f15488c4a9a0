import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import quadtree as qt
from quadtree_reference import reference_levels


def assert_matches_reference(tree, mask, depth, ignore_index=255):
    reference = reference_levels(np.asarray(mask), depth, ignore_index)
    assert tree.num_levels == depth + 1 == len(reference)
    for level, (nodes, labels, parents) in zip(tree.levels, reference):
        assert level.coords.dtype == torch.int32 and level.coords.is_contiguous()
        assert level.labels.dtype == torch.int64 and level.parent.dtype == torch.int64
        assert level.coords.reshape(-1, 3).tolist() == [list(n) for n in nodes]
        assert level.labels.tolist() == labels
        assert level.parent.tolist() == parents


@st.composite
def masks_and_depths(draw):
    """Random masks: blocky (real regions) or noisy, with a few labels and sometimes the ignore index."""
    batch = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 37)), draw(st.integers(1, 37))
    palette = draw(st.lists(st.sampled_from([0, 1, 2, 7, 254, 255]), min_size=1, max_size=4, unique=True))
    block = draw(st.sampled_from([1, 2, 4, 8]))
    coarse = draw(arrays(np.int64, (batch, -(-h // block), -(-w // block)), elements=st.sampled_from(palette)))
    mask = coarse.repeat(block, 1).repeat(block, 2)[:, :h, :w].astype(np.uint8)
    depth = draw(st.integers(0, max(h, w).bit_length() - 1))
    return mask, depth


@settings(max_examples=150, deadline=None)
@given(masks_and_depths())
def test_every_level_equals_slow_reference(case):
    mask, depth = case
    assert_matches_reference(qt.encode(mask, depth), mask, depth)


@settings(max_examples=150, deadline=None)
@given(masks_and_depths())
def test_structure_invariants_hold(case):
    mask, depth = case
    tree = qt.encode(mask, depth)
    qt.check_structure(tree)
    assert tree.levels[depth].labels.ne(qt.MIXED).all()
    # The leaves tile the padded image exactly once.
    covered = sum(int((level.labels != qt.MIXED).sum()) * tree.stride(l) ** 2 for l, level in enumerate(tree.levels))
    assert covered == tree.batch_size * tree.padded_size[0] * tree.padded_size[1]


@pytest.mark.parametrize("name", ["empty", "uniform", "checkerboard", "one_pixel", "odd"])
def test_named_masks_match_reference(name):
    if name == "empty":  # all background: one leaf per root cell
        mask = np.zeros((64, 64), np.uint8)
    elif name == "uniform":
        mask = np.full((64, 96), 3, np.uint8)
    elif name == "checkerboard":  # every node MIXED down to full resolution
        mask = (np.indices((32, 32)).sum(0) % 2).astype(np.uint8)
    elif name == "one_pixel":
        mask = np.zeros((32, 32), np.uint8)
        mask[17, 9] = 5
    else:
        mask = np.random.default_rng(0).integers(0, 3, (45, 27)).astype(np.uint8)
    tree = qt.encode(mask, 4)
    assert_matches_reference(tree, mask, 4)
    if name in ("empty", "uniform"):
        assert [level.num_nodes for level in tree.levels[1:]] == [0] * 4
    if name == "checkerboard":
        assert [level.num_nodes for level in tree.levels] == [4 ** l * 4 for l in range(5)]
    if name == "one_pixel":
        assert [level.num_nodes for level in tree.levels] == [4, 4, 4, 4, 4]


def test_ignore_is_a_value_and_padding_is_ignore():
    mask = np.zeros((6, 8), np.uint8)
    mask[:2, :2] = 255  # all-ignore window at level 2 (cells of 2 px)
    mask[2, 2] = 255  # ignore mixed with a class: MIXED
    tree = qt.encode(mask, 2)  # padded to 8x8: rows 6..7 are ignore
    assert qt.dense_level(tree, 0)[0].tolist() == [[qt.MIXED, 0], [qt.MIXED, qt.MIXED]]
    assert qt.dense_level(tree, 1)[0].tolist() == [
        [255, 0, 0, 0],  # an all-ignore window is a leaf
        [0, qt.MIXED, 0, 0],  # ignore mixed with a class is MIXED
        [0, 0, 0, 0],
        [255, 255, 255, 255],  # padding rows are ignore leaves
    ]
    assert_matches_reference(tree, mask, 2)


def test_ignore_index_other_than_255():
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 9
    tree = qt.encode(mask, 3, ignore_index=9)
    assert tree.ignore_index == 9
    assert_matches_reference(tree, mask, 3, ignore_index=9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64])
def test_numpy_and_torch_inputs_of_any_integer_dtype_agree(dtype):
    mask = np.random.default_rng(1).integers(0, 4, (2, 16, 24)).astype(dtype)
    reference = qt.encode(mask.astype(np.uint8), 3)
    assert qt.encode(mask, 3).equal(reference)
    assert qt.encode(torch.from_numpy(mask.astype(np.int64)), 3).equal(reference)
    assert qt.encode(torch.from_numpy(mask.astype(np.int64)).to(torch.uint16 if dtype == np.uint16 else torch.int64), 3).equal(reference)


def test_non_contiguous_torch_mask():
    mask = torch.randint(0, 3, (16, 16)).t()
    assert qt.encode(mask, 2).equal(qt.encode(mask.contiguous(), 2))


def test_batched_equals_per_sample():
    masks = np.random.default_rng(2).integers(0, 3, (3, 16, 16)).astype(np.uint8)
    masks[1] = 0
    batched = qt.encode(masks, 3)
    singles = [qt.encode(m, 3) for m in masks]
    for part, single in zip(batched.split(), singles):
        assert part.equal(single)
    assert qt.Quadtree.merge(singles).equal(batched)


def test_real_nuclei_masks(nuclei):
    instances = nuclei["instances"]
    for mask in ((instances > 0).astype(np.uint8), (instances % 20).astype(np.uint8)):
        tree = qt.encode(mask, 5)
        qt.check_structure(tree)
        assert np.array_equal(qt.decode(tree)[0].numpy(), mask)
        crop = mask[:96, :160]
        assert_matches_reference(qt.encode(crop, 5), crop, 5)


@pytest.mark.parametrize(
    "mask, depth, message",
    [
        (np.zeros((8, 8), np.float32), 2, "integer labels"),
        (np.zeros((8, 8), bool), 2, "boolean array"),
        (torch.zeros(8, 8), 2, "integer labels"),
        (torch.zeros(8, 8, dtype=torch.bool), 2, "boolean array"),
        (np.full((8, 8), -1, np.int64), 2, "negative"),
        (np.full((8, 8), 300, np.int64), 2, "above 254"),
        (np.zeros((8,), np.uint8), 2, "shape"),
        (np.zeros((1, 2, 8, 8), np.uint8), 2, "shape"),
        (np.zeros((0, 8), np.uint8), 2, "empty"),
        (np.zeros((8, 8), np.uint8), -1, ">= 0"),
        (np.zeros((8, 8), np.uint8), 4, "too deep"),
        (np.zeros((8, 8), np.uint8), 2.0, "integer"),
        ([[0, 1], [1, 0]], 1, "numpy array or a torch tensor"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(mask, depth, message):
    with pytest.raises(ValueError, match=message):
        qt.encode(mask, depth)


def test_bad_ignore_index():
    with pytest.raises(ValueError, match="ignore_index"):
        qt.encode(np.zeros((4, 4), np.uint8), 1, ignore_index=-100)
    with pytest.raises(ValueError, match="above 254"):  # 255 is a label here, not the ignore index
        qt.encode(np.full((4, 4), 255, np.uint8), 1, ignore_index=0)


@pytest.mark.cuda
def test_cuda_mask_gives_the_same_tree_on_the_gpu():
    mask = torch.randint(0, 3, (2, 64, 96), dtype=torch.uint8)
    tree = qt.encode(mask.cuda(), 4)
    assert tree.device.type == "cuda"
    assert tree.equal(qt.encode(mask, 4))
    assert torch.equal(qt.decode(tree).cpu(), mask)
