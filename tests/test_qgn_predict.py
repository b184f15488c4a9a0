import numpy as np
import pytest
import torch
from torch import nn

import quadtree as qt
from qgn import QGN, QGNConfig
from sparse_ops import expand_children
from training.evaluate import Setting, evaluate_settings

C = 4  # classes
DEPTH = 3


def small_model(kind="qgn") -> QGN:
    torch.manual_seed(0)
    return QGN(QGNConfig(num_classes=C, depth=DEPTH, model=kind, encoder_channels=(8, 12),
                         decoder_channels=(12, 10, 8, 6))).eval()


def majority(mask: np.ndarray, stride: int) -> np.ndarray:
    """(B, H/stride, W/stride): the most frequent label of each window (ties: the smaller label)."""
    b, h, w = mask.shape
    windows = mask.reshape(b, h // stride, stride, w // stride, stride).transpose(0, 1, 3, 2, 4)
    windows = windows.reshape(b, h // stride, w // stride, -1)
    counts = (windows[..., None] == np.arange(C)).sum(-2)
    return counts.argmax(-1)


def ground_truth_logits(mask: np.ndarray, level: int, coords: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """10 on the node's true label (MIXED = index C), 5 on the majority class of a MIXED node's window."""
    tree = qt.encode(mask, DEPTH)
    grid = qt.dense_level(tree, level)
    major = torch.from_numpy(majority(mask, 2 ** (DEPTH - level)))
    b, y, x = coords.long().unbind(1)
    labels, second = grid[b, y, x], major[b, y, x]
    logits = torch.zeros(len(labels), num_outputs)
    mixed = labels == qt.MIXED
    logits[~mixed, labels[~mixed]] = 10.0
    if bool(mixed.any()):  # never at full resolution, where there is no MIXED logit
        logits[mixed, C] = 10.0
        logits[mixed, second[mixed]] = 5.0
    return logits


class RootStandIn(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, root_feats):
        b, _, h, w = root_feats.shape
        coords = qt.root_coords(b, h, w)
        logits = ground_truth_logits(self.mask, 0, coords, C + 1)
        return logits.reshape(b, h, w, C + 1).permute(0, 3, 1, 2)


class LevelStandIn(nn.Module):
    def __init__(self, mask, level):
        super().__init__()
        self.mask, self.level = mask, level

    def forward(self, parent_feats, parent_geometry, images, features):
        feats, geometry = expand_children(parent_feats[:, :1], parent_geometry, torch.ones(1, 1, 2, 2))
        outputs = C if self.level == DEPTH else C + 1
        return feats, geometry, ground_truth_logits(self.mask, self.level, geometry.coords, outputs)

    def macs_per_node(self):
        return 0


def stand_in(mask: np.ndarray) -> QGN:
    """A QGN whose heads emit the ground truth of `mask` (B, H, W)."""
    model = small_model()
    model.root_head = RootStandIn(mask)
    model.levels = nn.ModuleList(LevelStandIn(mask, l) for l in range(1, DEPTH + 1))
    return model


def coarsened(mask: np.ndarray, k: int) -> np.ndarray:
    """The mask as the tree's rule paints it at depth k: the deepest leaf at level <= k, else the majority."""
    grid = qt.dense_level(qt.encode(mask, DEPTH), k).numpy()
    grid = np.where(grid == qt.MIXED, majority(mask, 2 ** (DEPTH - k)), grid)
    stride = 2 ** (DEPTH - k)
    return grid.repeat(stride, 1).repeat(stride, 2)


@pytest.fixture
def masks():
    rng = np.random.default_rng(0)
    base = rng.integers(0, C, (2, 6, 8)).repeat(4, 1).repeat(4, 2)  # (2, 24, 32): regions of 4x4 pixels
    base[0, 5, 7] = (base[0, 5, 7] + 1) % C  # a one-pixel region
    base[1, 10:14, 3] = 3  # a thin line
    return base.astype(np.uint8)


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


def test_oracle_tree_is_followed_exactly(masks):
    tree = qt.encode(masks, DEPTH)
    prediction = small_model().predict(torch.randn(2, 3, 24, 32), oracle_tree=tree)
    for ours, theirs in zip(prediction.tree.levels, tree.levels):
        assert torch.equal(ours.coords, theirs.coords)
        assert torch.equal(ours.labels == qt.MIXED, theirs.labels == qt.MIXED)


def test_dense_baseline_and_qgn_share_the_interface():
    images = torch.randn(1, 3, 30, 45)  # not a multiple of 8: padded, then cropped back
    for kind in ("qgn", "dense"):
        for max_depth in (None, 1):
            prediction = small_model(kind).predict(images, max_depth=max_depth)
            assert prediction.labels.shape == (1, 30, 45) and prediction.labels.dtype == torch.int64
            assert prediction.tree.image_size == (30, 45) and len(prediction.nodes_per_level) == DEPTH + 1
            assert prediction.macs > 0 and prediction.seconds > 0
            qt.check_structure(prediction.tree)
    dense = small_model("dense").predict(images)
    assert dense.nodes_per_level == [24, 96, 384, 1536]  # every cell of the padded 32x48 grid


def test_macs_count_the_nodes_actually_computed(masks):
    model = small_model()
    root_only = model.predict(torch.zeros(2, 3, 24, 32), max_depth=0).macs
    expanded = model.predict(torch.zeros(2, 3, 24, 32), threshold=0.0)
    expected = root_only + sum(n * level.macs_per_node() for n, level in zip(expanded.nodes_per_level[1:], model.levels))
    assert expanded.macs == expected


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


def test_evaluation_figures_match_an_independent_computation(masks):
    from sklearn.metrics import jaccard_score

    model = stand_in(masks[:1])
    samples = [(torch.zeros(3, 24, 32), torch.from_numpy(masks[0]).long())]
    records = evaluate_settings(model, samples, [Setting(max_depth=1), Setting()], "cpu")
    for record in records:
        labels = coarsened(masks[:1], record["max_depth"] if record["max_depth"] is not None else DEPTH)[0]
        present = np.union1d(np.unique(labels), np.unique(masks[0]))
        expected = jaccard_score(masks[0].ravel(), labels.ravel(), labels=present, average="macro")
        assert record["miou"] == pytest.approx(expected, abs=1e-12)
        assert record["pixel_accuracy"] == pytest.approx(float((labels == masks[0]).mean()), abs=1e-12)
    assert records[1]["miou"] == 1.0 and records[1]["peak_memory_mb"] > 0


def test_evaluation_streams_its_samples_and_rejects_an_empty_set(masks):
    model = stand_in(masks[:1])
    samples = ((torch.zeros(3, 24, 32), torch.from_numpy(masks[0]).long()) for _ in range(2))  # a generator
    assert evaluate_settings(model, samples, [Setting()], "cpu")[0]["images"] == 2
    with pytest.raises(ValueError, match="empty"):
        evaluate_settings(model, [], [Setting()], "cpu")


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
