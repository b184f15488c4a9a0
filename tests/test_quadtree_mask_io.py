import numpy as np
import pytest
import tifffile
from PIL import Image

import quadtree as qt


@pytest.mark.parametrize("suffix", [".png", ".npy", ".tif"])
def test_write_read_round_trip(tmp_path, suffix):
    mask = np.random.default_rng(0).integers(0, 20, (13, 17)).astype(np.uint8)
    assert np.array_equal(qt.read_mask(qt.write_mask(tmp_path / f"m{suffix}", mask)), mask)


def test_16bit_and_palette_png(tmp_path):
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    Image.fromarray(labels).save(tmp_path / "m16.png")
    assert np.array_equal(qt.read_mask(tmp_path / "m16.png"), labels)
    palette = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "p.png")
    assert qt.read_mask(tmp_path / "p.png").tolist() == [[0, 1], [2, 3]]


def test_colour_png_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        qt.read_mask(tmp_path / "rgb.png")


def test_unknown_missing_and_corrupt_files(tmp_path):
    (tmp_path / "m.bmp").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown mask format"):
        qt.read_mask(tmp_path / "m.bmp")
    with pytest.raises(FileNotFoundError):
        qt.read_mask(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read mask"):
        qt.read_mask(tmp_path / "bad.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 4, 4), np.uint8))
    assert qt.read_mask(tmp_path / "stack.tif").shape == (2, 4, 4)
