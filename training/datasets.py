"""Segmentation data sets: spec strings -> torch Datasets of (image float32 (C, H, W), mask int64 (H, W)).

Specs (`build_dataset`):
    synthetic[:OPTIONS]  procedural scenes (training.synthetic). OPTIONS, comma-separated: a bare integer = number
                         of images, a bare preset name ("shapes", "street"), or KEY=VALUE for a SyntheticConfig
                         field, sizes as 256 or 512x1024. E.g. "synthetic:street,16,size=1024x2048,seed=3".
    folder:PATH          PATH/images/<name>.<png|jpg|jpeg|tif|tiff> and PATH/masks/<name>.png (8-bit labels,
                         255 = ignore). When PATH/<split>/images exists, PATH/<split> is used instead, so one
                         folder can hold train/ and val/; otherwise every split reads PATH itself.
    cityscapes:PATH      PATH/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with
                         PATH/gtFine/<split>/<city>/<name>_gtFine_labelIds.png; label ids -> 19 train ids.
    ade20k:PATH          PATH/ADEChallengeData2016/{images,annotations}/{training,validation}/ (or PATH itself
                         being ADEChallengeData2016): <name>.jpg with <name>.png; 150 classes, 0 -> ignore.
    sunrgbd:PATH         PATH/image/{train,test}/<name>.<jpg|png> with PATH/label37/{train,test}/<name>.png;
                         37 classes, 0 -> ignore, k -> k - 1. Split "val" reads "test" (the standard 5285/5050
                         split has no separate validation set).

Images may be 8- or 16-bit, grayscale or RGB (RGBA drops alpha, palette images become RGB); 16-bit RGB is read
from .tif (Pillow truncates 16-bit RGB PNGs to 8 bits). Grayscale images are replicated to `in_channels`;
any other channel mismatch is an error. Masks must be single-channel 8-bit (grayscale or palette) PNGs.

Every problem with the files (an empty folder, an image without its mask or the reverse, labels >= num_classes
other than the ignore label, image/mask size mismatch) raises ValueError naming the files; `validate_dataset`
scans every mask (and the image headers) up front so such errors come before any training step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import quadtree as qt
from training.synthetic import CITYSCAPES_CLASSES, PRESETS, SyntheticConfig, SyntheticScenes
from qgn.config import QGNConfig
from qgn.normalize import match_channels, resolve_auto
from training.transforms import Augment, AugmentConfig, NormalizeConfig, normalize_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "val", "test")

# Cityscapes label id -> train id (cityscapesscripts/helpers/labels.py); every other id -> ignore.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}
SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "fridge", "tv", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag",
)


# ---- file reading --------------------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """Read an image file as a raw (C, H, W) array of its stored dtype (uint8, uint16, int32 or float32).

    .tif/.tiff are read with tifffile ((H, W), (H, W, C) or (C, H, W) with C <= 4; every channel is kept);
    everything else with Pillow, where RGBA/LA drop the alpha channel and palette, CMYK, YCbCr and 1-bit images
    are converted to RGB / L.
    """
    path = Path(path)
    try:
        array = _read_pixels(path)
    except (OSError, ValueError, SyntaxError, RuntimeError) as error:  # what Pillow and tifffile raise on bad files
        raise ValueError(f"cannot read {path} as an image ({type(error).__name__}: {error}); check that it is a "
                         f"complete PNG, JPEG or TIFF file") from error
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] > 4 or 0 in array.shape:
        raise ValueError(f"cannot read {path} as an image: array of shape {array.shape}; expected (H, W) or "
                         f"(H, W, C) with C <= 4 and H, W >= 1")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def _read_pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = np.asarray(tifffile.imread(path))
        if array.ndim == 3 and array.shape[0] <= 4 and array.shape[-1] > 4:  # (C, H, W) -> (H, W, C)
            array = np.moveaxis(array, 0, -1)
    else:
        with Image.open(path) as img:
            if img.mode not in ("L", "RGB", "I", "I;16", "I;16B", "I;16L", "F"):  # alpha dropped; palette, CMYK, ...
                img = img.convert("L" if img.mode in ("LA", "1") else "RGB")
            array = np.asarray(img)
    return array


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (no pixel decoding)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
        if len(shape) == 3 and shape[0] <= 4 and shape[-1] > 4:
            return int(shape[1]), int(shape[2])
        return int(shape[0]), int(shape[1])
    with Image.open(path) as img:
        return img.height, img.width


# ---- label mapping -------------------------------------------------------------------------------------------
def class_lut(num_classes: int, ignore_index: int = 255, shifted: bool = False) -> np.ndarray:
    """int16 (256,): raw value v -> v for v < num_classes (`shifted`, as ADE20K and SUN-RGBD: 0 -> ignore and
    v -> v - 1 for 1 <= v <= num_classes), 255 -> ignore_index, anything else -> -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[int(shifted):num_classes + int(shifted)] = np.arange(num_classes)
    lut[255] = ignore_index
    if shifted:
        lut[0] = ignore_index
    return lut


