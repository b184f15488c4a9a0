"""qgn.sparserefine: selector, ensembler, engine bases, the refiner U-Net and the refinement pass."""

import math

import pytest
import torch

import quadtree as qt
from torch.utils.flop_counter import FlopCounterMode

from qgn import QGNConfig, build_model
from qgn.config import RefineConfig
from qgn.cost import measure_predict, prediction_macs
from qgn.fold import fold_batch_norm
from qgn.sparserefine import (EngineBase, GatedEnsembler, RefineLoss, SparseRefine, choose_tau, entropy,
                              refine_loss, select_uncertain)
from stand_in import DEPTH, example_masks, stand_in
from batch_norms import randomize_batch_norms

ARCHITECTURE = dict(num_classes=4, depth=3, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6))


def small_engine_model(kind: str):
    torch.manual_seed(0)
    return build_model(QGNConfig(model=kind, **ARCHITECTURE)).eval()


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


def refine_model(base_model: str = "dense", **refine):
    torch.manual_seed(0)
    config = QGNConfig(model="sparserefine", refine=RefineConfig(base_model=base_model, widths=(8, 12, 16), **refine),
                       **ARCHITECTURE)
    return build_model(config)


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
                dict(widths=()), dict(base_model="segblocks"), dict(refine_fraction=1.5)):
        with pytest.raises(ValueError):
            RefineConfig(**bad)
    with pytest.raises(ValueError, match="refine section belongs to model 'sparserefine'"):
        QGNConfig(model="qgn", refine=RefineConfig())
    config = QGNConfig(model="sparserefine", refine={"widths": [4, 8], "tau": 0.2})  # as read from YAML
    assert config.refine == RefineConfig(widths=(4, 8), tau=0.2)
    assert QGNConfig.from_dict(config.as_dict()).refine == config.refine


def test_predict_at_tau_budget_fraction_and_the_base_alone():
    model = refine_model().eval()
    images = torch.randn(1, 3, 32, 48)
    alone = model.predict(images, fraction=0)
    assert not bool(alone.fine.any()) and torch.equal(alone.labels, model.base_logits(images).argmax(1))
    assert alone.stats["refined_fraction"] == 0.0
    everything = model.predict(images, tau=0.0)
    assert bool(everything.fine.all()) and everything.labels.shape == (1, 32, 48)
    assert everything.stats["refined_fraction"] == 1.0 and everything.stats["tau"] == 0.0
    assert model.predict(images, budget=100).fine.sum() == 100
    share = model.predict(images, fraction=0.25)
    assert share.fine.sum() == round(0.25 * 32 * 48) and share.stats["tau"] is None
    default = model.predict(images)  # the config's tau
    assert default.stats["tau"] == 0.1 and torch.equal(default.fine, entropy(model.base_logits(images)) > 0.1)
    for bad in (dict(tau=-1.0), dict(fraction=1.5), dict(budget=-3), dict(budget=5, fraction=0.1)):
        with pytest.raises(ValueError):
            model.predict(images, **bad)
    with pytest.raises(ValueError, match="4-channel|3-channel"):
        model.predict(torch.randn(1, 4, 32, 48))


@pytest.mark.parametrize("base_model", ["dense", "qgn"])
@pytest.mark.parametrize("knobs", [{"fraction": 0}, {"budget": 200}, {"tau": 0.0}])
def test_macs_equal_torch_flop_counter(base_model, knobs):
    """The base at its scale plus the refiner and the ensembler per site, as torch counts the ops that ran (torch
    backend: submanifold and stride-2 convs are matmuls over all k*k taps)."""
    model = refine_model(base_model, base_scale=0.5).eval()
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = "torch"
    images = torch.randn(2, 3, 40, 56)
    with FlopCounterMode(display=False) as counter:
        prediction = model.predict(images, **knobs)
    assert prediction_macs(model, tuple(images.shape), prediction) == counter.get_total_flops() // 2
    _, cost = measure_predict(model, images, **knobs)
    assert cost.macs == prediction_macs(model, tuple(images.shape), prediction) and cost.peak_memory_mb > 0


def test_a_module_from_outside_the_engine_as_base():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    config = QGNConfig(model="sparserefine", refine=RefineConfig(widths=(8, 12), base_scale=0.5), **ARCHITECTURE)
    model = SparseRefine(config, base).eval()
    images = torch.randn(1, 3, 32, 40)
    prediction = model.predict(images, fraction=0.1)
    assert prediction.nodes_per_level is None and prediction.labels.shape == (1, 32, 40)
    with FlopCounterMode(display=False) as counter:
        model.predict(images, fraction=0.1)
    assert prediction_macs(model, tuple(images.shape), prediction) == counter.get_total_flops() // 2
    assert prediction_macs(model, tuple(images.shape), prediction) == counter.get_total_flops() // 2  # kept count


def test_folded_equals_unfolded():
    model = refine_model(tau=0.0)
    randomize_batch_norms(model.refiner, mean=0.5, affine=False)
    model.eval()
    images = torch.randn(1, 3, 32, 48)
    expected = model.refine(images, budget=300)
    folded = fold_batch_norm(model).refine(images, budget=300)
    torch.testing.assert_close(folded.mixed_logits, expected.mixed_logits, rtol=1e-4, atol=1e-4)


def test_training_forward_never_selects_ignored_or_padded_pixels():
    model = refine_model(tau=0.0).train()
    masks = torch.randint(0, 4, (2, 32, 48))
    masks[0, :, 40:] = 255  # padding a collate added
    masks[1, 3:9, 5:20] = 255  # unlabelled pixels
    output = model(torch.randn(2, 3, 32, 48), qt.encode(masks, 3))
    assert torch.equal(output.selected, masks != 255)
    losses = RefineLoss(model.config)(output, None, masks)
    assert losses["refined_fraction"] == (masks != 255).float().mean() and bool(losses["loss"].isfinite())


def test_choose_tau_refines_the_asked_fraction():
    model = refine_model(base_scale=1.0).eval()  # no nearest upsampling: no ties of 16 pixels
    images = [torch.randn(1, 3, 32, 48) for _ in range(3)]
    for fraction in (0.05, 0.3):
        tau = choose_tau(model, images, fraction)
        refined = torch.cat([model.predict(x, tau=tau).fine.flatten() for x in images]).float().mean()
        assert abs(float(refined) - fraction) < 0.01
