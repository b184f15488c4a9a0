import itertools

import numpy as np
import pytest
import torch

from training.synthetic import (
    CITYSCAPES_CLASSES, SyntheticConfig, SyntheticScenes, class_appearance, paint_polygon, render_scene,
)
from training.transforms import NormalizeConfig


def small(**overrides):
    return SyntheticConfig(**{"num_images": 8, "size": (64, 96), "num_classes": 5, **overrides})


def test_items_have_documented_shapes_and_dtypes():
    ds = SyntheticScenes(small())
    assert len(ds) == 8
    image, mask = ds[0]
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    assert mask.shape == (64, 96) and mask.dtype == torch.int64
    raw_image, raw_mask = ds.render(0)
    assert raw_image.dtype == np.float32 and raw_mask.dtype == np.uint8
    assert 0 <= raw_image.min() and raw_image.max() <= 1
    # default normalisation is ImageNet mean/std; mode "none" keeps [0, 1]
    assert np.allclose(SyntheticScenes(small(), normalize=NormalizeConfig(mode="none"))[0][0].numpy(), raw_image)
    assert not np.allclose(image.numpy(), raw_image)
    with pytest.raises(IndexError):
        ds.render(8)


def test_deterministic_per_seed_split_and_index():
    cfg = small()
    a = [render_scene(cfg, i) for i in (3, 0)]
    b = [render_scene(cfg, i) for i in (0, 3)][::-1]  # order of rendering does not matter
    for (ia, ma), (ib, mb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    other_seed = render_scene(small(seed=1), 3)
    other_split = render_scene(cfg, 3, split="val")
    assert not np.array_equal(a[0][1], other_seed[1])
    assert not np.array_equal(a[0][1], other_split[1])
    assert not np.array_equal(a[0][1], a[1][1])  # scenes differ
    # the palette is shared by every split and seed
    assert np.array_equal(class_appearance(5).mean, class_appearance(5).mean)


def test_labels_and_all_classes_present():
    ds = SyntheticScenes(small(num_images=12))
    seen = set()
    for i in range(len(ds)):
        _, mask = ds.render(i)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(5)) | {255}
        seen |= values
    assert set(range(5)) <= seen
    assert 255 in seen  # ignore regions by default
    ds = SyntheticScenes(small(ignore_regions=False))
    assert all(255 not in np.unique(ds.render(i)[1]) for i in range(len(ds)))


def test_appearance_determines_class():
    """Per-class mean colours are far apart, and a nearest-mean classifier on 4x4 patch means is accurate."""
    cfg = small(num_images=6, size=(128, 128), num_classes=6, ignore_regions=False)
    ds = SyntheticScenes(cfg)
    pixels = {c: [] for c in range(6)}
    scenes = [ds.render(i) for i in range(len(ds))]
    for image, mask in scenes:
        for c in range(6):
            pixels[c].append(image[:, mask == c])
    means = np.stack([np.concatenate(pixels[c], axis=1).mean(1) for c in range(6)])
    distances = [np.linalg.norm(means[a] - means[b]) for a, b in itertools.combinations(range(6), 2)]
    assert min(distances) > 0.15
    correct = total = 0
    for image, mask in scenes:
        patches = image.reshape(3, 32, 4, 32, 4).mean((2, 4))
        labels = mask.reshape(32, 4, 32, 4)
        uniform = (labels == labels[:, :1, :, :1]).all((1, 3))
        patch_label = labels[:, 0, :, 0]
        feats = patches.reshape(3, -1).T[uniform.ravel()]
        nearest = np.argmin(((feats[:, None, :] - means[None]) ** 2).sum(-1), 1)
        correct += int((nearest == patch_label.ravel()[uniform.ravel()]).sum())
        total += int(uniform.sum())
    assert correct / total > 0.9


def test_grayscale_scenes():
    ds = SyntheticScenes(small(channels=1), normalize=NormalizeConfig(mode="none"))
    image, mask = ds[1]
    assert image.shape == (1, 64, 96)
    means = class_appearance(5, channels=1).mean[:5, 0]
    assert np.min(np.diff(np.sort(means))) > 0.1  # distinct intensities


def _boundary_pixels(mask):
    return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())


def test_boundary_density_controls_boundaries():
    sparse = sum(_boundary_pixels(render_scene(small(size=(128, 128), boundary_density=0.3), i)[1]) for i in range(6))
    dense = sum(_boundary_pixels(render_scene(small(size=(128, 128), boundary_density=3.0), i)[1]) for i in range(6))
    assert dense > 1.5 * sparse


def test_street_preset():
    ds = SyntheticScenes(preset="street", size=(128, 256), num_images=6)
    assert ds.num_classes == 19 and ds.class_names is CITYSCAPES_CLASSES  # one table with cityscapes: data sets
    seen = set()
    for i in range(len(ds)):
        image, mask = ds.render(i)
        assert image.shape == (3, 128, 256) and mask.shape == (128, 256)
        seen |= set(np.unique(mask).tolist())
    assert 255 in seen  # ego-vehicle hood
    assert len(seen - {255}) >= 12
    assert seen <= set(range(19)) | {255}
    # fewer classes: roles fold onto the available classes
    _, mask = render_scene(SyntheticConfig(preset="street", size=(64, 128), num_classes=4), 0)
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 255}


def test_polygon_rasteriser_matches_a_square():
    label = np.zeros((10, 10), dtype=np.uint8)
    paint_polygon(label, np.array([[2.0, 2.0], [2.0, 6.0], [6.0, 6.0], [6.0, 2.0]]), 1)
    assert label.sum() == 16 and label[2:6, 2:6].all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"preset": "forest"}, "valid presets: shapes, street"),
        ({"num_classes": 1}, "num_classes must be in 2..255"),
        ({"size": (4, 64)}, "size must be"),
        ({"num_classes": 10, "ignore_index": 3}, "ignore_index"),
        ({"boundary_density": 0}, "boundary_density"),
        ({"shape_size": (0.5, 0.1)}, "shape_size"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**overrides)


def test_bad_split():
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        SyntheticScenes(small(), split="dev")
