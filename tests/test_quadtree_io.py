
import os
import stat

import numpy as np
import pytest

import quadtree as qt
from quadtree.io import atomic_write


def tree_of(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return qt.encode(rng.integers(0, 4, (batch, 8, 12)).repeat(2, 1).repeat(2, 2).astype(np.uint8), 3)


def test_save_load_round_trip(tmp_path):
    tree = tree_of()
    path = qt.save(tree, tmp_path / "tree")
    assert path.name == "tree.npz"
    loaded = qt.load(path)
    assert loaded.equal(tree)
    single = qt.encode(np.eye(16, dtype=np.uint8), 4)
    assert qt.decode(qt.load(qt.save(single, tmp_path / "single.npz"))).shape == (1, 16, 16)


@pytest.mark.parametrize("meta_values", [5, 6])
def test_files_with_and_without_the_old_display_flag_load(tmp_path, meta_values):
    """Files written before the flag went stored 6 meta values (the last 0 for one (H, W) mask); both load."""
    tree = qt.encode(np.eye(16, dtype=np.uint8), 4)
    path = qt.save(tree, tmp_path / "t.npz")
    with np.load(path) as data:
        arrays = dict(data)
    assert arrays["meta"].tolist() == [4, 1, 16, 16, 255, 1]
    arrays["meta"] = np.array([4, 1, 16, 16, 255, 0][:meta_values], dtype=np.int64)
    np.savez(path, **arrays)
    loaded = qt.load(path)
    assert loaded.equal(tree) and qt.decode(loaded).shape == (1, 16, 16)
    arrays["meta"] = arrays["meta"][:4]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="corrupt quadtree file: meta holds 4 values"):
        qt.load(path)


def test_save_leaves_no_temporary_files(tmp_path):
    qt.save(tree_of(), tmp_path / "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    path = atomic_write(tmp_path / "sub" / "f.bin", lambda f: f.write(b"old"))  # creates the folder
    assert path.read_bytes() == b"old"

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == ["f.bin"]
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like any new file, not a private temp file


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        qt.load(tmp_path / "nope.npz")


def test_garbage_file_is_rejected(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable quadtree"):
        qt.load(path)


def test_truncated_file_is_rejected(tmp_path):
    path = qt.save(tree_of(), tmp_path / "t.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="quadtree"):
        qt.load(path)


def test_other_npz_is_rejected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a quadtree file"):
        qt.load(path)


def test_wrong_version_is_rejected(tmp_path):
    path = qt.save(tree_of(), tmp_path / "t.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["version"] = np.array(99)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="version 99"):
        qt.load(path)


@pytest.mark.parametrize("corruption", ["drop_level", "shift_coords", "bad_label", "wrong_dtype"])
def test_corrupt_structure_is_rejected(tmp_path, corruption):
    path = qt.save(tree_of(), tmp_path / "t.npz")
    with np.load(path) as data:
        arrays = dict(data)
    if corruption == "drop_level":
        del arrays["labels_2"]
    elif corruption == "shift_coords":
        arrays["coords_1"] = arrays["coords_1"] + 1
    elif corruption == "bad_label":
        arrays["labels_0"][0] = 300
    else:
        arrays["coords_0"] = arrays["coords_0"].astype(np.int64)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="corrupt quadtree file"):
        qt.load(path)
