from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from qgn.config import QGNConfig
from training.datasets import (
    CITYSCAPES_ID_TO_TRAIN_ID, DATASETS, DataConfig, LabelledImages, build_dataset, cityscapes_lut,
    datasets_from_config, own_num_classes, parse_synthetic_options, read_image, validate_dataset,
)
from training.synthetic import SyntheticScenes
from training.transforms import AugmentConfig, NormalizeConfig

NONE = NormalizeConfig(mode="none")
RNG = np.random.default_rng(0)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an image file (format from the suffix), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    save_png(path, mask.astype(np.uint8))


@pytest.fixture
def folder(tmp_path):
    """A folder data set with one image of every supported kind (8/16-bit, gray/RGB, png/jpg/tif)."""
    root = tmp_path / "data"
    h, w = 12, 16
    images = {
        "rgb8.png": RNG.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "gray8.png": RNG.integers(0, 256, (h, w), dtype=np.uint8),
        "gray16.png": RNG.integers(0, 65536, (h, w), dtype=np.uint16),
        "photo.jpg": RNG.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "rgb16.tif": RNG.integers(0, 65536, (h, w, 3), dtype=np.uint16),
        "gray16.tiff_": None,  # placeholder (not an image suffix): ignored
    }
    for name, array in images.items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if array is None:
            path.write_text("not an image")
        elif name.endswith(".tif"):
            tifffile.imwrite(path, array)
        elif name.endswith(".jpg"):
            Image.fromarray(array).save(path, quality=95)
        else:
            save_png(path, array)
        if array is not None:
            mask = RNG.integers(0, 3, (h, w))
            mask[0, :4] = 255
            write_mask(root / "masks" / (Path(name).stem + ".png"), mask)
    return root, images


def item(ds, stem):
    index = [p[0].stem for p in ds.pairs].index(stem)
    return ds[index], ds.pairs[index]


def test_folder_reads_every_image_kind(folder):
    root, images = folder
    ds = build_dataset(f"folder:{root}", "train", num_classes=3, normalize=NONE, val_fraction=0)
    assert isinstance(ds, LabelledImages) and len(ds) == 5
    for index in range(len(ds)):
        image, mask = ds[index]
        assert image.shape == (3, 12, 16) and image.dtype == torch.float32
        assert mask.shape == (12, 16) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
        expected_mask = np.array(Image.open(ds.pairs[index][1]))
        assert np.array_equal(mask.numpy(), expected_mask)
    (image, _), _ = item(ds, "rgb8")
    assert np.allclose(image.numpy(), images["rgb8.png"].transpose(2, 0, 1) / 255, atol=1e-6)
    (image, _), _ = item(ds, "gray16")  # 16-bit kept exactly, replicated to 3 channels
    assert np.allclose(image[0].numpy(), images["gray16.png"] / 65535, atol=1e-6)
    assert torch.equal(image[0], image[2])
    (image, _), _ = item(ds, "rgb16")
    assert np.allclose(image.numpy(), images["rgb16.tif"].transpose(2, 0, 1) / 65535, atol=1e-6)
    (image, _), _ = item(ds, "gray8")
    assert np.allclose(image[1].numpy(), images["gray8.png"] / 255, atol=1e-6)


def test_read_image_dtypes(folder):
    root, _ = folder
    assert read_image(root / "images" / "gray16.png").dtype == np.uint16
    assert read_image(root / "images" / "gray16.png").shape == (1, 12, 16)
    assert read_image(root / "images" / "rgb16.tif").dtype == np.uint16
    assert read_image(root / "images" / "rgb8.png").shape == (3, 12, 16)
    rgba = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    save_png(root / "rgba.png", rgba)
    assert np.array_equal(read_image(root / "rgba.png"), rgba[..., :3].transpose(2, 0, 1))
    planar = RNG.integers(0, 65536, (2, 6, 7), dtype=np.uint16)  # (C, H, W) microscopy tif, 2 channels kept
    tifffile.imwrite(root / "planar.tif", planar)
    assert np.array_equal(read_image(root / "planar.tif"), planar)


