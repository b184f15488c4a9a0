"""Procedural synthetic segmentation scenes: shapes of several classes over a textured background.

Every class (the background, class 0, included) has its own mean colour and texture (value noise of a given
grain, oriented stripes, a checkerboard or speckle), so appearance alone determines the class and a small CNN can
learn it. Scenes need no files, render with vectorised numpy, and are deterministic: scene `i` of a split depends
only on (seed, split, i), and the class appearance only on (num_classes, channels, palette_seed), so every split
and every scene shares one palette.

Presets:
    "shapes": ellipses, polygons, patches of stripes and thin curves/lines of random classes over the background;
        `boundary_density` multiplies the number of shapes. Default 256x256, 6 classes.
    "street": a Cityscapes-like layout (sky, buildings, road, sidewalk, terrain, trees with ragged outlines, cars,
        trucks, people, cyclists, poles, signs, traffic lights and an ignore-labelled ego-vehicle hood) with
        large smooth regions; roles follow the 19 Cityscapes train ids (role % num_classes when fewer classes).
        Default 512x1024, 19 classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from training.transforms import NormalizeConfig, normalize_image

PRESET_DEFAULTS = {
    "shapes": {"size": (256, 256), "num_classes": 6},
    "street": {"size": (512, 1024), "num_classes": 19},
}
PRESETS = tuple(PRESET_DEFAULTS)  # the valid values of `SyntheticConfig.preset`

SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
"""Random stream of each split: scene i of "val" differs from scene i of "train"."""

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
"""The 19 Cityscapes classes in train-id order: the classes of `cityscapes:` data sets (training.datasets) and the
role of each class of the "street" preset."""

TEXTURE_KINDS = ("noise", "stripes", "checker", "speckle")


@dataclass
class SyntheticConfig:
    num_images: int = 64  # scenes in the data set
    size: tuple[int, int] | None = None  # (H, W); None = preset default (shapes 256x256, street 512x1024)
    num_classes: int | None = None  # None = preset default (shapes 6, street 19); class 0 = background / road
    #                                 (None fields are filled by .resolved(), which SyntheticScenes applies)
    preset: str = "shapes"  # "shapes" or "street" (see the module docstring)
    boundary_density: float = 1.0  # multiplies the number of shapes, hence roughly the boundary length
    num_shapes: int = 10  # mean number of shapes per "shapes" scene at boundary_density 1
    shape_size: tuple[float, float] = (0.05, 0.3)  # "shapes": shape radius range, fraction of min(H, W)
    channels: int = 3  # image channels; 1 gives grayscale scenes (classes then differ by intensity and texture)
    noise_std: float = 0.03  # per-pixel Gaussian noise added to every image
    ignore_regions: bool = True  # label some regions ignore_index ("shapes": a blob in half the scenes;
    #                              "street": the ego-vehicle hood)
    ignore_index: int = 255
    seed: int = 0  # scene i of a split depends only on (seed, split, i)
    palette_seed: int = 0  # seeds the class colours and textures, shared by all splits and scenes

    def __post_init__(self):
        if self.preset not in PRESET_DEFAULTS:
            raise ValueError(f"unknown synthetic preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if isinstance(self.size, (int, np.integer)):
            self.size = (int(self.size), int(self.size))
        if self.size is not None:
            self.size = tuple(int(s) for s in self.size)
            if len(self.size) != 2 or min(self.size) < 8:
                raise ValueError(f"size must be (H, W) with both sides >= 8 pixels, got {self.size}")
        num_classes = self.resolved_num_classes
        if not 2 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in 2..255, got {num_classes}")
        if self.ignore_index < num_classes or self.ignore_index > 255:
            raise ValueError(f"ignore_index must be in {num_classes}..255 (outside the classes "
                             f"0..{num_classes - 1}), got {self.ignore_index}")
        if self.num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {self.num_images}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if not self.boundary_density > 0:
            raise ValueError(f"boundary_density must be > 0, got {self.boundary_density}")
        low, high = self.shape_size
        if not 0 < low <= high:
            raise ValueError(f"shape_size must be (low, high) with 0 < low <= high, got {self.shape_size}")

    @property
    def resolved_num_classes(self) -> int:
        return self.num_classes if self.num_classes is not None else PRESET_DEFAULTS[self.preset]["num_classes"]

    def resolved(self) -> "SyntheticConfig":
        """A copy with the preset's defaults filled in for size and num_classes when they are None."""
        if self.size is not None and self.num_classes is not None:
            return self
        size = self.size if self.size is not None else PRESET_DEFAULTS[self.preset]["size"]
        return dataclasses.replace(self, size=size, num_classes=self.resolved_num_classes)


