"""SegBlocks (Verelst & Tuytelaars, TPAMI 2023) over this engine's dense network: blocks at two resolutions and a
learned policy that picks the high-resolution ones.

The image is cut into blocks of `block_size` pixels (`qgn.block_layout`). A small policy network (`PolicyNet`) gives
one logit per block; training samples a Bernoulli action per block (high with probability sigmoid(logit)),
evaluation takes logit > 0 (or a budget: the top fraction of blocks). The dense twin's network (`DenseTwin`: the
ResNet encoder, the root, the decoder levels' `forward_dense` - same modules, same state-dict layout) then runs over
the blocks, each layer once per resolution: high blocks at full resolution, low blocks on the 2x2 average-pooled
image; BlockPad fills every padding from the neighbouring blocks and batch norm takes joint statistics over both
resolutions. The full-resolution logits of the blocks are combined into one map (BlockCombine: low blocks bilinearly
upsampled within the block). With every block high this is exactly the dense twin's full-resolution output; the
heads of the coarser levels (the root head and the C + 1 heads above full resolution), which do not feed that
output, are not computed.

The walk over the network is explicit: one small function per module type (`run_module`), so a network that
holds anything else fails loudly instead of running wrong. It works on a batch-norm-folded copy too
(`qgn.fold.fold_batch_norm`: the norms become identities).

Training (`SegBlocksLoss`): cross-entropy of the full-resolution logits, plus REINFORCE for the policy - per block b
with supervised pixels, l_b = its mean cross-entropy (ignored pixels excluded); the advantage
A_b = (l_b - mean_b' l_b') + gamma * (t - the batch's high-resolution fraction), negated for low blocks;
loss_policy = mean_b(-log pi(a_b) * A_b), A detached; loss = loss_task + policy_weight * loss_policy.

Baselines through `SegBlocks.predict`: all blocks high (= the dense network), all low (= half resolution), an oracle
(the blocks with the most ground-truth boundary pixels), a budget on the learned policy, and a static resolution
of equal cost (`static_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from qgn import block_layout as bl
from qgn.block_layout import BlockLayout, BlockMap
from qgn.config import QGNConfig
from qgn.cost import meta_conv2d_macs
from qgn.encoder import BasicBlock, ResNetEncoder
from qgn.model import DecoderLevel, DenseTwin, check_images
from qgn.predict import Prediction
from qgn.stem import PixelStem
from sparse_ops import SubMConv2d, SubMResBlock

POLICIES = ("learned", "high", "low", "oracle", "static")
"""The block selections `SegBlocks.predict` offers."""

POLICY_INPUT_CELLS = 32
"""Policy input pixels per block side: the image is resized so that each block becomes 32 x 32 pixels, and the
policy's strides (4, 2, 2, 2) leave one output cell per block."""


@dataclass(eq=False)
class BlocksOutput:
    """What `SegBlocks.forward` computed.

    Attributes:
        logits: float (B, C, H, W), full resolution (low blocks upsampled within the block).
        high: bool (B, gh, gw), the blocks run at high resolution.
        policy_logits: float (B, gh, gw), the policy's logit per block (P(high) = sigmoid).
        log_prob: float (B, gh, gw), log pi of the action taken per block (training: sampled actions), with the
            policy's graph; None in evaluation (actions taken by logit > 0).
    """

    logits: torch.Tensor
    high: torch.Tensor
    policy_logits: torch.Tensor
    log_prob: torch.Tensor | None


