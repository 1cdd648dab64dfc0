"""3-D detection networks (OpenPCDet taxonomy): voxel feature encoders, BEV backbones, dense heads, detectors.

Losses, targets and decoding live in :mod:`geoattn.detection` (which this package never imports).
"""
from geoattn.models.detection.bev_backbones import BasicBlock, CascadeDEDBackbone, DEDBackbone
from geoattn.models.detection.dense_heads import CenterHead, SeparateHead
from geoattn.models.detection.detectors import CenterPointDetector, build_detector
from geoattn.models.detection.vfe import DynamicVoxelVFE, PFNLayerV2

__all__ = ["BasicBlock", "CascadeDEDBackbone", "DEDBackbone", "CenterHead", "SeparateHead", "CenterPointDetector",
           "build_detector", "DynamicVoxelVFE", "PFNLayerV2"]
