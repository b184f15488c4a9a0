
import numpy as np
import pytest

import quadtree as qt


def tree_of(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return qt.encode(rng.integers(0, 4, (batch, 8, 12)).repeat(2, 1).repeat(2, 2).astype(np.uint8), 3)


def test_save_load_round_trip(tmp_path):
    tree = tree_of()
    path = qt.save(tree, tmp_path / "tree")
    assert path.name == "tree.npz"
    loaded = qt.load(path)
    assert loaded.equal(tree) and loaded.batched == tree.batched
    single = qt.encode(np.eye(16, dtype=np.uint8), 4)
    assert not qt.load(qt.save(single, tmp_path / "single.npz")).batched


def test_save_leaves_no_temporary_files(tmp_path):
    qt.save(tree_of(), tmp_path / "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


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
