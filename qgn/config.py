"""`QGNConfig`: every choice that defines a QGN network (or its dense twin), with commented defaults; and
`config_from_dict`, how every config dataclass of the engine is read back from plain data (YAML, checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sparse_ops.backend import BACKENDS

MODELS = ("qgn", "dense")
ENCODERS = ("resnet", "efficientnet_lite0")
ENCODER_WIDTHS = (32, 48, 64, 96, 128, 160, 192)  # resnet widths at strides 4, 8, 16, ...
DECODER_WIDTHS = (256, 192, 160, 96, 64, 48, 32, 24, 16)  # the last depth + 1 are levels 0 .. depth


def config_from_dict(kind, values: dict, name: str):
    """`kind(**values)` for a config dataclass `kind`, from plain data (YAML, a checkpoint): lists become tuples
    where the field is a tuple. ValueError when `values` is not a mapping or names unknown fields (`name` says
    which config in the message)."""
    if not isinstance(values, dict):
        raise ValueError(f"{name} must be a mapping of field names to values, got {values!r}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {name} fields {unknown}; valid fields: {sorted(known)}")
    tuples = {f.name for f in fields(kind) if "tuple" in str(f.type)}
    return kind(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in values.items()})


@dataclass
class QGNConfig:
    """The network, and with it the facts the data pipeline takes from it: classes, depth, image channels and
    the ignore label (training.config.RunConfig holds no second copy of them)."""

    num_classes: int = 19  # C semantic classes; heads above full resolution predict C + 1 (the last is MIXED)
    depth: int = 5  # quadtree levels below the root grid: roots at stride 2**depth, level `depth` = full res
    in_channels: int = 3  # image channels (1 for grayscale microscopy)
    model: str = "qgn"  # "qgn": sparse decoder over the quadtree; "dense": the same layers at every pixel
    encoder: str = "resnet"  # "resnet": compact, trains from scratch; "efficientnet_lite0": ImageNet-pretrained
    pretrained: bool = True  # load the ImageNet weights shipped in the [pretrained] extra (efficientnet only)
    encoder_channels: tuple[int, ...] = (32, 48, 64, 96)  # resnet widths at strides 4, 8, ..., 2**depth
    decoder_channels: tuple[int, ...] = (96, 64, 48, 32, 24, 16)  # widths of levels 0 (roots) .. depth
    blocks_per_level: int = 1  # residual blocks (two 3x3 submanifold convs each) per decoder level
    backend: str = "auto"  # sparse convs: "auto" (measured default per device: torch on CPU, spconv on CUDA),
    #                        "spconv" or "torch" (see sparse_ops.backend.resolve_backend)
    ignore_index: int = 255  # label of unsupervised pixels

    def __post_init__(self):
        self.encoder_channels = tuple(self.encoder_channels)
        self.decoder_channels = tuple(self.decoder_channels)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming any inconsistent field and what to set instead."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid models: {', '.join(MODELS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid backends: {', '.join(BACKENDS)}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; valid encoders: {', '.join(ENCODERS)}")
        if not 1 <= self.num_classes <= 254:
            raise ValueError(f"num_classes must be in 1..254 (labels 0..C-1), got {self.num_classes}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 (the encoder's coarsest features are at stride 4), got {self.depth}")
        if self.encoder == "resnet" and len(self.encoder_channels) != self.depth - 1:
            raise ValueError(f"encoder_channels needs {self.depth - 1} widths (strides 4 .. {2 ** self.depth}) for "
                             f"depth {self.depth}, got {len(self.encoder_channels)}")
        if self.encoder == "efficientnet_lite0" and self.depth != 5:
            raise ValueError("the efficientnet_lite0 encoder has features at strides 4..32: use depth 5")
        if len(self.decoder_channels) != self.depth + 1:
            raise ValueError(f"decoder_channels needs {self.depth + 1} widths (levels 0..{self.depth}), got "
                             f"{len(self.decoder_channels)}")
        if self.blocks_per_level < 0:
            raise ValueError(f"blocks_per_level must be >= 0, got {self.blocks_per_level}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")

    @property
    def pretrained_encoder(self) -> bool:
        """True when the encoder starts from ImageNet weights (efficientnet_lite0 with `pretrained`)."""
        return self.encoder != "resnet" and self.pretrained

    def as_dict(self) -> dict:
        return {**asdict(self), "encoder_channels": list(self.encoder_channels),
                "decoder_channels": list(self.decoder_channels)}

    @classmethod
    def from_dict(cls, values: dict) -> "QGNConfig":
        return config_from_dict(cls, values, "QGNConfig")

    @classmethod
    def for_depth(cls, depth: int, **overrides) -> "QGNConfig":
        """A config whose channel tuples fit `depth` (2..8; the field defaults are those of depth 5)."""
        if not 2 <= depth <= len(DECODER_WIDTHS) - 1:
            raise ValueError(f"for_depth supports depths 2..{len(DECODER_WIDTHS) - 1}; pass channels explicitly")
        values = dict(depth=depth, encoder_channels=ENCODER_WIDTHS[: depth - 1],
                      decoder_channels=DECODER_WIDTHS[-(depth + 1):])
        values.update(overrides)
        return cls(**values)
