"""Reading and writing label masks: PNG (8/16-bit, grayscale or palette), TIFF and NPY."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask as an integer array (H, W) or (B, H, W).

    PNG: grayscale ('L', 'I;16', 'I') or palette ('P', the palette indices are the labels); colour PNGs are
    rejected, since their colours are not labels. TIFF: via tifffile. NPY: loaded without pickle.
    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, a colour image, or a file that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mask file at {path}")
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise ValueError(f"{path}: unknown mask format '{suffix}'; use one of {', '.join(MASK_SUFFIXES)}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
                raise ValueError(
                    f"mask {path} has image mode {image.mode!r}; a label mask must be single-channel (grayscale "
                    f"'L', palette 'P' or 16-bit grayscale PNG) holding class indices, not a colour-coded image: "
                    f"convert its colours to class indices first"
                )
            if image.mode == "1":
                return np.array(image, dtype=np.uint8)
            return np.array(image)
    except ValueError:
        raise
    except Exception as error:  # Pillow/tifffile/numpy raise many types for unreadable files
        raise ValueError(f"cannot read mask {path}: {error}") from error


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a (H, W) label mask: .png (uint8 labels) or .npy / .tif (any integer dtype)."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, mask)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, mask)
    elif suffix == ".png":
        from PIL import Image

        if mask.ndim != 2:
            raise ValueError(f"a PNG holds one (H, W) mask, got shape {mask.shape}; write .npy or .tif instead")
        Image.fromarray(mask.astype(np.uint8)).save(path)
    else:
        raise ValueError(f"{path}: unknown mask format '{suffix}'; use one of {', '.join(MASK_SUFFIXES)}")
    return path
