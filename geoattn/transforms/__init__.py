"""PyG transforms (``torch_geometric.transforms.BaseTransform``) for geoattn's per-dataset precomputations.

Graphs: :class:`HopFeatures` and :class:`SampleTokens` (LargeGT), :class:`GenerateNeighbourFeatures` (LAGNN).
Point clouds: :class:`EstimateNormals` and :class:`PointPairFeatures` (RoITr registration),
:class:`Voxelize` and :class:`WindowPartition` (ScatterFormer).
"""
from geoattn.transforms.graph import GenerateNeighbourFeatures, HopFeatures, SampleTokens
from geoattn.transforms.point import EstimateNormals, PointPairFeatures, Voxelize, WindowPartition

__all__ = ["HopFeatures", "SampleTokens", "GenerateNeighbourFeatures", "EstimateNormals", "PointPairFeatures",
           "Voxelize", "WindowPartition"]
