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

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import quadtree as qt
from qgn.config import QGNConfig
from qgn.model import QGN, DenseTwin, check_images
from qgn.predict import Prediction
from sparse_ops import NodeBatchNorm, SparseGeometry, SubMConv2d
from sparse_ops.strided import StridedConv2d, TransposedConv2d

ENTROPY_FLOOR = 1e-5
"""H = -sum p log max(p, 1e-5), as the official code computes it."""


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

    def macs_per_site(self) -> int:
        """Multiply-accumulates per site (both convs and the shortcut; batch norm not counted)."""
        convs = [self.conv1, self.conv2] + ([] if self.shortcut is None else [self.shortcut])
        return sum(conv.macs_per_site() for conv in convs)


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

    def macs(self, sites: list[int]) -> int:
        """Multiply-accumulates of a forward over sites[l] sites at U-Net level l (0: the selected pixels, l: the
        sites of `downsampled()` applied l times); convs at all k*k taps, as their dense twins."""
        total = sites[0] * (self.stem.macs_per_site() + sum(b.macs_per_site() for b in self.top)
                            + self.classifier.in_features * self.classifier.out_features)
        for level, (down, up) in enumerate(zip(self.down, self.up), start=1):
            total += sites[level] * (down["conv"].macs_per_site() + sum(b.macs_per_site() for b in down["blocks"]))
            total += sites[level - 1] * (up["conv"].macs_per_site() + sum(b.macs_per_site() for b in up["blocks"]))
        return int(total)


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

    def macs_per_site(self) -> int:
        """Multiply-accumulates of both MLPs per site."""
        return sum(layer.in_features * layer.out_features for layer in [*self.gate, *self.out]
                   if isinstance(layer, nn.Linear))


class EngineBase(nn.Module):
    """Any network of this engine (QGN or its dense twin) as a base: images (B, C, h, w) of any size ->
    full-resolution logits (B, C, h, w). The dense twin's are its full-resolution map; QGN's are painted from its
    predicted tree - each pixel takes the class logits of the deepest node computed over it."""

    def __init__(self, model: QGN):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(logits (B, C, h, w), the nodes the network computed per level 0..depth)."""
        height, width = images.shape[2:]
        padded = qt.pad_to_multiple(images, 1 << self.model.config.depth, mode="replicate")
        features = self.model.encoder(padded)
        if isinstance(self.model, DenseTwin):
            maps = self.model.dense_maps(padded, features)
            logits, nodes = maps[-1], [m.shape[0] * m.shape[2] * m.shape[3] for m in maps]
        else:
            decoding = self.model.decode(padded, features, None, (height, width))
            logits = paint_logits(decoding.tree, decoding.level_logits, self.model.config.num_classes)
            nodes = decoding.nodes_per_level
        return logits[:, :, :height, :width], nodes


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
        base_nodes: the nodes the base computed per level when it is a network of this engine, else None.
    """

    base_logits: torch.Tensor
    selected: torch.Tensor
    geometry: SparseGeometry
    refiner_logits: torch.Tensor
    mixed_logits: torch.Tensor
    base_nodes: list[int] | None = None

    def logits(self) -> torch.Tensor:
        """(B, C, H, W): the base logits with the mixed ones written at the refined pixels."""
        out = self.base_logits.clone()
        b, y, x = self.geometry.coords.long().unbind(1)
        out[b, :, y, x] = self.mixed_logits.to(out.dtype)
        return out