def cityscapes_lut(ignore_index: int = 255) -> np.ndarray:
    """int16 (256,): Cityscapes label id -> train id (0..18); every other id -> ignore_index."""
    lut = np.full(256, ignore_index, dtype=np.int16)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


# ---- file-backed data set ------------------------------------------------------------------------------------
class LabelledImages(torch.utils.data.Dataset):
    """(image path, mask path) pairs with a lookup table `lut`: int16 (256,) raw mask value -> class 0..num_classes-1,
    ignore_index, or -1 for values that are errors. `normalize` None = NormalizeConfig(); `transform`: optional
    (image, mask) -> (image, mask); `name` names the data set in messages.

    Items: (image float32 (in_channels, H, W), mask int64 (H, W)); grayscale files are replicated.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], num_classes: int, lut: np.ndarray, *,
                 normalize: NormalizeConfig | None = None, in_channels: int = 3, transform=None,
                 ignore_index: int = 255, class_names: tuple[str, ...] | None = None, name: str = "folder"):
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.num_classes, self.lut = num_classes, np.asarray(lut, dtype=np.int16)
        self.normalize = normalize if normalize is not None else NormalizeConfig()
        self.in_channels, self.transform, self.ignore_index = in_channels, transform, ignore_index
        self.class_names, self.name = class_names, name

    def __len__(self) -> int:
        return len(self.pairs)

    def load_mask(self, index: int) -> np.ndarray:
        """Class mask int64 (H, W) of sample `index`; raw values without a class raise ValueError."""
        path = self.pairs[index][1]
        raw = qt.read_mask(path)  # colour images and unreadable files raise ValueError there
        if raw.dtype != np.uint8 or raw.ndim != 2:  # the lookup table maps the 256 values of 8-bit masks
            raise ValueError(f"mask {path} holds {raw.dtype} values of shape {raw.shape}; masks of a data set "
                             f"must be single-channel 8-bit PNGs (grayscale 'L' or palette 'P') holding class "
                             f"indices, 255 = ignore")
        mapped = self.lut[raw]
        if (mapped < 0).any():
            counts = np.bincount(raw.reshape(-1), minlength=256)
            bad = [int(v) for v in np.flatnonzero(counts) if self.lut[v] < 0]
            raise ValueError(f"mask {path} holds label values {bad[:20]} that are not classes of this {self.name} data "
                             f"set (valid: classes 0..{self.num_classes - 1} after mapping, 255 = ignore); check "
                             f"num_classes={self.num_classes} or remap the mask")
        return mapped.astype(np.int64)

    def raw_image(self, index: int) -> np.ndarray:
        """The image of sample `index` as stored (in_channels, H, W), before normalisation."""
        path = self.pairs[index][0]
        return match_channels(read_image(path), self.in_channels, path)

    def load_image(self, index: int) -> np.ndarray:
        """Normalised image float32 (in_channels, H, W) of sample `index`."""
        return normalize_image(self.raw_image(index), self.normalize)

    def _check_size(self, index: int, size: tuple[int, int], mask: np.ndarray) -> None:
        if tuple(size) != mask.shape:
            image_path, mask_path = self.pairs[index]
            raise ValueError(f"image {image_path} is {size[0]}x{size[1]} but its mask {mask_path} is "
                             f"{mask.shape[0]}x{mask.shape[1]}; they must have the same size")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.load_mask(index)
        image = self.load_image(index)
        self._check_size(index, image.shape[1:], mask)
        image, mask = torch.from_numpy(image), torch.from_numpy(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def check_sample(self, index: int) -> np.ndarray:
        """Validate sample `index` (mask values, image size) without decoding the image. Returns int64
        (num_classes + 1,): pixels per class, the last entry counting ignore pixels."""
        mask = self.load_mask(index)
        self._check_size(index, image_size(self.pairs[index][0]), mask)
        valid = mask[mask != self.ignore_index]
        counts = np.bincount(valid.reshape(-1), minlength=self.num_classes)
        return np.append(counts, mask.size - valid.size)

    def __repr__(self) -> str:
        return f"LabelledImages(name={self.name!r}, samples={len(self)}, num_classes={self.num_classes})"


# ---- layouts -------------------------------------------------------------------------------------------------
def _list_files(folder: Path, suffixes) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _names(paths, limit: int = 8) -> str:
    paths = list(paths)
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" (and {len(paths) - limit} more)" if len(paths) > limit else "")


def _pair(images: list[Path], masks: list[Path], layout: str, image_key=lambda p: p.stem, mask_key=lambda p: p.stem,
          mask_kind: str = "a mask") -> list[tuple[Path, Path]]:
    """Match images and masks by key (the file stem); duplicate or unmatched files raise ValueError."""
    by_key, duplicates = {}, []
    for path in images:
        if image_key(path) in by_key:
            duplicates.append(path)
        by_key[image_key(path)] = path
    if duplicates:
        raise ValueError(f"several images share a name: {_names(duplicates)}; expected layout: {layout}")
    mask_by_key = {mask_key(p): p for p in masks}
    missing = [p for key, p in by_key.items() if key not in mask_by_key]
    orphans = [p for key, p in mask_by_key.items() if key not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} image(s) without {mask_kind}: {_names(missing)}; expected layout: {layout}")
    if orphans:
        raise ValueError(f"{len(orphans)} mask(s) without an image: {_names(orphans)}; expected layout: {layout}")
    return [(by_key[key], mask_by_key[key]) for key in sorted(by_key)]


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise ValueError(f"data folder {path} does not exist or is not a directory; expected layout: {layout}")


def folder_pairs(root: Path, split: str, val_fraction: float = 0.1) -> tuple[list[tuple[Path, Path]], str]:
    """(image, mask) pairs of a `folder:` data set (layout in the module docstring), and a note on the split used.

    With split folders (PATH/train, PATH/val, PATH/test), `split` must be one of them. Without, the folder is one
    pool: "val" is a deterministic held-out subset of ceil(val_fraction * N) images (chosen by a hash of each file
    name, so it does not depend on the listing order), "train" the rest, and "test" does not exist.
    """
    root = Path(root)
    split_dirs = [name for name in SPLITS if (root / name / "images").is_dir()]
    if split_dirs:
        if split not in split_dirs:
            raise ValueError(f"data folder {root} has split folders {', '.join(split_dirs)} but no {split}/ "
                             f"(expected {root / split / 'images'} and {root / split / 'masks'}); use one of the "
                             f"existing splits")
        return _folder_files(root / split), f"{split} split: {root / split}"
    pairs = _folder_files(root)
    if split == "test":
        raise ValueError(f"data folder {root} has no split folders, so it has no test split; put the test images in "
                         f"{root / 'test' / 'images'} and {root / 'test' / 'masks'} (and the rest in train/, val/)")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return pairs, f"all {len(pairs)} images of {root} (no split folders, val_fraction 0: validation = training)"
    if len(pairs) < 2:
        raise ValueError(f"data folder {root} holds {len(pairs)} image(s) and no split folders: at least 2 are needed "
                         f"to hold out a validation image (or pass --val-fraction 0 to validate on the training image)")
    held = max(1, math.ceil(val_fraction * len(pairs)))
    order = sorted(range(len(pairs)), key=lambda i: hashlib.sha256(pairs[i][0].name.encode()).hexdigest())
    chosen = set(order[:held])
    subset = [pair for i, pair in enumerate(pairs) if (i in chosen) == (split == "val")]
    note = (f"{len(subset)} of {len(pairs)} images of {root} (no split folders: {held} held out for validation by "
            f"val_fraction {val_fraction:g}, the rest for training)")
    return subset, note


def _folder_files(root: Path) -> list[tuple[Path, Path]]:
    layout = f"{root}/images/<name>.<png|jpg|tif> with {root}/masks/<name>.png (or {root}/<split>/images, masks)"
    return _paired_folder_files(root / "images", root / "masks", layout, f"data folder {root}")


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds mask) pairs of Cityscapes `split` (train, val or test)."""
    root = Path(root)
    layout = (f"{root}/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png with "
              f"{root}/gtFine/{split}/<city>/<name>_gtFine_labelIds.png")
    _require_dir(root / "leftImg8bit" / split, layout)
    _require_dir(root / "gtFine" / split, layout)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    masks = sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    if not images:
        raise ValueError(f"no Cityscapes images found in {root / 'leftImg8bit' / split}; expected layout: {layout}")
    return _pair(images, masks, layout, lambda p: (p.parent.name, p.name[: -len("_leftImg8bit.png")]),
                 lambda p: (p.parent.name, p.name[: -len("_gtFine_labelIds.png")]), "a *_gtFine_labelIds.png mask")


