from pathlib import Path

import quadtree  # noqa: F401  (first, as the README tells library users: OpenMP's wait policy is set before torch loads)
import numpy as np
import pytest
import torch

from qgn.precision import set_fp32_math

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NUCLEI = SHARED_DATA / "nuclei_dsb2018.npz"

torch.set_num_threads(2)

# The precision policy of the tests (README, "Precision"): correctness tests compare IEEE float32 results, so TF32
# is off for every test; tests of TF32 itself turn it on with qgn.precision.fp32_math(tf32=True).
set_fp32_math(tf32=False)


@pytest.fixture(scope="session")
def nuclei():
    """The real 512x512 microscopy image and its instance map (skipped when ../shared is absent)."""
    if not NUCLEI.is_file():
        pytest.skip(f"real data not found at {NUCLEI}")
    with np.load(NUCLEI) as data:
        return {"image": data["image"], "instances": data["instances"]}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA unavailable)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
