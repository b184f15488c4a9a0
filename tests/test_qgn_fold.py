"""qgn.fold: batch norm folded into the convolutions gives the unfolded model's outputs (within float32 rounding)."""

import pytest
import torch

import quadtree as qt
from qgn import QGNConfig, build_model
from qgn.fold import fold_batch_norm
from sparse_ops import NodeBatchNorm, SubMConv2d
from sparse_ops.batchnorm import FoldedBatchNorm
from batch_norms import randomize_batch_norms


def trained_like(kind: str, **overrides):
    """A small model whose batch norms have non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    values = dict(num_classes=4, depth=3, model=kind, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6),
                  blocks_per_level=2)
    values.update(overrides)
    model = build_model(QGNConfig(**values))
    randomize_batch_norms(model)
    return model.eval()


@pytest.mark.parametrize("kind", ["qgn", "dense"])
def test_folded_model_gives_the_same_logits_and_labels(kind):
    model = trained_like(kind)
    folded = fold_batch_norm(model)
    norms = [m for m in folded.modules() if isinstance(m, (torch.nn.BatchNorm2d, NodeBatchNorm))]
    assert norms == [] and any(isinstance(m, FoldedBatchNorm) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    images = torch.randn(2, 3, 40, 56)
    masks = torch.randint(0, 4, (2, 40, 56))
    tree = qt.encode(masks, 3)
    padded, target = qt.pad_to_multiple(images, 8), qt.encode(qt.pad_to_multiple(masks, 8, 255), 3)
    with torch.no_grad():
        for a, b in zip(model(padded, target).level_logits, folded(padded, target).level_logits):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    a, b = model.predict(images, oracle_tree=tree), folded.predict(images, oracle_tree=tree)
    assert (a.labels == b.labels).float().mean() > 0.999


def test_fold_pair_matches_conv_then_batch_norm():
    torch.manual_seed(0)
    conv, bn = SubMConv2d(3, 5, 3, bias=False), NodeBatchNorm(5)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 3, 6, 7)
    expected = bn.forward_dense(conv.forward_dense(x))
    fold_batch_norm(torch.nn.Sequential(conv, bn))  # folds a copy: the originals are unchanged
    assert conv.bias is None
    folded = fold_batch_norm(torch.nn.Sequential(conv, bn))
    torch.testing.assert_close(folded[0].forward_dense(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(folded[1], FoldedBatchNorm)


def test_a_folded_network_refuses_to_train():
    folded = fold_batch_norm(trained_like("qgn"))
    with pytest.raises(RuntimeError, match="load_model"):
        folded.train()
    folded.eval()  # inference stays possible


def test_weights_derived_for_inference_before_folding_are_not_the_folded_ones():
    """A model that predicted (and so derived its inference weights) folds into a copy that derives its own."""
    model = trained_like("qgn")
    images = torch.randn(2, 3, 40, 56)
    tree = qt.encode(torch.randint(0, 4, (2, 40, 56)), 3)
    before = model.predict(images, oracle_tree=tree)
    folded = fold_batch_norm(model)
    target = qt.encode(qt.pad_to_multiple(torch.randint(0, 4, (2, 40, 56)), 8, 255), 3)
    padded = qt.pad_to_multiple(images, 8)
    with torch.no_grad():
        for a, b in zip(model(padded, target).level_logits, folded(padded, target).level_logits):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (folded.predict(images, oracle_tree=tree).labels == before.labels).float().mean() > 0.999