def _paired_folder_files(image_dir: Path, mask_dir: Path, layout: str, name: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem from two folders; ValueError when a folder is missing or empty."""
    _require_dir(image_dir, layout)
    _require_dir(mask_dir, layout)
    images = _list_files(image_dir, IMAGE_SUFFIXES)
    masks = _list_files(mask_dir, (".png",))
    if not images and not masks:
        raise ValueError(f"{name} is empty: no images in {image_dir}; expected layout: {layout}")
    return _pair(images, masks, layout)


def ade20k_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of ADE20K (SceneParsing, ADEChallengeData2016) `split`."""
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation", "test": "validation"}[split]
    layout = f"{root}/images/{folder}/<name>.jpg with {root}/annotations/{folder}/<name>.png"
    return _paired_folder_files(root / "images" / folder, root / "annotations" / folder, layout, "ADE20K")


def sunrgbd_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label37) pairs of SUN-RGBD `split` ("val" reads "test")."""
    root = Path(root)
    folder = {"train": "train", "val": "test", "test": "test"}[split]
    layout = f"{root}/image/{folder}/<name>.<jpg|png> with {root}/label37/{folder}/<name>.png"
    return _paired_folder_files(root / "image" / folder, root / "label37" / folder, layout, "SUN-RGBD")


# ---- specs -> data sets --------------------------------------------------------------------------------------
def parse_synthetic_options(options: str) -> dict:
    """SyntheticConfig overrides from "16", "street", "size=512x1024", "num_classes=4", ... (comma-separated)."""
    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    aliases = {"n": "num_images", "classes": "num_classes", "density": "boundary_density"}
    overrides: dict = {}
    for token in filter(None, (t.strip() for t in options.split(","))):
        if "=" not in token:
            if token.isdigit():
                overrides["num_images"] = int(token)
            elif token in PRESETS:
                overrides["preset"] = token
            else:
                raise ValueError(f"synthetic option {token!r} is neither a number of images nor a preset "
                                 f"({', '.join(PRESETS)}); use KEY=VALUE for other options")
            continue
        key, value = (s.strip() for s in token.split("=", 1))
        key = aliases.get(key, key)
        if key not in fields:
            raise ValueError(f"unknown synthetic option {key!r}; valid options: "
                             f"{', '.join(list(fields) + list(aliases))}")
        try:
            if key in ("size", "shape_size"):
                cast = float if key == "shape_size" else int
                parsed = tuple(cast(p) for p in value.lower().replace("x", ",").replace(":", ",").split(","))
                overrides[key] = parsed * 2 if len(parsed) == 1 else parsed
            elif key == "preset":
                overrides[key] = value
            elif key == "ignore_regions":
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                overrides[key] = value.lower() in ("1", "true", "yes")
            elif key in ("boundary_density", "noise_std"):
                overrides[key] = float(value)
            else:
                overrides[key] = int(value)
        except ValueError:
            raise ValueError(f"cannot parse synthetic option {key}={value!r}") from None
    return overrides


def _build_synthetic(arg, split, num_classes, val_fraction, *, ignore_index, normalize, in_channels, transform):
    overrides = parse_synthetic_options(arg or "")
    if num_classes is not None:
        if "num_classes" in overrides and overrides["num_classes"] != num_classes:
            raise ValueError(f"num_classes={num_classes} contradicts the spec's num_classes="
                             f"{overrides['num_classes']}")
        overrides["num_classes"] = num_classes
    overrides.setdefault("channels", in_channels)
    if overrides["channels"] != in_channels:
        raise ValueError(f"synthetic channels={overrides['channels']} but in_channels={in_channels}")
    overrides.setdefault("ignore_index", ignore_index)
    return SyntheticScenes(SyntheticConfig(**overrides), split=split, normalize=normalize, transform=transform)


FIXED_CLASSES = {"cityscapes": 19, "ade20k": 150, "sunrgbd": 37}  # spec scheme -> classes of a public data set
FOLDER_CLASSES = ("folder data sets need the number of classes: pass --num-classes C (labels 0..C-1 in the masks, "
                  "255 = ignore), or model.num_classes in the config file")


def _fixed_classes(name: str, scheme: str, num_classes: int | None) -> int:
    expected = FIXED_CLASSES[scheme]
    if num_classes is not None and num_classes != expected:
        raise ValueError(f"{name} has {expected} classes, got num_classes={num_classes}; set {expected} (or leave "
                         f"--num-classes unset)")
    return expected


def _build_folder(arg, split, num_classes, val_fraction, **common):
    if num_classes is None:
        raise ValueError(FOLDER_CLASSES)
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
    pairs, note = folder_pairs(Path(arg), split, val_fraction)
    dataset = LabelledImages(pairs, num_classes, class_lut(num_classes, common["ignore_index"]), name="folder",
                             **common)
    dataset.split_note = note
    return dataset


def _build_cityscapes(arg, split, num_classes, val_fraction, **common):
    classes = _fixed_classes("Cityscapes", "cityscapes", num_classes)
    return LabelledImages(cityscapes_pairs(Path(arg), split), classes, cityscapes_lut(common["ignore_index"]),
                          class_names=CITYSCAPES_CLASSES, name="cityscapes", **common)


def _build_ade20k(arg, split, num_classes, val_fraction, **common):
    classes = _fixed_classes("ADE20K", "ade20k", num_classes)
    return LabelledImages(ade20k_pairs(Path(arg), split), classes, class_lut(classes, common["ignore_index"], True),
                          name="ade20k", **common)


def _build_sunrgbd(arg, split, num_classes, val_fraction, **common):
    classes = _fixed_classes("SUN-RGBD", "sunrgbd", num_classes)
    return LabelledImages(sunrgbd_pairs(Path(arg), split), classes, class_lut(classes, common["ignore_index"], True),
                          class_names=SUNRGBD_CLASSES, name="sunrgbd", **common)


DATASETS: dict[str, Callable] = {"synthetic": _build_synthetic, "folder": _build_folder,
                                 "cityscapes": _build_cityscapes, "ade20k": _build_ade20k, "sunrgbd": _build_sunrgbd}
"""Spec scheme -> builder(arg, split, num_classes, val_fraction, *, ignore_index, normalize, in_channels, transform)."""


def parse_spec(spec: str) -> tuple[str, str]:
    """(scheme, argument) of a data set spec: "folder:/data/cells" -> ("folder", "/data/cells"); ValueError for an
    unknown scheme or a file data set without its path."""
    scheme, _, arg = spec.partition(":")
    if scheme not in DATASETS:
        raise ValueError(f"unknown data set {scheme!r} in spec {spec!r}; valid data sets: {', '.join(DATASETS)} "
                         f"(e.g. synthetic, synthetic:street,64, folder:/data/cells, cityscapes:/data/cityscapes)")
    if scheme != "synthetic" and not arg:
        raise ValueError(f"data set spec {spec!r} needs a path: {scheme}:PATH")
    return scheme, arg


def own_num_classes(spec: str) -> int:
    """The number of classes the data set of `spec` defines, from the spec alone (no file is read): a synthetic
    preset's (or its num_classes option), 19 for Cityscapes, 150 for ADE20K, 37 for SUN-RGBD. ValueError for a bad
    spec or a folder: spec (only the user knows which classes its masks may hold)."""
    scheme, arg = parse_spec(spec)
    if scheme == "synthetic":
        return SyntheticConfig(**parse_synthetic_options(arg)).resolved_num_classes
    if scheme not in FIXED_CLASSES:
        raise ValueError(FOLDER_CLASSES)
    return FIXED_CLASSES[scheme]


def build_dataset(spec: str, split: str = "train", num_classes: int | None = None, *, ignore_index: int = 255,
                  normalize: NormalizeConfig | None = None, in_channels: int = 3, transform=None,
                  label_map: dict[int, int] | None = None, val_fraction: float = 0.1) -> torch.utils.data.Dataset:
    """A data set from a spec string (see the module docstring).

    Args:
        spec: "synthetic[:OPTIONS]", "folder:PATH", "cityscapes:PATH", "ade20k:PATH" or "sunrgbd:PATH".
        split: "train", "val" or "test".
        num_classes: required for folder:; None = the data set's own (synthetic preset default, 19, 150, 37).
        ignore_index: the label of unsupervised pixels in the returned masks (255 in the files).
        normalize: intensity normalisation; None = NormalizeConfig() (fixed, ImageNet mean/std).
        in_channels: channels of the returned images (grayscale files are replicated).
        transform: optional callable (image, mask) -> (image, mask), e.g. Augment.
        label_map: raw mask value -> class (or the ignore index), applied before the data set's own mapping; e.g.
            {255: 1} for binary masks saved as 0/255 (file data sets only).
        val_fraction: share of a `folder:` data set without split folders held out as its "val" split.
    Returns:
        a Dataset of (image float32 (in_channels, H, W), mask int64 (H, W)) with attributes num_classes,
        ignore_index and class_names.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    scheme, arg = parse_spec(spec)
    dataset = DATASETS[scheme](arg, split, num_classes, val_fraction, ignore_index=ignore_index, normalize=normalize,
                               in_channels=in_channels, transform=transform)
    if label_map:
        if not isinstance(dataset, LabelledImages):
            raise ValueError(f"label_map applies to the mask files of file data sets, not to {scheme!r}")
        dataset.lut = apply_label_map(dataset.lut, label_map, dataset.num_classes, ignore_index)
    return dataset


