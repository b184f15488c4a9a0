"""qgn.predict: labels at a chosen cost (depth cap, threshold, budget, oracle), for QGN and its dense twin."""

import numpy as np
import pytest
import torch

import quadtree as qt
from qgn.cost import HostSyncs
from stand_in import DEPTH, coarsened, example_masks, small_model, stand_in


@pytest.fixture
def masks():
    return example_masks()


def test_full_depth_reproduces_the_mask_exactly(masks):
    prediction = stand_in(masks).predict(torch.zeros(2, 3, 24, 32))
    assert torch.equal(prediction.labels, torch.from_numpy(masks).long())
    assert prediction.tree.equal(qt.encode(masks, DEPTH))
    assert prediction.nodes_per_level == [level.num_nodes for level in qt.encode(masks, DEPTH).levels]


@pytest.mark.parametrize("k", range(DEPTH + 1))
def test_depth_k_equals_the_mask_coarsened_by_the_tree_rule(masks, k):
    prediction = stand_in(masks).predict(torch.zeros(2, 3, 24, 32), max_depth=k)
    assert np.array_equal(prediction.labels.numpy(), coarsened(masks, k))
    assert prediction.nodes_per_level[k + 1:] == [0] * (DEPTH - k)
    qt.check_structure(prediction.tree)


def test_a_threshold_of_one_expands_only_certain_nodes_and_above_one_is_refused(masks):
    prediction = stand_in(masks).predict(torch.zeros(2, 3, 24, 32), threshold=1.0)
    assert prediction.nodes_per_level[1:] == [0] * DEPTH  # the stand-in is never certain
    assert np.array_equal(prediction.labels.numpy(), coarsened(masks, 0))  # root labels at stride 2**depth
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="probability of MIXED in 0..1"):
            stand_in(masks).predict(torch.zeros(2, 3, 24, 32), threshold=bad)


def test_threshold_zero_expands_everything(masks):
    prediction = stand_in(masks).predict(torch.zeros(2, 3, 24, 32), threshold=0.0)
    assert prediction.nodes_per_level == [2 * 12 * 4 ** l for l in range(DEPTH + 1)]


@pytest.mark.parametrize("budget", [1, 2, 5, 1000])
def test_a_budget_is_never_exceeded(masks, budget):
    model = stand_in(masks)
    prediction = model.predict(torch.zeros(2, 3, 24, 32), budget=budget)
    for level in prediction.tree.levels:
        mixed = level.coords[level.labels == qt.MIXED][:, 0]
        assert all(int((mixed == b).sum()) <= budget for b in range(2))
    if budget == 1000:
        assert torch.equal(prediction.labels, model.predict(torch.zeros(2, 3, 24, 32)).labels)


@pytest.mark.parametrize("kind", ["qgn", "dense"])
def test_oracle_tree_is_followed_exactly(masks, kind):
    tree = qt.encode(masks, DEPTH)
    prediction = small_model(kind).predict(torch.randn(2, 3, 24, 32), oracle_tree=tree)
    for ours, theirs in zip(prediction.tree.levels, tree.levels):
        assert torch.equal(ours.coords, theirs.coords)
        assert torch.equal(ours.labels == qt.MIXED, theirs.labels == qt.MIXED)
    qt.check_structure(prediction.tree)


def test_the_dense_twin_composes_like_qgn_from_the_same_logits(masks):
    """Below full depth (or with a knob) the dense twin grows its tree with the same rule over logits read from its
    maps: with QGN's weights on a full tree the two give the same labels and trees."""
    qgn = small_model("qgn")
    dense = small_model("dense")
    dense.load_state_dict(qgn.state_dict())
    images = torch.randn(2, 3, 24, 32)
    for knobs in (dict(threshold=0.0), dict(threshold=0.0, max_depth=2)):
        a, b = qgn.predict(images, **knobs), dense.predict(images, **knobs)
        assert a.tree.equal(b.tree) and torch.equal(a.labels, b.labels)
    assert dense.predict(images).nodes_per_level == [2 * 12 * 4 ** l for l in range(DEPTH + 1)]


def test_dense_baseline_and_qgn_share_the_interface():
    images = torch.randn(1, 3, 30, 45)  # not a multiple of 8: padded, then cropped back
    for kind in ("qgn", "dense"):
        for max_depth in (None, 1):
            prediction = small_model(kind).predict(images, max_depth=max_depth)
            assert prediction.labels.shape == (1, 30, 45) and prediction.labels.dtype == torch.int64
            assert prediction.tree.image_size == (30, 45) and len(prediction.nodes_per_level) == DEPTH + 1
            qt.check_structure(prediction.tree)
    dense = small_model("dense").predict(images)
    assert dense.nodes_per_level == [24, 96, 384, 1536]  # every cell of the padded 32x48 grid


def test_bad_arguments(masks):
    model = small_model()
    images = torch.zeros(1, 3, 24, 32)
    with pytest.raises(ValueError, match="max_depth must be an integer in 0..3"):
        model.predict(images, max_depth=4)
    with pytest.raises(ValueError, match="budget must be a positive"):
        model.predict(images, budget=0)
    with pytest.raises(ValueError, match="3-channel images"):
        model.predict(torch.zeros(1, 1, 24, 32))
    with pytest.raises(ValueError, match="oracle_tree"):
        model.predict(images, oracle_tree=qt.encode(masks, DEPTH))


