"""`SparseGeometry`: the active sites of one level, and the rulebooks derived from them (built once, reused).

Every sparse convolution at one quadtree level reads the same neighbour structure. A `SparseGeometry` holds
the sites (coords, grid shape, batch size) and caches every rulebook derived from them, keyed by the geometry
of the kernel (`indice_key(kernel_size, dilation)` = "subm_k{k}_d{d}"), never by hand-typed names. Pass the
same geometry object to every conv of a level and the rulebook is built by the first and reused by the others.

A quadtree is the carrier: `level_geometry(tree, level)` builds the geometry of a level on first use and keeps
it with the level's nodes, and a tree grown by the network keeps the geometries it was computed with
(`tree_level`). `grid` (every cell: a root level) and `children` (the next level of chosen sites) derive new
geometries without re-validating them, and remember how: the neighbour table of a grid is its index map's windows,
and that of `children` is read off the coarser level's table (`rulebook.child_neighbour_table`), with no map of
the grid. `grid` returns the same geometry (and so its cached rulebooks) for the same grid and device.

The geometry itself is immutable (coords are validated and frozen at construction); only the cache of derived
structures grows. `to_spconv_tensor` exposes the cached rulebooks to spconv's own modules under the same keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

import quadtree
from sparse_ops import backend, rulebook


@dataclass(frozen=True, eq=False)
class SparseGeometry:
    """Active sites of a (batch_size, h, w) grid.

    Attributes:
        coords: int32 (N, 3), row-major contiguous, columns (batch, y, x); unique, inside the grid.
        spatial_shape: (h, w) of the grid.
        batch_size: B; batch indices lie in 0..B-1.
    Construction accepts any integer dtype and memory layout for `coords` (converted, e.g. the column-major
    output of `torch.nonzero`) and raises ValueError on out-of-grid or duplicate sites.
    """

    coords: torch.Tensor
    spatial_shape: tuple[int, int]
    batch_size: int
    _cache: dict = field(default_factory=dict, init=False, repr=False)
    _origin: tuple | None = field(default=None, init=False, repr=False)
    """("grid",) for `grid`, ("children", parent geometry, index) for `children`, else None: how the sites were
    derived, which gives cheaper rulebooks."""

    def __post_init__(self):
        coords = backend.as_int32_coords(self.coords)
        shape = check_spatial_shape(self.spatial_shape)
        batch_size = check_batch_size(self.batch_size)
        _check_sites(coords, shape, batch_size)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "spatial_shape", shape)
        object.__setattr__(self, "batch_size", batch_size)

    # ---- construction -----------------------------------------------------------------------------------------
    @classmethod
    def _trusted(cls, coords: torch.Tensor, spatial_shape: tuple[int, int], batch_size: int,
                 origin: tuple | None = None) -> "SparseGeometry":
        """A geometry from int32 contiguous coords known to be unique and in-grid (derived by the methods below)."""
        geometry = object.__new__(cls)
        object.__setattr__(geometry, "coords", coords)
        object.__setattr__(geometry, "spatial_shape", (int(spatial_shape[0]), int(spatial_shape[1])))
        object.__setattr__(geometry, "batch_size", int(batch_size))
        object.__setattr__(geometry, "_cache", {})
        object.__setattr__(geometry, "_origin", origin)
        return geometry

    @classmethod
    def grid(cls, batch_size: int, spatial_shape: tuple[int, int], device: torch.device | str = "cpu"
             ) -> "SparseGeometry":
        """Every cell of a (batch_size, h, w) grid, in (batch, y, x) order (a quadtree's root level). The same
        object for the same grid and device (its rulebooks are built once)."""
        h, w = check_spatial_shape(spatial_shape)
        return _grid(check_batch_size(batch_size), h, w, torch.device(device))

    def children(self, index: torch.Tensor | None = None, coords: torch.Tensor | None = None) -> "SparseGeometry":
        """The four children of the sites `index` (int64 (M,) unique rows; default all) on the (2h, 2w) grid.

        Returns a geometry of 4M sites: rows 4i..4i+3 are the children of site index[i], in the quadtree's
        (dy, dx) order (`quadtree.child_coords`). `coords`: those children's coords when the caller has them
        (int32 (4M, 3) contiguous, on this device: a quadtree's next level), taken as they are instead of computed.
        """
        if coords is None:
            parents = self.coords if index is None else self.coords[index]
            scale, offsets = _child_steps(self.device)
            # (M, 1, 3) * (1, 2, 2) + (4, 3) offsets (0, dy, dx): one op; children of unique in-grid parents are
            # unique and in-grid, nothing to re-validate
            coords = torch.addcmul(offsets, parents[:, None, :], scale).view(-1, 3)
        h, w = self.spatial_shape
        return SparseGeometry._trusted(coords, (2 * h, 2 * w), self.batch_size, ("children", self, index))

    def downsampled(self) -> tuple["SparseGeometry", torch.Tensor]:
        """The sites of a stride-2 sparse conv's output (`sparse_ops.strided_conv2d`) and each site's parent; cached.

        Returns:
            coarse: the unique (b, y // 2, x // 2) of the sites, in (batch, y, x) order, on the
                (ceil(h / 2), ceil(w / 2)) grid, same batch size.
            parent: int64 (N,), the coarse row of each site (coarse.coords[parent[i]] = (b, y // 2, x // 2) of row i).
        Built on first call (one sort) and kept with this geometry, so every call returns the same objects.
        """
        return self.derived(("geometry", "downsampled"), self._downsample)

    def _downsample(self) -> tuple["SparseGeometry", torch.Tensor]:
        h, w = self.spatial_shape
        shape = ((h + 1) // 2, (w + 1) // 2)
        halved = self.coords.long()
        halved = torch.stack([halved[:, 0], halved[:, 1] // 2, halved[:, 2] // 2], dim=1)
        keys, parent = torch.unique(quadtree.flat_index(halved, shape), sorted=True, return_inverse=True)
        yx, x = keys.div(shape[1], rounding_mode="floor"), keys.remainder(shape[1])
        b, y = yx.div(shape[0], rounding_mode="floor"), yx.remainder(shape[0])
        coords = torch.stack([b, y, x], dim=1).to(torch.int32).contiguous()
        # unique sorted keys of in-grid cells: unique, in-grid and in (batch, y, x) order by construction
        return SparseGeometry._trusted(coords, shape, self.batch_size), parent.reshape(-1)

    # ---- properties --------------------------------------------------------------------------------------------
    @property
    def num_sites(self) -> int:
        return int(self.coords.shape[0])

    def __len__(self) -> int:
        return self.num_sites

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def to(self, device: torch.device | str) -> "SparseGeometry":
        """The same sites on `device` (rulebooks are rebuilt there on first use)."""
        if torch.device(device) == self.device:
            return self
        return SparseGeometry._trusted(self.coords.to(device), self.spatial_shape, self.batch_size)

    def __repr__(self) -> str:
        return (f"SparseGeometry(num_sites={self.num_sites}, spatial_shape={self.spatial_shape}, "
                f"batch_size={self.batch_size}, device={self.device}, cached={sorted(self._cache)})")

    # ---- derived structures (cached) ---------------------------------------------------------------------------
    @staticmethod
    def indice_key(kernel_size: int, dilation: int) -> str:
        """The cache key of a submanifold rulebook, derived from the kernel geometry: "subm_k{k}_d{d}"."""
        return f"subm_k{int(kernel_size)}_d{int(dilation)}"

    def derived(self, key: tuple, build):
        """What `build()` derives from these sites, built on first use and kept under `key` (a tuple naming what
        it derives from, e.g. ("torch", "subm_k3_d1")): every later call with the key returns the same object."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def neighbour_table(self, kernel_size: int, dilation: int) -> torch.Tensor:
        """int64 (N, k*k) neighbour rows, N for missing neighbours (see `rulebook.neighbour_table`); cached. A grid
        reads it off its index map, `children` off the coarser level's table (built there, and kept, if needed)."""
        return self.derived(("torch", self.indice_key(kernel_size, dilation)),
                            lambda: self._neighbour_table(kernel_size, dilation))

    def _neighbour_table(self, kernel_size: int, dilation: int) -> torch.Tensor:
        if self._origin is not None and self._origin[0] == "grid":
            return rulebook.grid_neighbour_table(self.batch_size, self.spatial_shape, kernel_size, dilation,
                                                 self.device)
        if self._origin is not None and self._origin[0] == "children":
            _, parent, index = self._origin
            if index is None:  # every site of the parent
                index = torch.arange(parent.num_sites, device=self.device)
            parent_table = parent.neighbour_table(rulebook.parent_kernel_size(kernel_size, dilation), 1)
            return rulebook.child_neighbour_table(parent_table, index, kernel_size, dilation)
        return rulebook.neighbour_table(self.coords, self.spatial_shape, self.batch_size, kernel_size, dilation)

    def spconv_rulebook(self, kernel_size: int, dilation: int):
        """spconv's indice data for a submanifold conv (see `rulebook.spconv_rulebook`); cached."""
        return self.derived(("spconv", self.indice_key(kernel_size, dilation)), lambda: rulebook.spconv_rulebook(
            self.coords, self.spatial_shape, self.batch_size, kernel_size, dilation))

    def to_spconv_tensor(self, feats: torch.Tensor):
        """A `spconv.pytorch.SparseConvTensor` of `feats` (N, C) on these sites.

        Its `indice_dict` holds the spconv rulebooks built so far under `indice_key(k, d)`, so a spconv
        `SubMConv2d(..., indice_key=SparseGeometry.indice_key(k, d))` with the device's algorithm reuses them.
        """
        api = backend.spconv_api()
        indice_dict = {key[1]: data for key, data in self._cache.items() if key[0] == "spconv"}
        return api.spconv.SparseConvTensor(
            feats, self.coords, list(self.spatial_shape), self.batch_size, indice_dict=indice_dict
        )


@functools.lru_cache(maxsize=16)
def _grid(batch_size: int, h: int, w: int, device: torch.device) -> SparseGeometry:
    return SparseGeometry._trusted(quadtree.root_coords(batch_size, h, w, device), (h, w), batch_size, ("grid",))


@functools.lru_cache(maxsize=None)
def _child_steps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 (3,) scale (1, 2, 2) and (4, 3) offsets (0, dy, dx) of the children, in their storage order."""
    offsets = torch.zeros(4, 3, dtype=torch.int32)
    offsets[:, 1:] = quadtree.CHILD_OFFSETS
    return torch.tensor([1, 2, 2], dtype=torch.int32, device=device), offsets.to(device)


def level_geometry(tree, level: int) -> SparseGeometry:
    """The geometry of `tree.levels[level]` (a `quadtree.Quadtree`): built and validated on first use, then kept
    with the level's nodes (`QuadtreeLevel.derived`), so every op on that level of that tree shares its rulebooks."""
    nodes = tree.levels[level]
    shape = tree.level_shape(level)
    key = _derived_key(shape, tree.batch_size)
    if key not in nodes.derived:
        nodes.derived[key] = SparseGeometry(nodes.coords, shape, tree.batch_size)
    return nodes.derived[key]


def tree_level(geometry: SparseGeometry, labels: torch.Tensor, parent: torch.Tensor) -> "quadtree.QuadtreeLevel":
    """A `quadtree.QuadtreeLevel` of the sites of `geometry` that keeps `geometry` (what `level_geometry` returns
    for it in a tree whose level grid and batch size are the geometry's): a tree grown level by level by the
    network carries the rulebooks it was computed with."""
    nodes = quadtree.QuadtreeLevel(geometry.coords, labels, parent)
    nodes.derived[_derived_key(geometry.spatial_shape, geometry.batch_size)] = geometry
    return nodes


def _derived_key(shape: tuple[int, int], batch_size: int) -> tuple:
    return ("sparse_geometry", tuple(shape), batch_size)


def check_spatial_shape(spatial_shape) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in spatial_shape)
    except (TypeError, ValueError):
        raise ValueError(f"spatial_shape must be (h, w), got {spatial_shape!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"spatial_shape must be two positive integers (h, w), got {spatial_shape!r}")
    return shape


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        if isinstance(batch_size, torch.Tensor) and batch_size.numel() == 1 and not batch_size.is_floating_point():
            return check_batch_size(int(batch_size))
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_in_grid(coords: torch.Tensor, shape: tuple[int, int], batch_size: int) -> None:
    """Raise ValueError unless every (batch, y, x) row of int32 `coords` lies inside the (batch_size, h, w) grid."""
    if coords.shape[0] == 0:
        return
    high = (batch_size, *shape)
    if coords.device.type == "cpu":
        # numpy: single-threaded, so a few ms even when other jobs occupy the cores (torch's parallel kernels
        # can stall for 100+ ms on a contended 2-core machine)
        array = coords.numpy()
        inside = array.min() >= 0 and all(array[:, i].max() < high[i] for i in range(3))
    else:
        inside = bool(((coords >= 0) & (coords < torch.tensor(high, dtype=torch.int32, device=coords.device))).all())
    if not inside:
        bad = (coords < 0) | (coords >= torch.tensor(high, dtype=torch.int32, device=coords.device))
        row = int(bad.any(1).nonzero()[0, 0])
        raise ValueError(
            f"coords row {row} = {coords[row].tolist()} lies outside the grid: batch must be in 0..{batch_size - 1}, "
            f"y in 0..{shape[0] - 1}, x in 0..{shape[1] - 1} (spatial_shape={shape}, batch_size={batch_size})"
        )


def _check_sites(coords: torch.Tensor, shape: tuple[int, int], batch_size: int) -> None:
    """Raise ValueError unless every site lies inside the (batch_size, h, w) grid and no site repeats."""
    check_in_grid(coords, shape, batch_size)
    if coords.shape[0] < 2:
        return
    keys = quadtree.flat_index(coords, shape)
    if coords.device.type == "cpu":  # numpy's sort is single-threaded: quick also when other jobs hold the cores
        keys = np.sort(keys.numpy())
        repeats = int(np.count_nonzero(keys[1:] == keys[:-1]))
    else:
        keys = torch.sort(keys)[0]
        repeats = int((keys[1:] == keys[:-1]).sum())
    if repeats:
        raise ValueError(f"coords holds duplicate sites ({repeats} repeats); each (batch, y, x) may be active once")
