"""Point-cloud transforms: normals and point pair features (registration), voxels and windows (ScatterFormer)."""
from __future__ import annotations

import math

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from geoattn.nn.conv.ppf_conv import knn_edge_index
from geoattn.sparse.geometry import estimate_normals, point_pair_features
from geoattn.sparse.voxel import voxelize
from geoattn.sparse.window import WindowIndex

__all__ = ["EstimateNormals", "PointPairFeatures", "Voxelize", "WindowPartition"]


def _require(data: Data, name: str, transform: str):
    value = getattr(data, name, None)
    if value is None:
        raise ValueError(f"data: {transform} needs data.{name}, which is missing")
    return value


class EstimateNormals(BaseTransform):
    """``data.normal [N, 3]``: PCA normals of the ``k`` nearest points (:func:`geoattn.sparse.estimate_normals`,
    signs by its rotation-invariant rule, so they co-rotate with the cloud)."""

    def __init__(self, k: int = 16):
        if not isinstance(k, int) or k < 3:
            raise ValueError(f"k: expected an int >= 3 (a plane needs three points), got {k!r}")
        self.k = k

    def forward(self, data: Data) -> Data:
        data.normal = estimate_normals(_require(data, "pos", "EstimateNormals"), self.k)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"


class PointPairFeatures(BaseTransform):
    r"""``data.edge_index`` from each point's ``k`` nearest points (itself included) and
    ``data.edge_attr [E, 4]``: the RoITr point pair feature of target ``i`` and source ``j``
    (distance, then the three angles divided by :math:`\pi`, folded into ``[0, 1/2]`` when
    ``sign_invariant``), the groups and features of :func:`geoattn.nn.ppf_groups` in PyG form. Needs
    ``data.pos`` and ``data.normal`` (see :class:`EstimateNormals`)."""

    def __init__(self, k: int = 16, sign_invariant: bool = True):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        self.k, self.sign_invariant = k, sign_invariant

    def forward(self, data: Data) -> Data:
        pos = _require(data, "pos", "PointPairFeatures")
        normal = _require(data, "normal", "PointPairFeatures")
        edge_index = knn_edge_index(pos, self.k)
        source, target = edge_index
        ppf = point_pair_features(pos[target], normal[target], pos[source], normal[source])
        angles = ppf[:, 1:]
        if self.sign_invariant:
            angles = torch.minimum(angles, math.pi - angles)
        data.edge_index = edge_index
        data.edge_attr = torch.cat([ppf[:, :1], angles / math.pi], dim=1)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, sign_invariant={self.sign_invariant})"


class Voxelize(BaseTransform):
    """Dynamic voxelisation of ``data.pos`` (:func:`geoattn.sparse.voxelize`): the result is a graph of voxels,
    ``x [V, C]`` the mean point features per voxel (of ``data.x``, or the positions without it), ``pos [V, 3]``
    the mean point position, ``coords [V, 4]`` ``(0, z, y, x)`` (batch column 0: a ``Batch`` of voxelised
    clouds is told apart by its ``batch`` vector, which the ScatterFormer layers take) and
    ``point_to_voxel [N]`` (``-1`` outside ``point_range``). The other attributes are dropped."""

    def __init__(self, voxel_size, point_range):
        self.voxel_size, self.point_range = voxel_size, point_range

    def forward(self, data: Data) -> Data:
        pos = _require(data, "pos", "Voxelize")
        voxels = voxelize(pos, self.voxel_size, self.point_range, features=getattr(data, "x", None))
        return Data(x=voxels.features, pos=voxels.centroids, coords=voxels.coords,
                    point_to_voxel=voxels.point_to_voxel)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(voxel_size={self.voxel_size}, point_range={self.point_range})"


class WindowPartition(BaseTransform):
    """Voxels in window order: every per-voxel attribute (``x``, ``pos``, ``coords``, ...) is reordered so that
    the voxels of each ``window_size x window_size`` BEV window are consecutive (windows in ``(b, wy, wx)``
    order, stable inside a window), and ``data.window [V]`` gives each voxel's window. A layer's
    :class:`~geoattn.sparse.window.WindowIndex` of the result is the identity permutation, and
    ``point_to_voxel`` is renumbered to match."""

    def __init__(self, window_size: int = 12):
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size: expected a positive int, got {window_size!r}")
        self.window_size = window_size

    def forward(self, data: Data) -> Data:
        coords = _require(data, "coords", "WindowPartition")
        index = WindowIndex.from_coords(coords, self.window_size)
        num_voxels = coords.size(0)
        for key, value in list(data.items()):
            if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == num_voxels and key != "point_to_voxel":
                data[key] = index.sort(value)
        if getattr(data, "point_to_voxel", None) is not None:
            mapped = data.point_to_voxel
            data.point_to_voxel = torch.where(mapped >= 0, index.inverse[mapped.clamp(min=0)], mapped)
        data.window = index.window_of_row
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(window_size={self.window_size})"
