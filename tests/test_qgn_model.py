import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quadtree as qt
from qgn import QGN, DenseTwin, QGNConfig, build_model
from qgn.cost import HostSyncs
from rounding import AUTOCAST_PARAMS, eps
from sparse_ops import SparseGeometry, gather_dense


def small_config(**overrides) -> QGNConfig:
    values = dict(num_classes=3, depth=3, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6))
    values.update(overrides)
    return QGNConfig(**values)


def full_tree(batch: int, size: int, depth: int) -> qt.Quadtree:
    """Every node MIXED down to full resolution: the sparse decoder is active at every cell."""
    checker = (np.indices((size, size)).sum(0) % 2).astype(np.uint8)
    return qt.encode(np.stack([checker] * batch), depth)


@pytest.mark.parametrize("backend", ["spconv", "torch"])
@pytest.mark.parametrize("training", [False, True])
def test_sparse_decoder_on_a_full_tree_equals_the_dense_twin(backend, training):
    torch.manual_seed(0)
    model = QGN(small_config(backend=backend)).double()
    model.train(training)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    tree = full_tree(2, 32, 3)
    assert [level.num_nodes for level in tree.levels] == [2 * 16 * 4 ** l for l in range(4)]

    sparse = model(images, tree).level_logits
    sparse_loss = sum((logits ** 2).sum() for logits in sparse)
    sparse_grads = torch.autograd.grad(sparse_loss, [images, *model.parameters()])

    twin = DenseTwin(model.config).double().train(training)
    twin.load_state_dict(model.state_dict())
    dense = twin(images, tree).level_logits  # every cell computed, read at the tree's nodes
    dense_loss = sum((logits ** 2).sum() for logits in dense)
    dense_grads = torch.autograd.grad(dense_loss, [images, *twin.parameters()])

    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def masked_dense_level_logits(model: QGN, images: torch.Tensor, tree: qt.Quadtree) -> list[torch.Tensor]:
    """An independent reference of the sparse decoder on any tree: the dense twins of its modules at every cell,
    with every map multiplied by the level's node mask before each convolution (a submanifold conv sees zeros at
    the cells without a node) and read at the nodes. Batch norm in eval mode (an affine map per channel)."""
    features = model.encoder(images)
    x = model.root(features[-1])
    logits = [model.root_head(x)]
    for l, level in enumerate(model.levels, start=1):
        expanded = (qt.dense_level(tree, l - 1) == qt.MIXED).to(x.dtype)[:, None]  # (B, 1, h, w)
        active = expanded.repeat_interleave(2, 2).repeat_interleave(2, 3)  # the children of the expanded nodes
        x = level.expand.forward_dense(x * expanded)
        if level.encoder_index is None:
            x = x + level.skip.forward_dense(images)
        else:
            x = x + F.conv2d(features[level.encoder_index], level.skip.weight[:, :, None, None], level.skip.bias)
        x = x * active
        for block in level.blocks:
            out = block.relu(block.bn1.forward_dense(block.conv1.forward_dense(x))) * active
            out = block.bn2.forward_dense(block.conv2.forward_dense(out))
            x = block.relu(out + x) * active
        logits.append(F.conv2d(x, level.head.weight[:, :, None, None], level.head.bias))
    return [gather_dense(m, SparseGeometry(tree.levels[l].coords, tree.level_shape(l), tree.batch_size))
            for l, m in enumerate(logits)]


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_sparse_decoder_on_partial_real_trees_equals_the_masked_dense_computation(nuclei, backend):
    """On real partial trees (a nucleus mask and a many-region mask), outputs and gradients of every level's logits
    equal the masked dense reference with the same weights."""
    torch.manual_seed(0)
    model = QGN(small_config(backend=backend, blocks_per_level=2)).double().eval()
    masks = np.stack([(nuclei["instances"][:64, :96] > 0), nuclei["instances"][64:128, 96:192] % 3]).astype(np.uint8)
    tree = qt.encode(masks, 3)
    assert 0 < tree.levels[3].num_nodes < masks.size  # partial: some nodes at full resolution, not all
    images = torch.randn(2, 3, 64, 96, dtype=torch.float64, requires_grad=True)
    sparse = model(images, tree).level_logits
    reference = masked_dense_level_logits(model, images, tree)
    params = [images, *model.parameters()]
    weights = [torch.randn_like(logits) for logits in sparse]
    sparse_grads = torch.autograd.grad(sum((w * a).sum() for w, a in zip(weights, sparse)), params, allow_unused=True)
    dense_grads = torch.autograd.grad(sum((w * a).sum() for w, a in zip(weights, reference)), params,
                                      allow_unused=True)
    for a, b in zip(sparse, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(sparse_grads, dense_grads):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_forward_backward_shapes_for_both_models(nuclei):
    mask = (nuclei["instances"][:64, :96] % 4).astype(np.uint8)
    tree = qt.encode(np.stack([mask, mask[::-1].copy()]), 3)
    images = torch.randn(2, 3, 64, 96)
    for kind in ("qgn", "dense"):
        model = build_model(small_config(model=kind, num_classes=4))
        assert type(model) is {"qgn": QGN, "dense": DenseTwin}[kind]
        out = model(images, tree)
        assert [tuple(l.shape) for l in out.level_logits] == [
            (level.num_nodes, 5 if l < 3 else 4) for l, level in enumerate(tree.levels)]
        if kind == "dense":
            assert out.full_logits.shape == (2, 4, 64, 96)
        else:
            assert out.full_logits is None
        loss = sum(l.sum() for l in out.level_logits)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_empty_levels_keep_every_parameter_in_the_graph():
    model = QGN(small_config())
    tree = qt.encode(np.zeros((1, 32, 32), np.uint8), 3)  # no MIXED node: levels 1..3 are empty
    out = model(torch.randn(1, 3, 32, 32), tree)
    assert [l.shape[0] for l in out.level_logits] == [16, 0, 0, 0]
    sum(l.sum() for l in out.level_logits).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_inputs():
    model = QGN(small_config())
    tree = qt.encode(np.zeros((1, 32, 32), np.uint8), 3)
    with pytest.raises(ValueError, match="3-channel images"):
        model(torch.randn(1, 1, 32, 32), tree)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        model(torch.randn(1, 3, 30, 32), tree)
    with pytest.raises(ValueError, match="does not match the images"):
        model(torch.randn(2, 3, 32, 32), tree)
    with pytest.raises(ValueError, match="depth"):
        model(torch.randn(1, 3, 32, 32), qt.encode(np.zeros((1, 32, 32), np.uint8), 2))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown model"):
        QGNConfig(model="unet")
    with pytest.raises(ValueError, match="decoder_channels needs 6"):
        QGNConfig(decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="encoder_channels needs"):
        QGNConfig(depth=4)
    assert QGNConfig.for_depth(4).depth == 4
    with pytest.raises(ValueError, match="unknown QGNConfig fields"):
        QGNConfig.from_dict({"num_class": 3})
    assert QGNConfig.from_dict(QGNConfig().as_dict()) == QGNConfig()


@pytest.mark.cuda
def test_cuda_forward_and_predict_match_cpu():
    torch.manual_seed(0)
    model = QGN(small_config()).eval()
    images = torch.randn(2, 3, 32, 32)
    tree = full_tree(2, 32, 3)
    cpu = model(images, tree).level_logits
    gpu = model.cuda()(images.cuda(), tree.to("cuda")).level_logits
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
    prediction = model.predict(images.cuda(), oracle_tree=tree.to("cuda"))
    assert prediction.labels.device.type == "cuda" and prediction.labels.shape == (2, 32, 32)


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_autocast_forward_training_and_predict(device, dtype, backend):
    """Under autocast every level's logits come out in `dtype` and stay within 2 eps(dtype) (relative, in norm) of
    float32 (measured 0.3-0.5 eps for bf16 on CPU: each of the ~20 layers rounds its inputs once, BatchNorm keeps
    the scale); a training step gives float32 gradients to float32 parameters; predict runs too."""
    torch.manual_seed(0)
    model = QGN(small_config(backend=backend)).to(device).eval()
    images = torch.randn(2, 3, 32, 32, device=device)
    tree = full_tree(2, 32, 3).to(device)
    reference = model(images, tree).level_logits
    kind = torch.device(device).type
    with torch.autocast(kind, dtype=dtype):
        low = model(images, tree).level_logits
        prediction = model.predict(images)
    for want, got in zip(reference, low):
        assert got.dtype == dtype
        assert float((got.float() - want).norm() / want.norm()) <= 2 * eps(dtype)
    assert prediction.labels.shape == (2, 32, 32)
    model.train()
    with torch.autocast(kind, dtype=dtype):
        loss = sum(logits.float().square().mean() for logits in model(images, tree).level_logits)
    loss.backward()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and bool(p.grad.isfinite().all()))
               for p in model.parameters())


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_inference_follows_weight_updates_and_equals_the_training_path(nuclei, backend):
    """Without autograd the decoder multiplies weights derived once (matmul layouts, merged biases); after every
    optimizer step its outputs equal those of the training path and of a fresh model with the updated weights."""
    torch.manual_seed(0)
    model = QGN(small_config(backend=backend)).double()
    masks = np.stack([(nuclei["instances"][:32, :64] > 0), nuclei["instances"][64:96, 96:160] % 3]).astype(np.uint8)
    tree = qt.encode(masks, 3)
    images = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        model.eval()
        with torch.no_grad():
            kept = model(images, tree).level_logits
        recorded = model(images, tree).level_logits  # autograd on: every weight derived anew
        for a, b in zip(kept, recorded):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        model.train()
        optimizer.zero_grad()
        sum((logits ** 2).sum() for logits in model(images, tree).level_logits).backward()
        optimizer.step()
    model.eval()
    fresh = QGN(model.config).double().eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for a, b in zip(model(images, tree).level_logits, fresh(images, tree).level_logits):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        a, b = model.predict(images), fresh.predict(images)
    assert torch.equal(a.labels, b.labels) and a.nodes_per_level == b.nodes_per_level


