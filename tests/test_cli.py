import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quadtree as qt
from training.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "street_mask.png"


def test_encode_decode_round_trip_for_every_mask_format(tmp_path):
    rng = np.random.default_rng(0)
    masks = {}
    for suffix in (".png", ".npy", ".tif"):
        masks[suffix] = rng.integers(0, 5, (37, 50)).astype(np.uint8)
        qt.write_mask(tmp_path / f"in{suffix[1:]}{suffix}", masks[suffix])
    inputs = sorted(str(p) for p in tmp_path.glob("in*"))
    assert main(["encode", *inputs, "--depth", "3", "--out", str(tmp_path / "trees")]) == 0
    trees = sorted(str(p) for p in (tmp_path / "trees").glob("*.npz"))
    assert len(trees) == 3
    assert main(["decode", *trees, "--out", str(tmp_path / "out"), "--format", "npy"]) == 0
    for suffix, mask in masks.items():
        assert np.array_equal(np.load(tmp_path / "out" / f"in{suffix[1:]}.npy"), mask)


def test_stats_of_masks_and_trees_as_json(tmp_path, capsys):
    assert main(["encode", str(EXAMPLE), "--depth", "5", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["stats", str(EXAMPLE), str(tmp_path / "street_mask.npz"), "--depth", "5", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 and records[0]["total_nodes"] == records[1]["total_nodes"] > 0
    tree = qt.encode(qt.read_mask(EXAMPLE), 5)
    assert [level["nodes"] for level in records[0]["levels"]] == [level.num_nodes for level in tree.levels]


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["stats", str(EXAMPLE)]) == 2
    assert "pass --depth" in capsys.readouterr().err
    assert main(["encode", str(EXAMPLE), "--depth", "12", "--out", str(tmp_path)]) == 2
    assert "too deep" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing.npz"), "--out", str(tmp_path)]) == 2
    assert "no quadtree file" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "training.cli", "stats", str(EXAMPLE), "--depth", "5"],
                            capture_output=True, text=True, check=True)
    assert "total nodes" in result.stdout
