"""SparseRefine (Liu et al., ECCV 2024) on this engine's sparse ops: refine a dense model's low-resolution
prediction at its uncertain pixels.

A frozen base network runs on the image downscaled by `base_scale`; its logits are resized to full resolution
(nearest, as the original; or bilinear). The selector keeps the pixels whose softmax entropy
H = -sum p log max(p, 1e-5) exceeds `tau` (or, with a budget, the K most uncertain pixels of each image), never a
pixel outside `valid` (the image without the padding a collate added). A sparse U-Net (`SparseUNet`) runs over the selected full-resolution pixels only, on their
normalised intensities; a gated ensembler mixes base and refiner logits per site:
w = softmax(MLP[2(C+1) -> 64 -> 2]([softmax(l1), H1, softmax(l2), H2])), output = MLP[C -> 64 -> C](w1 l1 + w2 l2),
and the mixed logits replace the base logits at the selected pixels. Training: the base frozen and run under
no_grad; loss = CE(refiner logits) + CE(mixed logits) over the selected sites, ignore label excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from qgn.model import DenseTwin
from sparse_ops import NodeBatchNorm, SparseGeometry, SubMConv2d
from sparse_ops.strided import StridedConv2d, TransposedConv2d

ENTROPY_FLOOR = 1e-5
"""H = -sum p log max(p, 1e-5), as the official code computes it."""


@dataclass
class RefineConfig:
    base_scale: float = 0.25  # the base runs on the image resized by this factor
    upsample: str = "nearest"  # how base logits reach full resolution: "nearest" (the original) or "bilinear"
    tau: float | None = 0.1  # refine where the base's entropy exceeds tau (None: refine_fraction or budget)
    widths: tuple[int, ...] = (16, 32, 64)  # U-Net widths, finest first (the original: 32 .. 1024, ~79 M params)
    blocks: int = 1  # pre-activation residual blocks per level, down and up (the original: 2)
    gate_hidden: int = 64  # hidden width of the ensembler's two MLPs

    def __post_init__(self):
        self.widths = tuple(self.widths)
        if self.upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")
        if not 0 < self.base_scale <= 1:
            raise ValueError(f"base_scale must be in (0, 1], got {self.base_scale}")
        if self.tau is not None and self.tau < 0:
            raise ValueError(f"tau is an entropy threshold >= 0, got {self.tau}")
        if not self.widths or self.blocks < 0:
            raise ValueError("widths needs at least one width and blocks must be >= 0")


def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax entropy along `dim`, float32: -sum p log max(p, 1e-5) (the official floor)."""
    p = torch.softmax(logits.float(), dim)
    return -(p * p.clamp_min(ENTROPY_FLOOR).log()).sum(dim)


def select_uncertain(uncertainty: torch.Tensor, valid: torch.Tensor | None = None, tau: float | None = None,
                     budget: int | None = None) -> torch.Tensor:
    """bool (B, H, W): the pixels to refine - entropy > tau, and/or at most `budget` per image (the most
    uncertain first) - never where `valid` (bool (B, H, W), the image without its padding) is False.

    Args:
        uncertainty: float (B, H, W), e.g. `entropy(base_logits)`.
    """
    if tau is None and budget is None:
        raise ValueError("select with tau (an entropy threshold), a budget (pixels per image), or both")
    score = uncertainty if valid is None else uncertainty.masked_fill(~valid, float("-inf"))
    chosen = score > (float("-inf") if tau is None else tau)
    if budget is not None:
        flat = score.flatten(1)
        k = min(int(budget), flat.shape[1])
        top = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1).indices, True)
        chosen &= top.view_as(chosen)
    return chosen