class PolicyNet(nn.Module):
    """One logit per block: the image resized to 32 x 32 pixels per block (bilinear), Conv7x7 stride 4 (C_in ->
    width), BN, ReLU; two Conv5x5 stride 2 (width), BN, ReLU; Conv5x5 stride 2 (-> 1); padding k // 2 throughout.

    Shape:
        forward(images (B, C_in, H, W), grid_shape (gh, gw)) -> logits float (B, gh, gw).
    """

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        self.in_channels, self.width = in_channels, width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 4, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 5, 2, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.logit = nn.Conv2d(width, 1, 5, 2, 2)

    def forward(self, images: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
        size = (grid_shape[0] * POLICY_INPUT_CELLS, grid_shape[1] * POLICY_INPUT_CELLS)
        resized = images if tuple(images.shape[2:]) == size else \
            F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.logit(self.features(resized))[:, 0]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, width={self.width}"


# ---- the dense network over blocks: one function per module type ---------------------------------------------

def run_conv2d(conv: nn.Conv2d, x: BlockMap) -> BlockMap:
    if conv.padding_mode != "zeros":
        raise ValueError(f"block convolutions pad from the neighbouring blocks (zeros at the image border), got "
                         f"padding_mode={conv.padding_mode!r}")
    return bl.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def run_subm_conv(conv: SubMConv2d, x: BlockMap) -> BlockMap:
    """SubMConv2d.forward_dense: a 'same' convolution with padding dilation * (k // 2)."""
    return bl.conv2d(x, conv.weight, conv.bias, 1, conv.dilation * (conv.kernel_size // 2), conv.dilation)


def run_norm(norm: nn.Module, x: BlockMap) -> BlockMap:
    return bl.batch_norm(x, norm)


def run_relu(relu: nn.ReLU, x: BlockMap) -> BlockMap:
    return bl.relu(x, relu.inplace)


def run_identity(_: nn.Identity, x: BlockMap) -> BlockMap:
    return x


def run_sequential(sequence: nn.Sequential, x: BlockMap) -> BlockMap:
    for module in sequence:
        x = run_module(module, x)
    return x


def run_basic_block(block: BasicBlock, x: BlockMap) -> BlockMap:
    """BasicBlock.forward: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    out = bl.relu(run_module(block.bn1, run_module(block.conv1, x)), inplace=True)
    out = run_module(block.bn2, run_module(block.conv2, out))
    return bl.relu(bl.add(out, run_module(block.shortcut, x)), inplace=True)


def run_subm_block(block: SubMResBlock, x: BlockMap) -> BlockMap:
    """SubMResBlock.forward_dense: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    out = run_module(block.relu, run_module(block.bn1, run_module(block.conv1, x)))
    out = run_module(block.bn2, run_module(block.conv2, out))
    identity = x if block.shortcut is None else \
        run_module(block.shortcut["bn"], run_module(block.shortcut["conv"], x))
    return run_module(block.relu, bl.add(out, identity))


MODULE_RUNNERS = {
    nn.Sequential: run_sequential,
    nn.Conv2d: run_conv2d,
    SubMConv2d: run_subm_conv,
    nn.modules.batchnorm._BatchNorm: run_norm,  # BatchNorm2d, NodeBatchNorm
    nn.ReLU: run_relu,
    nn.Identity: run_identity,  # also FoldedBatchNorm
    BasicBlock: run_basic_block,
    SubMResBlock: run_subm_block,
}
"""Module type -> its run over a BlockMap (the first type in a module's MRO that is listed)."""


def run_module(module: nn.Module, x: BlockMap) -> BlockMap:
    """`module` (one of MODULE_RUNNERS' types) applied to a BlockMap, as its dense forward would be."""
    for kind in type(module).__mro__:
        if kind in MODULE_RUNNERS:
            return MODULE_RUNNERS[kind](module, x)
    raise TypeError(f"no block version of {type(module).__name__}; blocks run: "
                    f"{', '.join(kind.__name__ for kind in MODULE_RUNNERS)}")


def run_pixel_stem(stem: PixelStem, images: BlockMap) -> BlockMap:
    """PixelStem.forward_dense: the k x k conv of the image average-pooled to the stem's stride."""
    pooled = images if stem.stride == 1 else bl.avg_pool2d(images, stem.stride)
    return bl.conv2d(pooled, stem.weight, stem.bias, padding=stem.kernel_size // 2)


def run_decoder_level(level: DecoderLevel, parent: BlockMap, images: BlockMap, features: list[BlockMap],
                      with_head: bool) -> tuple[BlockMap, BlockMap | None]:
    """DecoderLevel.forward_dense over blocks: (features (.., C_l, ..), the head's logits or None)."""
    x = bl.conv_transpose2d(parent, level.expand.weight, level.expand.bias)
    if level.encoder_index is None:
        skip = run_pixel_stem(level.skip, images)
    else:
        skip = bl.conv2d(features[level.encoder_index], level.skip.weight[:, :, None, None], level.skip.bias)
    x = bl.add(x, skip)
    for block in level.blocks:
        x = run_subm_block(block, x)
    if not with_head:
        return x, None
    return x, bl.conv2d(x, level.head.weight[:, :, None, None], level.head.bias)


def block_network_logits(network: DenseTwin, images: BlockMap) -> BlockMap:
    """The dense twin's full-resolution logits computed over blocks: the encoder (pixel_unshuffle(4), stem, stages),
    the root, every decoder level; the head of the last level only.

    Args:
        network: a DenseTwin with the ResNet encoder (possibly batch-norm folded).
        images: the images in blocks (stride 1): high (n_h, C_in, b, b), low (n_l, C_in, b/2, b/2).
    Returns:
        the logits in blocks, high (n_h, C, b, b) and low (n_l, C, b/2, b/2).
    """
    encoder = network.encoder
    if not isinstance(encoder, ResNetEncoder):
        raise ValueError(f"SegBlocks runs the ResNet encoder only, got {type(encoder).__name__}")
    x = run_module(encoder.stem, bl.pixel_unshuffle(images, 4))
    features = [x]
    for stage in encoder.stages:
        x = run_module(stage, x)
        features.append(x)
    x = run_module(network.root, x)
    logits = None
    for index, level in enumerate(network.levels):
        x, logits = run_decoder_level(level, x, images, features, with_head=index == len(network.levels) - 1)
    return logits


def dense_network_logits(network: DenseTwin, images: torch.Tensor) -> torch.Tensor:
    """The dense twin's full-resolution logits (B, C, H, W) computed as `block_network_logits` does - without the
    heads of the coarser levels - on images (B, C_in, H, W), H and W multiples of 2**depth (the static baseline)."""
    features = network.encoder(images)
    x = network.root(features[-1])
    for level in network.levels[:-1]:
        x = level.dense_features(x, images, features)
    return network.levels[-1].forward_dense(x, images, features)[1]


class _EncoderAndRoot(nn.Module):
    def __init__(self, network: DenseTwin):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.root(self.network.encoder(images)[-1])


def network_macs(network: DenseTwin, height: int, width: int) -> int:
    """Multiply-accumulates of the dense network's full-resolution logits on one (height, width) image (multiples
    of 2**depth), as `block_network_logits` and `dense_network_logits` compute them: the encoder's and root's convs
    (counted in a shape-only run), and per decoder level its cells times `DecoderLevel.macs_per_node`, less the head
    of every level above full resolution. A block of side b costs network_macs(b, b) at high resolution and
    network_macs(b/2, b/2) at low: a 'same' convolution's MACs do not depend on what fills its padding."""
    # two images, halved: training-mode batch norm refuses a single value per channel, even on the meta device
    dense = meta_conv2d_macs(_EncoderAndRoot(network), (2, network.config.in_channels, height, width)) // 2
    last = len(network.levels) - 1
    for index, level in enumerate(network.levels):
        per_cell = level.macs_per_node()
        if index != last:
            per_cell -= level.expand.out_channels * level.num_outputs
        dense += (height // level.stride) * (width // level.stride) * per_cell
    return dense


# ---- block selection -------------------------------------------------------------------------------------------

def static_scale(high_fraction: float) -> float:
    """The image scale whose dense MACs equal those of a block policy with `high_fraction` of its blocks high:
    sqrt(f + (1 - f) / 4) (a low block costs a quarter of a high one; the policy network not counted)."""
    if not 0 <= high_fraction <= 1:
        raise ValueError(f"high_fraction must be in 0..1, got {high_fraction}")
    return math.sqrt(high_fraction + (1 - high_fraction) / 4)


def budget_count(fraction: float, num_blocks: int) -> int:
    """round(fraction * num_blocks), halves rounded up: the blocks a budget of `fraction` selects per image."""
    return math.floor(fraction * num_blocks + 0.5)


def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """bool (B, gh, gw): per image the budget_count(fraction, gh * gw) blocks of highest score (ties: the first in
    row-major order). scores: float or int (B, gh, gw)."""
    batch = scores.shape[0]
    flat = scores.reshape(batch, -1)
    k = budget_count(fraction, flat.shape[1])
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return chosen.view_as(scores)


def boundary_pixels(masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """bool (B, H, W): the pixels with a 4-neighbour of another label, both not the ignore label.

    Args:
        masks: int (B, H, W).
    """
    valid = masks != ignore_index
    boundary = torch.zeros_like(masks, dtype=torch.bool)
    vertical = (masks[:, 1:] != masks[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    horizontal = (masks[:, :, 1:] != masks[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    boundary[:, 1:] |= vertical
    boundary[:, :-1] |= vertical
    boundary[:, :, 1:] |= horizontal
    boundary[:, :, :-1] |= horizontal
    return boundary


def block_sums(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, gh, gw): the sum of values (B, gh * b, gw * b) over each block."""
    batch, height, width = values.shape
    return values.reshape(batch, height // block_size, block_size, width // block_size, block_size).sum((2, 4))


def oracle_blocks(masks: torch.Tensor, block_size: int, fraction: float, ignore_index: int = 255) -> torch.Tensor:
    """bool (B, gh, gw): per image the budget_count(fraction, blocks) blocks with the most ground-truth boundary
    pixels (`boundary_pixels`; ties: the first in row-major order). masks: int (B, H, W), padded here (with the
    ignore label) to multiples of block_size."""
    boundary = boundary_pixels(masks, ignore_index)
    counts = block_sums(qt.pad_to_multiple(boundary, block_size, False).long(), block_size)
    return top_fraction(counts, fraction)


# ---- the model -------------------------------------------------------------------------------------------------

class SegBlocks(nn.Module):
    """SegBlocks over the dense twin's network (see the module docstring).

    Attributes:
        config: the QGNConfig (model "segblocks"; its `segblocks` section holds block size and policy settings).
        network: the DenseTwin whose modules run over the blocks (state-dict keys "network.*" = a dense run's).
        policy: the PolicyNet.
    Shape:
        forward(images float (B, C_in, H, W), tree=None) -> BlocksOutput; H and W multiples of block_size.
        predict(images (B, C_in, H, W) of any size, policy=..., ...) -> qgn.predict.Prediction.
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        if config.model != "segblocks" or config.segblocks is None:
            raise ValueError(f"SegBlocks needs a config with model='segblocks', got model={config.model!r}")
        if config.encoder != "resnet":
            raise ValueError(f"SegBlocks runs over the ResNet encoder only (its stem and stages are walked block by "
                             f"block), got encoder={config.encoder!r}; use encoder='resnet'")
        self.config = config
        self.network = DenseTwin(config)
        # the heads above full resolution (the root head, the C + 1 heads of levels 1 .. depth - 1) do not feed
        # the full-resolution logits: kept for the dense twin's state-dict layout, frozen so that no optimizer or
        # DistributedDataParallel waits for their gradients
        for head in [self.network.root_head, *(level.head for level in self.network.levels[:-1])]:
            head.requires_grad_(False)
        self.policy = PolicyNet(config.in_channels, config.segblocks.policy_width)

    @property
    def block_size(self) -> int:
        return self.config.segblocks.block_size

    def check_images(self, images: torch.Tensor, whole_blocks: bool = True) -> None:
        check_images(images, self.config.in_channels, self.block_size if whole_blocks else 1, "block_size",
                     "SegBlocks.predict")

    def grid_shape(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[2] // self.block_size, images.shape[3] // self.block_size

    def forward(self, images: torch.Tensor, tree=None) -> BlocksOutput:
        """Policy, actions, the network over the blocks. `tree` (the target quadtree the trainer passes to every
        model) is ignored. Training: a Bernoulli action per block, with log pi; evaluation: high where logit > 0."""
        self.check_images(images)
        policy_logits = self.policy(images, self.grid_shape(images))
        if self.training:
            high = torch.bernoulli(torch.sigmoid(policy_logits.detach())).bool()
            log_prob = F.logsigmoid(torch.where(high, policy_logits, -policy_logits))  # log pi(a) before anything else
        else:
            high, log_prob = policy_logits > 0, None
        return BlocksOutput(self.block_logits(images, high), high, policy_logits, log_prob)

    def block_logits(self, images: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """float (B, C, H, W): the network over the blocks of `high` (bool (B, H / b, W / b)), combined."""
        self.check_images(images)
        layout = BlockLayout(high.to(device=images.device, dtype=torch.bool), self.block_size)
        if layout.grid_shape != self.grid_shape(images) or layout.batch_size != images.shape[0]:
            raise ValueError(f"high {tuple(high.shape)} must be (B, H / block_size, W / block_size) = "
                             f"({images.shape[0]}, {self.grid_shape(images)[0]}, {self.grid_shape(images)[1]})")
        return bl.combine(block_network_logits(self.network, bl.to_blocks(images, layout)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, policy: str = "learned", fraction: float | None = None,
                masks: torch.Tensor | None = None, scale: float | None = None) -> Prediction:
        """Labels at a chosen cost (the caller puts the model in eval mode, as for every engine model).

        Args:
            images: float (B, C_in, H, W), any H and W (padded at the bottom/right to multiples of block_size by
                repeating the last row and column; the labels cropped back).
            policy: "learned" (logit > 0; with `fraction`: the top fraction of blocks per image by logit), "high"
                (every block: the dense network), "low" (every block at half resolution), "oracle" (the blocks with
                the most ground-truth boundary pixels of `masks`, `fraction` of them, default the config's target),
                "static" (the dense network on the image resized by `scale`, logits resized back bilinearly).
            fraction: 0..1, the budget of "learned" and "oracle" (round(fraction * blocks) per image, halves up).
            masks: int (B, H, W), the ground truth for "oracle".
            scale: > 0, the resize factor of "static" (`static_scale(f)` costs what a policy of fraction f costs).
        Returns:
            Prediction(labels int64 (B, H, W), fine bool (B, H, W): the pixels of high blocks (all True for "high"
            and "static" at scale >= 1, all False for "low" and "static" below), stats {"high_res_fraction": mean
            over the images of the fraction of their blocks at high resolution, "target": the config's target,
            "policy_net": 1.0 where the policy network ran ("learned") else 0.0, and for "static" "scale"}).
        """
        self.check_predict_args(images, policy, fraction, masks, scale)
        if policy == "static":
            return self._predict_static(images, scale)
        batch, _, height, width = images.shape
        padded = qt.pad_to_multiple(images, self.block_size, mode="replicate")
        grid = self.grid_shape(padded)
        if policy == "learned":
            logits = self.policy(padded, grid)
            high = logits > 0 if fraction is None else top_fraction(logits, fraction)
        elif policy == "oracle":
            target = self.config.segblocks.target if fraction is None else fraction
            high = oracle_blocks(masks.to(images.device), self.block_size, target, self.config.ignore_index)
        else:
            high = torch.full((batch, *grid), policy == "high", dtype=torch.bool, device=images.device)
        logits = self.block_logits(padded, high)[:, :, :height, :width]
        # every block holds image pixels (the padding is less than a block), so all blocks count
        fine = high.repeat_interleave(self.block_size, 1).repeat_interleave(self.block_size, 2)[:, :height, :width]
        stats = {"high_res_fraction": high.float().mean().item(), "target": self.config.segblocks.target,
                 "policy_net": float(policy == "learned")}
        return Prediction(logits.argmax(1), fine=fine, stats=stats)

    def _predict_static(self, images: torch.Tensor, scale: float) -> Prediction:
        batch, _, height, width = images.shape
        size = static_size((height, width), scale)
        resized = images if size == (height, width) else \
            F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        padded = qt.pad_to_multiple(resized, 1 << self.config.depth, mode="replicate")
        logits = dense_network_logits(self.network, padded)[:, :, :size[0], :size[1]]
        if size != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        fine = torch.full((batch, height, width), scale >= 1, dtype=torch.bool, device=images.device)
        stats = {"high_res_fraction": float(scale >= 1), "target": self.config.segblocks.target,
                 "policy_net": 0.0, "scale": float(scale)}
        return Prediction(logits.argmax(1), fine=fine, stats=stats)

    def check_predict_args(self, images, policy, fraction, masks, scale) -> None:
        self.check_images(images, whole_blocks=False)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        if fraction is not None:
            if policy not in ("learned", "oracle"):
                raise ValueError(f"fraction is the budget of the 'learned' and 'oracle' policies, not of {policy!r}")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ValueError(f"fraction is a fraction of the blocks in 0..1, got {fraction!r}")
        if policy == "oracle":
            if masks is None:
                raise ValueError("the oracle policy needs masks: the ground truth int (B, H, W) of the images")
            if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (images.shape[0], *images.shape[2:]) \
                    or masks.is_floating_point():
                raise ValueError(f"masks must be an int tensor (B, H, W) = ({images.shape[0]}, {images.shape[2]}, "
                                 f"{images.shape[3]}), got {bl.describe(masks)}")
        elif masks is not None:
            raise ValueError(f"masks are the oracle's ground truth; policy {policy!r} does not take them")
        if policy == "static":
            if scale is None:
                raise ValueError("the static policy needs scale (> 0): the image resize factor, e.g. "
                                 "static_scale(high_fraction) for the cost of a policy with that fraction")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 16:
                raise ValueError(f"scale must be a resize factor in (0, 16], got {scale!r}")
        elif scale is not None:
            raise ValueError(f"scale is the resize factor of the static policy; policy {policy!r} does not take it")

    def prediction_macs(self, images_shape: tuple[int, int, int, int], prediction: Prediction) -> int:
        """Multiply-accumulates of `prediction` (from `predict`) on images of `images_shape` (B, C_in, H, W), as
        predict received them: the policy network's convs where it ran, plus per block the network's MACs at its
        resolution (`network_macs` of a block of side b or b/2); for "static", the network's MACs on the resized
        image padded to multiples of 2**depth. Interpolation, pooling and batch norm are not counted."""
        batch, channels, height, width = (int(v) for v in images_shape)
        if "scale" in prediction.stats:
            cell = 1 << self.config.depth
            size = qt.padded_size(static_size((height, width), prediction.stats["scale"]), cell)
            return batch * network_macs(self.network, *size)
        b = self.block_size
        padded = qt.padded_size((height, width), b)
        high = int(prediction.fine[:, ::b, ::b].sum())  # a block's top-left pixel is always in the image
        low = batch * (padded[0] // b) * (padded[1] // b) - high
        macs = high * network_macs(self.network, b, b) + low * network_macs(self.network, b // 2, b // 2)
        if prediction.stats.get("policy_net"):
            grid = (padded[0] // b, padded[1] // b)
            macs += meta_conv2d_macs(self.policy, (batch, channels, *padded), grid)
        return macs


def static_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w): the image size `size` resized by `scale` (rounded, at least 1)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# ---- the loss --------------------------------------------------------------------------------------------------

def block_mean_losses(pixel_losses: torch.Tensor, supervised: torch.Tensor, grid_shape: tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per block over its supervised pixels.

    Args:
        pixel_losses: float (B, H, W) (0 where not supervised); supervised: bool (B, H, W).
    Returns:
        (float (B, gh, gw) the means, 0 where a block has no supervised pixel; bool (B, gh, gw) which have one).
    """
    block = pixel_losses.shape[1] // grid_shape[0]
    sums = block_sums(pixel_losses, block)
    counts = block_sums(supervised.to(pixel_losses.dtype), block)
    has = counts > 0
    return sums / counts.clamp_min(1), has


def reinforce_loss(log_prob: torch.Tensor, high: torch.Tensor, block_losses: torch.Tensor, valid: torch.Tensor,
                   target: float, gamma: float) -> torch.Tensor:
    """The policy loss: mean over valid blocks of -log pi(a_b) * A_b, A detached, with
    A_b = (l_b - mean of l over the valid blocks) + gamma * (target - fraction of high blocks in the batch),
    negated for low blocks.

    Args:
        log_prob: float (B, gh, gw), log pi of the actions taken; high: bool (B, gh, gw), the actions.
        block_losses: float (B, gh, gw), l_b; valid: bool (B, gh, gw), blocks with supervised pixels.
    Returns:
        a scalar; 0 (in the graph) without valid blocks.
    """
    if not bool(valid.any()):
        return log_prob.sum() * 0.0
    losses = block_losses.detach().float()
    fraction = high.float().mean()
    advantage = (losses - losses[valid].mean()) + gamma * (target - fraction)
    advantage = torch.where(high, advantage, -advantage)
    return -(log_prob.float()[valid] * advantage[valid]).mean()


class SegBlocksLoss(nn.Module):
    """Task cross-entropy plus the REINFORCE policy loss (see the module docstring).

    Shape:
        forward(output: BlocksOutput, tree (ignored), masks int64 (B, H, W)) -> {"loss_task", "loss_policy",
        "high_res_fraction" (detached), "loss" = loss_task + policy_weight * loss_policy}, float32 scalars.
        In evaluation (output.log_prob None) loss_policy is 0.
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        if config.segblocks is None:
            raise ValueError("SegBlocksLoss needs a config with model='segblocks' (its segblocks section)")
        self.ignore_index = config.ignore_index
        self.target = config.segblocks.target
        self.gamma = config.segblocks.policy_gamma
        self.policy_weight = config.segblocks.policy_weight

    def forward(self, output: BlocksOutput, tree, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = output.logits.float()
        if tuple(masks.shape) != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"masks must be (B, H, W) = ({logits.shape[0]}, {logits.shape[2]}, {logits.shape[3]}), "
                             f"got {tuple(masks.shape)}")
        masks = masks.long()
        supervised = masks != self.ignore_index
        pixel_losses = F.cross_entropy(logits, masks, ignore_index=self.ignore_index, reduction="none")
        count = supervised.sum()
        loss_task = pixel_losses.sum() / count if bool(count > 0) else logits.sum() * 0.0
        if output.log_prob is None:
            loss_policy = torch.zeros((), device=logits.device)
        else:
            block_losses, valid = block_mean_losses(pixel_losses, supervised, tuple(output.high.shape[1:]))
            loss_policy = reinforce_loss(output.log_prob, output.high, block_losses, valid, self.target, self.gamma)
        return {"loss_task": loss_task, "loss_policy": loss_policy,
                "high_res_fraction": output.high.float().mean().detach(),
                "loss": loss_task + self.policy_weight * loss_policy}

    def extra_repr(self) -> str:
        return f"target={self.target}, gamma={self.gamma}, policy_weight={self.policy_weight}"