def apply_label_map(lut: np.ndarray, label_map: dict[int, int], num_classes: int, ignore_index: int) -> np.ndarray:
    """A copy of `lut` (raw value -> class) where each raw value of `label_map` maps to its class instead."""
    lut = lut.copy()
    for raw, target in label_map.items():
        raw, target = int(raw), int(target)
        if not 0 <= raw <= 255:
            raise ValueError(f"label_map: raw mask values are 0..255, got {raw}")
        if not (0 <= target < num_classes or target == ignore_index):
            raise ValueError(f"label_map: {raw} -> {target} is neither a class 0..{num_classes - 1} nor the ignore "
                             f"index {ignore_index}")
        lut[raw] = target
    return lut


def parse_label_map(text: str) -> dict[int, int]:
    """"255:1,128:2" -> {255: 1, 128: 2} (the CLI's --label-map)."""
    mapping = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        raw, sep, target = item.partition(":")
        if not sep or not raw.strip().isdigit() or not target.strip().isdigit():
            raise ValueError(f"--label-map takes RAW:CLASS pairs separated by commas (e.g. 255:1), got {item!r}")
        mapping[int(raw)] = int(target)
    return mapping


def validate_dataset(dataset, max_errors: int = 10) -> dict:
    """Check every sample's mask before training: `dataset.check_sample(i)` where the data set has it (file data
    sets: values and size against the image header, no image decoding), else the values of every item's mask.

    Returns:
        {"num_samples": int, "class_pixels": int64 (num_classes,) ndarray, "ignore_pixels": int} (counts zero for
        synthetic data sets, valid by construction). ValueError lists up to `max_errors` problems, naming files.
    """
    if len(dataset) == 0:
        raise ValueError(f"data set {dataset!r} is empty")
    num_classes = int(dataset.num_classes)
    ignore_index = int(getattr(dataset, "ignore_index", 255))
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    errors = []
    for index in range(len(dataset)):
        try:
            if hasattr(dataset, "check_sample"):
                result = dataset.check_sample(index)
                if result is not None:
                    counts += result
            else:
                _, mask = dataset[index]
                bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
                if bool(bad.any()):
                    raise ValueError(f"sample {index}: mask labels {torch.unique(mask[bad]).tolist()[:20]} are not "
                                     f"in 0..{num_classes - 1} or the ignore index {ignore_index}")
                valid = mask[mask != ignore_index]
                counts[:num_classes] += np.bincount(valid.numpy().ravel(), minlength=num_classes)
                counts[num_classes] += mask.numel() - valid.numel()
        except ValueError as error:
            errors.append(str(error))
            if len(errors) >= max_errors:
                break
    if errors:
        more = " (stopped after the first errors)" if len(errors) >= max_errors else ""
        raise ValueError(f"{len(errors)} invalid sample(s){more}:\n  " + "\n  ".join(errors))
    return {"num_samples": len(dataset), "class_pixels": counts[:num_classes], "ignore_pixels": int(counts[-1])}