def test_inference_stops_where_nothing_is_expanded():
    """A level without expanded nodes ends the decoding without autograd: the deeper levels are empty, with empty
    logits of the right width - what the full computation (autograd on) gives."""
    torch.manual_seed(0)
    model = QGN(small_config()).eval()
    images = torch.randn(1, 3, 32, 40)
    tree = qt.encode(np.zeros((1, 32, 40), np.uint8), 3)  # no MIXED node
    with torch.no_grad():
        quick = model(images, tree)
    full = model(images, tree)
    assert [tuple(l.shape) for l in quick.level_logits] == [tuple(l.shape) for l in full.level_logits] == [
        (20, 4), (0, 4), (0, 4), (0, 3)]
    assert quick.nodes_per_level == full.nodes_per_level == [20, 0, 0, 0]
    assert quick.tree.equal(full.tree)
    torch.testing.assert_close(quick.level_logits[0], full.level_logits[0].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["qgn", "dense"])
def test_training_forward_and_backward_never_synchronise_the_host(kind):
    """Along a ground-truth tree the decoder takes the children from the tree's next level: the training forward
    and backward pass need no host synchronisation (a GPU runs them without stalling the host) - counted on the
    CPU with a dispatch mode."""
    torch.manual_seed(0)
    model = build_model(small_config(model=kind)).train()
    masks = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    tree = qt.encode(masks, 3)
    with HostSyncs() as syncs:
        out = model(torch.randn(2, 3, 32, 32), tree)
        sum(logits.sum() for logits in out.level_logits).backward()
    assert syncs.names == []
