"""`QGNConfig`: every choice that defines a QGN network (or its dense twin), with commented defaults; and
`config_from_dict`, how every config dataclass of the engine is read back from plain data (YAML, checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sparse_ops.backend import BACKENDS

MODELS = ("qgn", "dense", "sparserefine", "segblocks")
BASE_MODELS = ("dense", "qgn")  # what a SparseRefine base can be
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
class RefineConfig:
    """SparseRefine (`qgn.sparserefine`) over a frozen base network of this engine: the QGNConfig's architecture
    fields describe the base, these the refinement."""

    base_model: str = "dense"  # the base's kind: "dense" (the dense twin) or "qgn" (its painted prediction)
    base_checkpoint: str | None = None  # where the base's weights came from (training reads it once; the run's
    #                                     checkpoints hold the base's weights themselves)
    base_scale: float = 0.25  # the base runs on the image resized by this factor
    upsample: str = "nearest"  # how base logits reach full resolution: "nearest" (the original) or "bilinear"
    tau: float | None = 0.1  # refine where the base's entropy exceeds tau (chosen from refine_fraction when set)
    refine_fraction: float | None = None  # training: choose tau on the validation images so that about this
    #                                       fraction of the pixels is refined
    widths: tuple[int, ...] = (16, 32, 64)  # U-Net widths, finest first (the original: 32 .. 1024, ~79 M params)
    blocks: int = 1  # pre-activation residual blocks per level, down and up (the original: 2)
    gate_hidden: int = 64  # hidden width of the ensembler's two MLPs

    def __post_init__(self):
        self.widths = tuple(self.widths)
        if self.base_model not in BASE_MODELS:
            raise ValueError(f"base_model must be one of {', '.join(BASE_MODELS)}, got {self.base_model!r}")
        if self.upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")
        if not 0 < self.base_scale <= 1:
            raise ValueError(f"base_scale must be in (0, 1], got {self.base_scale}")
        if self.tau is not None and self.tau < 0:
            raise ValueError(f"tau is an entropy threshold >= 0, got {self.tau}")
        if self.refine_fraction is not None and not 0 < self.refine_fraction < 1:
            raise ValueError(f"refine_fraction is a fraction of the pixels in (0, 1), got {self.refine_fraction}")
        if not self.widths or min(self.widths) < 1 or self.blocks < 0:
            raise ValueError(f"widths needs at least one positive width and blocks must be >= 0, got widths "
                             f"{self.widths}, blocks {self.blocks}")


@dataclass
class SegBlocksConfig:
    """SegBlocks (`qgn.segblocks`) over the dense twin's network: the QGNConfig's architecture fields describe the
    network, these the blocks and the policy."""

    block_size: int = 128  # pixels per block side (128 at 1024x2048; 64 for small images); a multiple of
    #                        2**(depth + 1), so that a low-resolution block keeps a cell at the coarsest stride
    target: float = 0.4  # fraction of blocks the policy is trained to run at high resolution
    policy_gamma: float = 10.0  # weight of the compute term in the REINFORCE advantage (the paper; the code: 1)
    policy_weight: float = 4.0  # weight of the policy loss added to the task loss (the paper; the code: 1)
    policy_width: int = 64  # channels of the policy network's convolutions
    policy_lr_scale: float = 1.0  # the policy network's learning rate relative to the network's

    def __post_init__(self):
        if self.policy_lr_scale <= 0:
            raise ValueError(f"policy_lr_scale must be > 0, got {self.policy_lr_scale}")
        if not 0 <= self.target <= 1:
            raise ValueError(f"target is a fraction of high-resolution blocks in 0..1, got {self.target}")
        if self.block_size < 2 or self.policy_width < 1 or self.policy_gamma < 0 or self.policy_weight < 0:
            raise ValueError(f"block_size >= 2, policy_width >= 1, policy_gamma >= 0 and policy_weight >= 0 are "
                             f"required, got {self}")


MODEL_SECTIONS = {"refine": ("sparserefine", RefineConfig), "segblocks": ("segblocks", SegBlocksConfig)}
"""QGNConfig section -> (the model it configures, its dataclass)."""


@dataclass
class QGNConfig:
    """The network, and with it the facts the data pipeline takes from it: classes, depth, image channels and
    the ignore label (training.config.RunConfig holds no second copy of them)."""

    num_classes: int = 19  # C semantic classes; heads above full resolution predict C + 1 (the last is MIXED)
    depth: int = 5  # quadtree levels below the root grid: roots at stride 2**depth, level `depth` = full res
    in_channels: int = 3  # image channels (1 for grayscale microscopy)
    model: str = "qgn"  # "qgn": sparse decoder over the quadtree; "dense": the same layers at every pixel;
    #                     "sparserefine": a frozen base refined at its uncertain pixels (section `refine`);
    #                     "segblocks": the dense network over blocks at two resolutions (section `segblocks`)
    encoder: str = "resnet"  # "resnet": compact, trains from scratch; "efficientnet_lite0": ImageNet-pretrained
    pretrained: bool = True  # load the ImageNet weights shipped in the [pretrained] extra (efficientnet only)
    encoder_channels: tuple[int, ...] = (32, 48, 64, 96)  # resnet widths at strides 4, 8, ..., 2**depth
    decoder_channels: tuple[int, ...] = (96, 64, 48, 32, 24, 16)  # widths of levels 0 (roots) .. depth
    blocks_per_level: int = 1  # residual blocks (two 3x3 submanifold convs each) per decoder level
    backend: str = "auto"  # sparse convs: "auto" (measured default per device: torch on CPU, spconv on CUDA),
    #                        "spconv" or "torch" (see sparse_ops.backend.resolve_backend)
    ignore_index: int = 255  # label of unsupervised pixels
    refine: RefineConfig | None = None  # model "sparserefine" only (default RefineConfig())
    segblocks: SegBlocksConfig | None = None  # model "segblocks" only (default SegBlocksConfig())

    def __post_init__(self):
        self.encoder_channels = tuple(self.encoder_channels)
        self.decoder_channels = tuple(self.decoder_channels)
        for name, (model, kind) in MODEL_SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, config_from_dict(kind, value, f"model.{name}"))
            elif value is None and self.model == model:
                setattr(self, name, kind())
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
        for name, (model, _) in MODEL_SECTIONS.items():
            if getattr(self, name) is not None and self.model != model:
                raise ValueError(f"the {name} section belongs to model {model!r}, not {self.model!r}; remove it")
        if self.segblocks is not None:
            cell = 1 << (self.depth + 1)
            if self.segblocks.block_size % cell:
                raise ValueError(f"segblocks.block_size must be a multiple of 2**(depth + 1) = {cell} (a "
                                 f"low-resolution block keeps one cell at the coarsest stride), got "
                                 f"{self.segblocks.block_size}")

    @property
    def pretrained_encoder(self) -> bool:
        """True when the encoder starts from ImageNet weights (efficientnet_lite0 with `pretrained`)."""
        return self.encoder != "resnet" and self.pretrained

    def as_dict(self) -> dict:
        values = asdict(self)
        values.update(encoder_channels=list(self.encoder_channels), decoder_channels=list(self.decoder_channels))
        if self.refine is not None:
            values["refine"]["widths"] = list(self.refine.widths)
        return values

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
