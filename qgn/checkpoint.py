"""Checkpoint files: written atomically by training, read (onto the CPU) by training, prediction and evaluation.

A checkpoint is a dict saved with torch.save: "format" ("qgn-checkpoint"), "version", "config" (the run's
RunConfig as plain data: sections model, data, loss, train), "model" (float32 state dict), "optimizer",
"criterion", "scaler", "progress" and "rng".
"""

from __future__ import annotations

from pathlib import Path

import torch

from quadtree.io import atomic_write
from qgn.config import QGNConfig
from qgn.model import QGN
from qgn.registry import build_model

FORMAT = "qgn-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save of `state` with the format and version, written atomically (`quadtree.io.atomic_write`): a crash
    never leaves a partial checkpoint."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": CHECKPOINT_VERSION, **state}, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `qgn train` onto the CPU (whatever device wrote it). FileNotFoundError: no such
    file; ValueError: not a readable qgn checkpoint, or another format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a qgn checkpoint (written by `qgn train`)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {state.get('version')}; this engine reads {CHECKPOINT_VERSION}")
    return state


def model_from_state(state: dict, device: str | torch.device = "cpu") -> QGN:
    """The network of a loaded checkpoint, in eval mode on `device`."""
    model = build_model(QGNConfig.from_dict(state["config"]["model"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> QGN:
    """The network of a checkpoint file, in eval mode on `device` (to predict raw images, use `load_predictor`)."""
    return model_from_state(load_checkpoint(path), device)
