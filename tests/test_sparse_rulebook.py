"""Rulebooks: the neighbour table against a brute-force search, and spconv's pairs against the table."""

import pytest
import torch

import quadtree
from sparse_ops import backend, kernel_offsets, neighbour_table, spconv_rulebook
from sparse_ops.rulebook import child_neighbour_table, grid_neighbour_table, parent_kernel_size, window_index


def brute_force_table(coords, shape, k, dilation):
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    n = len(rows)
    table = torch.full((n, k * k), n, dtype=torch.int64)
    for i, (b, y, x) in enumerate(coords.tolist()):
        for t, (dy, dx) in enumerate(kernel_offsets(k, dilation).tolist()):
            table[i, t] = rows.get((b, y + dy, x + dx), n)
    return table


def test_kernel_offsets_follow_conv2d_weight_taps():
    offsets = kernel_offsets(3, 2)
    assert offsets.tolist() == [[-2, -2], [-2, 0], [-2, 2], [0, -2], [0, 0], [0, 2], [2, -2], [2, 0], [2, 2]]


@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 3), (5, 2)])
def test_neighbour_table_equals_brute_force(k, dilation):
    g = torch.Generator().manual_seed(k + dilation)
    coords = torch.nonzero(torch.rand(2, 9, 7, generator=g) < 0.5).int().contiguous()
    table = neighbour_table(coords, (9, 7), 2, k, dilation)
    assert table.dtype == torch.int64 and table.shape == (coords.shape[0], k * k)
    assert torch.equal(table, brute_force_table(coords, (9, 7), k, dilation))


@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2), (7, 1)])
@pytest.mark.parametrize("batch", [1, 2])
def test_grid_and_child_tables_equal_brute_force(k, dilation, batch):
    """The two structured constructions give exactly the table of the sites they describe: every cell of a grid,
    and the children of chosen sites of a coarser level (read off that level's table)."""
    g = torch.Generator().manual_seed(10 * k + dilation + batch)
    grid = quadtree.root_coords(batch, 5, 6)
    assert torch.equal(grid_neighbour_table(batch, (5, 6), k, dilation), brute_force_table(grid, (5, 6), k, dilation))
    coords = torch.nonzero(torch.rand(batch, 9, 7, generator=g) < 0.5).int().contiguous()
    parent_table = neighbour_table(coords, (9, 7), batch, parent_kernel_size(k, dilation), 1)
    for fraction in (0.0, 0.5, 1.0):
        index = torch.nonzero(torch.rand(coords.shape[0], generator=g) < fraction).flatten()
        children = quadtree.child_coords(coords[index])
        table = child_neighbour_table(parent_table, index, k, dilation)
        assert table.dtype == torch.int64 and table.shape == (children.shape[0], k * k)
        assert torch.equal(table, brute_force_table(children, (18, 14), k, dilation))


@pytest.mark.parametrize("batch", [1, 3])
def test_window_index_is_where_each_tap_falls_in_the_bordered_grid(batch):
    g = torch.Generator().manual_seed(batch)
    coords = torch.nonzero(torch.rand(batch, 6, 5, generator=g) < 0.5).int().contiguous()
    for k, dilation in [(1, 1), (3, 1), (3, 2), (5, 1)]:
        r = dilation * (k // 2)
        height, width = 6 + 2 * r, 5 + 2 * r
        b, y, x = coords.long().unbind(1)
        dy, dx = kernel_offsets(k, dilation).unbind(1)
        expected = (b[:, None] * height + y[:, None] + dy + r) * width + x[:, None] + dx + r
        window = window_index(coords, (6, 5), batch, k, dilation)
        assert window.dtype == torch.int32 and torch.equal(window.long(), expected)
        assert torch.equal(window_index(coords.long(), (6, 5), batch, k, dilation), expected)  # int64 in, int64 out


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 2)])
def test_spconv_pairs_describe_the_same_neighbours(k, dilation):
    g = torch.Generator().manual_seed(0)
    coords = torch.nonzero(torch.rand(2, 11, 8, generator=g) < 0.4).int().contiguous()
    table = neighbour_table(coords, (11, 8), 2, k, dilation)
    data = spconv_rulebook(coords, (11, 8), 2, k, dilation)
    assert data.algo == backend.spconv_api().ConvAlgo.Native and data.is_subm
    kk = k * k
    pairs = set()  # (output row, tap, input row)
    for t in range(kk):
        if t == kk // 2:
            continue  # the centre tap is the identity pairing, applied without pairs
        # spconv stores pairs for the first half of the taps; tap t > centre is the mirror of tap kk - 1 - t
        mirror = t > kk // 2
        stored = kk - 1 - t if mirror else t
        count = int(data.indice_pair_num[stored])
        first = data.indice_pairs[0, stored, :count].tolist()
        second = data.indice_pairs[1, stored, :count].tolist()
        src, dst = (second, first) if mirror else (first, second)
        pairs |= {(d, t, s) for s, d in zip(src, dst)}
    n = coords.shape[0]
    expected = {(i, t, int(table[i, t])) for i in range(n) for t in range(kk) if t != kk // 2 and table[i, t] < n}
    assert pairs == expected


def test_spconv_rulebook_refuses_unconverted_coords():
    coords = torch.nonzero(torch.rand(1, 4, 4) < 0.5)
    with pytest.raises(ValueError, match="int32 row-major"):
        spconv_rulebook(coords, (4, 4), 1, 3, 1)
