"""sparse_ops.backend: backend names, the device -> algorithm choice, and the int32 row-major coords helper."""

import pytest
import torch

from sparse_ops import backend


def test_backend_names():
    assert backend.resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="valid backends are 'spconv', 'torch'"):
        backend.resolve_backend("cuda")
    with pytest.raises(ValueError, match="'spconv', 'torch'"):
        backend.check_backend_name("Spconv")


def test_spconv_falls_back_to_torch_with_a_warning(monkeypatch):
    monkeypatch.setattr(backend, "_import_spconv", lambda: (None, ImportError("no spconv here")))
    with pytest.warns(UserWarning, match="falls back to backend='torch'"):
        assert backend.resolve_backend("spconv") == "torch"
    with pytest.raises(RuntimeError, match="no spconv here"):
        backend.spconv_api()


@pytest.mark.skipif(not backend.spconv_available(), reason="spconv missing")
def test_algorithm_from_device():
    algo = backend.spconv_api().ConvAlgo
    assert backend.conv_algo(torch.device("cpu"), 9) == algo.Native
    assert backend.conv_algo("cuda", 9) == algo.MaskImplicitGemm  # spconv's default on CUDA
    assert backend.conv_algo("cuda", 49) == algo.Native  # spconv's default above 32 taps


def test_as_int32_coords_converts_layout_and_dtype():
    coords = torch.nonzero(torch.rand(2, 5, 6) < 0.5)
    assert coords.dtype == torch.int64 and not coords.is_contiguous()  # what torch.nonzero returns
    converted = backend.as_int32_coords(coords)
    assert converted.dtype == torch.int32 and converted.is_contiguous() and converted.stride() == (3, 1)
    assert torch.equal(converted.long(), coords)
    ready = converted.clone()
    assert backend.as_int32_coords(ready) is ready  # no copy when already fine


def test_as_int32_coords_rejects():
    with pytest.raises(ValueError, match="integer"):
        backend.as_int32_coords(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        backend.as_int32_coords(torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="outside int32"):
        backend.as_int32_coords(torch.tensor([[0, 0, 2**31]]))
    with pytest.raises(ValueError, match="tensor"):
        backend.as_int32_coords([[0, 0, 0]])
