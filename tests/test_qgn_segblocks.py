"""qgn.segblocks: the block network against the dense twin (all high, all low), BlockPad at network level, the
REINFORCE loss on a hand example, the policy, prediction under every policy, MACs against torch's FlopCounterMode,
batch-norm folding, and a short training run."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import quadtree as qt
from qgn import block_layout as bl
from qgn.block_layout import BlockLayout
from qgn.config import QGNConfig, SegBlocksConfig
from qgn.fold import fold_batch_norm
from qgn.model import DenseTwin
from qgn.segblocks import (BlocksOutput, PolicyNet, SegBlocks, SegBlocksLoss, boundary_pixels, budget_count,
                           dense_network_logits, network_macs, run_module, static_scale)
from rounding import DEVICES
from batch_norms import randomize_batch_norms

CLASSES = 3


def small_config(block_size: int = 16, **segblocks) -> QGNConfig:
    segblocks.setdefault("policy_width", 8)
    return QGNConfig.for_depth(3, num_classes=CLASSES, model="segblocks",
                               segblocks=SegBlocksConfig(block_size=block_size, **segblocks))


def small_model(block_size: int = 16, trained: bool = True, **segblocks) -> SegBlocks:
    """A small SegBlocks; `trained`: batch norms with non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    model = SegBlocks(small_config(block_size, **segblocks))
    if trained:
        randomize_batch_norms(model, mean=0.5)
    return model


