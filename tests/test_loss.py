import math

import numpy as np
import pytest
import torch

import quadtree as qt
from training.loss import LossConfig, QuadtreeLoss, level_loss


def tiny_tree():
    # 4x4 mask, depth 1: roots of 2x2 pixels. Root 0 uniform class 1, root 1 MIXED, root 2 all ignore,
    # root 3 uniform class 0.
    mask = np.array([[1, 1, 0, 1],
                     [1, 1, 255, 0],
                     [255, 255, 0, 0],
                     [255, 255, 0, 0]], np.uint8)
    return qt.encode(mask, 1)


def nll(logits, target):
    return -(logits[target] - torch.logsumexp(logits, 0))


def test_level_losses_equal_a_hand_computation():
    tree = tiny_tree()
    assert tree.levels[0].labels.tolist() == [1, qt.MIXED, 255, 0]
    assert tree.levels[1].labels.tolist() == [0, 1, 255, 0]
    root_logits = torch.tensor([[0.1, 2.0, -1.0], [0.5, 0.2, 1.5], [3.0, 3.0, 3.0], [1.0, -1.0, 0.0]])
    full_logits = torch.tensor([[2.0, 0.0], [0.3, 0.7], [9.0, -9.0], [-0.5, 0.5]])
    criterion = QuadtreeLoss(num_classes=2, depth=1, config=LossConfig(level_scale=1.5))
    losses = criterion([root_logits, full_logits], tree)
    # Root level: targets 1, MIXED (= class 2), ignore (skipped), 0.
    expected_l0 = (nll(root_logits[0], 1) + nll(root_logits[1], 2) + nll(root_logits[3], 0)) / 3
    expected_l1 = (nll(full_logits[0], 0) + nll(full_logits[1], 1) + nll(full_logits[3], 0)) / 3
    torch.testing.assert_close(losses["loss_l0"], expected_l0)
    torch.testing.assert_close(losses["loss_l1"], expected_l1)
    torch.testing.assert_close(losses["loss"], 1.5 * expected_l0 + expected_l1)


def test_mixed_weight_and_dense_full_resolution_loss():
    tree = tiny_tree()
    root_logits = torch.randn(4, 3)
    criterion = QuadtreeLoss(2, 1, LossConfig(mixed_weight=2.0))
    full = torch.randn(1, 2, 4, 4)
    masks = qt.decode(tree, dtype=torch.int64)  # (1, H, W)
    losses = criterion([root_logits, torch.randn(4, 2)], tree, full_logits=full, masks=masks)
    weights = torch.tensor([1.0, 2.0, 1.0])  # targets 1, MIXED, 0
    terms = torch.stack([nll(root_logits[0], 1), nll(root_logits[1], 2), nll(root_logits[3], 0)])
    torch.testing.assert_close(losses["loss_l0"], (weights * terms).sum() / weights.sum())
    torch.testing.assert_close(losses["loss_l1"], torch.nn.functional.cross_entropy(full, masks, ignore_index=255))


def test_adaptive_weights_follow_the_running_ratio():
    tree = tiny_tree()
    criterion = QuadtreeLoss(2, 1, LossConfig(adaptive=True, momentum=0.5))
    losses = criterion([torch.randn(4, 3), torch.randn(4, 2)], tree)
    ratio = float(losses["loss_l0"] / losses["loss_l1"])
    assert math.isclose(criterion.level_weights()[0], 0.5 + 0.5 * ratio, rel_tol=1e-5)


def test_empty_and_all_ignore_levels_give_zero():
    logits = torch.randn(0, 3, requires_grad=True)
    assert float(level_loss(logits, torch.zeros(0, dtype=torch.long), 2)) == 0.0
    assert float(level_loss(torch.randn(2, 3), torch.tensor([255, 255]), 2)) == 0.0


def test_labels_beyond_num_classes_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        level_loss(torch.randn(2, 2), torch.tensor([0, 5]), 2)


def test_adaptive_ratios_use_the_losses_of_every_ddp_rank(monkeypatch):
    """Under DDP the level losses are summed over the ranks before the ratios move, so every rank keeps the same
    level weights (a stand-in all_reduce adds another rank's losses)."""
    import training.loss as loss_module

    tree = qt.encode(np.array([[0, 1], [1, 1]], np.uint8), 1)
    logits = [torch.zeros(1, 3), torch.zeros(4, 2)]
    logits[0][0, 2] = 1.0
    other_rank = torch.tensor([3.0, 1.0])
    monkeypatch.setattr(loss_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(loss_module.dist, "all_reduce", lambda tensor: tensor.add_(other_rank))
    criterion = QuadtreeLoss(2, 1, LossConfig(adaptive=True, momentum=0.5)).train()
    losses = criterion(logits, tree)
    summed = torch.stack([losses["loss_l0"], losses["loss_l1"]]).detach() + other_rank
    torch.testing.assert_close(criterion.ratios, torch.tensor([0.5 + 0.5 * float(summed[0] / summed[1])]))