def test_normalisation_modes_and_channels(folder):
    root, images = folder
    ds = build_dataset(f"folder:{root}", num_classes=3, normalize=NormalizeConfig(mode="percentile", clip=True))
    (image, _), _ = item(ds, "gray16")
    assert image.min() == 0 and image.max() == 1
    gray_only = root.parent / "gray"
    for name in ("gray8", "gray16"):
        (gray_only / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{name}.png").rename(gray_only / "images" / f"{name}.png")
        (gray_only / "masks").mkdir(exist_ok=True)
        (root / "masks" / f"{name}.png").rename(gray_only / "masks" / f"{name}.png")
    ds = build_dataset(f"folder:{gray_only}", num_classes=3, in_channels=1)
    (image, _), _ = item(ds, "gray8")
    assert image.shape == (1, 12, 16)
    expected = (images["gray8.png"] / 255 - 0.449) / 0.226  # default 1-channel statistics
    assert np.allclose(image[0].numpy(), expected, atol=1e-5)
    ds = build_dataset(f"folder:{root}", num_classes=3, in_channels=1)
    with pytest.raises(ValueError, match="has 3 channels but the model expects in_channels=1"):
        ds[0]


def test_split_subfolders(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            save_png(tmp_path / split / "images" / f"{i}.png", np.zeros((4, 4), np.uint8))
            write_mask(tmp_path / split / "masks" / f"{i}.png", np.zeros((4, 4)))
    assert len(build_dataset(f"folder:{tmp_path}", "train", num_classes=2)) == 2
    assert len(build_dataset(f"folder:{tmp_path}", "val", num_classes=2)) == 1


# ---- bad inputs ----------------------------------------------------------------------------------------------


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="(?s)is empty.*expected layout"):
        build_dataset(f"folder:{tmp_path}", num_classes=2)
    with pytest.raises(ValueError, match="does not exist.*expected layout"):
        build_dataset(f"folder:{tmp_path / 'missing'}", num_classes=2)


def test_image_without_mask_and_mask_without_image(folder):
    root, _ = folder
    save_png(root / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"1 image\(s\) without a mask: .*lonely.png.*expected layout"):
        build_dataset(f"folder:{root}", num_classes=3)
    (root / "images" / "lonely.png").unlink()
    (root / "images" / "rgb8.png").unlink()
    with pytest.raises(ValueError, match=r"mask\(s\) without an image: .*rgb8.png"):
        build_dataset(f"folder:{root}", num_classes=3)


def test_duplicate_image_names(folder):
    root, _ = folder
    save_png(root / "images" / "rgb8.jpg", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="share a name"):
        build_dataset(f"folder:{root}", num_classes=3)


def test_labels_out_of_range_are_reported_with_file_and_values(folder):
    root, _ = folder
    mask = np.zeros((12, 16))
    mask[0, 0], mask[1, 1] = 7, 3
    write_mask(root / "masks" / "gray8.png", mask)
    ds = build_dataset(f"folder:{root}", num_classes=3)
    index = [p[0].stem for p in ds.pairs].index("gray8")
    with pytest.raises(ValueError, match=r"gray8.png holds label values \[3, 7\]"):
        ds[index]
    with pytest.raises(ValueError, match=r"(?s)1 invalid sample.*gray8.png holds label values \[3, 7\]"):
        validate_dataset(ds)
    assert ds[0][1].shape == (12, 16)  # the other samples still load


def test_size_mismatch_and_rgb_masks(folder):
    root, _ = folder
    write_mask(root / "masks" / "gray8.png", np.zeros((10, 16)))
    save_png(root / "masks" / "rgb8.png", np.zeros((12, 16, 3), np.uint8))
    ds = build_dataset(f"folder:{root}", num_classes=3, val_fraction=0)
    with pytest.raises(ValueError) as error:
        validate_dataset(ds)
    message = str(error.value)
    assert "2 invalid sample(s)" in message
    assert "gray8.png is 12x16 but its mask" in message and "is 10x16" in message
    assert "rgb8.png has image mode 'RGB'" in message
    with pytest.raises(ValueError, match="same size"):
        ds[[p[0].stem for p in ds.pairs].index("gray8")]


def test_16bit_and_unreadable_masks_are_reported(folder):
    root, _ = folder
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(root / "masks" / "gray8.png")  # quadtree reads it; data sets
    (root / "masks" / "rgb8.png").write_bytes(b"not a png")  # map 8-bit values only
    ds = build_dataset(f"folder:{root}", num_classes=3, val_fraction=0)
    with pytest.raises(ValueError) as error:
        validate_dataset(ds)
    message = str(error.value)
    assert "2 invalid sample(s)" in message
    assert "gray8.png holds uint16 values" in message and "single-channel 8-bit PNGs" in message
    assert "cannot read mask" in message and "rgb8.png" in message


def test_validate_counts_pixels(folder):
    root, _ = folder
    ds = build_dataset(f"folder:{root}", num_classes=3, val_fraction=0)
    summary = validate_dataset(ds)
    masks = np.stack([np.array(Image.open(m)) for _, m in ds.pairs])
    assert summary["num_samples"] == 5
    assert summary["class_pixels"].tolist() == [int((masks == c).sum()) for c in range(3)]
    assert summary["ignore_pixels"] == int((masks == 255).sum())


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="valid data sets: synthetic, folder, cityscapes, ade20k, sunrgbd"):
        build_dataset("coco:/data")
    with pytest.raises(ValueError, match="needs a path"):
        build_dataset("folder:")
    with pytest.raises(ValueError, match="need the number of classes: pass --num-classes"):
        build_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="valid splits"):
        build_dataset("synthetic", "training")
    with pytest.raises(ValueError, match="Cityscapes has 19 classes"):
        build_dataset(f"cityscapes:{tmp_path}", num_classes=20)
    assert set(DATASETS) == {"synthetic", "folder", "cityscapes", "ade20k", "sunrgbd"}


