r"""The one-stage CenterPoint detector of ScatterFormer (OpenPCDet ``CenterPoint``) and its config builder.

``points [N, 3 + F]`` -> :class:`DynamicVoxelVFE` (dynamic voxelisation inside the model, out-of-range points
dropped; ``[V, 64]``) -> :class:`~geoattn.models.scatterformer.ScatterFormerBackbone` (sparse stem, two
attention stages, attention pillar pooling to a dense BEV map ``[B, C, ceil(Y/2), ceil(X/2)]``; this is the
``MAP_TO_BEV: PillarPooling`` step, the official ``HeightCompression`` of an already 2-D map) ->
:class:`CascadeDEDBackbone` -> :class:`CenterHead` -> the dict of maps (``heatmap``, ``center``, ``center_z``,
``dim``, ``rot``, ``iou``), all ``[B, *, H, W]`` with ``H = ceil(grid_y / 2)``, ``W = ceil(grid_x / 2)``
(``grid_y // 2`` for the even grids of both official configs).

Devices and dtypes: CPU and CUDA, float32 (float64 runs too, for gradient checks; float16 where spconv has the
kernels). bfloat16 is refused with a TypeError: spconv has no bfloat16 kernels, so neither bfloat16 points nor
a bfloat16 autocast work. Host synchronisation on CUDA: the forward calls no ``.item()`` / ``.tolist()`` /
``int(tensor)`` of its own; the syncs that remain are inherent to dynamic shapes: the voxel count
(``torch.unique`` in :func:`~geoattn.sparse.voxel.voxelize`, which also reads ``batch.min() / max()`` for its
range check), the boolean mask dropping out-of-range points, spconv's index-pair generation, and the window /
pillar grouping of the backbone (sizes of ``torch.unique`` results).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from geoattn.models.detection.bev_backbones import CascadeDEDBackbone
from geoattn.models.detection.dense_heads import CenterHead
from geoattn.models.detection.vfe import DynamicVoxelVFE
from geoattn.models.scatterformer import ScatterFormerBackbone
from geoattn.sparse.voxel import grid_shape

__all__ = ["CenterPointDetector", "build_detector"]


class CenterPointDetector(nn.Module):
    r"""VFE -> ScatterFormer 3-D backbone -> BEV map -> CascadeDED -> CenterHead.

    Args:
        vfe: the voxel feature encoder; backbone: the ScatterFormer backbone (same voxel size and range);
        bev_backbone: the 2-D backbone; dense_head: the CenterHead; class_names: ``K`` names, heatmap order.

    ``forward(points [N, 3 + F] float, batch [N] long (or None: one element), batch_size: int)`` returns the
    dict of maps of :class:`CenterHead`. Attributes: ``voxel_size`` (3 floats), ``point_range`` (6 floats),
    ``feature_map_stride`` (int, 2), ``class_names`` (list of str), ``grid`` ``(Z, Y, X)``,
    ``feature_map_size`` ``(H, W)``.
    """

    def __init__(self, vfe: DynamicVoxelVFE, backbone: ScatterFormerBackbone, bev_backbone: CascadeDEDBackbone,
                 dense_head: CenterHead, class_names: Sequence[str]):
        super().__init__()
        if tuple(vfe.voxel_size) != tuple(backbone.voxel_size) or tuple(vfe.point_range) != backbone.point_range:
            raise ValueError(f"backbone: expected the VFE's voxel_size {vfe.voxel_size} and point_range "
                             f"{vfe.point_range}, got {backbone.voxel_size} and {backbone.point_range}")
        if vfe.num_output_features != backbone.in_channels:
            raise ValueError(f"backbone: expected in_channels = the VFE's {vfe.num_output_features} features, "
                             f"got {backbone.in_channels}")
        if bev_backbone.in_channels != backbone.channels:
            raise ValueError(f"bev_backbone: expected in_channels = the backbone's {backbone.channels} channels, "
                             f"got {bev_backbone.in_channels}")
        if dense_head.in_channels != bev_backbone.num_bev_features:
            raise ValueError(f"dense_head: expected in_channels = {bev_backbone.num_bev_features} "
                             f"(bev_backbone), got {dense_head.in_channels}")
        names = list(class_names)
        if len(names) != dense_head.num_classes or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names: expected {dense_head.num_classes} names (dense_head.num_classes), "
                             f"got {class_names!r}")
        self.vfe = vfe
        self.backbone = backbone
        self.bev_backbone = bev_backbone
        self.dense_head = dense_head
        self.class_names = names
        self.voxel_size = tuple(float(v) for v in vfe.voxel_size)
        self.point_range = tuple(float(v) for v in vfe.point_range)
        self.grid = tuple(vfe.grid)
        self.feature_map_stride = int(backbone.bev_stride * bev_backbone.stride)
        # spconv's stride-2 convolution with padding 1 gives ceil(n / 2) cells; the 2-D backbone keeps the size
        y_size = -(-self.grid[1] // backbone.bev_stride)
        x_size = -(-self.grid[2] // backbone.bev_stride)
        self.feature_map_size = (-(-y_size // bev_backbone.stride), -(-x_size // bev_backbone.stride))

    @property
    def num_point_features(self) -> int:
        return self.vfe.num_point_features

    def forward(self, points: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> dict[str, Tensor]:
        if not isinstance(points, Tensor):
            raise TypeError(f"points: expected a torch.Tensor, got {type(points).__name__}")
        if points.dtype == torch.bfloat16 or (torch.is_autocast_enabled(points.device.type)
                                               and torch.get_autocast_dtype(points.device.type) == torch.bfloat16):
            raise TypeError("points: bfloat16 is not supported (spconv has no bfloat16 kernels); use float32, "
                            "or float16 autocast on CUDA")
        if batch is None:
            if batch_size not in (None, 1):
                raise ValueError(f"batch_size: expected 1 (or None) without a batch tensor, got {batch_size!r}")
            batch_size = 1
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        voxels = self.vfe(points, batch, batch_size)
        if voxels.num_voxels == 0:  # no point in range anywhere in the batch: the BEV map is empty
            bev = voxels.features.new_zeros(batch_size, self.backbone.channels,
                                            -(-self.grid[1] // self.backbone.bev_stride),
                                            -(-self.grid[2] // self.backbone.bev_stride))
            bev = bev + 0.0 * sum(p.sum() for p in self.backbone.parameters())  # keep the graph connected
        else:
            bev = self.backbone(voxels).bev
        return self.dense_head(self.bev_backbone(bev))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(classes={self.class_names}, grid={self.grid}, "
                f"feature_map={self.feature_map_size}, stride={self.feature_map_stride},\n  vfe={self.vfe!r},\n"
                f"  backbone={self.backbone!r},\n  bev_backbone={self.bev_backbone!r},\n  dense_head={self.dense_head!r})")


# ---------------------------------------------------------------------------------------------
# config builder
# ---------------------------------------------------------------------------------------------
_MISSING = object()


def _section(cfg: Any, path: str) -> Mapping:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {type(cfg).__name__} {cfg!r}")
    return cfg


def _check_keys(cfg: Mapping, path: str, allowed: Sequence[str]) -> None:
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ValueError(f"{path}: expected only the keys {list(allowed)}, got unknown {unknown}")


def _value(cfg: Mapping, path: str, key: str, kind: str, default: Any = _MISSING) -> Any:
    full = f"{path}.{key}"
    if key not in cfg:
        if default is _MISSING:
            raise ValueError(f"{full}: expected {_KINDS[kind][0]}, got nothing (missing key)")
        return default
    value = cfg[key]
    description, check = _KINDS[kind]
    if not check(value):
        raise ValueError(f"{full}: expected {description}, got {value!r}")
    return list(value) if isinstance(value, (list, tuple)) else value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_KINDS = {
    "bool": ("a bool", lambda v: isinstance(v, bool)),
    "positive int": ("a positive int", lambda v: _is_int(v) and v > 0),
    "non-negative int": ("a non-negative int", lambda v: _is_int(v) and v >= 0),
    "positive number": ("a positive number", lambda v: _is_number(v) and v > 0),
    "str": ("a string", lambda v: isinstance(v, str)),
    "positive int list": ("a non-empty list of positive ints",
                          lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v)),
    "non-negative int list": ("a non-empty list of non-negative ints",
                              lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                              and all(_is_int(x) and x >= 0 for x in v)),
    "str list": ("a list of strings", lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
    "mapping": ("a mapping", lambda v: isinstance(v, Mapping)),
}


def _name(cfg: Mapping, path: str, expected: str) -> None:
    name = _value(cfg, path, "NAME", "str")
    if name != expected:
        raise ValueError(f"{path}.NAME: expected {expected!r}, got {name!r}")


def build_detector(model_cfg: Mapping, class_names: Sequence[str], point_cloud_range: Sequence[float],
                   voxel_size: Sequence[float], num_point_features: int) -> CenterPointDetector:
    r"""Build a :class:`CenterPointDetector` from the ``MODEL`` section of an OpenPCDet-style config.

    Args:
        model_cfg: the ``MODEL`` mapping (``NAME: CenterPoint``; ``VFE``, ``BACKBONE_3D``, ``MAP_TO_BEV``,
            ``BACKBONE_2D``, ``DENSE_HEAD`` sections with the keys of the official ScatterFormer config).
        class_names: ``CLASS_NAMES`` (heatmap channel order); point_cloud_range: ``DATA_CONFIG.POINT_CLOUD_RANGE``;
        voxel_size: the ``VOXEL_SIZE`` of the data processor; num_point_features: columns of a point row
            (4 for KITTI x, y, z, intensity; 5 for Waymo).

    Keys read (besides each section's ``NAME``): ``VFE.{WITH_DISTANCE, USE_ABSLOTE_XYZ, USE_NORM, NUM_FILTERS}``;
    ``BACKBONE_3D.{CHANNELS, HEADS, WINDOW_SIZE, BLOCKS, STEM_BLOCKS, FFN_RATIO, PILLAR_HEADS}``;
    ``MAP_TO_BEV.NUM_BEV_FEATURES`` (must equal ``CHANNELS``); ``BACKBONE_2D.{NUM_LAYERS, NUM_SBB, DOWN_STRIDES,
    FEATURE_DIM}``; ``DENSE_HEAD.{CLASS_AGNOSTIC (False), CLASS_NAMES_EACH_HEAD (one task = class_names),
    SHARED_CONV_CHANNEL, USE_BIAS_BEFORE_NORM (False), NUM_HM_CONV, BN_EPS (1e-5), BN_MOM (0.1),
    SEPARATE_HEAD_CFG.{HEAD_ORDER, HEAD_DICT}, TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE}`` (defaults in brackets
    are the official ``.get`` defaults; the other keys are required). Unknown keys in ``VFE``, ``BACKBONE_3D``,
    ``MAP_TO_BEV`` and ``BACKBONE_2D`` are errors; the remaining ``DENSE_HEAD`` keys (losses, post-processing)
    belong to :mod:`geoattn.detection` and are not read here.

    Raises:
        ValueError naming the key path, the expected and the actual value, e.g.
        ``MODEL.DENSE_HEAD.NUM_HM_CONV: expected a positive int, got 'x'``.
    """
    path = "MODEL"
    cfg = _section(model_cfg, path)
    _name(cfg, path, "CenterPoint")
    names = list(class_names) if isinstance(class_names, (list, tuple)) else class_names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class_names: expected a non-empty list of strings, got {class_names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: expected distinct names, got {names!r}")
    if not _is_int(num_point_features) or num_point_features < 3:
        raise ValueError(f"num_point_features: expected an int >= 3 (x, y, z first), got {num_point_features!r}")
    grid = grid_shape(voxel_size, point_range=point_cloud_range)

    # VFE
    p = f"{path}.VFE"
    vcfg = _section(_value(cfg, path, "VFE", "mapping"), p)
    _check_keys(vcfg, p, ("NAME", "WITH_DISTANCE", "USE_ABSLOTE_XYZ", "USE_NORM", "NUM_FILTERS"))
    _name(vcfg, p, "DynamicVoxelVFE")
    num_filters = _value(vcfg, p, "NUM_FILTERS", "positive int list")
    if any(f % 2 for f in num_filters[:-1]):
        raise ValueError(f"{p}.NUM_FILTERS: expected even widths for all but the last layer (a hidden PFN layer "
                         f"concatenates two halves), got {num_filters!r}")
    vfe = DynamicVoxelVFE(num_point_features, voxel_size, point_cloud_range, num_filters=num_filters,
                          use_norm=_value(vcfg, p, "USE_NORM", "bool"),
                          use_absolute_xyz=_value(vcfg, p, "USE_ABSLOTE_XYZ", "bool"),
                          with_distance=_value(vcfg, p, "WITH_DISTANCE", "bool"))

    # 3-D backbone
    p = f"{path}.BACKBONE_3D"
    bcfg = _section(_value(cfg, path, "BACKBONE_3D", "mapping"), p)
    _check_keys(bcfg, p, ("NAME", "CHANNELS", "HEADS", "WINDOW_SIZE", "BLOCKS", "STEM_BLOCKS", "FFN_RATIO",
                          "PILLAR_HEADS"))
    _name(bcfg, p, "ScatterFormer")
    channels = _value(bcfg, p, "CHANNELS", "positive int")
    heads = _value(bcfg, p, "HEADS", "positive int")
    pillar_heads = _value(bcfg, p, "PILLAR_HEADS", "positive int")
    for key, h in (("HEADS", heads), ("PILLAR_HEADS", pillar_heads)):
        if channels % h:
            raise ValueError(f"{p}.{key}: expected a divisor of CHANNELS={channels}, got {h}")
    blocks = _value(bcfg, p, "BLOCKS", "non-negative int list")
    if len(blocks) != 2:
        raise ValueError(f"{p}.BLOCKS: expected two stage depths, got {blocks!r}")
    if grid[0] < 2:
        raise ValueError(f"DATA_CONFIG.POINT_CLOUD_RANGE / VOXEL_SIZE: expected at least 2 z cells for the "
                         f"ScatterFormer stem, got a grid (Z, Y, X) = {grid}")
    backbone = ScatterFormerBackbone(in_channels=vfe.num_output_features, channels=channels, heads=heads,
                                     window_size=_value(bcfg, p, "WINDOW_SIZE", "positive int"), blocks=blocks,
                                     stem_blocks=_value(bcfg, p, "STEM_BLOCKS", "non-negative int"),
                                     ffn_ratio=_value(bcfg, p, "FFN_RATIO", "positive int"),
                                     pillar_heads=pillar_heads, voxel_size=voxel_size,
                                     point_range=point_cloud_range)

    # map to BEV
    p = f"{path}.MAP_TO_BEV"
    mcfg = _section(_value(cfg, path, "MAP_TO_BEV", "mapping"), p)
    _check_keys(mcfg, p, ("NAME", "NUM_BEV_FEATURES"))
    _name(mcfg, p, "PillarPooling")
    num_bev = _value(mcfg, p, "NUM_BEV_FEATURES", "positive int")
    if num_bev != channels:
        raise ValueError(f"{p}.NUM_BEV_FEATURES: expected {channels} (MODEL.BACKBONE_3D.CHANNELS: the pillar "
                         f"pooling keeps the backbone width), got {num_bev}")

    # 2-D backbone
    p = f"{path}.BACKBONE_2D"
    c2 = _section(_value(cfg, path, "BACKBONE_2D", "mapping"), p)
    _check_keys(c2, p, ("NAME", "NUM_LAYERS", "NUM_SBB", "DOWN_STRIDES", "FEATURE_DIM"))
    _name(c2, p, "CascadeDEDBackbone")
    num_sbb = _value(c2, p, "NUM_SBB", "non-negative int list")
    down_strides = _value(c2, p, "DOWN_STRIDES", "positive int list")
    if len(num_sbb) != len(down_strides):
        raise ValueError(f"{p}.NUM_SBB: expected {len(down_strides)} entries (one per DOWN_STRIDES level), "
                         f"got {num_sbb!r}")
    bev_backbone = CascadeDEDBackbone(num_bev, num_layers=_value(c2, p, "NUM_LAYERS", "positive int"),
                                      num_sbb=num_sbb, down_strides=down_strides,
                                      feature_dim=_value(c2, p, "FEATURE_DIM", "positive int"))

    # dense head
    p = f"{path}.DENSE_HEAD"
    hcfg = _section(_value(cfg, path, "DENSE_HEAD", "mapping"), p)
    _name(hcfg, p, "CenterHead")
    if _value(hcfg, p, "CLASS_AGNOSTIC", "bool", False):
        raise ValueError(f"{p}.CLASS_AGNOSTIC: expected False (one heatmap channel per class), got True")
    each = hcfg.get("CLASS_NAMES_EACH_HEAD", _MISSING)
    if each is _MISSING:
        raise ValueError(f"{p}.CLASS_NAMES_EACH_HEAD: expected [{names!r}] (one task), got nothing (missing key)")
    if (not isinstance(each, (list, tuple)) or len(each) != 1 or not isinstance(each[0], (list, tuple))
            or list(each[0]) != names):
        raise ValueError(f"{p}.CLASS_NAMES_EACH_HEAD: expected one task with the class names in CLASS_NAMES "
                         f"order [{names!r}], got {each!r}")
    scfg = _section(_value(hcfg, p, "SEPARATE_HEAD_CFG", "mapping"), f"{p}.SEPARATE_HEAD_CFG")
    sp = f"{p}.SEPARATE_HEAD_CFG"
    head_order = _value(scfg, sp, "HEAD_ORDER", "str list")
    head_dict_cfg = _section(_value(scfg, sp, "HEAD_DICT", "mapping"), f"{sp}.HEAD_DICT")
    head_dict = {}
    for name, spec in head_dict_cfg.items():
        hp = f"{sp}.HEAD_DICT.{name}"
        spec = _section(spec, hp)
        _check_keys(spec, hp, ("out_channels", "num_conv"))
        head_dict[name] = {"out_channels": _value(spec, hp, "out_channels", "positive int"),
                           "num_conv": _value(spec, hp, "num_conv", "positive int")}
    if sorted(head_order) != sorted(head_dict) or len(set(head_order)) != len(head_order):
        raise ValueError(f"{sp}.HEAD_ORDER: expected each of the HEAD_DICT names {sorted(head_dict)} once, "
                         f"got {head_order!r}")
    if "hm" in head_dict or "heatmap" in head_dict:
        raise ValueError(f"{sp}.HEAD_DICT: expected regression heads only (the heatmap comes from NUM_HM_CONV), "
                         f"got {sorted(head_dict)}")
    tcfg = _section(_value(hcfg, p, "TARGET_ASSIGNER_CONFIG", "mapping"), f"{p}.TARGET_ASSIGNER_CONFIG")
    stride = _value(tcfg, f"{p}.TARGET_ASSIGNER_CONFIG", "FEATURE_MAP_STRIDE", "positive int")
    model_stride = backbone.bev_stride * bev_backbone.stride
    if stride != model_stride:
        raise ValueError(f"{p}.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE: expected {model_stride} (the stride of "
                         f"the model's BEV maps), got {stride}")
    bn_eps = _value(hcfg, p, "BN_EPS", "positive number", 1e-5)
    bn_mom = _value(hcfg, p, "BN_MOM", "positive number", 0.1)
    if bn_mom > 1:
        raise ValueError(f"{p}.BN_MOM: expected a momentum in (0, 1], got {bn_mom!r}")
    head = CenterHead(bev_backbone.num_bev_features, len(names),
                      shared_conv_channel=_value(hcfg, p, "SHARED_CONV_CHANNEL", "positive int"),
                      num_hm_conv=_value(hcfg, p, "NUM_HM_CONV", "positive int"), head_dict=head_dict,
                      head_order=head_order,
                      use_bias_before_norm=_value(hcfg, p, "USE_BIAS_BEFORE_NORM", "bool", False),
                      bn_eps=float(bn_eps), bn_momentum=float(bn_mom))
    return CenterPointDetector(vfe, backbone, bev_backbone, head, names)

