"""A checkpoint as a predictor of raw images: `load_predictor("run/last.pt").predict(image, ...)`.

Images as users have them:
- numpy arrays, channels last (as image readers return them): (H, W), (H, W, C), or a batch (B, H, W, C);
- torch tensors, channels first (as torchvision uses them): (H, W), (C, H, W), or a batch (B, C, H, W);
- a list of such images (any sizes): predicted one by one, a list of Predictions returned;
- dtype uint8, uint16 (or other integers: scaled by their dtype's range) or float (on a 0..1 scale; values outside
  0.0..1.0 are refused for the "fixed" and "none" normalisations, since they mean an unscaled image).
Grayscale images are replicated to the model's channel count; other channel mismatches are errors. The
normalisation stored in the checkpoint (the one training used) is applied; any size works (see `qgn.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qgn.checkpoint import load_checkpoint, model_from_state
from qgn.cost import Cost, measure_predict
from qgn.fold import fold_batch_norm
from qgn.normalize import NormalizeConfig, check_float_range, match_channels, normalize_image
from qgn.precision import autocast, check_amp
from qgn.predict import Prediction


@dataclass(eq=False)
class Predictor:
    """A trained network (QGN, dense twin, SparseRefine or SegBlocks; in eval mode, on `device`) with the
    normalisation of its training data;
    `amp`: precision of its predictions ("off", "fp16" on CUDA, "bf16"; see qgn.precision); `config`: the run's
    config as stored in the checkpoint (sections model, data, loss, train)."""

    model: torch.nn.Module
    normalize: NormalizeConfig
    device: torch.device
    amp: str = "off"
    config: dict | None = None

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    def prepare(self, image) -> torch.Tensor:
        """One raw image or a batch (see the module docstring) -> normalised float32 (B, C, H, W) on the device."""
        array = _channels_first(image)  # (B, C, H, W) numpy, raw dtype
        if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or
                                           np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"images must hold integer or float intensities, got dtype {array.dtype}")
        if array.shape[2] == 0 or array.shape[3] == 0:
            raise ValueError(f"the image is empty (shape {tuple(np.shape(image))})")
        check_float_range(array, self.normalize)
        name = f"of shape {tuple(np.shape(image))} (numpy images are channels-last, torch tensors channels-first)"
        batch = np.stack([normalize_image(match_channels(single, self.in_channels, name), self.normalize)
                          for single in array])
        return torch.from_numpy(batch).to(self.device)

    @torch.no_grad()
    def predict(self, image, **knobs):
        """Labels of raw image(s) at a chosen cost: a `Prediction`, or a list of them for a list of images.

        `knobs` are those of the model's `predict`: QGN and the dense twin max_depth, threshold, budget
        (`qgn.predict.predict`); SparseRefine tau, budget, fraction; SegBlocks policy, fraction, scale."""
        if isinstance(image, (list, tuple)):
            return [self.predict(one, **knobs) for one in image]
        return self.predict_prepared(self.prepare(image), **knobs)

    @torch.no_grad()
    def predict_prepared(self, images: torch.Tensor, **knobs):
        """`predict` of images already through `prepare` (float32 (B, C, H, W) on the device)."""
        with autocast(self.amp, self.device):
            return self.model.predict(images, **knobs)

    @torch.no_grad()
    def measure(self, image, **knobs) -> tuple[Prediction, Cost]:
        """`predict` of one image or batch and what the prediction cost: `(Prediction, Cost(macs, seconds,
        peak_memory_mb))` (`qgn.cost.measure_predict`; preparing the image is not counted)."""
        images = self.prepare(image)
        with autocast(self.amp, self.device):
            return measure_predict(self.model, images, **knobs)


def load_predictor(path: str | Path, device: str | torch.device = "cpu", amp: str = "off") -> Predictor:
    """The predictor of a checkpoint written by `qgn train` (read on the CPU, run on `device`), its batch norms
    folded into the convolutions (`qgn.fold`: the same outputs, fewer ops)."""
    device = torch.device(device)
    check_amp(amp, device)
    state = load_checkpoint(path)
    normalize = NormalizeConfig.from_dict(state["config"].get("data", {}).get("normalize", {}))
    if normalize.mode == "auto":
        raise ValueError(f"{path} stores an unresolved 'auto' normalisation (written before training started); "
                         f"use a checkpoint of a run that trained")
    return Predictor(fold_batch_norm(model_from_state(state, device)), normalize, device, amp, state["config"])


def _channels_first(image) -> np.ndarray:
    """(B, C, H, W) numpy view of one image or a batch: numpy channels-last, torch channels-first."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        layouts = {2: lambda a: a[None, None], 3: lambda a: a[None], 4: lambda a: a}
        expected = "(H, W), (C, H, W) or (B, C, H, W) for torch tensors (channels-first)"
    elif isinstance(image, np.ndarray):
        array = image
        layouts = {2: lambda a: a[None, None], 3: lambda a: a.transpose(2, 0, 1)[None],
                   4: lambda a: a.transpose(0, 3, 1, 2)}
        expected = "(H, W), (H, W, C) or (B, H, W, C) for numpy arrays (channels-last, as image readers give them)"
    else:
        raise ValueError(f"images must be numpy arrays or torch tensors (or a list of them), got {type(image).__name__}")
    if array.ndim not in layouts:
        raise ValueError(f"image shape {tuple(array.shape)} is not {expected}")
    array = layouts[array.ndim](array)
    if array.shape[1] > 4:
        raise ValueError(f"image shape {tuple(np.shape(image))} would have {array.shape[1]} channels; expected "
                         f"{expected}")
    return np.ascontiguousarray(array)
