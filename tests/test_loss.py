import math

import numpy as np
import pytest
import torch

import quadtree as qt
from qgn.cost import HostSyncs
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
    assert level_loss(logits, torch.zeros(0, dtype=torch.long), 2).item() == 0.0
    for weights in (None, torch.tensor([0.0, 0.0, 1.0])):  # all ignored; only classes of weight 0
        for labels in (torch.tensor([255, 255]), torch.tensor([0, 1])):
            logits = torch.randn(2, 3, requires_grad=True)
            loss = level_loss(logits, labels, 2, class_weights=weights)
            if weights is None and labels[0] != 255:
                continue  # supervised: an ordinary loss
            loss.backward()
            assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 3))  # no 0/0 in either pass


def test_not_finite_logits_give_a_not_finite_loss():
    """0 for an unsupervised level must not hide a diverged network: NaN logits still give a NaN loss."""
    logits = torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.isnan(level_loss(logits, torch.tensor([0, 1]), 2))
    assert torch.isnan(level_loss(logits, torch.tensor([0, 255]), 2))


def test_labels_that_are_not_classes_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        level_loss(torch.randn(2, 2), torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match=r"labels \[-2\]"):
        level_loss(torch.randn(2, 3), torch.tensor([0, -2]), 2)
    with pytest.raises(ValueError, match=r"labels \[-1\].*MIXED"):  # MIXED at full resolution (C logits)
        level_loss(torch.randn(2, 2), torch.tensor([0, qt.MIXED]), 2)
    level_loss(torch.randn(3, 3), torch.tensor([0, qt.MIXED, 255]), 2)  # above full resolution: a label
    with pytest.raises(ValueError, match=r"labels \[2\] are not classes"):  # class C is MIXED's logit, no label
        QuadtreeLoss(2, 1)([torch.randn(4, 3), torch.randn(0, 2)], qt.encode(np.full((4, 4), 2, np.uint8), 1))


def test_the_loss_never_synchronises_the_host_without_the_label_check():
    """On a GPU every op whose value the host needs stalls it: the trainer's loss (labels checked by the data sets)
    needs none, at any level count, with empty and unsupervised levels, the adaptive update and the dense twin's
    full-resolution loss included - counted on the CPU with a dispatch mode."""
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 255
    mask[5, 6] = 1
    tree = qt.encode(mask, 3)
    logits = [torch.randn(level.num_nodes, 3 if l < 3 else 2, requires_grad=True)
              for l, level in enumerate(tree.levels)]
    masks = qt.decode(tree, dtype=torch.int64)
    for config in (LossConfig(), LossConfig(level_scale=0.5), LossConfig(adaptive=True)):
        criterion = QuadtreeLoss(2, 3, config, check_labels=False).train()
        with HostSyncs() as syncs:
            losses = criterion(logits, tree)
            losses["loss"].backward()
        expected = sum(w * losses[f"loss_l{l}"] for l, w in enumerate(criterion.level_weights()))
        torch.testing.assert_close(losses["loss"], expected)
        with HostSyncs() as more:
            dense = criterion(logits, tree, full_logits=torch.randn(1, 2, 8, 8), masks=masks)
        assert syncs.names + more.names == [], (config, syncs.names, more.names)
        assert torch.isfinite(dense["loss"])


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
