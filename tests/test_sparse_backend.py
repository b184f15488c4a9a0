"""sparse_ops.backend: backend names, the device -> algorithm choice, and the int32 row-major coords helper."""

import pytest
import torch

from sparse_ops import backend


def test_backend_names():
    assert backend.resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="valid backends are 'auto', 'spconv', 'torch'"):
        backend.resolve_backend("cuda")
    with pytest.raises(ValueError, match="'auto', 'spconv', 'torch'"):
        backend.check_backend_name("Spconv")


def test_auto_is_the_measured_default_of_the_device():
    assert backend.resolve_backend("auto", "cpu") == backend.DEFAULT_BACKEND["cpu"] == "torch"
    assert backend.resolve_backend("auto", "cuda") == backend.DEFAULT_BACKEND["cuda"] == "spconv"
    assert backend.resolve_backend("spconv", "cpu") == "spconv"  # asked for by name: kept


def test_spconv_never_gets_a_dtype_it_has_no_kernels_for():
    assert backend.resolve_backend("spconv", "cpu", torch.bfloat16) == "torch"
    assert backend.resolve_backend("auto", "cuda", torch.bfloat16) == "torch"
    assert backend.resolve_backend("spconv", "cuda", torch.float16) == "spconv"


def test_deterministic_algorithms_run_the_torch_backend_on_cuda():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert backend.resolve_backend("auto", "cuda") == "torch"
    finally:
        torch.use_deterministic_algorithms(previous)


def test_autocast_inputs_follow_autocast_rules():
    x32, x64, index = torch.randn(2), torch.randn(2, dtype=torch.float64), torch.arange(2)
    assert backend.autocast_inputs("cpu", x32, x64, index, None) == (x32, x64, index, None)  # autocast off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backend.autocast_dtype("cpu") == torch.bfloat16 and backend.autocast_dtype("cuda") is None
        cast = backend.autocast_inputs("cpu", x32, x64, index, None)
    assert cast[0].dtype == torch.bfloat16 and cast[1] is x64 and cast[2] is index and cast[3] is None


def test_spconv_asked_for_by_name_never_runs_something_else(monkeypatch):
    """Without spconv an explicit backend='spconv' raises (tests and users who asked for it must not silently get
    the torch backend); 'auto' runs torch, with a warning where spconv would have been the default."""
    monkeypatch.setattr(backend, "_import_spconv", lambda: (None, ImportError("no spconv here")))
    with pytest.raises(RuntimeError, match="no spconv here"):
        backend.resolve_backend("spconv")
    assert backend.resolve_backend("auto", "cpu") == "torch"  # the CPU default needs no spconv
    with pytest.warns(UserWarning, match="spconv is not importable"):
        assert backend.resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(RuntimeError, match="no spconv here"):
        backend.spconv_api()


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
