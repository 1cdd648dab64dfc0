r"""Dynamic voxel feature encoder (OpenPCDet ``DynamicVoxelVFE``, the ScatterFormer VFE).

Every point :math:`p` in the range falls into the voxel :math:`v(p)` with integer cell :math:`c = (c_x, c_y, c_z)`
(dynamic voxelisation by :func:`geoattn.sparse.voxel.voxelize`, no cap on points per voxel; points outside the
range are dropped). Its input feature is the concatenation

.. math::
    f_p = \big[\, p_{\mathrm{raw}},\; p_{xyz} - \bar p_{v(p)},\; p_{xyz} - (m + (c + \tfrac12) \odot s)\,\big]

of the raw point row (x, y, z and the ``F`` point features when ``use_absolute_xyz``, else only the ``F``
features), the offset to the mean of the points of its voxel (``f_cluster``) and the offset to the voxel centre
(``f_center``; range minimum ``m``, voxel size ``s``), plus ``||p_xyz||`` when ``with_distance``. Waymo
(x, y, z, intensity, elongation): ``5 + 3 + 3 = 11`` features; KITTI (x, y, z, reflectance): ``10``.

Then the PFN layers (``PFNLayerV2``): with ``h = ReLU(BN(W f))`` (``Linear`` without bias when ``use_norm``, BN
``eps = 1e-3``, ``momentum = 0.01``), a hidden layer returns ``[h_p, max_{q in v(p)} h_q]`` per point (half the
layer's width each, ``32 + 32 -> 64``), the last layer the per-voxel max ``max_{p in v} h_p``. With the official
``NUM_FILTERS = [64, 64]`` the voxel features are ``[V, 64]``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from geoattn.sparse.segment import scatter_max
from geoattn.sparse.voxel import VoxelTensor, grid_shape, voxelize

__all__ = ["PFNLayerV2", "DynamicVoxelVFE"]


class PFNLayerV2(nn.Module):
    r"""One point-feature-net layer: ``h = ReLU(BN(Linear(x)))``, per-voxel max, concatenation.

    Args:
        in_channels: input width; out_channels: layer width; a hidden layer (``last_layer=False``) computes
            ``out_channels // 2`` features and concatenates their per-voxel max, so it also returns
            ``out_channels`` (for even widths);
        use_norm: ``Linear`` without bias + ``BatchNorm1d(eps=1e-3, momentum=0.01)``, else ``Linear`` with bias.
        last_layer: return the per-voxel max ``[V, out_channels]`` instead of per-point features.

    Shapes: ``x [N, in_channels]``, ``point_to_voxel [N]`` long in ``[0, V)``, ``num_voxels = V`` ->
    ``[N, out_channels]`` (hidden) or ``[V, out_channels]`` (last). A voxel's max is over its points only.
    """

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool = True, last_layer: bool = False):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not last_layer and out_channels % 2:
            raise ValueError(f"out_channels: expected an even width for a hidden PFN layer, got {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.last_layer = bool(last_layer)
        self.use_norm = bool(use_norm)
        width = out_channels if last_layer else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=not use_norm)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01) if use_norm else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, point_to_voxel: Tensor, num_voxels: int) -> Tensor:
        h = self.relu(self.norm(self.linear(x)))
        h_max = scatter_max(h, point_to_voxel, num_voxels)
        if self.last_layer:
            return h_max
        return torch.cat([h, h_max.index_select(0, point_to_voxel)], dim=1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels} -> {self.out_channels}, "
                f"use_norm={self.use_norm}, last_layer={self.last_layer})")


def _positive_triple(name: str, value) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"{name}: expected 3 numbers (x, y, z), got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name}: expected 3 numbers (x, y, z), got {len(out)} values")
    return out


class DynamicVoxelVFE(nn.Module):
    r"""Dynamic voxel feature encoder (see the module docstring for the maths).

    Args:
        num_point_features: columns of a point row ``3 + F`` (x, y, z first): 4 for KITTI, 5 for Waymo.
        voxel_size: ``(sx, sy, sz)``; point_range: ``[x0, y0, z0, x1, y1, z1]`` (half-open upper bound).
        num_filters: widths of the PFN layers (official ``[64, 64]``); the last is the output width.
        use_norm: BN in the PFN layers; use_absolute_xyz: keep x, y, z in the point feature (``USE_ABSLOTE_XYZ``);
        with_distance: append ``||p_xyz||``.

    ``forward(points [N, 3 + F], batch [N] long or None, batch_size)`` -> :class:`VoxelTensor` with
    ``features [V, num_filters[-1]]``, ``coords [V, 4]`` ``(b, z, y, x)`` sorted lexicographically,
    ``spatial_shape = grid_shape(voxel_size, point_range)``. Attributes: ``num_input_features`` (the per-point
    feature width, 11 / 10), ``num_output_features``, ``grid``. The result does not depend on the point order
    (up to float summation order in the voxel means).
    """

    def __init__(self, num_point_features: int, voxel_size: Sequence[float], point_range: Sequence[float],
                 num_filters: Sequence[int] = (64, 64), use_norm: bool = True, use_absolute_xyz: bool = True,
                 with_distance: bool = False):
        super().__init__()
        if not isinstance(num_point_features, int) or isinstance(num_point_features, bool) or num_point_features < 3:
            raise ValueError(f"num_point_features: expected an int >= 3 (x, y, z first), got {num_point_features!r}")
        filters = list(num_filters)
        if not filters or any(not isinstance(f, int) or isinstance(f, bool) or f <= 0 for f in filters):
            raise ValueError(f"num_filters: expected a non-empty list of positive ints, got {num_filters!r}")
        self.voxel_size = _positive_triple("voxel_size", voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        self.grid = grid_shape(self.voxel_size, self.point_range)  # validates both
        self.num_point_features = num_point_features
        self.use_absolute_xyz = bool(use_absolute_xyz)
        self.with_distance = bool(with_distance)
        self.num_input_features = (num_point_features + 6 if use_absolute_xyz else num_point_features + 3) \
            + int(self.with_distance)
        widths = [self.num_input_features] + filters
        self.pfn_layers = nn.ModuleList(
            PFNLayerV2(widths[i], widths[i + 1], use_norm, last_layer=(i == len(filters) - 1))
            for i in range(len(filters)))
        self.num_output_features = filters[-1]
        # voxel centre of cell c: m + (c + 1/2) s, as the official x/y/z_offset
        self.register_buffer("_voxel", torch.tensor(self.voxel_size, dtype=torch.float64), persistent=False)
        self.register_buffer("_offset", torch.tensor([s / 2 + m for s, m in zip(self.voxel_size, self.point_range)],
                                                     dtype=torch.float64), persistent=False)

    def point_features(self, points: Tensor, point_to_voxel: Tensor, coords: Tensor, centroids: Tensor) -> Tensor:
        """The per-point input ``[N', num_input_features]`` of the in-range points (``point_to_voxel >= 0``)."""
        xyz = points[:, :3]
        f_cluster = xyz - centroids.index_select(0, point_to_voxel)
        cell_xyz = coords.index_select(0, point_to_voxel)[:, [3, 2, 1]].to(points.dtype)
        f_center = xyz - (cell_xyz * self._voxel.to(points.dtype) + self._offset.to(points.dtype))
        raw = points if self.use_absolute_xyz else points[:, 3:]
        parts = [raw, f_cluster, f_center]
        if self.with_distance:
            parts.append(xyz.norm(dim=1, keepdim=True))
        return torch.cat(parts, dim=1)

    def forward(self, points: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> VoxelTensor:
        if not isinstance(points, Tensor):
            raise TypeError(f"points: expected a torch.Tensor, got {type(points).__name__}")
        if points.dim() != 2 or points.shape[1] != self.num_point_features:
            raise ValueError(f"points: expected a 2-D tensor [N, {self.num_point_features}] (x, y, z first), "
                             f"got shape {tuple(points.shape)}")
        if not points.is_floating_point():
            raise TypeError(f"points: expected a floating-point tensor, got dtype {points.dtype}")
        vox = voxelize(points[:, :3], self.voxel_size, self.point_range, batch=batch, batch_size=batch_size)
        num_voxels = vox.coords.shape[0]
        # dropping the out-of-range points is a boolean mask (a host sync on CUDA, as the official code);
        # keeping them would let them enter the BN statistics of the PFN layers
        inside = vox.point_to_voxel >= 0
        point_to_voxel = vox.point_to_voxel[inside]
        kept = points[inside]
        features = self.point_features(kept, point_to_voxel, vox.coords, vox.centroids.to(points.dtype))
        for pfn in self.pfn_layers:
            features = pfn(features, point_to_voxel, num_voxels)
        return VoxelTensor(features, vox.coords, vox.spatial_shape, vox.batch_size)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_point_features={self.num_point_features}, "
                f"input={self.num_input_features}, filters={[p.out_channels for p in self.pfn_layers]}, "
                f"grid={self.grid})")