# ---- class appearance ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Appearance:
    """Per-class appearance; row K (after the classes) is the appearance of ignore-labelled regions.

    Attributes:
        mean: float32 (K + 1, C) mean colour in [0, 1].
        amplitude: float32 (K + 1, C) texture amplitude per channel (the texture's colour direction).
        kind: int64 (K + 1,) index into TEXTURE_KINDS.
        scale: float32 (K + 1,) texture period / grain in pixels.
        angle: float32 (K + 1,) texture orientation in radians.
    """

    mean: np.ndarray
    amplitude: np.ndarray
    kind: np.ndarray
    scale: np.ndarray
    angle: np.ndarray


def class_appearance(num_classes: int, channels: int = 3, palette_seed: int = 0) -> Appearance:
    """A well-separated mean colour and a texture for each class (plus one for ignore regions).

    Mean colours are picked by farthest-point sampling in [0.1, 0.9]^C, so they are as distinct as the number of
    classes allows; texture kinds cycle through TEXTURE_KINDS in a shuffled order.
    """
    rng = np.random.default_rng([palette_seed, num_classes, channels, 7919])
    count = num_classes + 1
    candidates = rng.uniform(0.1, 0.9, size=(4096, channels)).astype(np.float32)
    chosen = [int(rng.integers(len(candidates)))]
    distance = np.linalg.norm(candidates - candidates[chosen[0]], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(candidates - candidates[nxt], axis=1))
    mean = candidates[rng.permutation(chosen)]
    direction = rng.normal(size=(count, channels)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-6
    amplitude = (direction * rng.uniform(0.05, 0.1, size=(count, 1))).astype(np.float32)
    if channels == 1:
        amplitude = np.abs(amplitude)
    kind = np.resize(rng.permutation(len(TEXTURE_KINDS)), count)
    rng.shuffle(kind)
    scale = rng.choice(np.array([3.0, 5.0, 8.0, 12.0, 20.0], dtype=np.float32), size=count)
    angle = rng.uniform(0, np.pi, size=count).astype(np.float32)
    return Appearance(mean=mean.astype(np.float32), amplitude=amplitude, kind=kind.astype(np.int64),
                      scale=scale, angle=angle)


def _value_noise(ys: np.ndarray, xs: np.ndarray, cell: float, shape: tuple[int, int], rng) -> np.ndarray:
    """Bilinearly interpolated random grid with `cell`-pixel spacing, sampled at float32 pixel coordinates."""
    h, w = shape
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
    fy, fx = ys / cell, xs / cell
    y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
    wy, wx = fy - y0, fx - x0
    top = grid[y0, x0] * (1 - wx) + grid[y0, x0 + 1] * wx
    bottom = grid[y0 + 1, x0] * (1 - wx) + grid[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _texture(kind: int, scale: float, angle: float, ys: np.ndarray, xs: np.ndarray, shape, rng) -> np.ndarray:
    """Zero-mean, roughly unit-amplitude texture values (float32 (n,)) at pixel coordinates ys, xs."""
    name = TEXTURE_KINDS[kind]
    if name == "noise":
        return 1.4 * _value_noise(ys, xs, scale, shape, rng)
    if name == "speckle":
        return rng.standard_normal(ys.shape[0], dtype=np.float32)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = xs * c + ys * s
    if name == "stripes":
        return np.sin(u * np.float32(2 * np.pi / (2 * scale))) * np.float32(1.4)
    v = ys * c - xs * s  # checker
    period = np.float32(np.pi / scale)
    return np.sign(np.sin(u * period) * np.sin(v * period)).astype(np.float32)


def paint_image(label: np.ndarray, appearance: Appearance, ignore_index: int, noise_std: float, rng) -> np.ndarray:
    """The image float32 (C, H, W) in [0, 1] of a label map uint8 (H, W) (classes 0..K-1 plus `ignore_index`):
    per-class mean colour + per-class texture, a gentle illumination gradient, Gaussian noise of std `noise_std`."""
    h, w = label.shape
    num_classes = appearance.mean.shape[0] - 1
    channels = appearance.mean.shape[1]
    flat = label.reshape(-1)
    order = np.argsort(flat, kind="stable")  # radix sort for uint8: groups pixels by label
    counts = np.bincount(flat, minlength=256)
    starts = np.concatenate([[0], np.cumsum(counts)])
    image = np.empty((channels, h * w), dtype=np.float32)
    for value in np.flatnonzero(counts):
        row = num_classes if value == ignore_index else int(value)
        idx = order[starts[value]:starts[value + 1]]
        ys = (idx // w).astype(np.float32)
        xs = (idx % w).astype(np.float32)
        t = _texture(int(appearance.kind[row]), float(appearance.scale[row]), float(appearance.angle[row]),
                     ys, xs, (h, w), rng)
        image[:, idx] = appearance.mean[row][:, None] + appearance.amplitude[row][:, None] * t[None, :]
    image = image.reshape(channels, h, w)
    gy, gx = rng.uniform(-0.08, 0.08, size=2).astype(np.float32)
    gain = 1 + gy * np.linspace(-1, 1, h, dtype=np.float32)[:, None] + gx * np.linspace(-1, 1, w, dtype=np.float32)
    image *= gain
    if noise_std > 0:
        image += np.float32(noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1, out=image)


# ---- shape rasterisation (each works on the shape's bounding box only) ---------------------------------------
def _box(label: np.ndarray, y0: float, y1: float, x0: float, x1: float):
    """Integer window of the float box clipped to the image, and its pixel-centre coordinates (or None)."""
    h, w = label.shape
    top, bottom = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, h)
    left, right = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, w)
    if top >= bottom or left >= right:
        return None
    ys = np.arange(top, bottom, dtype=np.float32)[:, None]
    xs = np.arange(left, right, dtype=np.float32)[None, :]
    return (slice(top, bottom), slice(left, right)), ys, xs


def paint_ellipse(label, cy, cx, ry, rx, angle, value, power: float = 2.0) -> None:
    """Fill a rotated ellipse (power 2) or superellipse (power > 2: rounded rectangle) with `value`."""
    frame = _rotated_frame(label, cy, cx, max(ry, rx) * (1.42 if power > 2 else 1.0), angle)
    if frame is None:
        return
    window, u, v = frame
    u, v = u / np.float32(rx), v / np.float32(ry)
    if power == 2.0:
        inside = u * u + v * v <= 1
    else:
        inside = np.abs(u) ** power + np.abs(v) ** power <= 1
    label[window][inside] = value


def paint_ring(label, cy, cx, radius, thickness, value) -> None:
    """Fill a circular ring (outer radius `radius`, `thickness` pixels wide): wheels."""
    box = _box(label, cy - radius, cy + radius, cx - radius, cx + radius)
    if box is None:
        return
    window, ys, xs = box
    d2 = (ys - cy) ** 2 + (xs - cx) ** 2
    inside = (d2 <= radius * radius) & (d2 >= max(radius - thickness, 0.0) ** 2)
    label[window][inside] = value


def paint_polygon(label, vertices: np.ndarray, value) -> None:
    """Fill a simple polygon (even-odd rule). vertices: float (n, 2) as (y, x)."""
    box = _box(label, vertices[:, 0].min(), vertices[:, 0].max(), vertices[:, 1].min(), vertices[:, 1].max())
    if box is None:
        return
    window, ys, xs = box
    inside = np.zeros((ys.shape[0], xs.shape[1]), dtype=bool)
    n = len(vertices)
    for i in range(n):
        (y1, x1), (y2, x2) = vertices[i], vertices[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)  # (h, 1): rows this edge spans
        x_cross = x1 + (ys - y1) * np.float32((x2 - x1) / (y2 - y1))  # (h, 1)
        inside ^= crosses & (xs < x_cross)
    label[window][inside] = value


def paint_blob(label, cy, cx, radius, roughness, value, rng, harmonics: int = 24) -> None:
    """Fill a star-shaped blob whose radius wobbles with the angle (ragged outlines like tree crowns)."""
    phases = rng.uniform(0, 2 * np.pi, harmonics)
    k = np.arange(1, harmonics + 1)
    amps = roughness * rng.uniform(0.3, 1.0, harmonics) / k ** 0.8
    theta = np.linspace(0, 2 * np.pi, 1024, endpoint=False)
    table = radius * (1 + (amps[:, None] * np.sin(k[:, None] * theta[None, :] + phases[:, None])).sum(0))
    table = np.maximum(table, 0.2 * radius).astype(np.float32)
    r = float(table.max())
    box = _box(label, cy - r, cy + r, cx - r, cx + r)
    if box is None:
        return
    window, ys, xs = box
    dy, dx = ys - cy, xs - cx
    index = ((np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(1024 / (2 * np.pi))).astype(np.int64) % 1024
    inside = dy * dy + dx * dx <= table[index] ** 2
    label[window][inside] = value


def _rotated_frame(label, cy, cx, radius, angle):
    """(window, u, v): the pixels within `radius` of (cy, cx) in a frame rotated by `angle` (u along it), or None."""
    box = _box(label, cy - radius, cy + radius, cx - radius, cx + radius)
    if box is None:
        return None
    window, ys, xs = box
    dy, dx = ys - cy, xs - cx
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return window, dx * c + dy * s, dy * c - dx * s


def paint_stripes(label, cy, cx, half_length, half_width, angle, period, duty, value) -> None:
    """Fill parallel bands (period `period`, fraction `duty` filled) inside a rotated rectangle."""
    frame = _rotated_frame(label, cy, cx, np.hypot(half_length, half_width), angle)
    if frame is None:
        return
    window, u, v = frame
    inside = (np.abs(u) <= half_length) & (np.abs(v) <= half_width) & (np.mod(v, np.float32(period)) < period * duty)
    label[window][inside] = value


def paint_curve(label, cy, cx, half_length, angle, width, amplitude, wavelength, phase, value) -> None:
    """Fill a thin wavy (or, with amplitude 0, straight) line of `width` pixels: vessels, wires, poles."""
    frame = _rotated_frame(label, cy, cx, half_length + amplitude + width, angle)
    if frame is None:
        return
    window, u, v = frame
    offset = np.float32(amplitude) * np.sin(u * np.float32(2 * np.pi / wavelength) + np.float32(phase))
    inside = (np.abs(v - offset) <= width / 2) & (np.abs(u) <= half_length)
    label[window][inside] = value


def paint_rect(label, y0, y1, x0, x1, value) -> None:
    """Fill the axis-aligned box [y0, y1) x [x0, x1) (float bounds, clipped to the image)."""
    h, w = label.shape
    top, bottom = int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))
    left, right = int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))
    label[top:bottom, left:right] = value


