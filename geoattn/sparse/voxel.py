r"""Dynamic voxelisation and the sparse voxel container.

A point :math:`p` with range minimum :math:`m` and voxel size :math:`s` falls into the voxel

.. math::
    c = \lfloor (p - m) / s \rfloor \in [0, X) \times [0, Y) \times [0, Z),

computed in the point dtype (float32 for half inputs); points with any coordinate outside the range are
dropped (``point_to_voxel == -1``). The range is half-open: a point exactly on the upper bound is outside.
Voxel coordinates follow spconv's order ``(batch, z, y, x)`` and voxels are returned sorted by that
lexicographic key, so the result is deterministic and independent of the point order.

Grouping has two interchangeable paths with identical outputs. The portable one packs each point into one
integer key ``((b Z + z) Y + y) X + x`` (points outside the range get a sentinel key past all voxels) and groups
with a single :func:`torch.unique` (one sort). On CPU float32 clouds without ``batch`` and with spconv installed,
spconv's one-pass ``point2voxel`` groups the points and only the ``V`` voxel keys are sorted. Features and
positions are then averaged with :func:`~geoattn.sparse.segment.scatter_sum`, so the voxel features are
differentiable with respect to the point features and positions.

:class:`VoxelTensor` is the one container for sparse voxel features; :meth:`VoxelTensor.to_spconv` /
:meth:`VoxelTensor.from_spconv` convert to and from ``spconv.pytorch.SparseConvTensor`` when spconv is
installed. :func:`install_spconv_cpu_shim` lets spconv's backward run with a CPU-only torch build.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from geoattn import backends
from geoattn.sparse.segment import scatter_sum

__all__ = [
    "Voxelization",
    "voxelize",
    "grid_shape",
    "VoxelTensor",
    "install_spconv_cpu_shim",
    "voxel_keys",
    "submanifold_neighbors",
]


@dataclass
class Voxelization:
    """Result of :func:`voxelize` (``V`` occupied voxels, ``N`` input points).

    Attributes:
        coords: ``[V, 4]`` long, ``(batch, z, y, x)``, sorted lexicographically.
        point_to_voxel: ``[N]`` long, voxel of each point or ``-1`` when the point is outside the range.
        counts: ``[V]`` long, number of points in each voxel (``>= 1``).
        features: ``[V, C]`` mean of the point features per voxel (the point positions when no features
            were given), differentiable.
        centroids: ``[V, 3]`` mean point position per voxel, differentiable.
        spatial_shape: ``(Z, Y, X)`` grid size.
        batch_size: number of batch elements ``B`` (voxels carry batch ids in ``[0, B)``).
    """

    coords: Tensor
    point_to_voxel: Tensor
    counts: Tensor
    features: Tensor
    centroids: Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def to_tensor(self, features: Tensor | None = None) -> "VoxelTensor":
        """A :class:`VoxelTensor` of these voxels holding ``features`` (default: the mean features)."""
        return VoxelTensor(self.features if features is None else features, self.coords,
                           self.spatial_shape, self.batch_size)


def _as_triple(name: str, value, dtype=torch.float64) -> Tensor:
    out = torch.as_tensor(value, dtype=dtype).flatten()
    if out.numel() == 1:
        out = out.repeat(3)
    if out.numel() != 3:
        raise ValueError(f"{name}: expected 3 values (x, y, z), got {out.numel()} values")
    return out


def grid_shape(voxel_size, point_range) -> tuple[int, int, int]:
    """Grid size ``(Z, Y, X)`` of a range ``[x0, y0, z0, x1, y1, z1]`` cut into voxels ``(sx, sy, sz)``."""
    size = _as_triple("voxel_size", voxel_size)
    bounds = torch.as_tensor(point_range, dtype=torch.float64).flatten()
    if bounds.numel() != 6:
        raise ValueError(f"point_range: expected 6 values [x_min, y_min, z_min, x_max, y_max, z_max], "
                         f"got {bounds.numel()} values")
    if (size <= 0).any():
        raise ValueError(f"voxel_size: expected positive sizes, got {size.tolist()}")
    if (bounds[3:] <= bounds[:3]).any():
        raise ValueError(f"point_range: expected max > min on every axis, got {bounds.tolist()}")
    # round, not floor: 153.6 / 0.32 is 479.99999999999994 in floating point
    xyz = torch.round((bounds[3:] - bounds[:3]) / size).long().tolist()
    return (int(xyz[2]), int(xyz[1]), int(xyz[0]))


def voxel_keys(coords: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """Pack ``(batch, z, y, x)`` coords ``[V, 4]`` into int64 keys ``((b Z + z) Y + y) X + x``.

    The keys order voxels lexicographically by ``(batch, z, y, x)``; they are used for sorting and hashing.
    """
    z_size, y_size, x_size = (int(s) for s in spatial_shape)
    c = coords.long()
    return ((c[:, 0] * z_size + c[:, 1]) * y_size + c[:, 2]) * x_size + c[:, 3]


def submanifold_neighbors(coords: Tensor, kernel_size: Sequence[int]) -> Tensor:
    r"""Neighbour table of a submanifold convolution: ``[K, N]`` long, ``-1`` where the neighbour is inactive.

    Entry ``[k, i]`` is the row ``j`` with ``coords[j] = coords[i] + o_k - r`` (same batch), where ``o_k`` runs
    over the kernel offsets ``(dz, dy, dx)`` in row-major order of ``kernel_size = (kz, ky, kx)`` (odd sizes)
    and ``r = kernel_size // 2``; this is the cross-correlation order of ``torch.nn.functional.conv3d``, so
    a weight ``[kz, ky, kx, C]`` flattened to ``[K, C]`` matches ``conv3d`` weights ``[C, 1, kz, ky, kx]``.
    Odd kernels make the table symmetric: ``table[k, i] = j  <=>  table[K - 1 - k, j] = i``.

    Args:
        coords: ``[N, 4]`` integer ``(batch, z, y, x)`` coords, unique.
        kernel_size: ``(kz, ky, kx)`` odd sizes.
    """
    if not isinstance(coords, Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
        shape = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
        raise ValueError(f"coords: expected a 2-D tensor [N, 4] (batch, z, y, x), got {shape}")
    kernel = tuple(int(k) for k in kernel_size)
    if len(kernel) != 3 or any(k <= 0 or k % 2 == 0 for k in kernel):
        raise ValueError(f"kernel_size: expected three odd positive sizes (kz, ky, kx), got {kernel_size!r}")
    device = coords.device
    num_rows = coords.shape[0]
    radius = torch.tensor([0, kernel[0] // 2, kernel[1] // 2, kernel[2] // 2], device=device)
    grids = torch.meshgrid(*[torch.arange(k, device=device) for k in kernel], indexing="ij")
    offsets = torch.stack([torch.zeros_like(grids[0])] + list(grids), dim=-1).reshape(-1, 4) - radius
    if num_rows == 0:
        return torch.empty((offsets.shape[0], 0), dtype=torch.long, device=device)
    # pad the bounds by the kernel radius so that every neighbour cell has a unique non-negative key
    c = coords.long() + radius
    extent = (c.amax(dim=0) + radius + 1).tolist()
    key = voxel_keys(c, extent[1:])
    sorted_key, order = torch.sort(key)
    neighbour = (c.unsqueeze(0) + offsets.unsqueeze(1)).reshape(-1, 4)
    neighbour_key = voxel_keys(neighbour, extent[1:])
    position = torch.searchsorted(sorted_key, neighbour_key).clamp_(max=num_rows - 1)
    found = sorted_key.index_select(0, position) == neighbour_key
    table = torch.where(found, order.index_select(0, position), -1)
    return table.reshape(offsets.shape[0], num_rows)


def voxelize(
    pos: Tensor,
    voxel_size,
    point_range,
    features: Tensor | None = None,
    batch: Tensor | None = None,
    batch_size: int | None = None,
) -> Voxelization:
    r"""Dynamic voxelisation (no cap on points per voxel or on voxels).

    Args:
        pos: ``[N, 3]`` float point positions ``(x, y, z)``.
        voxel_size: ``(sx, sy, sz)`` (or one number for cubes).
        point_range: ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (half-open on the upper bound).
        features: optional ``[N, C]`` point features averaged per voxel (default: ``pos``).
        batch: optional ``[N]`` long batch id of each point (any order).
        batch_size: number of batch elements (default ``batch.max() + 1``, or 1).

    Returns:
        :class:`Voxelization`.
    """
    if not isinstance(pos, Tensor):
        raise TypeError(f"pos: expected a torch.Tensor, got {type(pos).__name__}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos: expected a 2-D tensor [N, 3], got shape {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise TypeError(f"pos: expected a floating-point tensor, got dtype {pos.dtype}")
    num_points = pos.shape[0]
    if features is not None:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != num_points:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features: expected a 2-D tensor [N, C] with N={num_points}, got {shape}")
    if batch is not None:
        if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.shape[0] != num_points:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"batch: expected a 1-D tensor [N] with N={num_points}, got {shape}")
        if batch.is_floating_point():
            raise TypeError(f"batch: expected an integer tensor, got dtype {batch.dtype}")
    spatial_shape = grid_shape(voxel_size, point_range)
    if batch is not None and num_points > 0 and (batch_size is None or backends.debug_checks()):
        # one read of both ends: the range is checked for free when batch_size has to be inferred anyway
        low, high = torch.stack(batch.aminmax()).tolist()
        if low < 0:
            raise ValueError(f"batch: expected non-negative batch ids, got minimum {low}")
        if batch_size is not None and high >= batch_size:
            raise ValueError(f"batch: expected ids in [0, {batch_size}) (batch_size), got maximum {high}")
        if batch_size is None:
            batch_size = high + 1
    if batch_size is None:
        batch_size = 1
    z_size, y_size, x_size = spatial_shape
    if batch_size * z_size * y_size * x_size >= 2**62:
        raise ValueError(f"spatial_shape: grid {spatial_shape} x batch {batch_size} does not fit int64 keys")

    device = pos.device
    num_cells = batch_size * z_size * y_size * x_size
    grouped = None
    if _spconv_grouping_applies(pos, batch, num_cells):
        with torch.no_grad():
            grouped = _group_with_spconv(pos.detach(), voxel_size, point_range, spatial_shape)
    if grouped is not None:
        unique_key, inverse, counts, inside = grouped
        num_voxels = int(unique_key.shape[0])
    else:
        unique_key, inverse, counts, inside, num_voxels = _group_with_sort(pos, batch, voxel_size, point_range,
                                                                           spatial_shape, batch_size)
    with torch.no_grad():
        point_to_voxel = torch.where(inside, inverse, -1)
        coords = torch.empty((num_voxels, 4), dtype=torch.long, device=device)
        rest = unique_key
        coords[:, 3] = rest % x_size
        rest = rest.div(x_size, rounding_mode="floor")
        coords[:, 2] = rest % y_size
        rest = rest.div(y_size, rounding_mode="floor")
        coords[:, 1] = rest % z_size
        coords[:, 0] = rest.div(z_size, rounding_mode="floor")
        denominator = counts.clamp(min=1).unsqueeze(1)

    # outside points are summed into a spare last row, which is dropped
    centroids = scatter_sum(pos, inverse, num_voxels + 1)[:num_voxels] / denominator.to(pos.dtype)
    if features is None:
        voxel_features = centroids
    else:
        voxel_features = scatter_sum(features, inverse, num_voxels + 1)[:num_voxels]
        voxel_features = voxel_features / denominator.to(voxel_features.dtype)
    return Voxelization(
        coords=coords,
        point_to_voxel=point_to_voxel,
        counts=counts,
        features=voxel_features,
        centroids=centroids,
        spatial_shape=spatial_shape,
        batch_size=int(batch_size),
    )


def _group_with_sort(pos, batch, voxel_size, point_range, spatial_shape, batch_size):
    """Portable grouping: one packed key per point and one ``torch.unique`` (a sort).

    Returns sorted voxel keys ``[V]``, the group of each point ``[N]`` (``V`` for points outside the range),
    counts ``[V]``, the in-range mask ``[N]`` and ``V``.
    """
    z_size, y_size, x_size = spatial_shape
    num_points = pos.shape[0]
    device = pos.device
    work_dtype = pos.dtype if pos.dtype in (torch.float32, torch.float64) else torch.float32
    size = _as_triple("voxel_size", voxel_size).tolist()
    lower = torch.as_tensor(point_range, dtype=torch.float64).flatten()[:3].tolist()
    num_cells = batch_size * z_size * y_size * x_size
    # int32 keys sort faster; the sentinel num_cells must fit as well
    key_dtype = torch.int32 if num_cells < 2**31 - 1 else torch.int64
    with torch.no_grad():
        points = pos.detach().to(work_dtype)
        inside = torch.ones(num_points, dtype=torch.bool, device=device)
        key = torch.zeros(num_points, dtype=key_dtype, device=device)
        for axis, extent in ((2, z_size), (1, y_size), (0, x_size)):
            # one column at a time: broadcasting over a trailing dim of 3 is several times slower
            cell = points[:, axis].sub(lower[axis]).div_(size[axis]).floor_()
            # float comparisons before the integer cast: NaN and huge values compare False
            inside &= cell >= 0
            inside &= cell < extent
            key.mul_(extent).add_(cell.to(key_dtype))
        if batch is not None:
            key.add_(batch.to(key_dtype) * (z_size * y_size * x_size))
        key = torch.where(inside, key, num_cells)
        # points outside the range share the sentinel key, the largest, so they form the last group
        unique_key, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        num_voxels = int(unique_key.shape[0])
        if num_voxels > 0 and not bool(inside.all()):
            num_voxels -= 1
            unique_key = unique_key[:num_voxels]
            counts = counts[:num_voxels]
    return unique_key.long(), inverse, counts, inside, num_voxels


# spconv's point2voxel is one pass over a dense cell table; it is the fastest CPU grouping available.
_SPCONV_MAX_CELLS = 2**27  # its int32 table then stays <= 512 MB
_spconv_generators: dict = {}


def _spconv_grouping_applies(pos: Tensor, batch: Tensor | None, num_cells: int) -> bool:
    return (
        batch is None
        and pos.device.type == "cpu"
        and pos.dtype == torch.float32
        and pos.shape[0] > 0
        and num_cells <= _SPCONV_MAX_CELLS
        and backends.spconv() is not None
    )


def _group_with_spconv(pos, voxel_size, point_range, spatial_shape):
    """Grouping through ``spconv.pytorch.utils.PointToVoxel`` (CPU, one batch element), then voxels sorted.

    The generator owns a dense cell table sized by the grid; it is cached per configuration and grown when a
    cloud has more points than its voxel capacity. Same outputs as :func:`_group_with_sort`, or ``None`` when
    spconv's grid differs from :func:`grid_shape` (then the caller sorts).
    """
    from spconv.pytorch.utils import PointToVoxel

    z_size, y_size, x_size = spatial_shape
    num_points = pos.shape[0]
    config = (tuple(_as_triple("voxel_size", voxel_size).tolist()),
              tuple(torch.as_tensor(point_range, dtype=torch.float64).flatten().tolist()))
    generator = _spconv_generators.get(config)
    if generator is None or generator.max_num_voxels < num_points:
        capacity = max(1024, 1 << (num_points - 1).bit_length())
        generator = PointToVoxel(vsize_xyz=list(config[0]), coors_range_xyz=list(config[1]), num_point_features=3,
                                 max_num_voxels=capacity, max_num_points_per_voxel=1)
        if len(_spconv_generators) >= 4:
            _spconv_generators.pop(next(iter(_spconv_generators)))
        _spconv_generators[config] = generator
    if tuple(int(n) for n in generator.grid_size) != tuple(spatial_shape):
        # spconv rounds a partial last cell up (a range that is not a multiple of the voxel size); geoattn's
        # grid (see grid_shape) rounds to nearest, so such configurations take the sort path
        return None
    _, cells_zyx, _, point_voxel = generator.generate_voxel_with_id(pos.contiguous(), clear_voxels=False)
    num_voxels = cells_zyx.shape[0]
    # int32 keys (the grid has < 2**27 cells here) sort faster; the int32 cast also copies the generator's buffer
    cells = cells_zyx.int()
    key = (cells[:, 0] * y_size + cells[:, 1]) * x_size + cells[:, 2]
    unique_key, order = torch.sort(key)
    # rank of each spconv voxel in sorted order, plus a spare last entry that outside points (id -1) gather
    rank = torch.empty(num_voxels + 1, dtype=torch.long)
    rank[order] = torch.arange(num_voxels)
    rank[num_voxels] = num_voxels
    inverse = rank.index_select(0, point_voxel.remainder(num_voxels + 1))  # -1 -> V (floor modulo)
    inside = point_voxel >= 0
    counts = torch.bincount(inverse, minlength=num_voxels + 1)[:num_voxels]
    unique_key = unique_key.long()
    return unique_key, inverse, counts, inside


# ---------------------------------------------------------------------------------------------
# sparse container and spconv interop
# ---------------------------------------------------------------------------------------------
class VoxelTensor:
    """Sparse voxel features: ``features [V, C]`` at integer ``coords [V, 4]`` ``(batch, z, y, x)``.

    ``spatial_shape`` is ``(Z, Y, X)``; ``batch_size`` the number of batch elements. The container is a plain
    holder: it never copies or reorders its tensors.
    """

    __slots__ = ("features", "coords", "spatial_shape", "batch_size")

    def __init__(self, features: Tensor, coords: Tensor, spatial_shape: Sequence[int], batch_size: int):
        if not isinstance(features, Tensor) or features.dim() != 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features: expected a 2-D tensor [V, C], got {shape}")
        if not isinstance(coords, Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
            shape = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
            raise ValueError(f"coords: expected a 2-D tensor [V, 4] (batch, z, y, x), got {shape}")
        if coords.is_floating_point():
            raise TypeError(f"coords: expected an integer tensor, got dtype {coords.dtype}")
        if coords.shape[0] != features.shape[0]:
            raise ValueError(f"coords: expected {features.shape[0]} rows to match features, got {coords.shape[0]}")
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if len(spatial_shape) != 3:
            raise ValueError(f"spatial_shape: expected (Z, Y, X), got {spatial_shape}")
        self.features = features
        self.coords = coords
        self.spatial_shape = spatial_shape
        self.batch_size = int(batch_size)

    @property
    def num_voxels(self) -> int:
        return int(self.features.shape[0])

    def replace_features(self, features: Tensor) -> "VoxelTensor":
        """The same voxels with new ``features [V, C']``."""
        return VoxelTensor(features, self.coords, self.spatial_shape, self.batch_size)

    def dense(self) -> Tensor:
        """Dense ``[B, C, Z, Y, X]`` grid (zeros at empty cells); for tests and small grids."""
        z_size, y_size, x_size = self.spatial_shape
        channels = self.features.shape[1]
        out = self.features.new_zeros(self.batch_size, z_size, y_size, x_size, channels)
        c = self.coords.long()
        out = out.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), self.features)
        return out.permute(0, 4, 1, 2, 3).contiguous()

    def to_spconv(self):
        """``spconv.pytorch.SparseConvTensor`` with int32 indices (needs spconv)."""
        spconv = backends.spconv()
        if spconv is None:
            raise ImportError("to_spconv: spconv is not installed (pip install 'geoattn[point]')")
        install_spconv_cpu_shim()
        return spconv.SparseConvTensor(self.features, self.coords.int().contiguous(), list(self.spatial_shape),
                                       self.batch_size)

    @classmethod
    def from_spconv(cls, tensor) -> "VoxelTensor":
        """Wrap a ``spconv.pytorch.SparseConvTensor`` (indices become long)."""
        for name in ("features", "indices", "spatial_shape", "batch_size"):
            if not hasattr(tensor, name):
                raise TypeError(f"tensor: expected a spconv SparseConvTensor, got {type(tensor).__name__}")
        return cls(tensor.features, tensor.indices.long(), tuple(int(s) for s in tensor.spatial_shape),
                   int(tensor.batch_size))

    def __repr__(self) -> str:
        return (f"VoxelTensor(num_voxels={self.num_voxels}, channels={self.features.shape[1]}, "
                f"spatial_shape={self.spatial_shape}, batch_size={self.batch_size}, dtype={self.features.dtype})")


_SHIM_INSTALLED = False


def install_spconv_cpu_shim() -> bool:
    """Let spconv run its CPU backward with a CPU-only torch build.

    spconv's ops ask ``torch.cuda.current_stream()`` for a stream handle even for CPU tensors, which raises
    when torch has no CUDA. Without CUDA the handle is irrelevant, so it is replaced by ``0`` (the default
    stream). Does nothing when CUDA is available or spconv is absent. Returns whether the shim is active.
    """
    global _SHIM_INSTALLED
    if _SHIM_INSTALLED:
        return True
    if torch.cuda.is_available() or backends.spconv() is None:
        return False
    import importlib

    def _no_stream() -> int:
        return 0

    for name in ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash"):
        try:
            module = importlib.import_module(name)
        except Exception:  # a submodule missing in another spconv version has nothing to patch
            continue
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = _no_stream
    _SHIM_INSTALLED = True
    return True
