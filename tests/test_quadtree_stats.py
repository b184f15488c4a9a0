import numpy as np

import quadtree as qt


def test_stats_of_a_hand_built_mask():
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 1  # one pixel region: one MIXED node per level down to full resolution
    mask[4:, 4:] = 255
    stats = qt.tree_stats(qt.encode(mask, 2))
    assert [l.nodes for l in stats.levels] == [4, 4, 4]
    assert [l.mixed for l in stats.levels] == [1, 1, 0]
    assert [l.grid_cells for l in stats.levels] == [4, 16, 64]
    assert [l.active_fraction for l in stats.levels] == [1.0, 0.25, 4 / 64]
    assert stats.total_nodes == 12 and stats.pixels == 64
    assert stats.leaves_per_class == {0: 8, 1: 1, 255: 1}
    assert stats.pixels_per_class == {0: 47, 1: 1, 255: 16}


def test_pixels_per_class_excludes_padding_and_sums_to_the_image(nuclei):
    mask = (nuclei["instances"][:500, :300] % 7).astype(np.uint8)
    stats = qt.tree_stats(qt.encode(mask, 5))
    assert sum(stats.pixels_per_class.values()) == mask.size
    for label, count in stats.pixels_per_class.items():
        assert count == int((mask == label).sum())
    text = qt.format_stats(stats, "nuclei")
    assert "nuclei" in text and "active %" in text
    assert stats.as_dict()["total_nodes"] == stats.total_nodes