class PreActBlock(nn.Module):
    """Pre-activation residual block over sparse sites: x + conv(relu(bn(conv(relu(bn(x)))))), a 1x1 conv on the
    shortcut when the width changes.

    Shape: forward(feats (N, C_in), geometry) -> (N, C_out).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn1, self.conv1 = NodeBatchNorm(in_channels), SubMConv2d(in_channels, out_channels, 3, bias=False)
        self.bn2, self.conv2 = NodeBatchNorm(out_channels), SubMConv2d(out_channels, out_channels, 3, bias=False)
        self.shortcut = None if in_channels == out_channels else SubMConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, feats: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(feats)), geometry)
        out = self.conv2(F.relu(self.bn2(out)), geometry)
        return out + (feats if self.shortcut is None else self.shortcut(feats, geometry))


class SparseUNet(nn.Module):
    """The refiner: a U-Net over the selected full-resolution sites.

    A submanifold 3x3 stem to widths[0]; per coarser level a stride-2 sparse conv to `geometry.downsampled()` and
    pre-activation blocks; back up by a transposed conv to exactly the recorded finer sites, concatenated with the
    skip features, and pre-activation blocks; BN-ReLU and a linear classifier.

    Shape: forward(feats (N, C_in), geometry) -> logits (N, num_classes).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], blocks: int):
        super().__init__()
        self.stem = SubMConv2d(in_channels, widths[0], 3)
        self.down = nn.ModuleList(
            nn.ModuleDict({"conv": StridedConv2d(c_in, c_out, 2),
                           "blocks": nn.ModuleList(PreActBlock(c_out, c_out) for _ in range(blocks))})
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(
            nn.ModuleDict({"conv": TransposedConv2d(c_out, c_in, 2),
                           "blocks": nn.ModuleList(PreActBlock(2 * c_in if b == 0 else c_in, c_in)
                                                   for b in range(max(blocks, 1)))})
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.top = nn.ModuleList(PreActBlock(widths[0], widths[0]) for _ in range(blocks))
        self.norm = NodeBatchNorm(widths[0])
        self.classifier = nn.Linear(widths[0], num_classes)

    def forward(self, feats: torch.Tensor, geometry: SparseGeometry) -> torch.Tensor:
        x = self.stem(feats, geometry)
        for block in self.top:
            x = block(x, geometry)
        skips = []
        for stage in self.down:
            coarse, _ = geometry.downsampled()
            skips.append((x, geometry))
            x = stage["conv"](x, geometry, coarse)
            geometry = coarse
            for block in stage["blocks"]:
                x = block(x, geometry)
        for stage in reversed(self.up):
            skip, finer = skips.pop()
            x = torch.cat([stage["conv"](x, geometry, finer), skip], 1)
            geometry = finer
            for block in stage["blocks"]:
                x = block(x, geometry)
        return self.classifier(F.relu(self.norm(x)))


class GatedEnsembler(nn.Module):
    """Per-site mix of base logits l1 and refiner logits l2 (see the module docstring).

    Shape: forward(l1 (N, C), l2 (N, C)) -> (N, C).
    """

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * (num_classes + 1), hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 2))
        self.out = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, num_classes))

    def forward(self, l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
        described = [torch.softmax(l1.float(), 1), entropy(l1)[:, None], torch.softmax(l2.float(), 1),
                     entropy(l2)[:, None]]
        w = torch.softmax(self.gate(torch.cat(described, 1).to(l1.dtype)), 1)
        return self.out(w[:, :1] * l1 + w[:, 1:] * l2)


class EngineBase(nn.Module):
    """Any network of this engine (QGN or its dense twin) as a base: images (B, C, h, w) of any size ->
    full-resolution logits (B, C, h, w). The dense twin's are its full-resolution map; QGN's are painted from its
    predicted tree - each pixel takes the class logits of the deepest node computed over it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[2:]
        padded = qt.pad_to_multiple(images, 1 << self.model.config.depth, mode="replicate")
        features = self.model.encoder(padded)
        if isinstance(self.model, DenseTwin):
            logits = self.model.dense_maps(padded, features)[-1]
        else:
            decoding = self.model.decode(padded, features, None, (height, width))
            logits = paint_logits(decoding.tree, decoding.level_logits, self.model.config.num_classes)
        return logits[:, :, :height, :width]


def paint_logits(tree, level_logits: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """(B, C, H_pad, W_pad): every pixel gets the first `num_classes` logits of the deepest computed node over it."""
    h0, w0 = tree.level_shape(0)
    grid = level_logits[0][:, :num_classes].reshape(tree.batch_size, h0, w0, num_classes).permute(0, 3, 1, 2)
    for level in range(1, len(level_logits)):
        grid = grid.repeat_interleave(2, 2).repeat_interleave(2, 3)
        coords = tree.levels[level].coords.long()
        if coords.shape[0]:
            grid[coords[:, 0], :, coords[:, 1], coords[:, 2]] = level_logits[level][:, :num_classes].to(grid.dtype)
    stride = tree.stride(len(level_logits) - 1)
    return grid.repeat_interleave(stride, 2).repeat_interleave(stride, 3) if stride > 1 else grid


@dataclass(eq=False)
class Refinement:
    """What one SparseRefine pass computed.

    Attributes:
        base_logits: float (B, C, H, W), the base's at full resolution.
        selected: bool (B, H, W), the refined pixels.
        geometry: their sites (N = selected.sum()).
        refiner_logits, mixed_logits: float (N, C), rows in the order of the sites.
    """

    base_logits: torch.Tensor
    selected: torch.Tensor
    geometry: SparseGeometry
    refiner_logits: torch.Tensor
    mixed_logits: torch.Tensor

    def logits(self) -> torch.Tensor:
        """(B, C, H, W): the base logits with the mixed ones written at the refined pixels."""
        out = self.base_logits.clone()
        b, y, x = self.geometry.coords.long().unbind(1)
        out[b, :, y, x] = self.mixed_logits.to(out.dtype)
        return out


class SparseRefine(nn.Module):
    """A frozen base at low resolution, refined at its uncertain pixels (see the module docstring).

    Args:
        base: any module mapping images (B, C_in, h, w) to logits (B, C, h', w') (resized to (h, w) here); frozen.
        num_classes, in_channels: C and C_in.
        config: a RefineConfig.
    Shape:
        refine(images (B, C_in, H, W) normalised, tau=None, budget=None, valid=None) -> Refinement.
    """

    def __init__(self, base: nn.Module, num_classes: int, in_channels: int, config: RefineConfig | None = None):
        super().__init__()
        self.config = config or RefineConfig()
        self.num_classes = num_classes
        self.base = base.eval().requires_grad_(False)
        self.refiner = SparseUNet(in_channels, num_classes, self.config.widths, self.config.blocks)
        self.ensembler = GatedEnsembler(num_classes, self.config.gate_hidden)

    def train(self, mode: bool = True) -> "SparseRefine":
        super().train(mode)
        self.base.eval()  # frozen: its batch norms keep their running statistics
        return self

    @torch.no_grad()
    def base_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float: the base run on the image resized by base_scale, its logits resized back."""
        scale = self.config.base_scale
        small = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                        align_corners=False, antialias=True)
        logits = self.base(small)
        kwargs = {"align_corners": False} if self.config.upsample == "bilinear" else {}
        return F.interpolate(logits.float(), size=images.shape[2:], mode=self.config.upsample, **kwargs)

    def refine(self, images: torch.Tensor, tau: float | None = None, budget: int | None = None,
               valid: torch.Tensor | None = None) -> Refinement:
        """Select (tau, default the config's; or a budget per image), refine and mix (see the class docstring)."""
        base = self.base_logits(images)
        tau = self.config.tau if tau is None and budget is None else tau
        selected = select_uncertain(entropy(base), valid, tau, budget)
        batch, _, height, width = images.shape
        geometry = SparseGeometry(torch.nonzero(selected), (height, width), batch)
        b, y, x = geometry.coords.long().unbind(1)
        refiner_logits = self.refiner(images[b, :, y, x], geometry)
        mixed = self.ensembler(base[b, :, y, x], refiner_logits)
        return Refinement(base, selected, geometry, refiner_logits, mixed)


