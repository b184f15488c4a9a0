"""Image intensity normalisation: raw arrays (uint8, uint16, int32 or float; (C, H, W)) -> float32 network input.

Modes (`NormalizeConfig.mode`):
- "fixed": (x / scale - mean) / std per channel, where scale maps the dtype's range to 1 (`intensity_scale`: 255 for
  uint8, 65535 for uint16, 1 for floats, which must then lie in 0..1); mean/std default to ImageNet's.
- "percentile": per image and channel, (x - p_low) / (p_high - p_low) (for microscopy whose brightness varies).
- "none": x / scale.
- "auto" (what training starts from): resolved once, at the start of training, from the training images
  (`resolve_auto`): ImageNet statistics for a pretrained encoder, else "fixed" with the training set's own mean
  and std - right for 16-bit microscopy that uses 2% of its range as for photographs. The resolved config is what
  the checkpoint stores and what prediction applies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from qgn.config import config_from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)  # mean of the ImageNet channel means / stds, used for 1-channel images
GRAY_STD = (0.226,)


@dataclass
class NormalizeConfig:
    mode: str = "fixed"  # "fixed", "percentile", "none" or "auto" (see the module docstring)
    mean: tuple[float, ...] | None = None  # "fixed": per-channel mean (or one value for all channels);
    #                                        None = ImageNet for 3 channels, 0.449 otherwise
    std: tuple[float, ...] | None = None  # "fixed": per-channel std; None = ImageNet for 3 channels, 0.226 otherwise
    percentiles: tuple[float, float] = (1.0, 99.8)  # "percentile": low and high percentiles of each channel
    clip: bool = False  # "percentile": clip the result to [0, 1]

    def __post_init__(self):
        if self.mode not in NORMALIZERS and self.mode != "auto":
            raise ValueError(f"unknown normalisation mode {self.mode!r}; valid modes: auto, {', '.join(NORMALIZERS)}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {self.percentiles}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")

    @classmethod
    def from_dict(cls, values: dict, name: str = "data.normalize") -> "NormalizeConfig":
        """The config of its plain-data form (config.yaml, a checkpoint's stored run config)."""
        return config_from_dict(cls, values, name)


def intensity_scale(dtype: np.dtype) -> float:
    """Value that maps to 1.0 for a raw image dtype: 255 for uint8, 65535 for uint16 and for int32 (Pillow's
    mode "I" holds 16-bit PNGs), the dtype maximum for other unsigned ints, 1 for floats and bools."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return 1.0
    if dtype in (np.dtype(np.int32), np.dtype(np.int64)):
        return 65535.0
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    raise ValueError(f"images must hold integer, float or bool values, got dtype {dtype}")


def _channel_stats(values: tuple[float, ...] | None, default3, default1, channels: int, name: str) -> np.ndarray:
    if values is None:
        values = default3 if channels == 3 else default1
    values = tuple(values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"normalisation {name} has {len(values)} values but the image has {channels} channels; "
                         f"give one value per channel or a single value")
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _normalize_fixed(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    out = _normalize_none(image, cfg)
    out -= _channel_stats(cfg.mean, IMAGENET_MEAN, GRAY_MEAN, image.shape[0], "mean")
    out /= _channel_stats(cfg.std, IMAGENET_STD, GRAY_STD, image.shape[0], "std")
    return out


def _normalize_percentile(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    out = image.astype(np.float32)
    flat = out.reshape(out.shape[0], -1)
    low, high = np.percentile(flat, cfg.percentiles, axis=1)  # (C,) each; exact on 16-bit values
    scale = 1.0 / np.maximum(high - low, 1e-6)
    out -= low.astype(np.float32)[:, None, None]
    out *= scale.astype(np.float32)[:, None, None]
    if cfg.clip:
        np.clip(out, 0, 1, out=out)
    return out


def _normalize_none(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    return image.astype(np.float32) * np.float32(1 / intensity_scale(image.dtype))


NORMALIZERS = {"fixed": _normalize_fixed, "percentile": _normalize_percentile, "none": _normalize_none}


def normalize_image(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    """A raw image (C, H, W) of any integer/float dtype (uint8 or uint16 from image files) normalised as `cfg`
    says: float32 (C, H, W), C-contiguous."""
    if image.ndim != 3:
        raise ValueError(f"normalize_image expects a (C, H, W) array, got shape {image.shape}")
    if cfg.mode == "auto":
        raise ValueError("normalisation 'auto' is resolved from the training images when training starts "
                         "(resolve_auto); use the NormalizeConfig stored in the checkpoint (qgn.load_predictor)")
    return np.ascontiguousarray(NORMALIZERS[cfg.mode](image, cfg), dtype=np.float32)


def check_float_range(image: np.ndarray, cfg: NormalizeConfig, name: str = "image") -> None:
    """ValueError when a float image is not on the 0..1 scale that "fixed" and "none" assume for floats (e.g. raw
    0..255 values stored as floats: the network would see values 255x too large, without any other error)."""
    if cfg.mode in ("fixed", "none") and np.issubdtype(image.dtype, np.floating) and image.size:
        low, high = float(np.nanmin(image)), float(np.nanmax(image))
        if low < -0.01 or high > 1.01:
            raise ValueError(f"{name} is a float array with values in {low:.4g}..{high:.4g}, but float images are read "
                             f"on a 0..1 scale (integer images are scaled by their dtype): pass the uint8/uint16 "
                             f"array as read from the file, or divide by its maximum (e.g. 255 or 65535)")


def dataset_statistics(raw_images, max_images: int = 64) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x / intensity_scale(x.dtype) over raw (C, H, W) images (the first `max_images`)."""
    total = total_sq = 0.0
    count = 0
    for image in itertools.islice(raw_images, max_images):
        x = image.astype(np.float64).reshape(image.shape[0], -1) / intensity_scale(image.dtype)
        total, total_sq, count = total + x.sum(1), total_sq + (x ** 2).sum(1), count + x.shape[1]
    if not count:
        raise ValueError("no images to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)


def resolve_auto(cfg: NormalizeConfig, raw_images, pretrained: bool) -> NormalizeConfig:
    """`cfg` itself unless its mode is "auto"; then "fixed" with ImageNet's statistics (a pretrained encoder
    expects them) or the statistics of `raw_images` (an iterable of raw (C, H, W) training images)."""
    if cfg.mode != "auto":
        return cfg
    if pretrained:
        return NormalizeConfig(mode="fixed")
    mean, std = dataset_statistics(raw_images)
    return NormalizeConfig(mode="fixed", mean=mean, std=std)


def match_channels(image: np.ndarray, in_channels: int, name) -> np.ndarray:
    """Return `image` (C, H, W) with in_channels channels: grayscale is replicated, other mismatches raise
    (`name` says which image in the message)."""
    channels = image.shape[0]
    if channels == in_channels:
        return image
    if channels == 1:
        return np.repeat(image, in_channels, axis=0)
    raise ValueError(f"image {name} has {channels} channels but the model expects in_channels={in_channels}; set "
                     f"in_channels={channels} (grayscale images are replicated automatically; colour images are "
                     f"never averaged silently)")