def dense_twin_of(model: SegBlocks) -> DenseTwin:
    """A DenseTwin (model "dense") holding the SegBlocks network's weights: the same state-dict layout."""
    twin = DenseTwin(dataclasses.replace(model.config, model="dense", segblocks=None))
    twin.load_state_dict(model.network.state_dict())
    return twin.to(next(model.parameters()).dtype).train(model.training)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_all_high_blocks_are_the_dense_twin_outputs_and_gradients(training, device):
    """Every block high: the logits equal DenseTwin.dense_maps(...)[-1] with the same weights, and so do the
    gradients of the images and of every parameter (float64), and in training the batch norms' running statistics
    (joint statistics over all cells = the dense map's)."""
    model = small_model().double().to(device).train(training)
    twin = dense_twin_of(model).to(device)
    images = torch.randn(2, 3, 32, 48, dtype=torch.float64, device=device, requires_grad=True)
    logits = model.block_logits(images, torch.ones(2, 2, 3, dtype=torch.bool))
    expected = twin.dense_maps(images, twin.encoder(images))[-1]
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)

    weights = torch.randn_like(expected)
    want = torch.autograd.grad((expected * weights).sum(), [images, *twin.parameters()], allow_unused=True)
    names = ["images", *(name for name, _ in twin.named_parameters())]
    unused = {name for name, g in zip(names, want) if g is None}  # the heads that do not feed the output
    frozen = {name for name, p in model.network.named_parameters() if not p.requires_grad}
    assert unused == frozen == {"root_head.weight", "root_head.bias"} | {f"levels.{i}.head.{p}" for i in range(2)
                                                                         for p in ("weight", "bias")}
    trained = [p for p in model.network.parameters() if p.requires_grad]
    got = torch.autograd.grad((logits * weights).sum(), [images, *trained])
    want = [g for g in want if g is not None]
    assert len(got) == len(want) == len(names) - len(unused)
    for name, a, b in zip([n for n in names if n not in unused], got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
    for (name, a), (_, b) in zip(model.network.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("training", [False, True])
def test_all_low_blocks_are_the_dense_network_on_the_pooled_image(training):
    """Every block low: the network runs on the 2x2-average-pooled image, each block's logits bilinearly upsampled
    within the block (BlockPad between same-resolution blocks is the dense zero-padded convolution's input)."""
    model = small_model().double().train(training)
    twin = dense_twin_of(model)
    images = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    got = model.block_logits(images, torch.zeros(1, 2, 4, dtype=torch.bool))
    pooled_logits = twin.dense_maps(F.avg_pool2d(images, 2), twin.encoder(F.avg_pool2d(images, 2)))[-1]
    for y in range(2):
        for x in range(4):
            block = pooled_logits[:, :, 8 * y:8 * y + 8, 8 * x:8 * x + 8]
            expected = F.interpolate(block, scale_factor=2, mode="bilinear", align_corners=False)
            torch.testing.assert_close(got[:, :, 16 * y:16 * y + 16, 16 * x:16 * x + 16], expected, rtol=1e-10,
                                       atol=1e-10)
    for (name, a), (_, b) in zip(model.network.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    # one block: the whole pooled image's logits, upsampled
    model.eval(), twin.eval()
    single = images[:, :, :16, :16]
    expected = F.interpolate(twin.dense_maps(F.avg_pool2d(single, 2), twin.encoder(F.avg_pool2d(single, 2)))[-1],
                             scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.block_logits(single, torch.zeros(1, 1, 1, dtype=torch.bool)), expected,
                               rtol=1e-10, atol=1e-10)


def test_mixed_layout_trains_both_resolutions_and_the_policy():
    """Training on a mixed layout: finite logits; the loss reaches the pixels of high and of low blocks, every
    parameter that feeds the output, and the policy (through log pi)."""
    model = small_model(trained=False).train()
    images = torch.randn(2, 3, 32, 48, requires_grad=True)
    torch.manual_seed(3)
    output = model(images)
    assert output.logits.shape == (2, CLASSES, 32, 48) and bool(torch.isfinite(output.logits).all())
    assert output.high.dtype == torch.bool and output.high.shape == output.policy_logits.shape == (2, 2, 3)
    assert bool(output.high.any()) and not bool(output.high.all())  # both groups present (seeded)
    masks = torch.randint(0, CLASSES, (2, 32, 48))
    losses = SegBlocksLoss(model.config)(output, None, masks)
    losses["loss"].backward()
    pixel_grad = images.grad.abs().sum(1).view(2, 2, 16, 3, 16).sum((2, 4))  # (B, gh, gw): per block
    assert bool((pixel_grad > 0).all())
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.policy.parameters())
    assert model.network.levels[-1].head.weight.grad.abs().sum() > 0


def test_block_pad_leaves_no_seams_on_a_constant_image():
    """BlockPad on a mixed layout: a constant image gives the encoder stem's features the one value of the image's
    interior at every cell of the inner blocks, at either resolution - each cell's receptive field (three 3x3 convs:
    at most 32 pixels including a low neighbour's cell) lies inside the image and holds only that constant. Per-block
    zero padding (the ablation) would make seams at every block border instead."""
    model = small_model(block_size=32).double().eval()
    stem = model.network.encoder.stem
    image = torch.full((1, 3, 192, 192), 0.7, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    high = torch.rand(1, 6, 6, generator=generator) < 0.5
    high[0, 2, 2], high[0, 3, 3], high[0, 2, 3], high[0, 3, 2] = True, False, True, False
    layout = BlockLayout(high, 32)
    features = run_module(stem, bl.pixel_unshuffle(bl.to_blocks(image, layout), 4))
    everywhere = run_module(stem, bl.pixel_unshuffle(bl.to_blocks(image, BlockLayout(torch.ones_like(high), 32)), 4))
    interior = bl.combine(everywhere)[0, :, 24, 24]  # the stride-4 cell at the image centre
    inner = [(y, x) for y in (2, 3) for x in (2, 3)]
    for group, index in zip(bl.GROUPS, layout.block_index()):
        for row, block in enumerate(index.tolist()):
            if (block // 6, block % 6) in inner:
                cells = getattr(features, group)[row]
                torch.testing.assert_close(cells, interior[:, None, None].expand_as(cells), rtol=1e-12, atol=1e-12)
    # the ablation: zero padding per block changes the cells at the block borders
    conv = stem[0][0]
    blocks = bl.pixel_unshuffle(bl.to_blocks(image, layout), 4).high
    zero_padded = F.conv2d(blocks, conv.weight, conv.bias, padding=1)
    block_padded = bl.conv2d(bl.pixel_unshuffle(bl.to_blocks(image, layout), 4), conv.weight, conv.bias, padding=1)
    inner_rows = [row for row, block in enumerate(layout.block_index()[0].tolist()) if (block // 6, block % 6) in inner]
    assert (zero_padded[inner_rows] - block_padded.high[inner_rows]).abs().amax() > 1e-3


def hand_output(high, log_prob, logits):
    return BlocksOutput(logits, torch.tensor(high), torch.zeros(1, *torch.tensor(high).shape[1:]), log_prob)


def test_reinforce_loss_on_a_hand_example():
    """Two 16x16 blocks: the left high with CE ln 2 at every pixel; the right low with CE log(1 + e^-2) where
    supervised and its bottom half ignored (there the logits would give CE ~ 10). t = 0.4, gamma = 10, weight 4
    (the paper's settings, the config's defaults)."""
    config = small_config()
    logits = torch.zeros(1, 2, 16, 32)
    logits[0, 0, :, 16:] = 2.0
    logits[0, 0, 8:, 16:], logits[0, 1, 8:, 16:] = -5.0, 5.0
    masks = torch.zeros(1, 16, 32, dtype=torch.long)
    masks[0, 8:, 16:] = 255
    log_prob = torch.tensor([[[-0.3, -1.2]]], requires_grad=True)
    losses = SegBlocksLoss(config)(hand_output([[[True, False]]], log_prob, logits), None, masks)

    l_high, l_low = math.log(2), math.log(1 + math.exp(-2))
    mean = (l_high + l_low) / 2
    advantage_high = (l_high - mean) + 10 * (0.4 - 0.5)  # harder than the mean, but too many blocks are high
    advantage_low = -((l_low - mean) + 10 * (0.4 - 0.5))  # low: the sign flipped
    assert advantage_high < 0 < advantage_low
    expected_policy = (0.3 * advantage_high + 1.2 * advantage_low) / 2
    expected_task = (256 * l_high + 128 * l_low) / 384
    assert losses["loss_task"].item() == pytest.approx(expected_task, rel=1e-5)
    assert losses["loss_policy"].item() == pytest.approx(expected_policy, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(expected_task + 4 * expected_policy, rel=1e-5)
    assert losses["high_res_fraction"].item() == 0.5 and not losses["high_res_fraction"].requires_grad
    losses["loss"].backward()
    # d loss / d log pi(a_b) = -weight * A_b / 2: the high action made less likely, the low one more
    torch.testing.assert_close(log_prob.grad, torch.tensor([[[-4 * advantage_high / 2, -4 * advantage_low / 2]]]))

    # gamma = 0: only the loss term - the hard block is pushed to high, the easy one to low
    no_compute = SegBlocksLoss(small_config(policy_gamma=0.0, policy_weight=1.0))
    log_prob = torch.tensor([[[-0.3, -1.2]]], requires_grad=True)
    no_compute(hand_output([[[True, False]]], log_prob, logits), None, masks)["loss_policy"].backward()
    half_gap = (l_high - l_low) / 2
    torch.testing.assert_close(log_prob.grad, torch.tensor([[[-half_gap / 2, -half_gap / 2]]]))

    # a third block with every pixel ignored takes no part: the mean, the gradient and the divisor skip it
    logits3 = torch.cat([logits, torch.zeros(1, 2, 16, 16)], 3)
    masks3 = torch.cat([masks, torch.full((1, 16, 16), 255)], 2)
    log_prob = torch.tensor([[[-0.3, -1.2, -0.7]]], requires_grad=True)
    losses = SegBlocksLoss(config)(hand_output([[[True, False, True]]], log_prob, logits3), None, masks3)
    fraction = 2 / 3
    a_high = (l_high - mean) + 10 * (0.4 - fraction)
    a_low = -((l_low - mean) + 10 * (0.4 - fraction))
    assert losses["loss_policy"].item() == pytest.approx((0.3 * a_high + 1.2 * a_low) / 2, rel=1e-5)
    losses["loss_policy"].backward()
    assert log_prob.grad[0, 0, 2].item() == 0.0
    # evaluation (no log pi): no policy loss
    evaluated = SegBlocksLoss(config)(hand_output([[[True, False]]], None, logits), None, masks)
    assert evaluated["loss_policy"].item() == 0.0 and evaluated["loss"].item() == pytest.approx(expected_task, rel=1e-5)


@pytest.mark.parametrize("size,block_size", [((16, 16), 16), ((32, 48), 16), ((80, 48), 16), ((64, 128), 32),
                                             ((128, 128), 128)])
def test_policy_gives_one_logit_per_block(size, block_size):
    policy = PolicyNet(3, 8).eval()
    grid = (size[0] // block_size, size[1] // block_size)
    assert policy(torch.randn(2, 3, *size), grid).shape == (2, *grid)


def test_forward_samples_in_training_and_thresholds_in_evaluation():
    model = small_model()
    images = torch.randn(2, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        output = model(images, tree=object())  # the trainer's tree is accepted and ignored
    assert output.log_prob is None and torch.equal(output.high, output.policy_logits > 0)
    model.train()
    torch.manual_seed(0)
    output = model(images)
    p_high = torch.sigmoid(output.policy_logits)
    expected = torch.where(output.high, p_high, 1 - p_high).log()
    torch.testing.assert_close(output.log_prob, expected)
    assert output.log_prob.requires_grad and not output.high.requires_grad
    with pytest.raises(ValueError, match="multiple of block_size = 16"):
        model(torch.randn(1, 3, 24, 48))


def test_predict_on_odd_image_sizes_for_every_policy():
    """Any size: padded to whole blocks (replicate) and cropped back; "high" is the dense network on the padded
    image, "static" at scale 1 the dense twin's own prediction; fine and the high fraction describe the blocks."""
    model = small_model().eval()
    twin = dense_twin_of(model).eval()
    images = torch.randn(2, 3, 37, 53)  # 3 x 4 blocks of 16 after padding
    masks = torch.randint(0, CLASSES, (2, 37, 53))
    for knobs in [{}, {"fraction": 0.5}, {"policy": "high"}, {"policy": "low"}, {"policy": "oracle", "masks": masks},
                  {"policy": "static", "scale": 0.5}, {"policy": "static", "scale": 1.0}]:
        prediction = model.predict(images, **knobs)
        assert prediction.labels.shape == (2, 37, 53) and prediction.labels.dtype == torch.int64
        assert prediction.fine.shape == (2, 37, 53) and prediction.fine.dtype == torch.bool
        assert prediction.tree is None and prediction.nodes_per_level is None
        assert prediction.stats["target"] == 0.4
        if knobs.get("policy") != "static":
            blocks = prediction.fine[:, ::16, ::16]
            assert blocks.shape == (2, 3, 4)
            assert prediction.stats["high_res_fraction"] == pytest.approx(blocks.float().mean().item())
            expanded = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :37, :53]
            assert torch.equal(prediction.fine, expanded)
    with torch.no_grad():
        padded = qt.pad_to_multiple(images, 16, mode="replicate")
        high = model.predict(images, policy="high")
        expected = twin.dense_maps(padded, twin.encoder(padded))[-1][:, :, :37, :53].argmax(1)
        assert torch.equal(high.labels, expected) and bool(high.fine.all()) and high.stats["high_res_fraction"] == 1
        low = model.predict(images, policy="low")
        assert not bool(low.fine.any()) and low.stats["high_res_fraction"] == 0
        static = model.predict(images, policy="static", scale=1.0)
        padded8 = qt.pad_to_multiple(images, 8, mode="replicate")
        expected = twin.dense_maps(padded8, twin.encoder(padded8))[-1][:, :, :37, :53].argmax(1)
        assert torch.equal(static.labels, expected) and bool(static.fine.all())
        assert not bool(model.predict(images, policy="static", scale=0.7).fine.any())
        learned = model.predict(images)
        logits = model.policy(padded, (3, 4))
        assert torch.equal(learned.fine[:, ::16, ::16], logits > 0)


def test_budget_picks_exactly_the_top_fraction_of_blocks():
    model = small_model().eval()
    images = torch.randn(2, 3, 48, 64)  # 12 blocks per image
    logits = model.policy(images, (3, 4)).detach()
    for fraction in (0.0, 0.3, 0.5, 0.99, 1.0):
        chosen = model.predict(images, fraction=fraction).fine[:, ::16, ::16]
        k = budget_count(fraction, 12)
        assert k == math.floor(fraction * 12 + 0.5)
        assert chosen.flatten(1).sum(1).tolist() == [k, k]
        for b in range(2):
            top = logits[b].flatten().topk(k).indices.sort().values
            assert torch.equal(chosen[b].flatten().nonzero().flatten(), top)


def test_oracle_picks_the_blocks_with_the_most_boundary_pixels():
    """A vertical line of class 1 in block column 2 makes boundary pixels there; a stripe of the ignore label in
    column 0 makes none (ignore is excluded)."""
    model = small_model().eval()
    masks = torch.zeros(1, 32, 64, dtype=torch.long)
    masks[0, :, 40] = 1
    masks[0, :, 4:8] = 255
    boundary = boundary_pixels(masks)
    assert boundary.sum().item() == 3 * 32 and bool(boundary[0, :, 39:42].all())
    images = torch.randn(1, 3, 32, 64)
    chosen = model.predict(images, policy="oracle", masks=masks, fraction=0.25).fine[:, ::16, ::16]
    assert chosen.tolist() == [[[False, False, True, False], [False, False, True, False]]]
    # default fraction: the config's target, 0.4 of 8 blocks -> 3 (ties broken in row-major order)
    chosen = model.predict(images, policy="oracle", masks=masks).fine[:, ::16, ::16]
    assert chosen.tolist() == [[[True, False, True, False], [False, False, True, False]]]


def test_invalid_knobs_raise_clear_errors():
    model = small_model().eval()
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        model.predict(images, policy="best")
    with pytest.raises(ValueError, match="in 0..1"):
        model.predict(images, fraction=1.5)
    with pytest.raises(ValueError, match="oracle policy needs masks"):
        model.predict(images, policy="oracle")
    with pytest.raises(ValueError, match="masks must be an int tensor"):
        model.predict(images, policy="oracle", masks=torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="static policy needs scale"):
        model.predict(images, policy="static")
    with pytest.raises(ValueError, match="does not take it"):
        model.predict(images, scale=0.5)
    with pytest.raises(ValueError, match="not of 'high'"):
        model.predict(images, policy="high", fraction=0.5)
    with pytest.raises(ValueError, match="3-channel images, got 1"):
        model.predict(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="encoder='resnet'"):
        SegBlocks(dataclasses.replace(small_config(block_size=64), encoder="efficientnet_lite0", depth=5,
                                      encoder_channels=(32, 48, 64, 96), decoder_channels=(96, 64, 48, 32, 24, 16)))
    with pytest.raises(ValueError, match="model='segblocks'"):
        SegBlocks(QGNConfig.for_depth(3, model="dense"))
    with pytest.raises(ValueError, match="high_fraction"):
        static_scale(1.2)


@pytest.mark.parametrize("knobs", [{"policy": "high"}, {"policy": "low"}, {"policy": "learned", "fraction": 0.4},
                                   {"policy": "learned"}, {"policy": "oracle"}, {"policy": "static", "scale": 0.6}])
def test_prediction_macs_equal_torch_flop_counter(knobs):
    """The model's count equals what FlopCounterMode counts of the convolutions that ran (2 FLOPs per MAC)."""
    model = small_model().eval()
    images = torch.randn(2, 3, 40, 56)  # padded to 48 x 64: 3 x 4 blocks
    if knobs["policy"] == "oracle":
        knobs = {**knobs, "masks": torch.randint(0, CLASSES, (2, 40, 56))}
    with FlopCounterMode(display=False) as counter:
        prediction = model.predict(images, **knobs)
    assert model.prediction_macs(tuple(images.shape), prediction) == counter.get_total_flops() // 2 > 0


def test_macs_scale_with_area_so_the_static_scale_matches_a_policy():
    """A 'same' network's MACs are proportional to the area: a low block costs a quarter of a high one, and the
    image resized by static_scale(f) costs what a policy with a fraction f of high blocks costs."""
    network = small_model().network
    high, low = network_macs(network, 16, 16), network_macs(network, 8, 8)
    assert high == 4 * low and network_macs(network, 48, 64) == 12 * high
    for fraction in (0.0, 0.25, 0.4, 1.0):
        assert static_scale(fraction) ** 2 * high == pytest.approx(fraction * high + (1 - fraction) * low)
    assert static_scale(1.0) == 1.0 and static_scale(0.0) == 0.5


def test_batch_norm_folded_copy_gives_the_same_prediction():
    model = small_model().eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    images = torch.randn(2, 3, 32, 48)
    high = torch.tensor([[[True, False, True], [False, False, True]], [[False, True, False], [True, True, False]]])
    with torch.no_grad():
        torch.testing.assert_close(folded.block_logits(images, high), model.block_logits(images, high),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded.policy(images, (2, 3)), model.policy(images, (2, 3)), rtol=1e-4, atol=1e-4)
    assert (folded.predict(images).labels == model.predict(images).labels).float().mean() > 0.999


def test_dense_network_logits_is_the_dense_twin_output():
    model = small_model().double().eval()
    twin = dense_twin_of(model).eval()
    images = torch.randn(1, 3, 24, 40, dtype=torch.float64)
    torch.testing.assert_close(dense_network_logits(model.network, images),
                               twin.dense_maps(images, twin.encoder(images))[-1], rtol=1e-10, atol=1e-10)


def two_class_scenes(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, 32, 64) of a bright rectangle (class 1) on a dark background (class 0), with noise."""
    masks = torch.zeros(batch, 32, 64, dtype=torch.long)
    for b in range(batch):
        y, x = torch.randint(0, 16, (2,), generator=generator).tolist()
        masks[b, y:y + 12, 2 * x:2 * x + 24] = 1
    images = masks[:, None].float().expand(-1, 3, -1, -1) * 2 - 1
    return images + 0.3 * torch.randn(images.shape, generator=generator), masks


@pytest.mark.parametrize("target", [0.1, 0.9])
def test_a_short_training_run_lowers_the_loss_and_moves_the_fraction_toward_the_target(target):
    """SGD on synthetic two-class scenes: the task loss falls, and the policy's expected high fraction (mean
    sigmoid of its logits) moves from about 0.4 toward the target, down for 0.1 and up for 0.9."""
    torch.manual_seed(0)
    config = dataclasses.replace(small_config(target=target), num_classes=2)
    model = SegBlocks(config).train()
    criterion = SegBlocksLoss(config)
    optimizer = torch.optim.SGD([{"params": model.network.parameters()},
                                 {"params": model.policy.parameters(), "lr": 0.001}], lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    task, expected_fraction = [], []
    for _ in range(15):
        images, masks = two_class_scenes(4, generator)
        output = model(images)
        losses = criterion(output, None, masks)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        task.append(losses["loss_task"].item())
        expected_fraction.append(torch.sigmoid(output.policy_logits).mean().item())
    assert sum(task[-3:]) / 3 < 0.3 * sum(task[:3]) / 3
    assert abs(expected_fraction[-1] - target) < abs(expected_fraction[0] - target) - 0.2
