from pathlib import Path

import quadtree  # noqa: F401  (first, as the README tells library users: OpenMP's wait policy is set before torch loads)
import numpy as np
import pytest
import torch

from qgn.precision import set_fp32_math

NUCLEI = Path(__file__).resolve().parents[1] / "examples" / "nuclei_dsb2018.npz"
"""The real microscopy image and mask, shipped with the repository (README, "Test data"): tests never skip for it."""

torch.set_num_threads(2)

# The precision policy of the tests (README, "Precision"): correctness tests compare IEEE float32 results, so TF32
# is off for every test; tests of TF32 itself turn it on with qgn.precision.fp32_math(tf32=True).
set_fp32_math(tf32=False)


@pytest.fixture(scope="session")
def nuclei():
    """The real 512x512 microscopy image (uint16) and its nucleus instance map (uint16, 0 = background)."""
    with np.load(NUCLEI) as data:  # a missing file fails every test that needs it, loudly
        return {"image": data["image"], "instances": data["instances"]}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA unavailable)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
