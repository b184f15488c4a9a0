import pytest
import torch
import torch.nn.functional as F

from qgn.stem import PixelStem, gather_patches
from sparse_ops import SparseGeometry
from rounding import AUTOCAST_PARAMS, assert_within_rounding


def test_gather_patches_equals_unfold_of_the_pooled_image_at_the_nodes():
    image = torch.randn(2, 3, 14, 18, dtype=torch.float64)
    for stride in (1, 2):
        pooled = F.avg_pool2d(image, stride)
        h, w = pooled.shape[2:]
        coords = torch.tensor([[0, 0, 0], [1, h - 1, w - 1], [0, 3, 4], [1, 0, w - 1]], dtype=torch.int32)
        for k in (1, 3, 5):
            unfolded = F.unfold(pooled, k, padding=k // 2).view(2, 3 * k * k, h, w)  # (B, C*k*k, h, w)
            expected = unfolded[coords[:, 0].long(), :, coords[:, 1].long(), coords[:, 2].long()]
            torch.testing.assert_close(gather_patches(image, coords, k, stride), expected)
    assert gather_patches(image, torch.zeros(0, 3, dtype=torch.int32)).shape == (0, 27)


def test_pixel_stem_equals_its_dense_conv_outputs_and_gradients():
    torch.manual_seed(0)
    for stride in (1, 2):
        stem = PixelStem(3, 5, stride).double()
        images = torch.randn(2, 3, 8, 12, dtype=torch.float64, requires_grad=True)
        h, w = 8 // stride, 12 // stride
        coords = torch.nonzero(torch.rand(2, h, w) > 0.5).int()
        sparse = stem(images, SparseGeometry(coords, (h, w), 2))
        dense = stem.forward_dense(images)[coords[:, 0].long(), :, coords[:, 1].long(), coords[:, 2].long()]
        torch.testing.assert_close(sparse, dense)
        grads_sparse = torch.autograd.grad(sparse.square().sum(), [images, stem.weight, stem.bias])
        grads_dense = torch.autograd.grad(dense.square().sum(), [images, stem.weight, stem.bias])
        for a, b in zip(grads_sparse, grads_dense):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
def test_pixel_stem_under_autocast_is_a_low_precision_matmul(device, dtype):
    torch.manual_seed(0)
    stem = PixelStem(3, 5, 2).to(device)
    images = torch.randn(2, 3, 8, 12, device=device)
    coords = torch.nonzero(torch.rand(2, 4, 6) > 0.5).int().to(device)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        sparse = stem(images, SparseGeometry(coords, (4, 6), 2))
    assert sparse.dtype == dtype
    patches = gather_patches(images, coords, 3, 2).to(dtype).double()
    weight, bias = stem.weight.flatten(1).to(dtype).double(), stem.bias.to(dtype).double()
    exact = patches @ weight.t() + bias
    assert_within_rounding(sparse, exact, patches.abs() @ weight.abs().t() + bias.abs(), dtype, terms=28)
