"""qgn.sparserefine: selector, ensembler, engine bases, the refiner U-Net and the refinement pass."""

import math

import pytest
import torch

import quadtree as qt
from qgn import QGNConfig, build_model
from qgn.sparserefine import (EngineBase, GatedEnsembler, RefineConfig, SparseRefine, entropy, predict_refined,
                              refine_loss, select_uncertain)
from stand_in import DEPTH, example_masks, stand_in


def small_engine_model(kind: str):
    torch.manual_seed(0)
    return build_model(QGNConfig(num_classes=4, depth=3, model=kind, encoder_channels=(8, 12),
                                 decoder_channels=(12, 10, 8, 6))).eval()


def test_entropy_is_the_official_definition():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0], [1.0, 2.0]])
    p = torch.softmax(logits, 1)
    expected = -(p * p.clamp_min(1e-5).log()).sum(1)
    torch.testing.assert_close(entropy(logits), expected)
    assert entropy(logits)[0] == pytest.approx(math.log(2)) and entropy(logits)[1] == pytest.approx(0, abs=1e-6)
    maps = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(entropy(maps), entropy(maps.permute(0, 2, 3, 1).reshape(-1, 5)).reshape(2, 3, 4))


def test_selection_by_threshold_budget_and_validity():
    torch.manual_seed(0)
    h = torch.rand(2, 6, 7)
    assert torch.equal(select_uncertain(h, tau=0.5), h > 0.5)
    top = select_uncertain(h, budget=5)
    assert top.flatten(1).sum(1).tolist() == [5, 5]
    for b in range(2):  # the five most uncertain pixels of each image
        assert torch.equal(top[b].flatten().nonzero().flatten().sort().values,
                           h[b].flatten().topk(5).indices.sort().values)
    valid = torch.ones_like(top)
    valid[:, 4:] = False  # padding rows: never selected, whatever their entropy
    both = select_uncertain(h, valid, tau=0.2, budget=3)
    assert not bool(both[~valid].any()) and (both.flatten(1).sum(1) <= 3).all()
    assert bool((h[both] > 0.2).all())
    with pytest.raises(ValueError, match="tau"):
        select_uncertain(h)


def test_gated_ensembler_follows_its_formula():
    torch.manual_seed(0)
    ensembler = GatedEnsembler(3, hidden=8)
    l1, l2 = torch.randn(5, 3), torch.randn(5, 3)
    features = torch.cat([torch.softmax(l1, 1), entropy(l1)[:, None], torch.softmax(l2, 1), entropy(l2)[:, None]], 1)
    w = torch.softmax(ensembler.gate(features), 1)
    torch.testing.assert_close(ensembler(l1, l2), ensembler.out(w[:, :1] * l1 + w[:, 1:] * l2))


@pytest.mark.parametrize("kind", ["qgn", "dense"])
def test_an_engine_network_as_base_gives_its_own_prediction(kind):
    """EngineBase's logits argmax to the labels `predict` gives (QGN: painted from its tree; dense: its map)."""
    model = small_engine_model(kind)
    images = torch.randn(2, 3, 30, 45)
    logits = EngineBase(model)(images)
    assert logits.shape == (2, 4, 30, 45)
    assert torch.equal(logits.argmax(1), model.predict(images).labels)


def test_qgn_base_paints_each_pixel_with_its_deepest_node():
    masks = example_masks()
    model = stand_in(masks)  # heads that emit the ground truth: full depth reproduces the masks
    logits = EngineBase(model)(torch.zeros(2, 3, 24, 32))
    assert torch.equal(logits.argmax(1), torch.from_numpy(masks).long())
    assert qt.encode(masks, DEPTH).depth == DEPTH


def refine_model(**config):
    torch.manual_seed(0)
    base = EngineBase(small_engine_model("dense"))
    return SparseRefine(base, num_classes=4, in_channels=3, config=RefineConfig(widths=(8, 12, 16), **config))


def test_refinement_replaces_the_base_only_at_the_selected_pixels():
    model = refine_model(tau=0.0).eval()
    images = torch.randn(2, 3, 33, 47)  # odd sizes: the U-Net's coarser grids round up
    with torch.no_grad():
        refinement = model.refine(images, budget=100)
    assert refinement.selected.flatten(1).sum(1).tolist() == [100, 100]
    assert refinement.refiner_logits.shape == refinement.mixed_logits.shape == (200, 4)
    logits = refinement.logits()
    untouched = ~refinement.selected[:, None].expand_as(logits)
    assert torch.equal(logits[untouched], refinement.base_logits[untouched])
    b, y, x = refinement.geometry.coords.long().unbind(1)
    assert torch.equal(logits[b, :, y, x], refinement.mixed_logits)


def test_training_updates_the_refiner_never_the_base():
    model = refine_model(tau=0.0).train()
    base_state = {k: v.clone() for k, v in model.base.state_dict().items()}
    masks = torch.randint(0, 4, (2, 32, 48))
    masks[0, :4] = 255
    refinement = model.refine(torch.randn(2, 3, 32, 48), budget=300)
    losses = refine_loss(refinement, masks)
    assert set(losses) == {"loss_refiner", "loss_mixed", "loss"} and bool(losses["loss"].isfinite())
    losses["loss"].backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert all(p.grad is not None for p in model.refiner.parameters()) and \
        all(p.grad is not None for p in model.ensembler.parameters())
    assert not model.base.training  # frozen in eval mode: its statistics do not move
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, base_state[k])


def test_loss_on_nothing_supervised_is_zero_and_in_the_graph():
    model = refine_model(tau=0.0).train()
    refinement = model.refine(torch.randn(1, 3, 32, 48), budget=50)
    losses = refine_loss(refinement, torch.full((1, 32, 48), 255))
    assert float(losses["loss"].detach()) == 0.0
    losses["loss"].backward()


def test_bad_configs():
    for bad in (dict(upsample="bicubic"), dict(base_scale=0.0), dict(base_scale=1.5), dict(tau=-1.0),
                dict(widths=())):
        with pytest.raises(ValueError):
            RefineConfig(**bad)


def test_predict_refined_and_the_base_alone():
    model = refine_model().eval()
    images = torch.randn(1, 3, 32, 48)
    labels, selected = predict_refined(model, images, budget=0)
    assert not bool(selected.any()) and torch.equal(labels, model.base_logits(images).argmax(1))
    labels, selected = predict_refined(model, images, tau=0.0)
    assert bool(selected.all()) and labels.shape == (1, 32, 48)