# ---- configuration -------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the images come from and how they are prepared. Classes, depth, image channels and the ignore label
    are the model's (`QGNConfig`): the functions below take them from there."""

    dataset: str = "synthetic"  # spec of the training set (see build_dataset)
    val_dataset: str | None = None  # spec of the validation set; None = `dataset` with split "val"
    normalize: NormalizeConfig = field(default_factory=lambda: NormalizeConfig(mode="auto"))  # "auto": resolved
    #                                 from the training images when training starts (qgn.normalize.resolve_auto)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # applied to the training split only
    validate: bool = True  # scan every mask of both splits before training (see validate_dataset)
    label_map: dict[int, int] = field(default_factory=dict)  # raw mask value -> class, e.g. {255: 1} for 0/255 masks
    val_fraction: float = 0.1  # folder: without split folders: share held out (deterministically) for validation


def datasets_from_config(cfg: DataConfig, model: QGNConfig, generator: torch.Generator | None = None,
                         augment: bool = True):
    """(train, val) data sets of `cfg` for `model` (its classes, depth, channels and ignore label); the training set
    is augmented unless `augment` is False. With cfg.validate both are validated and the training masks' classes
    checked (`check_classes`; the training set's `data_report` holds what they found, or None). A normalisation
    "auto" is resolved from the training images (`qgn.normalize.resolve_auto`) into `cfg.normalize`, which both use.
    ValueError for any bad spec, crop, folder, file or label, before any training step.
    """
    train = dataset_for(cfg, model, cfg.dataset, "train",
                        Augment(cfg.augment, model.depth, model.ignore_index, generator) if augment else None)
    val = dataset_for(cfg, model, cfg.val_dataset or cfg.dataset, "val")
    train.data_report = None
    if cfg.validate:  # first: these checks read only masks and headers
        stats = validate_dataset(train)
        validate_dataset(val)
        train.data_report = check_classes(stats, train.num_classes, model.ignore_index,
                                          getattr(train, "class_names", None))
    if cfg.normalize.mode == "auto":
        sample = np.unique(np.linspace(0, len(train) - 1, min(len(train), 64)).round().astype(int))
        cfg.normalize = resolve_auto(cfg.normalize, (train.raw_image(int(i)) for i in sample),
                                     model.pretrained_encoder)
        train.normalize = val.normalize = cfg.normalize
    return train, val


