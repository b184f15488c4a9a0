import pytest
import torch

import quadtree as qt


def test_padded_size_rounds_up():
    assert qt.padded_size((50, 70), 16) == (64, 80)
    assert qt.padded_size((64, 1), 1) == (64, 1)
    assert qt.padded_size((1, 32), 32) == (32, 32)
    with pytest.raises(ValueError, match="positive"):
        qt.padded_size((8, 8), 0)


def test_constant_padding_at_the_bottom_and_right():
    mask = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    out = qt.pad_to_multiple(mask, 4, 255)
    assert out.shape == (4, 4) and out.dtype == torch.uint8
    assert torch.equal(out[:2, :3], mask) and (out[2:] == 255).all() and (out[:, 3:] == 255).all()
    assert qt.pad_to_multiple(out, 4, 255) is out  # nothing to add: the input itself
    batch = torch.zeros(2, 3, 5, 7)
    assert qt.pad_to_multiple(batch, 8).shape == (2, 3, 8, 8)


def test_size_pads_up_to_at_least_that_size_before_rounding():
    image = torch.ones(3, 5, 9)
    assert qt.pad_to_multiple(image, 1, size=(7, 4)).shape == (3, 7, 9)  # never crops
    out = qt.pad_to_multiple(image, 8, 0.0, size=(10, 4))
    assert out.shape == (3, 16, 16) and out[:, :5, :9].eq(1).all() and out.sum() == image.sum()


@pytest.mark.parametrize("shape", [(5, 6), (3, 5, 6), (2, 3, 5, 6)])
def test_replicate_repeats_the_edge_pixels(shape):
    x = torch.randn(shape)
    out = qt.pad_to_multiple(x, 4, mode="replicate")
    assert out.shape == (*shape[:-2], 8, 8)
    rows = torch.arange(8).clamp(max=4)
    cols = torch.arange(8).clamp(max=5)
    assert torch.equal(out, x[..., rows, :][..., cols])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown padding mode 'reflect'"):
        qt.pad_to_multiple(torch.zeros(3, 3), 2, mode="reflect")
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        qt.pad_to_multiple(torch.zeros(3), 2)