# ---- synthetic specs -----------------------------------------------------------------------------------------


def test_synthetic_specs():
    ds = build_dataset("synthetic")
    assert isinstance(ds, SyntheticScenes) and ds.config.preset == "shapes" and ds.num_classes == 6
    ds = build_dataset("synthetic:street,4,size=64x128,seed=3", "val")
    assert (ds.config.preset, len(ds), ds.config.size, ds.config.seed, ds.split) == ("street", 4, (64, 128), 3, "val")
    assert ds.num_classes == 19
    ds = build_dataset("synthetic:n=3,size=32,classes=4,density=2.5,ignore_regions=false", num_classes=4)
    assert (len(ds), ds.config.size, ds.num_classes, ds.config.boundary_density) == (3, (32, 32), 4, 2.5)
    assert not ds.config.ignore_regions
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.dtype == torch.int64
    assert parse_synthetic_options("") == {}
    with pytest.raises(ValueError, match="unknown synthetic option 'colour'; valid options: num_images"):
        build_dataset("synthetic:colour=red")
    with pytest.raises(ValueError, match="neither a number of images nor a preset"):
        build_dataset("synthetic:forest")
    with pytest.raises(ValueError, match="cannot parse synthetic option size"):
        build_dataset("synthetic:size=big")
    with pytest.raises(ValueError, match="contradicts"):
        build_dataset("synthetic:classes=4", num_classes=5)


# ---- public data set layouts ---------------------------------------------------------------------------------


def test_cityscapes_layout_and_label_mapping(tmp_path):
    ids = np.arange(34, dtype=np.uint8).repeat(2).reshape(4, 17)
    for split, city, name in (("train", "aachen", "aachen_000000_000019"), ("train", "bremen", "bremen_000001_000019"),
                              ("val", "lindau", "lindau_000000_000019")):
        save_png(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                 RNG.integers(0, 256, (4, 17, 3), dtype=np.uint8))
        write_mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", ids)
        # other gtFine files next to the label ids are ignored
        write_mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_instanceIds.png", ids)
    ds = build_dataset(f"cityscapes:{tmp_path}", "train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.class_names[13] == "car"
    _, mask = ds[0]
    expected = np.array([CITYSCAPES_ID_TO_TRAIN_ID.get(int(i), 255) for i in ids.ravel()]).reshape(ids.shape)
    assert np.array_equal(mask.numpy(), expected)
    assert sorted(set(expected.ravel()) - {255}) == list(range(19))
    assert (mask[ids == 7] == 0).all() and (mask[ids == 26] == 13).all() and (mask[ids == 33] == 18).all()
    assert (mask[ids == 0] == 255).all() and (mask[ids == 6] == 255).all() and (mask[ids == 29] == 255).all()
    assert cityscapes_lut()[255] == 255
    assert len(build_dataset(f"cityscapes:{tmp_path}", "val")) == 1
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match="without a \\*_gtFine_labelIds.png mask: .*lindau_000000_000019"):
        build_dataset(f"cityscapes:{tmp_path}", "val")
    with pytest.raises(ValueError, match="leftImg8bit/test/<city>"):
        build_dataset(f"cityscapes:{tmp_path}", "test")


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_layout_and_label_mapping(tmp_path, nested):
    root = tmp_path / "ADEChallengeData2016" if nested else tmp_path
    labels = np.arange(151, dtype=np.uint8)[:150].reshape(10, 15)
    labels[0, 0] = 150
    for folder, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        save_png(root / "images" / folder / f"{name}.jpg", RNG.integers(0, 256, (10, 15, 3), dtype=np.uint8))
        write_mask(root / "annotations" / folder / f"{name}.png", labels)
    ds = build_dataset(f"ade20k:{tmp_path}", "train")
    assert len(ds) == 1 and ds.num_classes == 150
    _, mask = ds[0]
    expected = np.where(labels == 0, 255, labels.astype(np.int64) - 1)
    assert np.array_equal(mask.numpy(), expected)
    assert len(build_dataset(f"ade20k:{tmp_path}", "val")) == 1
    labels[1, 1] = 151
    write_mask(root / "annotations" / "training" / "ADE_train_00000001.png", labels)
    with pytest.raises(ValueError, match=r"ADE_train_00000001.png holds label values \[151\]"):
        validate_dataset(build_dataset(f"ade20k:{tmp_path}", "train"))