@torch.no_grad()
def predict_refined(model: SparseRefine, images: torch.Tensor, tau: float | None = None, budget: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels int64 (B, H, W) of a refined prediction and the bool (B, H, W) mask of the refined pixels
    (`tau` / `budget` as `SparseRefine.refine`; budget=0 or tau=inf gives the base alone)."""
    if budget == 0:
        base = model.base_logits(images)
        return base.argmax(1), torch.zeros(base.shape[0], *base.shape[2:], dtype=torch.bool, device=base.device)
    refinement = model.refine(images, tau, budget)
    return refinement.logits().argmax(1), refinement.selected


def refine_loss(refinement: Refinement, masks: torch.Tensor, ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Cross-entropy of the refiner's and of the mixed logits on the refined sites (ignore label excluded), weight
    1 each. Returns {"loss_refiner", "loss_mixed", "loss"}; zero (still in the graph) when nothing is supervised."""
    b, y, x = refinement.geometry.coords.long().unbind(1)
    targets = masks.long()[b, y, x]
    losses = {}
    for name, logits in (("loss_refiner", refinement.refiner_logits), ("loss_mixed", refinement.mixed_logits)):
        supervised = targets != ignore_index
        losses[name] = F.cross_entropy(logits.float()[supervised], targets[supervised]) if bool(supervised.any()) \
            else logits.sum() * 0.0
    losses["loss"] = losses["loss_refiner"] + losses["loss_mixed"]
    return losses