# ---- layouts ------------------------------------------------------------------------------------------------
def shapes_layout(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W) label map of the "shapes" preset: random shapes of classes 1..K-1 over background 0. `cfg` must
    be resolved (SyntheticConfig.resolved()); likewise for street_layout."""
    h, w = cfg.size
    label = np.zeros((h, w), dtype=np.uint8)
    side = min(h, w)
    count = max(1, int(rng.poisson(cfg.num_shapes * cfg.boundary_density)))
    classes = np.resize(rng.permutation(np.arange(1, cfg.num_classes)), count)  # every class before repeats
    rng.shuffle(classes)
    low, high = cfg.shape_size
    for value in classes:
        value = int(value)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = side * np.exp(rng.uniform(np.log(low), np.log(high)))
        kind = rng.choice(4, p=[0.35, 0.3, 0.15, 0.2])
        if kind == 0:
            paint_ellipse(label, cy, cx, radius * rng.uniform(0.4, 1.0), radius, rng.uniform(0, np.pi), value)
        elif kind == 1:
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = radius * rng.uniform(0.5, 1.0, n)
            vertices = np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], 1)
            paint_polygon(label, vertices, value)
        elif kind == 2:
            period = max(4.0, radius * rng.uniform(0.15, 0.4))
            paint_stripes(label, cy, cx, radius, radius * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), period,
                          rng.uniform(0.3, 0.6), value)
        else:
            wavy = rng.random() < 0.6
            paint_curve(label, cy, cx, radius * 1.5, rng.uniform(0, np.pi), rng.uniform(1.0, 3.5),
                        radius * rng.uniform(0.1, 0.3) if wavy else 0.0, radius * rng.uniform(0.5, 1.5),
                        rng.uniform(0, 2 * np.pi), value)
    if cfg.ignore_regions and rng.random() < 0.5:
        radius = side * rng.uniform(0.03, 0.08)
        paint_blob(label, rng.uniform(0, h), rng.uniform(0, w), radius, 0.15, cfg.ignore_index, rng, harmonics=6)
    return label


def street_layout(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W) label map of the "street" preset (Cityscapes-like; roles = Cityscapes train ids).

    Perspective: objects stand on the ground at depth p in [0, 1] (0 at the horizon, 1 at the image bottom) and
    scale with p; most are far away (small, crowded near the horizon) as in street scenes. Object counts scale
    with `boundary_density`.
    """
    h, w = cfg.size
    k = cfg.num_classes
    density = cfg.boundary_density
    ignore = cfg.ignore_index if cfg.ignore_regions else None

    def cls(role: str) -> int:
        return CITYSCAPES_CLASSES.index(role) % k

    def count(mean: float) -> int:
        return int(rng.poisson(mean * density))

    def depth_sample(low: float, high: float) -> float:  # skewed towards the horizon
        return low + (high - low) * rng.random() ** 1.7

    label = np.full((h, w), cls("sky"), dtype=np.uint8)
    horizon = h * rng.uniform(0.38, 0.5)
    vanish_x = w * rng.uniform(0.4, 0.6)
    left, right = w * rng.uniform(-0.4, 0.05), w * rng.uniform(0.95, 1.4)  # road edges at the bottom

    def ground_y(p: float) -> float:
        return horizon + p * (h - horizon)

    def road_half_width(y: float) -> float:
        return 0.02 * w + (y - horizon) / (h - horizon) * (right - left) / 2

    def roadside_x(y: float, side: int, spread: float) -> float:
        return vanish_x + side * (road_half_width(y) + w * rng.uniform(0.0, spread))

    # Skyline: blocks of buildings (some walls or tree rows), taller towards the sides, with roof details.
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        width = w * rng.uniform(0.03, 0.15)
        edge = abs((x + width / 2) - vanish_x) / w  # 0 near the vanishing point, ~0.5 at the sides
        top = horizon - h * rng.uniform(0.05, 0.15 + 1.0 * edge)
        role = rng.choice(["building", "building", "building", "wall", "vegetation"])
        if role == "vegetation":
            paint_blob(label, top + 0.1 * h, x + width / 2, width * 0.6, 0.35, cls(role), rng, harmonics=48)
            paint_rect(label, top + 0.1 * h, horizon + 1, x, x + width, cls(role))
        else:
            paint_rect(label, top, horizon + 1, x, x + width, cls(role))
            for _ in range(int(rng.integers(0, 4))):  # roof details: chimneys, antennas, steps
                dx, dw = rng.uniform(0, width), w * rng.uniform(0.002, 0.03)
                paint_rect(label, top - h * rng.uniform(0.005, 0.05), top + 1, x + dx, x + dx + dw, cls(role))
        x += width

    # Ground: sidewalk everywhere, terrain patches at the sides, the road converging to the vanishing point.
    paint_rect(label, horizon, h, 0, w, cls("sidewalk"))
    for side in (-1, 1):
        if rng.random() < 0.6:
            outer = 0 if side < 0 else w
            poly = np.array([[horizon, vanish_x + side * 0.08 * w], [horizon, outer],
                             [h * rng.uniform(0.7, 1.0), outer]])
            paint_polygon(label, poly, cls("terrain"))
    for _ in range(count(3)):  # grass verges with ragged edges
        p = depth_sample(0.0, 0.6)
        y = ground_y(p)
        size = h * (0.02 + 0.15 * p)
        paint_blob(label, y, roadside_x(y, rng.choice([-1, 1]), 0.2), size, 0.3, cls("terrain"), rng)
    road = np.array([[horizon, vanish_x - 0.02 * w], [horizon, vanish_x + 0.02 * w], [h + 1, right], [h + 1, left]])
    paint_polygon(label, road, cls("road"))

    # Background clutter just above the horizon: unlabelled structures, distant trees and poles.
    for _ in range(count(12)):
        x = rng.uniform(0, w)
        size = h * rng.uniform(0.01, 0.05)
        role = rng.choice(["vegetation", "vegetation", "pole", "traffic sign", "building", "ignore"])
        value = ignore if role == "ignore" else cls(role)
        if value is not None:
            paint_blob(label, horizon - size * rng.uniform(0, 1), x, size, 0.3, value, rng, harmonics=12)

    # Fences, walls and (ignore-labelled) guard rails / static objects along the sidewalk.
    for _ in range(count(3)):
        p = depth_sample(0.05, 0.5)
        y = ground_y(p)
        height = h * (0.02 + 0.12 * p)
        side = int(rng.choice([-1, 1]))
        x0 = roadside_x(y, side, 0.1)
        x1 = x0 + side * w * rng.uniform(0.05, 0.25)
        role = rng.choice(["fence", "fence", "wall", "ignore"])
        value = ignore if role == "ignore" else cls(role)
        if value is not None:
            paint_rect(label, y - height, y, min(x0, x1), max(x0, x1), value)

    # Trees (trunk + ragged crown) and bushes.
    for _ in range(count(12)):
        p = depth_sample(0.0, 0.5)
        y = ground_y(p)
        x = roadside_x(y, int(rng.choice([-1, 1])), 0.3)
        size = h * (0.03 + 0.3 * p) * rng.uniform(0.7, 1.3)
        if rng.random() < 0.3:
            paint_blob(label, y - 0.3 * size, x, 0.5 * size, 0.35, cls("vegetation"), rng, harmonics=32)
            continue
        paint_rect(label, y - 1.5 * size, y, x - size * 0.06, x + size * 0.06, cls("vegetation"))
        paint_blob(label, y - 1.6 * size, x, size, 0.35, cls("vegetation"), rng, harmonics=48)

    # Poles with signs and traffic lights.
    for _ in range(count(14)):
        p = depth_sample(0.0, 0.7)
        y = ground_y(p)
        x = roadside_x(y, int(rng.choice([-1, 1])), 0.05)
        height = h * (0.1 + 0.6 * p)
        width = max(1.5, w * (0.002 + 0.006 * p))
        paint_rect(label, y - height, y, x - width / 2, x + width / 2, cls("pole"))
        top = y - height
        u = rng.random()
        if u < 0.4:
            size = width * rng.uniform(3, 6)
            if rng.random() < 0.5:
                paint_ellipse(label, top, x, size, size, 0.0, cls("traffic sign"))
            else:
                tri = np.array([[top - size, x], [top + size, x - size], [top + size, x + size]])
                paint_polygon(label, tri, cls("traffic sign"))
        elif u < 0.7:
            paint_rect(label, top, top + width * 8, x - width * 1.5, x + width * 1.5, cls("traffic light"))

    # Vehicles: rows of parked cars along the kerbs and traffic on the road, drawn far to near (occlusion).
    def vehicle_width(p: float, role: str) -> float:
        return w * (0.015 + 0.25 * p) * (1.6 if role in ("bus", "truck", "train") else 1.0)

    vehicles = []
    for side in (-1, 1):
        if rng.random() < 0.7 * min(density, 1.0):
            p = rng.uniform(0.0, 0.1)
            while p < 0.6:
                if rng.random() < 0.8:
                    y = ground_y(p)
                    x = vanish_x + side * (road_half_width(y) - 0.6 * vehicle_width(p, "car"))
                    vehicles.append((p, "car", x))
                p += (0.015 + 0.25 * p) * rng.uniform(0.6, 1.2)
    for _ in range(count(6)):
        p = depth_sample(0.01, 0.6)
        x = vanish_x + road_half_width(ground_y(p)) * rng.uniform(-0.7, 0.7)
        vehicles.append((p, rng.choice(["car"] * 6 + ["truck", "bus", "train"]), x))
    for p, role, x in sorted(vehicles, key=lambda v: v[0]):
        y = ground_y(p)
        width = vehicle_width(p, role)
        height = width * (0.55 if role == "car" else 0.8)
        paint_ellipse(label, y - height / 2, x, height / 2, width / 2, 0.0, cls(role), power=4.0)

    # People and cyclists on the sidewalks.
    for _ in range(count(18)):
        p = depth_sample(0.0, 0.7)
        y = ground_y(p)
        x = roadside_x(y, int(rng.choice([-1, 1])), 0.12)
        height = h * (0.03 + 0.4 * p)
        if rng.random() < 0.3:  # cyclist: two wheels (rings), a frame and a rider
            wheel = height * 0.18
            vehicle = cls(rng.choice(["bicycle", "motorcycle"]))
            for dx in (-1.2 * wheel, 1.2 * wheel):
                paint_ring(label, y - wheel, x + dx, wheel, max(1.0, 0.25 * wheel), vehicle)
            paint_curve(label, y - 1.5 * wheel, x, 1.3 * wheel, 0.0, max(1.0, wheel * 0.15), 0.0, 1.0, 0.0, vehicle)
            paint_ellipse(label, y - 3.2 * wheel, x, 1.6 * wheel, 0.5 * wheel, 0.0, cls("rider"))
        else:
            paint_ellipse(label, y - height * 0.45, x, height * 0.45, height * 0.13, 0.0, cls("person"))
            paint_ellipse(label, y - height * 0.95, x, height * 0.08, height * 0.07, 0.0, cls("person"))

    if ignore is not None:  # ego-vehicle hood (Cityscapes labels it "ego vehicle", i.e. ignore)
        paint_ellipse(label, h * 1.08, w * rng.uniform(0.45, 0.55), h * rng.uniform(0.12, 0.18), w * 0.7, 0.0,
                      ignore)
    return label