def dataset_for(cfg: DataConfig, model: QGNConfig, spec: str, split: str, transform=None) -> torch.utils.data.Dataset:
    """`build_dataset(spec, split)` with the classes, ignore index and channels of `model` and the normalisation,
    label map and validation fraction of `cfg`."""
    return build_dataset(spec, split, model.num_classes, ignore_index=model.ignore_index, normalize=cfg.normalize,
                         in_channels=model.in_channels, transform=transform, label_map=cfg.label_map,
                         val_fraction=cfg.val_fraction)


def check_classes(stats: dict, num_classes: int, ignore_index: int, class_names=None) -> dict | None:
    """What the training masks hold (`stats`: `validate_dataset`'s result): ValueError when fewer than two classes
    remain besides the ignore label (e.g. 0/255 binary masks, where 255 is the ignore label); a warning naming
    classes that never occur. Returns {"class_pixels": [...], "ignore_fraction": float, "missing_classes": [...]},
    or None when the data set reports no pixel counts (synthetic scenes, valid by construction)."""
    pixels = np.asarray(stats["class_pixels"])
    total = int(pixels.sum()) + stats["ignore_pixels"]
    if total == 0:
        return None
    present = [int(c) for c in np.flatnonzero(pixels)]
    ignore_fraction = stats["ignore_pixels"] / total
    if len(present) < 2:
        held = f"only class {present[0]}" if present else "no class at all"
        raise ValueError(
            f"the training masks hold {held} besides the ignore label {ignore_index} ({100 * ignore_fraction:.1f}% "
            f"of the pixels are {ignore_index}, which is never supervised); a segmentation needs at least two "
            f"classes. If {ignore_index} marks a class (binary masks saved as 0/255 are common), map it to one: "
            f"--label-map {ignore_index}:1 (data.label_map: {{{ignore_index}: 1}} in a config file)")
    missing = [c for c in range(num_classes) if pixels[c] == 0]
    if missing:
        named = ", ".join(f"{c} ({class_names[c]})" if class_names else str(c) for c in missing)
        warnings.warn(f"classes {named} never occur in the training masks: the model cannot learn them "
                      f"(check num_classes and the label values)", stacklevel=2)
    return {"class_pixels": pixels.tolist(), "ignore_fraction": ignore_fraction, "missing_classes": missing}