class SparseRefine(nn.Module):
    """A frozen base at low resolution, refined at its uncertain pixels (see the module docstring).

    Args:
        config: a QGNConfig with model "sparserefine": num_classes, in_channels, ignore_index and the base's
            architecture; `config.refine` the refinement (a RefineConfig).
        base: None: the engine network `config.refine.base_model` names, built from `config` (its weights are
            loaded by training from `config.refine.base_checkpoint`, or with this model's state dict). Or any module
            mapping images (B, C_in, h, w) to logits (B, C, h', w') (resized to (h, w) here). Frozen either way.
    Shape:
        forward(images (B, C_in, H, W) normalised, tree: the target Quadtree) -> Refinement (training: the target's
            ignored and padded pixels are never selected).
        refine(images, tau=None, budget=None, valid=None) -> Refinement.
        predict(images, tau=None, budget=None, fraction=None) -> qgn.predict.Prediction.
    """

    def __init__(self, config: QGNConfig, base: nn.Module | None = None):
        super().__init__()
        if config.refine is None:
            raise ValueError("SparseRefine needs a QGNConfig with model='sparserefine' (its refine section)")
        self.config = config
        settings = config.refine
        if base is None:
            base_config = dataclasses.replace(config, model=settings.base_model, refine=None)
            base = EngineBase((DenseTwin if settings.base_model == "dense" else QGN)(base_config))
        self.base = base.eval().requires_grad_(False)
        self._outside_base_macs: dict[tuple[int, ...], int] = {}  # prediction_macs of a base from outside the engine
        self.refiner = SparseUNet(config.in_channels, config.num_classes, settings.widths, settings.blocks)
        self.ensembler = GatedEnsembler(config.num_classes, settings.gate_hidden)

    def train(self, mode: bool = True) -> "SparseRefine":
        super().train(mode)
        self.base.eval()  # frozen: its batch norms keep their running statistics
        return self

    def base_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w): the size the base runs at for full-resolution images of `size` (H, W): floor(H * base_scale)."""
        scale = self.config.refine.base_scale
        return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))

    @torch.no_grad()
    def run_base(self, images: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
        """(logits float (B, C, H, W): the base on the image resized by base_scale, its logits resized back; the
        nodes it computed per level, or None for a base from outside the engine)."""
        size = self.base_size(images.shape[2:])
        small = images if size == tuple(images.shape[2:]) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True)
        logits, nodes = self.base.run(small) if isinstance(self.base, EngineBase) else (self.base(small), None)
        kwargs = {"align_corners": False} if self.config.refine.upsample == "bilinear" else {}
        return F.interpolate(logits.float(), size=images.shape[2:], mode=self.config.refine.upsample, **kwargs), nodes

    def base_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float: the base's logits at full resolution (`run_base`)."""
        return self.run_base(images)[0]

    def refine(self, images: torch.Tensor, tau: float | None = None, budget: int | None = None,
               valid: torch.Tensor | None = None) -> Refinement:
        """Select (tau, default the config's; or a budget of pixels per image, or both), refine and mix (see the
        class docstring); never a pixel where `valid` (bool (B, H, W)) is False."""
        base, nodes = self.run_base(images)
        tau = self.config.refine.tau if tau is None and budget is None else tau
        if tau is None and budget is None:
            raise ValueError("the config has no tau (refine_fraction chooses one when training starts): pass tau, "
                             "budget or fraction")
        selected = select_uncertain(entropy(base), valid, tau, budget)
        batch, _, height, width = images.shape
        geometry = SparseGeometry(torch.nonzero(selected).to(torch.int32), (height, width), batch)
        b, y, x = geometry.coords.long().unbind(1)
        refiner_logits = self.refiner(images[b, :, y, x], geometry)
        mixed = self.ensembler(base[b, :, y, x], refiner_logits)
        return Refinement(base, selected, geometry, refiner_logits, mixed, nodes)

    def forward(self, images: torch.Tensor, tree: qt.Quadtree) -> Refinement:
        """Training: `refine` at the config's tau over the pixels the target `tree` labels (not ignored, not
        padding)."""
        self.check_images(images)
        labels = qt.decode(tree, dtype=torch.int64)
        valid = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
        valid[:, :labels.shape[1], :labels.shape[2]] = labels != self.config.ignore_index
        return self.refine(images, valid=valid)

    def check_images(self, images: torch.Tensor) -> None:
        check_images(images, self.config.in_channels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tau: float | None = None, budget: int | None = None,
                fraction: float | None = None) -> Prediction:
        """Labels refined at a chosen cost: pixels whose base entropy exceeds `tau` (default the config's), at most
        `budget` pixels per image, or the `fraction` (0..1) most uncertain pixels of each image. budget=0 or
        fraction=0 is the base alone.

        Returns:
            Prediction: labels int64 (B, H, W); fine: the refined pixels; nodes_per_level: the base's (an engine
            network) or None; stats: "tau" (None when a budget or fraction chose), "refined_fraction", and
            "refiner_sites" (sites per U-Net level, for the MAC count).
        """
        self.check_images(images)
        if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau < 0):
            raise ValueError(f"tau is an entropy threshold >= 0, got {tau!r}")
        if fraction is not None:
            if budget is not None:
                raise ValueError("pass a budget (pixels per image) or a fraction of the pixels, not both")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ValueError(f"fraction is the share of pixels to refine, in 0..1, got {fraction!r}")
            budget = round(fraction * images.shape[2] * images.shape[3])
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget is a number of pixels per image >= 0, got {budget!r}")
        if budget == 0:
            base, nodes = self.run_base(images)
            selected = torch.zeros(base.shape[0], *base.shape[2:], dtype=torch.bool, device=base.device)
            return Prediction(base.argmax(1), None, nodes, selected,
                              {"tau": None, "refined_fraction": 0.0, "refiner_sites": [0] * (len(self.refiner.down) + 1)})
        refinement = self.refine(images, tau, budget)
        sites = [refinement.geometry.num_sites]
        geometry = refinement.geometry
        for _ in self.refiner.down:  # the U-Net's coarser site sets (cached on the geometries)
            geometry = geometry.downsampled()[0]
            sites.append(geometry.num_sites)
        tau = (self.config.refine.tau if budget is None else None) if tau is None else tau
        return Prediction(refinement.logits().argmax(1), None, refinement.base_nodes, refinement.selected,
                          {"tau": tau, "refined_fraction": float(refinement.selected.float().mean()),
                           "refiner_sites": sites})

    def prediction_macs(self, images_shape: tuple[int, int, int, int], prediction: Prediction) -> int:
        """MACs of `prediction` of images of `images_shape` (B, C, H, W): the base at its scale (an engine network:
        `qgn.cost.quadtree_macs` of the nodes it computed; another module: its nn.Conv2d calls, counted on one
        run per input shape and kept) plus the refiner and the ensembler per site."""
        from qgn.cost import conv2d_macs, quadtree_macs

        batch, channels = images_shape[:2]
        size = self.base_size(images_shape[2:])
        if isinstance(self.base, EngineBase):
            padded = (batch, channels, *qt.padded_size(size, 1 << self.base.model.config.depth))
            base = quadtree_macs(self.base.model, padded, prediction.nodes_per_level)
        else:
            key = (batch, channels, *size)
            if key not in self._outside_base_macs:  # a fixed count per shape: the base runs for it once
                probe = next(self.base.parameters())
                self._outside_base_macs[key] = conv2d_macs(self.base, lambda: self.base(
                    torch.zeros(key, dtype=probe.dtype, device=probe.device)))
            base = self._outside_base_macs[key]
        sites = prediction.stats["refiner_sites"]
        return int(base + self.refiner.macs(sites) + sites[0] * self.ensembler.macs_per_site())


