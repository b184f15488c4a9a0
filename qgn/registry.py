"""The engine's models by name: `QGNConfig.model` -> the class, and `build_model(config)`.

Every model maps images to labels at a chosen cost with the same interface: `model.config` (a QGNConfig: classes,
ignore label, image channels), `model.predict(images, **knobs) -> qgn.predict.Prediction`, and the MACs of a
prediction (`qgn.cost.prediction_macs`).
"""

from __future__ import annotations

from torch import nn

from qgn.config import QGNConfig
from qgn.model import QGN, DenseTwin
from qgn.segblocks import SegBlocks
from qgn.sparserefine import SparseRefine

MODEL_CLASSES = {"qgn": QGN, "dense": DenseTwin, "sparserefine": SparseRefine, "segblocks": SegBlocks}
"""`QGNConfig.model` -> the network class."""

PREDICT_KNOBS = {"qgn": ("max_depth", "threshold", "budget"), "dense": ("max_depth", "threshold", "budget"),
                 "sparserefine": ("tau", "budget", "fraction"), "segblocks": ("policy", "fraction", "scale", "masks")}
"""`QGNConfig.model` -> the knobs its `predict` takes (besides the images; SegBlocks' "oracle" policy reads the
ground truth `masks`)."""


def check_knobs(model_name: str, knobs: dict) -> None:
    """ValueError when `knobs` names one that a `model_name` model's predict does not take."""
    wrong = sorted(set(knobs) - set(PREDICT_KNOBS[model_name]))
    if wrong:
        owners = "; ".join(k + ": " + ", ".join(m for m, names in PREDICT_KNOBS.items() if k in names) for k in wrong)
        raise ValueError(f"not a knob of a {model_name} model: {', '.join(wrong)} (its knobs: "
                         f"{', '.join(PREDICT_KNOBS[model_name])}; models that take those: {owners})")


def build_model(config: QGNConfig) -> nn.Module:
    """The network `config.model` names (the config validated the name)."""
    return MODEL_CLASSES[config.model](config)
