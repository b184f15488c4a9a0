import numpy as np
import pytest
import torch

from training.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, Augment, AugmentConfig, NormalizeConfig, augment, check_crop, intensity_scale,
    normalize_image,
)

# ---- normalisation -------------------------------------------------------------------------------------------


def test_fixed_normalisation_uint8_rgb_uses_imagenet():
    image = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
    out = normalize_image(image, NormalizeConfig())
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    assert out.dtype == np.float32 and out.shape == (3, 5, 7)
    assert np.allclose(out, expected, atol=1e-5)


def test_fixed_normalisation_16bit_gray_and_custom_stats():
    image = np.array([[[0, 65535], [32768, 6553]]], dtype=np.uint16)
    out = normalize_image(image, NormalizeConfig(mean=(0.5,), std=(0.25,)))
    assert np.allclose(out, (image / 65535.0 - 0.5) / 0.25, atol=1e-5)
    assert intensity_scale(np.uint16) == 65535 and intensity_scale(np.uint8) == 255
    assert intensity_scale(np.float32) == 1 and intensity_scale(np.int32) == 65535


def test_none_normalisation_scales_to_unit_range():
    image = np.array([[[0, 255]]], dtype=np.uint8)
    assert normalize_image(image, NormalizeConfig(mode="none")).tolist() == [[[0.0, 1.0]]]


def test_percentile_normalisation_per_channel_16bit():
    ramp = np.arange(1000, dtype=np.uint16).reshape(1, 10, 100)
    image = np.concatenate([ramp * 50, ramp + 100])  # two channels with different ranges
    cfg = NormalizeConfig(mode="percentile", percentiles=(1.0, 99.0))
    out = normalize_image(image, cfg)
    for c in range(2):
        low, high = np.percentile(image[c].astype(np.float64), [1, 99])
        assert np.allclose(out[c], (image[c] - low) / (high - low), atol=1e-5)
    assert out.min() < 0 and out.max() > 1  # no clipping by default
    clipped = normalize_image(image, NormalizeConfig(mode="percentile", clip=True))
    assert clipped.min() == 0 and clipped.max() == 1


def test_constant_image_percentile_is_finite():
    out = normalize_image(np.full((1, 4, 4), 7, dtype=np.uint16), NormalizeConfig(mode="percentile"))
    assert np.isfinite(out).all()


def test_normalisation_errors():
    with pytest.raises(ValueError, match="valid modes: auto, fixed, percentile, none"):
        NormalizeConfig(mode="zscore")
    with pytest.raises(ValueError, match="percentiles"):
        NormalizeConfig(percentiles=(99, 1))
    with pytest.raises(ValueError, match="2 values but the image has 3 channels"):
        normalize_image(np.zeros((3, 2, 2), np.uint8), NormalizeConfig(mean=(0.1, 0.2)))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        normalize_image(np.zeros((2, 2), np.uint8), NormalizeConfig())


# ---- crop checks ---------------------------------------------------------------------------------------------


def test_check_crop():
    assert check_crop(None, 5) is None
    assert check_crop(64, 5) == (64, 64)
    assert check_crop((512, 1024), 5) == (512, 1024)
    with pytest.raises(ValueError, match=r"crop height 500 .* 2\*\*depth = 32 .* nearest valid height: 480 or 512"):
        check_crop((500, 1024), 5)
    with pytest.raises(ValueError, match="nearest valid width: 32"):
        check_crop((64, 20), 5)
    with pytest.raises(ValueError, match="multiple of 2"):
        Augment(AugmentConfig(crop=(100, 100)), depth=3)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(2.0, 1.0))


# ---- augmentation --------------------------------------------------------------------------------------------


def coordinate_sample(h=48, w=64):
    """Image whose channels are the pixel's row and column; mask = an injective function of (row, col)."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    image = torch.stack([rows, cols])
    mask = (torch.arange(h)[:, None] * w + torch.arange(w)[None, :]) % 251
    return image, mask


def test_crop_and_flip_keep_image_and_mask_aligned():
    image, mask = coordinate_sample()
    aug = Augment(AugmentConfig(crop=(32, 32), scale_range=(1.0, 1.0), hflip=True), depth=4,
                  generator=torch.Generator().manual_seed(0))
    flips = 0
    for _ in range(20):
        out_image, out_mask = aug(image, mask)
        assert out_image.shape == (2, 32, 32) and out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        rows, cols = out_image[0].long(), out_image[1].long()
        assert torch.equal(out_mask, (rows * 64 + cols) % 251)
        flips += int(cols[0, 0] > cols[0, -1])
    assert 0 < flips < 20  # flipped sometimes, not always


@pytest.mark.parametrize("scale_range", [(0.5, 0.8), (1.3, 2.0)])
def test_scaling_keeps_image_and_mask_aligned(scale_range):
    # mask = source row (then source column): after scaling, the bilinear image coordinate and the nearest mask
    # coordinate of every output pixel agree to within one source pixel.
    h, w = 48, 64
    image, _ = coordinate_sample(h, w)
    row_mask = torch.arange(h)[:, None].expand(h, w).contiguous()
    col_mask = torch.arange(w)[None, :].expand(h, w).contiguous()
    cfg = AugmentConfig(crop=(64, 64), scale_range=scale_range, hflip=True)
    for seed in range(4):
        out_image, out_rows = augment(image, row_mask, cfg, generator=torch.Generator().manual_seed(seed))
        _, out_cols = augment(image, col_mask, cfg, generator=torch.Generator().manual_seed(seed))
        valid = out_rows != 255
        assert valid.any()
        assert torch.equal(valid, out_cols != 255)
        assert (out_image[0][valid] - out_rows[valid]).abs().max() <= 1.0
        assert (out_image[1][valid] - out_cols[valid]).abs().max() <= 1.0
        assert (out_image[:, ~valid] == 0).all()  # padding: image 0, mask ignore


def test_small_images_are_padded_with_ignore():
    image, mask = coordinate_sample(20, 24)
    out_image, out_mask = augment(image, mask, AugmentConfig(crop=(32, 48), scale_range=(1, 1), hflip=False),
                                  ignore_index=255, generator=torch.Generator().manual_seed(0))
    assert out_image.shape == (2, 32, 48)
    assert torch.equal(out_mask[:20, :24], mask)
    assert (out_mask[20:] == 255).all() and (out_mask[:, 24:] == 255).all()
    assert (out_image[:, 20:] == 0).all()


def test_no_crop_rescales_and_is_deterministic():
    image, mask = coordinate_sample()
    cfg = AugmentConfig(crop=None, scale_range=(0.5, 0.5), hflip=False)
    out_image, out_mask = augment(image, mask, cfg)
    assert out_image.shape == (2, 24, 32) and out_mask.shape == (24, 32)
    cfg = AugmentConfig(crop=(32, 32), scale_range=(0.7, 1.5))
    a = augment(image, mask, cfg, generator=torch.Generator().manual_seed(3))
    b = augment(image, mask, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(5)
    c = augment(image, mask, cfg)
    torch.manual_seed(5)
    d = augment(image, mask, cfg)
    assert torch.equal(c[1], d[1])


def test_augment_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="one size"):
        augment(torch.zeros(3, 8, 8), torch.zeros(8, 9, dtype=torch.long), AugmentConfig())