def choose_tau(model: SparseRefine, images, fraction: float, bins: int = 20000) -> float:
    """The entropy threshold that refines about `fraction` of the pixels of `images` (an iterable of normalised
    float (B, C, H, W) batches, e.g. the validation images): the (1 - fraction) quantile of the base's entropy,
    from a histogram over [0, log C] (`bins` bins: exact to log(C) / bins)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    top = math.log(model.config.num_classes) + 1e-6
    counts = None
    for batch in images:
        h = entropy(model.base_logits(batch)).flatten()
        hist = torch.histc(h.cpu(), bins=bins, min=0.0, max=top).double()
        counts = hist if counts is None else counts + hist
    if counts is None:
        raise ValueError("no images to choose tau on")
    above = counts.flip(0).cumsum(0).flip(0) / counts.sum()  # above[i]: fraction of pixels in bins >= i
    above = torch.cat([above, above.new_zeros(1)])  # tau = i * width refines about above[i]
    return float(int((above - fraction).abs().argmin()) * top / bins)


class RefineLoss(nn.Module):
    """The training loss of SparseRefine (`refine_loss`), with the trainer's criterion interface.

    Shape: forward(output: Refinement, tree, masks int (B, H, W)) -> dict of scalar tensors ("loss", ...).
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        self.ignore_index = config.ignore_index

    def forward(self, output: Refinement, tree, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = refine_loss(output, masks, self.ignore_index)
        losses["refined_fraction"] = output.selected.float().mean()
        return losses


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