def test_sunrgbd_layout_and_label_mapping(tmp_path):
    labels = np.arange(38, dtype=np.uint8).repeat(2).reshape(4, 19)
    for split in ("train", "test"):
        save_png(tmp_path / "image" / split / "img_000001.jpg", RNG.integers(0, 256, (4, 19, 3), dtype=np.uint8))
        write_mask(tmp_path / "label37" / split / "img_000001.png", labels)
    ds = build_dataset(f"sunrgbd:{tmp_path}", "train")
    assert ds.num_classes == 37 and ds.class_names[0] == "wall" and len(ds.class_names) == 37
    _, mask = ds[0]
    assert np.array_equal(mask.numpy(), np.where(labels == 0, 255, labels.astype(np.int64) - 1))
    assert len(build_dataset(f"sunrgbd:{tmp_path}", "val")) == 1  # val reads test
    labels[0, 0] = 38
    write_mask(tmp_path / "label37" / "train" / "img_000001.png", labels)
    with pytest.raises(ValueError, match=r"holds label values \[38\]"):
        build_dataset(f"sunrgbd:{tmp_path}", "train")[0]


# ---- configuration -------------------------------------------------------------------------------------------


def test_data_config_builds_both_splits_with_the_models_classes_and_channels():
    cfg = DataConfig(dataset="synthetic:4,size=48x80", augment=AugmentConfig(crop=(32, 48)))
    model = QGNConfig.for_depth(4, num_classes=4, in_channels=1, ignore_index=254)
    train, val = datasets_from_config(cfg, model, generator=torch.Generator().manual_seed(0))
    assert train[0][0].shape == (1, 32, 48) and train[0][1].shape == (32, 48)  # augmented
    assert val[0][0].shape == (1, 48, 80)  # not augmented
    assert val.split == "val" and train.split == "train"
    assert train.num_classes == val.num_classes == 4 and train.ignore_index == 254
    with pytest.raises(ValueError, match="crop height 48 is not a positive multiple of 2\\*\\*depth = 32"):
        datasets_from_config(DataConfig(augment=AugmentConfig(crop=(48, 64))), QGNConfig())


def test_own_num_classes_comes_from_the_spec_alone(tmp_path):
    assert own_num_classes("synthetic") == build_dataset("synthetic:1,size=32").num_classes == 6
    assert own_num_classes("synthetic:street,4") == 19 and own_num_classes("synthetic:classes=4") == 4
    missing = tmp_path / "missing"  # no file is read
    assert (own_num_classes(f"cityscapes:{missing}"), own_num_classes(f"ade20k:{missing}"),
            own_num_classes(f"sunrgbd:{missing}")) == (19, 150, 37)
    with pytest.raises(ValueError, match="folder data sets need the number of classes: pass --num-classes C"):
        own_num_classes(f"folder:{missing}")
    with pytest.raises(ValueError, match="valid data sets: synthetic, folder"):
        own_num_classes("nosuch:x")
    with pytest.raises(ValueError, match="needs a path: ade20k:PATH"):
        own_num_classes("ade20k")


def test_data_config_reports_bad_files_before_training(folder):
    root, _ = folder
    mask = np.zeros((12, 16))
    mask[2, 2] = 9
    write_mask(root / "masks" / "photo.png", mask)
    with pytest.raises(ValueError, match=r"photo.png holds label values \[9\]"):
        datasets_from_config(DataConfig(dataset=f"folder:{root}"), QGNConfig.for_depth(2, num_classes=3))