LAYOUTS = {"shapes": shapes_layout, "street": street_layout}


def render_scene(cfg: SyntheticConfig, index: int, split: str = "train",
                 appearance: Appearance | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of `split`: image float32 (C, H, W) in [0, 1] and mask uint8 (H, W) (classes
    0..num_classes-1 plus cfg.ignore_index)."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_STREAMS)}")
    cfg = cfg.resolved()
    if appearance is None:
        appearance = class_appearance(cfg.num_classes, cfg.channels, cfg.palette_seed)
    rng = np.random.default_rng([cfg.seed, SPLIT_STREAMS[split], index])
    mask = LAYOUTS[cfg.preset](cfg, rng)
    image = paint_image(mask, appearance, cfg.ignore_index, cfg.noise_std, rng)
    return image, mask


class SyntheticScenes(torch.utils.data.Dataset):
    """Procedurally generated scenes (see the module docstring); no files needed.

    Args:
        config: a SyntheticConfig; keyword `overrides` replace its fields, e.g.
            SyntheticScenes(num_images=8, size=(64, 64), num_classes=4, seed=1).
        split: "train", "val" or "test" (independent random streams, one palette).
        normalize: intensity normalisation of the [0, 1] images; None = NormalizeConfig() (fixed, ImageNet
            mean/std for 3 channels); NormalizeConfig(mode="none") keeps [0, 1].
        transform: optional callable (image, mask) -> (image, mask), e.g. training.transforms.Augment.
    Items:
        (image float32 (C, H, W), mask int64 (H, W)).
    """

    def __init__(self, config: SyntheticConfig | None = None, *, split: str = "train",
                 normalize: NormalizeConfig | None = None, transform=None, **overrides):
        config = config if config is not None else SyntheticConfig()
        self.config = (dataclasses.replace(config, **overrides) if overrides else config).resolved()
        if split not in SPLIT_STREAMS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_STREAMS)}")
        self.split, self.transform = split, transform
        self.normalize = normalize if normalize is not None else NormalizeConfig()
        self.appearance = class_appearance(self.config.num_classes, self.config.channels, self.config.palette_seed)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def ignore_index(self) -> int:
        return self.config.ignore_index

    @property
    def in_channels(self) -> int:
        return self.config.channels

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.config.preset == "street" and self.num_classes == len(CITYSCAPES_CLASSES):
            return CITYSCAPES_CLASSES
        return tuple(["background"] + [f"class_{c}" for c in range(1, self.num_classes)])

    def __len__(self) -> int:
        return self.config.num_images

    def raw_image(self, index: int) -> np.ndarray:
        """The scene's image before normalisation: float32 (C, H, W) in [0, 1]."""
        return self.render(index)[0]

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw scene: float32 (C, H, W) image in [0, 1] and uint8 (H, W) mask."""
        if not 0 <= index < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
        return render_scene(self.config, index, self.split, self.appearance)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.render(index)
        image = torch.from_numpy(normalize_image(image, self.normalize))
        mask = torch.from_numpy(mask.astype(np.int64))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def check_sample(self, index: int) -> None:
        """Nothing to check: synthetic masks are valid by construction (kept for `validate_dataset`)."""

    def __repr__(self) -> str:
        c = self.config
        return (f"SyntheticScenes(preset={c.preset!r}, split={self.split!r}, num_images={c.num_images}, "
                f"size={c.size}, num_classes={c.num_classes}, seed={c.seed})")