def test_an_oracle_tree_that_breaks_the_invariants_is_refused_once_checked():
    """The decoder takes the children's rows and cells from an oracle tree: one whose children are out of their
    (dy, dx) order (it still decodes to its mask) is refused instead of painting wrong labels; a valid tree is
    checked on its first prediction only."""
    masks = example_masks()
    tree = qt.encode(masks, DEPTH)
    last = tree.levels[DEPTH]
    order = torch.arange(last.num_nodes).view(-1, 4).flip(1).reshape(-1)  # each group's children reversed
    shuffled = tree._replace(levels=tree.levels[:DEPTH] + (
        qt.QuadtreeLevel(last.coords[order].contiguous(), last.labels[order], last.parent[order]),))
    assert np.array_equal(qt.decode(shuffled).numpy(), qt.decode(tree).numpy())
    model = small_model()
    images = torch.randn(*masks.shape[:1], 3, *masks.shape[1:])
    with pytest.raises(ValueError, match="child coordinates"):
        model.predict(images, oracle_tree=shuffled)
    model.predict(images, oracle_tree=tree)
    assert tree.levels[0].derived.get(("check_structure", "passed"))


def test_padding_costs_what_encode_gives_it_and_is_replicated():
    """13x21 images at depth 3 (padded to 16x24): with every node of the image expanded (threshold 0), the
    predicted tree has exactly the nodes `encode` gives an all-boundary mask of that size - nodes wholly in the
    padding are ignore leaves, never expanded - and the network sees the last row and column repeated."""
    model = small_model()
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = torch.randn(2, 3, 13, 21)
    prediction = model.predict(images, threshold=0.0)
    checker = (np.indices((13, 21)).sum(0) % 2).astype(np.uint8)
    expected = qt.encode(np.stack([checker, checker]), DEPTH)
    assert prediction.nodes_per_level == [level.num_nodes for level in expected.levels]
    for got, want in zip(prediction.tree.levels, expected.levels):
        assert torch.equal(got.coords, want.coords)
        outside = want.labels == 255
        assert bool((got.labels[outside] == 255).all()) and not bool((got.labels[~outside] == 255).any())
    padded = seen[0]
    assert padded.shape[2:] == (16, 24)
    assert torch.equal(padded[:, :, 13:, :21], images[:, :, 12:13, :].expand(-1, -1, 3, -1))
    assert torch.equal(padded[:, :, :13, 21:], images[:, :, :, 20:21].expand(-1, -1, -1, 3))
    assert prediction.labels.shape == (2, 13, 21)


def test_a_full_depth_prediction_synchronises_the_host_once_per_level():
    """On a GPU every op whose output size or value the host needs (nonzero, item, ...) stalls it until the device
    catches up: a prediction may force one per expanded level (its number of children), no more (a budget ranks its
    candidates without one; painting the labels needs none; along an oracle tree, checked once, none at all) -
    counted on the CPU with a dispatch mode (benchmarks/bench_dispatch.py counts all ops)."""
    tree = qt.encode(example_masks(), DEPTH)
    qt.check_structure_once(tree)  # predict checks an oracle tree on its first use only
    for kind in ("qgn", "dense"):
        model = small_model(kind)
        for knobs in ({"oracle_tree": tree}, {"threshold": 0.0}, {"threshold": 0.2, "budget": 3}):
            with HostSyncs() as syncs:
                model.predict(torch.randn(2, 3, 24, 32), **knobs)
            assert len(syncs.names) <= DEPTH, (kind, knobs, syncs.names)


def test_the_dense_twin_predicts_images_smaller_than_a_root_cell():
    images = torch.randn(2, 3, 5, 6)  # depth 3: one padded 8x8 root cell per image
    for kind in ("qgn", "dense"):
        prediction = small_model(kind).predict(images)
        assert prediction.labels.shape == (2, 5, 6) and prediction.tree.image_size == (5, 6)
        qt.check_structure(prediction.tree)


def test_a_prediction_does_not_keep_the_decoders_rulebooks():
    prediction = small_model().predict(torch.randn(1, 3, 24, 32), threshold=0.0)
    assert all(level.derived == {} for level in prediction.tree.levels)


def test_no_index_is_converted_inside_an_indexing_op():
    """Indexing with int32 index tensors converts each to int64 inside the op, where a count of the dispatched ops
    (benchmarks/bench_dispatch.py) cannot see it and a GPU runs one more kernel per index: the gathers and the
    painting widen the coordinates themselves - checked with torch.profiler, which sees the nested ops."""
    from torch.profiler import ProfilerActivity, profile

    indexing = {"aten::index", "aten::index_put_", "aten::_index_put_impl_", "aten::index_select"}

    def inside_indexing(event) -> bool:
        parent = event.cpu_parent
        while parent is not None and parent.name not in indexing:
            parent = parent.cpu_parent
        return parent is not None

    for kind in ("qgn", "dense"):
        model = small_model(kind)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.predict(torch.randn(2, 3, 24, 32), threshold=0.0)  # every level, both pixel stems
        nested = [e.name for e in prof.events() if e.name == "aten::_to_copy" and inside_indexing(e)]
        assert nested == [], (kind, nested)