def test_real_16bit_microscopy_image_with_percentile_scaling(tmp_path, nuclei):
    image, instances = nuclei["image"], nuclei["instances"]
    assert image.dtype == np.uint16
    save_png(tmp_path / "images" / "nuclei.png", image)
    write_mask(tmp_path / "masks" / "nuclei.png", (instances > 0).astype(np.uint8))
    ds = build_dataset(f"folder:{tmp_path}", num_classes=2, in_channels=1, val_fraction=0,
                       normalize=NormalizeConfig(mode="percentile", percentiles=(1.0, 99.8)))
    assert validate_dataset(ds)["class_pixels"][1] == int((instances > 0).sum())
    scaled, mask = ds[0]
    assert scaled.shape == (1, *image.shape) and torch.equal(mask, torch.from_numpy((instances > 0).astype(np.int64)))
    low, high = np.percentile(image.astype(np.float64), [1.0, 99.8])
    assert np.allclose(scaled[0].numpy(), (image - low) / (high - low), atol=1e-5)
    assert float((scaled > 1).float().mean()) == pytest.approx(0.002, abs=0.002)
    # nuclei are brighter than the background after scaling
    assert scaled[0][mask == 1].mean() > scaled[0][mask == 0].mean() + 0.2


def test_a_folder_without_splits_holds_out_a_deterministic_validation_subset(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        save_png(tmp_path / "images" / f"img{i:02d}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        write_mask(tmp_path / "masks" / f"img{i:02d}.png", rng.integers(0, 2, (8, 8)).astype(np.uint8))
    train = build_dataset(f"folder:{tmp_path}", "train", num_classes=2)
    val = build_dataset(f"folder:{tmp_path}", "val", num_classes=2)
    assert len(val) == 2 and len(train) == 10  # ceil(0.1 * 12)
    assert not {p for p, _ in train.pairs} & {p for p, _ in val.pairs}
    assert "held out for validation" in val.split_note
    assert build_dataset(f"folder:{tmp_path}", "val", num_classes=2).pairs == val.pairs
    assert len(build_dataset(f"folder:{tmp_path}", "val", num_classes=2, val_fraction=0.5)) == 6
    with pytest.raises(ValueError, match="no split folders, so it has no test split"):
        build_dataset(f"folder:{tmp_path}", "test", num_classes=2)
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="has split folders train but no val/"):
        build_dataset(f"folder:{tmp_path}", "val", num_classes=2)


def binary_folder(root, values=(0, 255)):
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        save_png(root / "images" / f"{name}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        write_mask(root / "masks" / f"{name}.png", rng.choice(values, (8, 8)).astype(np.uint8))


def test_masks_with_one_class_besides_ignore_are_refused_with_the_label_map_fix(tmp_path):
    binary_folder(tmp_path)
    cfg, model = DataConfig(dataset=f"folder:{tmp_path}", val_fraction=0.34), QGNConfig.for_depth(2, num_classes=2)
    with pytest.raises(ValueError, match=r"only class 0 besides the ignore label 255.*--label-map 255:1"):
        datasets_from_config(cfg, model)
    cfg = DataConfig(dataset=f"folder:{tmp_path}", val_fraction=0.34, label_map={255: 1})
    train, _ = datasets_from_config(cfg, model)
    assert train.data_report["ignore_fraction"] == 0 and train.data_report["missing_classes"] == []
    assert set(torch.unique(train[0][1]).tolist()) <= {0, 1}
    with pytest.warns(UserWarning, match=r"classes 2 never occur"):
        datasets_from_config(DataConfig(dataset=f"folder:{tmp_path}", val_fraction=0.34, label_map={255: 1}),
                             QGNConfig.for_depth(2, num_classes=3))
    with pytest.raises(ValueError, match="neither a class"):
        build_dataset(f"folder:{tmp_path}", num_classes=2, label_map={255: 7})


def test_auto_normalisation_is_resolved_from_the_training_images(tmp_path, nuclei):
    """16-bit microscopy using ~2% of its range: 'auto' standardises with the training set's own statistics."""
    image = nuclei["image"]
    for name, rows in (("top", slice(0, 256)), ("bottom", slice(256, 512))):
        save_png(tmp_path / "images" / f"{name}.png", image[rows])
        write_mask(tmp_path / "masks" / f"{name}.png", (nuclei["instances"][rows] > 0).astype(np.uint8))
    cfg = DataConfig(dataset=f"folder:{tmp_path}", val_fraction=0.5)
    assert cfg.normalize.mode == "auto"
    train, val = datasets_from_config(cfg, QGNConfig.for_depth(3, num_classes=2, in_channels=1))
    assert cfg.normalize.mode == "fixed" and train.normalize is cfg.normalize and val.normalize is cfg.normalize
    pixels = train[0][0]
    assert abs(float(pixels.mean())) < 0.5 and 0.5 < float(pixels.std()) < 2  # standardised, not near-constant
