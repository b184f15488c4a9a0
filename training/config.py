"""`RunConfig`: everything a training run needs, one dataclass per component, stored as RUN_DIR/config.yaml.
Classes, depth, image channels and the ignore label live in the model section only (`QGNConfig`); files that
also kept them in the data section still load (`move_data_fields`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qgn.config import QGNConfig, config_from_dict
from quadtree.io import atomic_write
from qgn.precision import AMP_DTYPES
from training.datasets import DataConfig
from training.loss import LossConfig
from training.transforms import AugmentConfig, NormalizeConfig, check_crop

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant")
MODEL_FACTS = ("num_classes", "depth", "in_channels", "ignore_index")  # once also in the data section


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 4  # images per step and process
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, nesterov)
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-4
    schedule: str = "poly"  # "poly" (power 0.9), "cosine" or "constant", over all steps, after the warm-up
    warmup_steps: int = 0  # linear warm-up from 0
    max_steps: int | None = None  # stop after this many steps in all (a time budget); None = epochs only
    grad_clip: float | None = None  # clip the gradient norm to this value
    num_workers: int = 0  # DataLoader workers per process
    seed: int = 0  # model init, data order and augmentation all derive from it
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: str = "off"  # mixed precision: "off" (float32), "fp16" (CUDA, with loss scaling) or "bf16" (qgn.precision)
    tf32: bool = False  # let float32 convolutions and matmuls use TF32 on Ampere+ GPUs (faster, 10-bit mantissa)
    deterministic: bool = False  # deterministic algorithms (exact resume on CUDA; the torch sparse backend there)
    checkpoint_every: int = 0  # also write last.pt every this many steps (0: at epoch ends only)
    log_every: int = 10  # steps between log lines
    val_every: int = 1  # epochs between validations (the last epoch always validates)
    progress: bool = True  # show a progress bar
    test: bool = True  # at the end, evaluate last.pt and best.pt on the test split when the data has a labelled one

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp {self.amp!r}; valid: {', '.join(AMP_DTYPES)} (off = float32)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


@dataclass
class RunConfig:
    model: QGNConfig = field(default_factory=QGNConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.data.augment.crop = check_crop(self.data.augment.crop, self.model.depth)

    def as_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        unknown = set(values) - {"model", "data", "loss", "train"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; valid: model, data, loss, train")
        values = move_data_fields(values)
        data = values.get("data") or {}
        if isinstance(data, dict):  # anything else: config_from_dict says what it must be
            data = dict(data)
            if "normalize" in data:
                data["normalize"] = NormalizeConfig.from_dict(data["normalize"])
            if "augment" in data:
                data["augment"] = config_from_dict(AugmentConfig, data["augment"], "data.augment")
        return cls(model=QGNConfig.from_dict(values.get("model") or {}),
                   data=config_from_dict(DataConfig, data, "data"),
                   loss=config_from_dict(LossConfig, values.get("loss") or {}, "loss"),
                   train=config_from_dict(TrainConfig, values.get("train") or {}, "train"))

    def save(self, path: str | Path) -> None:
        """Write the YAML atomically (`--resume` reads it: never a half-written file)."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False).encode()
        atomic_write(path, lambda f: f.write(text))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping with sections model, data, loss, train")
        return cls.from_dict(values)


def move_data_fields(values: dict) -> dict:
    """`values` (plain config data) with the model facts that files written before kept in the data section too
    (data.num_classes, depth, in_channels, ignore_index) moved to the model section, their one home.

    Raises:
        ValueError: a data-section value that contradicts the model section's, naming where the field lives now.
    """
    data = values.get("data")
    if not isinstance(data, dict) or not any(key in data for key in MODEL_FACTS):
        return values
    data, model = dict(data), dict(values.get("model") or {})
    for key in MODEL_FACTS:
        if key not in data:
            continue
        value = data.pop(key)
        if value is None:  # "the data set's own count": what a model section without num_classes means
            continue
        if model.setdefault(key, value) != value:
            raise ValueError(f"data.{key} = {value} contradicts model.{key} = {model[key]}: {key} is a field of "
                             f"the model section only (model.{key}); remove data.{key}")
    return {**values, "model": model, "data": data}


def _plain(value):
    """Tuples -> lists, recursively, so the YAML is plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
