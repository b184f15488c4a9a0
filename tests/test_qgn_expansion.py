"""qgn.expansion: the rules' choices, padding, and the budget's ranking against a slow reference."""

import numpy as np
import pytest
import torch

import quadtree as qt
from qgn.expansion import argmax_rule, cells_in_image, follow_tree, keep_top, threshold_rule, within_budget


def reference_keep_top(expand, score, batch, budget):
    kept = torch.zeros_like(expand)
    for b in batch.unique().tolist():
        rows = [i for i in range(len(expand)) if expand[i] and batch[i] == b]
        rows.sort(key=lambda i: (-float(score[i]), i))
        kept[rows[:budget]] = True
    return kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 3, 100])
def test_keep_top_equals_a_slow_reference(seed, budget):
    g = torch.Generator().manual_seed(seed)
    n = 40
    batch = torch.sort(torch.randint(0, 3, (n,), generator=g)).values  # nodes of a level are sorted by image
    score = torch.rand(n, generator=g).round(decimals=1)  # ties: the earlier row wins
    expand = torch.rand(n, generator=g) < 0.5
    assert torch.equal(keep_top(expand, score, batch, budget), reference_keep_top(expand, score, batch, budget))
    assert not bool(keep_top(torch.zeros(n, dtype=torch.bool), score, batch, budget).any())


def test_rules_on_a_grown_tree_with_padding():
    masks = torch.zeros(1, 10, 12, dtype=torch.uint8)
    tree = qt.encode(masks, 2)  # padded to 12x12: the last root row (y = 2) lies wholly in the padding
    logits = torch.zeros(tree.levels[0].num_nodes, 3)
    logits[:, 2] = 5.0  # MIXED (index 2) everywhere
    inside = tree.levels[0].coords[:, 1] < 3
    assert torch.equal(argmax_rule(2)(0, logits, tree), inside)
    assert torch.equal(threshold_rule(2, 0.5)(0, logits, tree), inside)
    assert int(within_budget(argmax_rule(2), 2, 2)(0, logits, tree).sum()) == 2
    assert torch.equal(follow_tree(tree)(0, logits, tree), tree.levels[0].labels == qt.MIXED)  # not the logits


def test_following_a_tree_knows_its_children_without_counting_them(nuclei):
    """`FollowTree.children_of` reads the children off the target's next level: the same rows, parents and coords
    as counting the mask's nodes (`nonzero`, a host synchronisation on a GPU) and computing them."""
    tree = qt.encode(torch.from_numpy((nuclei["instances"][:96, :128] % 5).astype(np.uint8)), 4)
    rule = follow_tree(tree)
    for level in range(tree.depth):
        logits = torch.zeros(tree.levels[level].num_nodes, 6)
        chosen, parent, coords = rule.children_of(level, torch.device("cpu"))
        expected = torch.nonzero(rule(level, logits, tree)).flatten()
        assert torch.equal(chosen, expected) and torch.equal(parent, expected.repeat_interleave(4))
        assert torch.equal(coords, qt.child_coords(tree.levels[level].coords[expected]))


def test_cells_in_image_equals_the_pixel_test():
    """A cell holds image pixels when its first pixel row and column lie inside the image."""
    coords = torch.stack(torch.meshgrid(torch.zeros(1, dtype=torch.int64), torch.arange(9), torch.arange(11),
                                        indexing="ij"), -1).reshape(-1, 3).int()
    for stride in (1, 2, 4, 8):
        for image_size in [(1, 1), (7, 13), (16, 16), (33, 40), (72, 88)]:
            expected = (coords[:, 1].long() * stride < image_size[0]) & (coords[:, 2].long() * stride < image_size[1])
            assert torch.equal(cells_in_image(coords, stride, image_size), expected)
