"""Every entry point of the library sets OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=3000 before torch loads OpenMP
(quadtree/__init__.py), and keeps what the user chose."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(f"{os.environ.get('OMP_WAIT_POLICY')} {os.environ.get('GOMP_SPINCOUNT')}")
        return None
sys.meta_path.insert(0, Watch())
import MODULE
print(seen[0] if seen else "torch never imported")
"""


def policy_when_torch_loads(module: str, **settings: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(settings)
    done = subprocess.run([sys.executable, "-c", PROBE.replace("MODULE", module)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["quadtree", "sparse_ops", "qgn", "training", "qgn_cli", "training.trainer"])
def test_set_before_torch_loads(module):
    assert policy_when_torch_loads(module) == "PASSIVE 3000"


def test_what_the_user_chose_is_kept():
    assert policy_when_torch_loads("qgn", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert policy_when_torch_loads("qgn", GOMP_SPINCOUNT="0") == "None 0"
