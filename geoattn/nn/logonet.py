r"""LoGoNet fusion layers: LiDAR points attend to camera feature maps (Li et al., CVPR 2023).

Shared operator (:class:`PointImageFusion`): a point with feature :math:`f` that projects to the pixel
:math:`u` of image :math:`v` queries that image with multi-scale deformable attention (Deformable DETR),

.. math::
    q = \phi_q(f), \qquad
    a = W_o \sum_{h} \sum_{l=1}^{L} \sum_{k=1}^{K} A_{hlk}(q)\,
        W_v^{h} I_v^{l}\big(\hat u + \Delta_{hlk}(q) / (W_l, H_l)\big), \qquad
    g = \mathrm{LN}(q + \mathrm{dropout}(a)),

with :math:`\hat u \in [0, 1]^2` the normalised reference point, :math:`\Delta` learned pixel offsets at
level :math:`l`, :math:`A` softmax weights over the :math:`L K` samples of each head and bilinear sampling
by :func:`torch.nn.functional.grid_sample` (pure torch, runs on CPU and CUDA). A point seen by several
cameras averages its per-camera :math:`g`; a point seen by none gets :math:`g = 0`. The output is
:math:`\phi_o([\phi_p(f), g])` (concat-and-fuse, as mmdet3d's ``PointFusion``).

:class:`GlobalFusion` (GoF) applies it to sparse voxel features positioned at the centroid of their points;
:class:`LocalFusion` (LoF) to RoI grid points decorated with a 7-d position descriptor;
:class:`RoIGridPool` pools voxel features onto the RoI grid by ball query;
:class:`FeatureDynamicAggregation` (FDA) runs masked self-attention over the grid tokens of each RoI.

Projection (:func:`project_to_cameras`) maps augmented LiDAR points back through the recorded
augmentation and into every camera, returning one (point, camera, pixel) pair per visible view.

Deliberate differences from the official LoGoNet code (PJLab-ADG/LoGoNet):

* reference points keep sub-pixel precision (the official code casts projected pixels to integers);
* a point seen by several cameras averages its per-camera features (official: the last camera wins);
* deformable sampling is ``grid_sample`` instead of the MSDeformAttn CUDA extension (same maths,
  bilinear, zero padding), so everything runs on the CPU and needs no compiled code;
* RoI grid pooling encodes density as the log of the ball's neighbour count per volume (PDV uses a
  kernel density estimate per neighbour).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoattn import backends
from geoattn.sparse.boxes import check_boxes, points_in_boxes_pairs, rotate_points_z
from geoattn.sparse.geometry import project_to_image
from geoattn.sparse.neighbors import radius
from geoattn.sparse.segment import offsets_from_counts, scatter_mean
from geoattn.sparse.voxel import voxel_keys, voxelize

__all__ = [
    "CameraSetup",
    "CameraProjection",
    "project_to_cameras",
    "PointImageFusion",
    "GlobalFusion",
    "LocalFusion",
    "RoIGridPool",
    "FeatureDynamicAggregation",
    "roi_grid_points",
    "voxel_centroids",
]


# ---------------------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------------------

@dataclass
class CameraSetup:
    """Cameras of a batch.

    Attributes:
        lidar2img: ``[V, 4, 4]`` raw-LiDAR -> pixel maps of all ``V`` images of the batch (for the images as
            they were recorded; ``image_scale`` below accounts for resizing).
        camera_batch: ``[V]`` long, batch element of each image.
        image_hw: ``[V, 2]`` (or one ``(H, W)`` for all) size in pixels of the *valid* part of each network
            input image, after scaling and before padding.
        input_hw: ``(H, W)`` of the (padded) image tensor fed to the image backbone; feature maps are assumed
            to cover exactly this extent.
        augmentations: per batch element, an object with ``invert_points(points [N, 3]) -> [N, 3]`` (e.g.
            :class:`geoattn.sparse.geometry.LidarAugmentation`) or ``None`` for un-augmented samples.
        image_scale: factor the images were resized by before entering the network.
        depth_threshold: points with camera depth ``<=`` this are not projected.
    """

    lidar2img: Tensor
    camera_batch: Tensor
    image_hw: Tensor | tuple[int, int]
    input_hw: tuple[int, int]
    augmentations: Sequence | None = None
    image_scale: float = 1.0
    depth_threshold: float = 0.0

    def __post_init__(self):
        if not isinstance(self.lidar2img, Tensor) or self.lidar2img.dim() != 3 or self.lidar2img.shape[1:] != (4, 4):
            shape = tuple(self.lidar2img.shape) if isinstance(self.lidar2img, Tensor) else type(self.lidar2img).__name__
            raise ValueError(f"lidar2img: expected a tensor [V, 4, 4], got {shape}")
        num_images = self.lidar2img.shape[0]
        if not isinstance(self.camera_batch, Tensor) or self.camera_batch.shape != (num_images,):
            shape = tuple(self.camera_batch.shape) if isinstance(self.camera_batch, Tensor) else self.camera_batch
            raise ValueError(f"camera_batch: expected a long tensor [{num_images}], got {shape}")
        hw = torch.as_tensor(self.image_hw, dtype=torch.float64)
        if hw.shape == (2,):
            hw = hw.expand(num_images, 2)
        if hw.shape != (num_images, 2):
            raise ValueError(f"image_hw: expected (H, W) or [{num_images}, 2], got shape {tuple(hw.shape)}")
        self.image_hw = hw
        if len(self.input_hw) != 2:
            raise ValueError(f"input_hw: expected (H, W), got {self.input_hw!r}")

    @classmethod
    def from_intrinsics(cls, intrinsics: Tensor, lidar2cam: Tensor, camera_batch: Tensor, image_hw,
                        input_hw: tuple[int, int], **kwargs) -> "CameraSetup":
        """Cameras given per-camera intrinsics ``K [V, 3, 3]`` (or ``[V, 3, 4]`` / ``[V, 4, 4]`` projection
        matrices such as KITTI's ``P2`` or mmdet3d's ``cam2img``) and extrinsics ``lidar2cam [V, 4, 4]``
        (Waymo/nuScenes style); ``lidar2img = K_4x4 @ lidar2cam``.

        ``lidar2cam`` must map into an OpenCV camera frame (x right, y down, z forward). Waymo's raw
        extrinsics are camera -> vehicle with the camera x axis forward: invert them and permute the axes
        (``x_cv = -y, y_cv = -z, z_cv = x``) first, as mmdetection3d's Waymo converter does.
        """
        if intrinsics.dim() != 3 or intrinsics.shape[1:] not in ((3, 3), (3, 4), (4, 4)):
            raise ValueError(f"intrinsics: expected a tensor [V, 3, 3], [V, 3, 4] or [V, 4, 4], "
                             f"got shape {tuple(intrinsics.shape)}")
        if lidar2cam.shape != (intrinsics.shape[0], 4, 4):
            raise ValueError(f"lidar2cam: expected a tensor [{intrinsics.shape[0]}, 4, 4], "
                             f"got shape {tuple(lidar2cam.shape)}")
        camera = torch.eye(4, dtype=torch.float64).repeat(intrinsics.shape[0], 1, 1)
        rows, cols = intrinsics.shape[1:]
        camera[:, :rows, :cols] = intrinsics.to(torch.float64)
        return cls(camera @ lidar2cam.to(torch.float64), camera_batch, image_hw, input_hw, **kwargs)


@dataclass
class CameraProjection:
    """Visible (point, camera) pairs, sorted by point then camera.

    Attributes:
        point_index: ``[P]`` long index into the projected points.
        camera_index: ``[P]`` long index into ``CameraSetup.lidar2img``.
        uv: ``[P, 2]`` pixel coordinates in the network input image (pixel centres at integers).
        depth: ``[P]`` camera depth in metres.
    """

    point_index: Tensor
    camera_index: Tensor
    uv: Tensor
    depth: Tensor

    def reference_points(self, input_hw: tuple[int, int]) -> Tensor:
        """``[P, 2]`` pixel positions normalised to ``[0, 1]`` over an ``input_hw`` image (grid_sample's
        ``align_corners=False`` convention: the centre of pixel ``i`` is ``(i + 0.5) / W``)."""
        height, width = input_hw
        scale = self.uv.new_tensor([width, height])
        return (self.uv + 0.5) / scale


def project_to_cameras(points: Tensor, cameras: CameraSetup, point_batch: Tensor | None = None) -> CameraProjection:
    """Project augmented LiDAR ``points [N, 3]`` into every camera of their batch element.

    For each batch element ``b`` the recorded augmentation is undone first
    (``cameras.augmentations[b].invert_points``: translate, scale, rotate and flip back, in the reverse of
    the order they were applied), then each camera's ``lidar2img`` (pre-multiplied by the image scale)
    maps the raw points to pixels. A pair is kept when ``depth > depth_threshold`` and the pixel lies in
    ``[0, W) x [0, H)`` of that camera's valid image. Points visible in several cameras yield one pair per
    camera (the fusion averages them) instead of LoGoNet's "last camera wins".
    """
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points: expected a tensor [N, 3], got {shape}")
    num_points = points.shape[0]
    if point_batch is None:
        point_batch = torch.zeros(num_points, dtype=torch.long, device=points.device)
    elif point_batch.shape != (num_points,):
        raise ValueError(f"point_batch: expected a long tensor [{num_points}], got shape {tuple(point_batch.shape)}")
    device = points.device
    compute_dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    scale = torch.diag(torch.tensor([cameras.image_scale, cameras.image_scale, 1.0, 1.0], dtype=torch.float64))
    lidar2img = (scale @ cameras.lidar2img.to(torch.float64).cpu()).to(device=device, dtype=compute_dtype)
    camera_batch = cameras.camera_batch.to(device)
    image_hw = cameras.image_hw.to(device=device, dtype=compute_dtype)
    parts = ([], [], [], [])
    with torch.no_grad():
        batch_ids = torch.unique(camera_batch).tolist()
    for batch_id in batch_ids:
        members = (point_batch == batch_id).nonzero().flatten()
        views = (camera_batch == batch_id).nonzero().flatten()
        if members.numel() == 0:
            continue
        raw = points[members].to(compute_dtype)
        augmentation = None
        if cameras.augmentations is not None and batch_id < len(cameras.augmentations):
            augmentation = cameras.augmentations[batch_id]
        if augmentation is not None:
            raw = augmentation.invert_points(raw)
        uv, depth, valid = project_to_image(raw, lidar2img[views], image_hw[views])  # [v, n, ...]
        valid = valid & (depth > cameras.depth_threshold)
        view_slot, chosen = valid.nonzero(as_tuple=True)
        parts[0].append(members[chosen])
        parts[1].append(views[view_slot])
        parts[2].append(uv[view_slot, chosen])
        parts[3].append(depth[view_slot, chosen])
    if not parts[0]:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return CameraProjection(empty, empty.clone(), points.new_zeros(0, 2), points.new_zeros(0))
    point_index, camera_index = torch.cat(parts[0]), torch.cat(parts[1])
    order = torch.argsort(point_index * max(1, cameras.lidar2img.shape[0]) + camera_index)
    return CameraProjection(point_index[order], camera_index[order], torch.cat(parts[2])[order].to(points.dtype),
                            torch.cat(parts[3])[order].to(points.dtype))


# ---------------------------------------------------------------------------------------------------------
# Point-image fusion
# ---------------------------------------------------------------------------------------------------------

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm: expected 'batch', 'layer' or 'none', got {kind!r}")


def _linear_block(in_channels: int, out_channels: int, norm: str, activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_channels, out_channels, bias=norm == "none"), _norm(norm, out_channels)]
    if activation:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def reset_children(module: nn.Module) -> None:
    """Reset every sub-module once: children with ``reset_parameters`` reset their own subtree (keeping any
    special initialisation they apply), containers without it are descended into."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)


def _check_features(name: str, value, channels: int, rows: int | None = None, dtype: torch.dtype | None = None) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2 or value.shape[1] != channels or (rows is not None and value.shape[0] != rows):
        expected = f"[{rows if rows is not None else 'N'}, {channels}]"
        raise ValueError(f"{name}: expected a 2-D tensor {expected}, got shape {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the layer's parameters), got {value.dtype}")


def _check_float(name: str, value: Tensor) -> None:
    """Geometry (positions, reference points, boxes) may be in any floating dtype, never integer."""
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")


def _check_points(name: str, value) -> None:
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != 3:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected a tensor [N, 3], got {shape}")
    _check_float(name, value)


def _check_index(name: str, value, length: int | None = None) -> None:
    if not isinstance(value, Tensor) or value.dtype not in (torch.int64, torch.int32):
        kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name}: expected an int64 or int32 tensor, got {kind}")
    if value.dim() != 1 or (length is not None and value.shape[0] != length):
        expected = f"[{length}]" if length is not None else "[N]"
        raise ValueError(f"{name}: expected a 1-D tensor {expected}, got shape {tuple(value.shape)}")


def _check_range(name: str, value: Tensor, size: int) -> None:
    """Values in ``[0, size)``; a pass over the data (a host synchronisation), so with GEOATTN_DEBUG=1 only."""
    if value.numel() and backends.debug_checks():
        low, high = torch.stack(value.aminmax()).tolist()
        if low < 0 or high >= size:
            raise ValueError(f"{name}: expected values in [0, {size}), got range [{low}, {high}]")


class PointImageFusion(nn.Module):
    r"""Multi-scale deformable point-to-image attention with concat-and-fuse output.

    See the module docstring for the maths. Deformable sampling is ``grid_sample`` (bilinear, zero padding,
    ``align_corners=False``) on value maps ``W_v I^l`` for all pairs of an image in one call.

    Args:
        point_channels: ``C_p`` of the point features.
        image_channels: ``C_i`` of every image feature level.
        out_channels: ``C_o`` of the fused output.
        embed_dim: attention width ``E`` (divisible by ``num_heads``).
        num_heads, num_points, num_levels: deformable attention heads ``H``, samples per head and level
            ``K`` and feature levels ``L`` (LoGoNet: 4, 4, 1).
        dropout: on the attention output before the residual LayerNorm.
        norm: ``'batch'`` (LoGoNet), ``'layer'`` or ``'none'`` for the linear blocks.

    Shapes:
        point_features ``[N, C_p]``; image_features ``[V, C_i, H_l, W_l]`` or a list of ``L`` of them;
        point_index, image_index ``[P]`` long and reference_points ``[P, 2]`` in ``[0, 1]`` (``(u, v)``);
        output ``[N, C_o]``. With ``return_image_features=True`` also the per-point image feature
        ``[N, E]`` (zeros for points without a pair).

    Runs in the dtype of its parameters (float32, float64 or bfloat16): ``point_features`` must match it,
    image features and reference points (any floating dtype) are cast to it; bfloat16 computes in
    bfloat16 except the bilinear sampling, done in float32 (it is exact there and PyTorch's CPU kernel
    is unreliable in bfloat16). Index ranges are checked with ``GEOATTN_DEBUG=1``.
    """

    def __init__(self, point_channels: int, image_channels: int, out_channels: int, embed_dim: int = 64,
                 num_heads: int = 4, num_points: int = 4, num_levels: int = 1, dropout: float = 0.1,
                 norm: str = "batch"):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim: expected a multiple of num_heads={num_heads}, got {embed_dim}")
        for name, value in (("point_channels", point_channels), ("image_channels", image_channels),
                            ("out_channels", out_channels), ("num_points", num_points),
                            ("num_levels", num_levels)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.point_channels, self.image_channels, self.out_channels = point_channels, image_channels, out_channels
        self.embed_dim, self.num_heads, self.num_points, self.num_levels = embed_dim, num_heads, num_points, num_levels
        self.query_proj = _linear_block(point_channels, embed_dim, norm, activation=False)
        self.value_proj = nn.Linear(image_channels, embed_dim)
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(embed_dim)
        self.point_proj = _linear_block(point_channels, embed_dim, norm, activation=False)
        self.fuse = _linear_block(2 * embed_dim, out_channels, norm, activation=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_children(self)
        # Deformable-DETR start: zero offset weights, each head's samples spread along its own direction at
        # distances 1..K pixels, uniform attention.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        bias = directions[:, None, None, :] * steps[None, None, :, None]
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(point={self.point_channels}, image={self.image_channels}, "
                f"out={self.out_channels}, embed={self.embed_dim}, heads={self.num_heads}, "
                f"points={self.num_points}, levels={self.num_levels})")

    def _levels(self, image_features) -> list[Tensor]:
        levels = [image_features] if isinstance(image_features, Tensor) else list(image_features)
        if len(levels) != self.num_levels:
            raise ValueError(f"image_features: expected {self.num_levels} level(s), got {len(levels)}")
        for level, feature in enumerate(levels):
            if not isinstance(feature, Tensor) or feature.dim() != 4 or feature.shape[1] != self.image_channels:
                shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
                raise ValueError(f"image_features[{level}]: expected a tensor [V, {self.image_channels}, H, W], "
                                 f"got {shape}")
            _check_float(f"image_features[{level}]", feature)
            if feature.shape[0] != levels[0].shape[0]:
                raise ValueError(f"image_features[{level}]: expected V={levels[0].shape[0]} images, "
                                 f"got {feature.shape[0]}")
        return levels

    def deformable_attention(self, query: Tensor, levels: list[Tensor], image_index: Tensor,
                             reference_points: Tensor) -> Tensor:
        """Deformable attention output ``[P, E]`` for pair queries ``[P, E]`` (before the residual)."""
        num_pairs = query.shape[0]
        heads, head_dim, samples = self.num_heads, self.embed_dim // self.num_heads, self.num_points
        num_images = levels[0].shape[0]
        offsets = self.sampling_offsets(query).view(num_pairs, heads, self.num_levels, samples, 2)
        weights = self.attention_weights(query).view(num_pairs, heads, self.num_levels * samples)
        weights = weights.softmax(-1).view(num_pairs, heads, self.num_levels, samples)
        # Pairs are laid out per image in a padded [V, slots] table so each level needs one grid_sample.
        counts = torch.bincount(image_index, minlength=num_images)
        order = torch.argsort(image_index, stable=True)
        starts = offsets_from_counts(counts)[:-1]
        slot = torch.empty_like(image_index)
        slot[order] = torch.arange(num_pairs, device=query.device) - starts[image_index[order]]
        slots = int(counts.max()) if num_pairs > 0 else 0
        output = query.new_zeros(num_pairs, heads, head_dim)
        for level, feature in enumerate(levels):
            height, width = feature.shape[-2:]
            value = self.value_proj(feature.to(query.dtype).permute(0, 2, 3, 1))  # [V, H_l, W_l, E]
            value = value.view(num_images, height, width, heads, head_dim).permute(0, 3, 4, 1, 2)
            value = value.reshape(num_images * heads, head_dim, height, width)
            scale = query.new_tensor([width, height])
            location = reference_points[:, None, None, :] + offsets[:, :, level] / scale  # [P, H, K, 2]
            grid = query.new_zeros(num_images, slots, heads, samples, 2)
            grid = grid.index_put((image_index, slot), 2 * location - 1)
            grid = grid.permute(0, 2, 1, 3, 4).reshape(num_images * heads, slots * samples, 1, 2)
            # bilinear weights in at least float32 (on the CPU, bfloat16 sampling of this strided map gives NaN)
            sample_dtype = torch.promote_types(value.dtype, torch.float32)
            sampled = F.grid_sample(value.to(sample_dtype), grid.to(sample_dtype), mode="bilinear",
                                    padding_mode="zeros", align_corners=False).to(query.dtype)
            sampled = sampled.view(num_images, heads, head_dim, slots, samples)
            sampled = sampled[image_index, :, :, slot]  # [P, H, D, K]
            output = output + (sampled * weights[:, :, None, level, :]).sum(-1)
        return self.output_proj(output.reshape(num_pairs, self.embed_dim))

    def forward(self, point_features: Tensor, image_features, point_index: Tensor, image_index: Tensor,
                reference_points: Tensor, return_image_features: bool = False):
        _check_features("point_features", point_features, self.point_channels,
                        dtype=self.point_proj[0].weight.dtype)
        levels = self._levels(image_features)
        num_points = point_features.shape[0]
        _check_index("point_index", point_index)
        num_pairs = point_index.shape[0]
        _check_index("image_index", image_index, num_pairs)
        if not isinstance(reference_points, Tensor) or reference_points.shape != (num_pairs, 2):
            shape = tuple(reference_points.shape) if isinstance(reference_points, Tensor) else reference_points
            raise ValueError(f"reference_points: expected a tensor [{num_pairs}, 2], got {shape}")
        _check_float("reference_points", reference_points)
        _check_range("point_index", point_index, num_points)
        _check_range("image_index", image_index, levels[0].shape[0])
        if num_points == 0:
            empty = point_features.new_zeros(0, self.out_channels)
            return (empty, point_features.new_zeros(0, self.embed_dim)) if return_image_features else empty
        query = self.query_proj(point_features)
        image_feature = query.new_zeros(num_points, self.embed_dim)
        if num_pairs > 0:
            pair_query = query[point_index]
            attended = self.deformable_attention(pair_query, levels, image_index, reference_points.to(query.dtype))
            pair_feature = self.attention_norm(pair_query + self.dropout(attended))
            image_feature = scatter_mean(pair_feature, point_index, num_points)
        fused = self.fuse(torch.relu(torch.cat([self.point_proj(point_features), image_feature], dim=1)))
        return (fused, image_feature) if return_image_features else fused


# ---------------------------------------------------------------------------------------------------------
# Global fusion
# ---------------------------------------------------------------------------------------------------------

def voxel_centroids(points: Tensor, voxel_coords: Tensor, voxel_size, point_range,
                    point_batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean position of the raw points inside each sparse voxel (LoGoNet / PDV voxel localisation).

    Args:
        points: ``[N, 3]`` raw (augmented) LiDAR points.
        voxel_coords: ``[V, 4]`` ``(batch, z, y, x)`` coordinates of the voxels at this feature level.
        voxel_size: voxel size of this level (base voxel size times the level's stride).
        point_range: ``[x0, y0, z0, x1, y1, z1]``.

    Points are grouped by ``floor((p - range_min) / voxel_size)`` as in PDV/LoGoNet, whatever padding the
    sparse convolutions used.

    Returns:
        ``(centroids [V, 3], has_points [V] bool)``; voxels without points get their geometric centre.
    """
    batch_size = int(voxel_coords[:, 0].max()) + 1 if voxel_coords.numel() else 1
    if point_batch is not None and point_batch.numel():
        batch_size = max(batch_size, int(point_batch.max()) + 1)
    grouped = voxelize(points, voxel_size, point_range, batch=point_batch, batch_size=batch_size)
    keys = voxel_keys(grouped.coords, grouped.spatial_shape)
    query = voxel_keys(voxel_coords, grouped.spatial_shape)
    size = torch.as_tensor(voxel_size, dtype=points.dtype, device=points.device).flatten().expand(3)
    lower = torch.as_tensor(point_range, dtype=points.dtype, device=points.device).flatten()[:3]
    centre = (voxel_coords[:, [3, 2, 1]].to(points.dtype) + 0.5) * size + lower
    if keys.numel() == 0:
        return centre, torch.zeros_like(query, dtype=torch.bool)
    # sorted keys: a binary search matches every sparse voxel to its group of raw points; sparse-conv grids
    # may be a voxel larger than the range (e.g. spconv's 41 z-cells), such voxels hold no point here
    shape = torch.tensor(grouped.spatial_shape, device=voxel_coords.device)
    in_grid = ((voxel_coords[:, 1:] >= 0) & (voxel_coords[:, 1:] < shape)).all(dim=1)
    position = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    has_points = (keys[position] == query) & in_grid
    return torch.where(has_points[:, None], grouped.centroids[position], centre), has_points


class GlobalFusion(nn.Module):
    """GoF: image fusion of sparse voxel features located at their point centroids.

    Shapes: voxel_features ``[V, C]``, voxel_positions ``[V, 3]`` (augmented LiDAR frame), voxel_batch
    ``[V]``, image_features as :class:`PointImageFusion`; output ``[V, C]`` (same width, so it replaces the
    level's features).
    """

    def __init__(self, voxel_channels: int, image_channels: int, embed_dim: int = 64, num_heads: int = 4,
                 num_points: int = 4, num_levels: int = 1, dropout: float = 0.1, norm: str = "batch"):
        super().__init__()
        self.fusion = PointImageFusion(voxel_channels, image_channels, voxel_channels, embed_dim, num_heads,
                                       num_points, num_levels, dropout, norm)

    def reset_parameters(self) -> None:
        self.fusion.reset_parameters()

    def __repr__(self) -> str:
        fusion = self.fusion
        return f"{self.__class__.__name__}(voxel={fusion.point_channels}, image={fusion.image_channels}, " \
               f"heads={fusion.num_heads}, points={fusion.num_points})"

    def forward(self, voxel_features: Tensor, voxel_positions: Tensor, voxel_batch: Tensor, image_features,
                cameras: CameraSetup) -> Tensor:
        projection = project_to_cameras(voxel_positions.detach(), cameras, voxel_batch)
        return self.fusion(voxel_features, image_features, projection.point_index, projection.camera_index,
                           projection.reference_points(cameras.input_hw))


# ---------------------------------------------------------------------------------------------------------
# RoI grid
# ---------------------------------------------------------------------------------------------------------

def roi_grid_points(rois: Tensor, grid_size: int = 6) -> tuple[Tensor, Tensor]:
    """Cell centres of a ``G x G x G`` grid in each RoI ``[R, 7]``.

    Returns:
        ``(local [R, G^3, 3], global [R, G^3, 3])``: box-frame positions ``(i + 0.5) / G * size - size / 2``
        (x fastest, then y, then z) and their positions in the LiDAR frame.
    """
    check_boxes(rois, "rois")
    steps = (torch.arange(grid_size, device=rois.device, dtype=rois.dtype) + 0.5) / grid_size
    z, y, x = torch.meshgrid(steps, steps, steps, indexing="ij")
    unit = torch.stack([x, y, z], -1).reshape(-1, 3)  # [G^3, 3] in (0, 1)
    local = (unit[None] - 0.5) * rois[:, None, 3:6]
    rotated = rotate_points_z(local, rois[:, None, 6])
    return local, rotated + rois[:, None, 0:3]


class RoIGridPool(nn.Module):
    r"""Density-aware multi-radius ball-query pooling of point/voxel features onto RoI grid points.

    For each radius :math:`r` the nearest ``num_samples`` supports within :math:`r` of a grid point
    :math:`g` (:func:`geoattn.sparse.neighbors.radius`) give inputs
    :math:`[(p_j - g) / r,\ \log(1 + n / (\tfrac43\pi r^3)),\ x_j]` (relative position, the ball's point
    density from its neighbour count :math:`n`, the support feature), a shared MLP, and a max over the
    neighbours; empty balls output zeros. Outputs of all radii are concatenated.

    Shapes: grid_points ``[M, 3]``, grid_batch ``[M]``, support_pos ``[S, 3]``, support_features ``[S, C]``,
    support_batch ``[S]``; output ``([M, sum(mlps[i][-1])], count [M])`` with ``count`` the neighbours in
    the largest ball. ``support_features`` are in the parameters' dtype (float32, float64 or bfloat16),
    positions in any floating dtype (the ball query runs at the supports' precision, float32 at least).
    """

    def __init__(self, in_channels: int, radii: Sequence[float] = (0.4, 0.8), num_samples: Sequence[int] = (16, 16),
                 mlps: Sequence[Sequence[int]] = ((32, 32), (32, 32)), norm: str = "batch"):
        super().__init__()
        if not (len(radii) == len(num_samples) == len(mlps)) or len(radii) == 0:
            raise ValueError(f"radii, num_samples, mlps: expected equal non-zero lengths, got "
                             f"{len(radii)}, {len(num_samples)}, {len(mlps)}")
        self.in_channels, self.radii, self.num_samples = in_channels, tuple(radii), tuple(num_samples)
        self.mlps = nn.ModuleList()
        for widths in mlps:
            layers, previous = [], in_channels + 4
            for width in widths:
                layers.append(_linear_block(previous, width, norm))
                previous = width
            self.mlps.append(nn.Sequential(*layers))
        self.out_channels = sum(widths[-1] for widths in mlps)

    def reset_parameters(self) -> None:
        reset_children(self)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, radii={self.radii}, " \
               f"samples={self.num_samples})"

    def forward(self, grid_points: Tensor, grid_batch: Tensor, support_pos: Tensor, support_features: Tensor,
                support_batch: Tensor) -> tuple[Tensor, Tensor]:
        _check_points("grid_points", grid_points)
        _check_points("support_pos", support_pos)
        _check_features("support_features", support_features, self.in_channels, support_pos.shape[0],
                        self.mlps[0][0][0].weight.dtype)
        _check_index("grid_batch", grid_batch, grid_points.shape[0])
        _check_index("support_batch", support_batch, support_pos.shape[0])
        grid_points = grid_points.to(support_pos.dtype)  # searched at the precision of the supports
        outputs, count = [], None
        for r, samples, mlp in zip(self.radii, self.num_samples, self.mlps):
            num_queries = grid_points.shape[0]
            if support_pos.shape[0] == 0 or num_queries == 0:
                outputs.append(support_features.new_zeros(num_queries, mlp[-1][0].out_features))
                count = torch.zeros(num_queries, dtype=torch.long, device=grid_points.device)
                continue
            index, count = radius(support_pos.detach(), grid_points.detach(), r, samples, support_batch, grid_batch)
            valid = index >= 0
            safe = index.clamp(min=0)
            relative = (support_pos[safe] - grid_points[:, None, :]) / r
            density = torch.log1p(count.to(support_features.dtype) / (4.0 / 3.0 * math.pi * r ** 3))
            inputs = torch.cat([relative.to(support_features.dtype),
                                density[:, None, None].expand(-1, samples, 1), support_features[safe]], dim=-1)
            hidden = mlp(inputs.reshape(num_queries * samples, -1)).view(num_queries, samples, -1)
            hidden = hidden.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
            outputs.append(torch.where(count[:, None] > 0, hidden, torch.zeros_like(hidden)))
        return torch.cat(outputs, dim=1), count


# ---------------------------------------------------------------------------------------------------------
# Local fusion
# ---------------------------------------------------------------------------------------------------------

class LocalFusion(nn.Module):
    r"""LoF: position-decorated RoI grid features fused with the image at the grid points.

    Each of the :math:`G^3` cells of an RoI gets the 7-d descriptor
    :math:`[g,\ \log_{10}(n + 0.5),\ c]` -- the cell centre :math:`g` in box coordinates, the number
    :math:`n` of LiDAR points in the cell and their centroid :math:`c` (box coordinates; :math:`g` when the
    cell is empty). An FFN (7 -> 32 -> 64) embeds it, :class:`PointImageFusion` fuses it with the image at
    the cell's LiDAR-frame position, and an up-FFN (64 -> ``hidden`` -> ``out_channels``) produces the
    feature that is added to the pooled grid feature.

    Shapes: rois ``[R, 7]``, roi_batch ``[R]``, points ``[N, 3]``, point_batch ``[N]``; outputs
    ``features [R, G^3, out_channels]`` and ``counts [R, G^3]`` (long). Geometry (rois, points) in any
    floating dtype, features in the parameters' dtype (float32, float64 or bfloat16).
    """

    def __init__(self, out_channels: int, image_channels: int, grid_size: int = 6, embed_channels: int = 64,
                 up_hidden: int = 64, embed_dim: int = 64, num_heads: int = 4, num_points: int = 4,
                 num_levels: int = 1, dropout: float = 0.1, norm: str = "batch"):
        super().__init__()
        self.grid_size, self.out_channels = grid_size, out_channels
        self.position_ffn = nn.Sequential(_linear_block(7, 32, norm), nn.Linear(32, embed_channels))
        self.fusion = PointImageFusion(embed_channels, image_channels, embed_channels, embed_dim, num_heads,
                                       num_points, num_levels, dropout, norm)
        self.up_ffn = nn.Sequential(_linear_block(embed_channels, up_hidden, norm), nn.Linear(up_hidden, out_channels))

    def reset_parameters(self) -> None:
        reset_children(self)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(grid={self.grid_size}, out={self.out_channels}, " \
               f"image={self.fusion.image_channels})"

    def cell_statistics(self, rois: Tensor, roi_batch: Tensor, points: Tensor, point_batch: Tensor):
        """``(counts [R, G^3] long, centroids [R, G^3, 3] box-frame, NaN-free)`` of the points per cell."""
        grid = self.grid_size
        cells = grid ** 3
        num_rois = rois.shape[0]
        point_index, roi_index = points_in_boxes_pairs(points, rois.detach(), point_batch, roi_batch)
        local = rotate_points_z(points[point_index].to(rois.dtype) - rois[roi_index, :3], -rois[roi_index, 6])
        cell_xyz = ((local / rois[roi_index, 3:6] + 0.5) * grid).floor().long().clamp(0, grid - 1)
        cell = roi_index * cells + (cell_xyz[:, 2] * grid + cell_xyz[:, 1]) * grid + cell_xyz[:, 0]
        counts = torch.bincount(cell, minlength=num_rois * cells).view(num_rois, cells)
        centroids = scatter_mean(local, cell, num_rois * cells).view(num_rois, cells, 3)
        return counts, centroids

    def forward(self, rois: Tensor, roi_batch: Tensor, points: Tensor, point_batch: Tensor, image_features,
                cameras: CameraSetup) -> tuple[Tensor, Tensor]:
        check_boxes(rois, "rois")
        _check_index("roi_batch", roi_batch, rois.shape[0])
        _check_points("points", points)
        _check_index("point_batch", point_batch, points.shape[0])
        num_rois, cells = rois.shape[0], self.grid_size ** 3
        local, global_xyz = roi_grid_points(rois, self.grid_size)
        counts, centroids = self.cell_statistics(rois, roi_batch, points, point_batch)
        centroids = torch.where(counts[..., None] > 0, centroids, local)
        descriptor = torch.cat([local, torch.log10(counts.to(rois.dtype) + 0.5)[..., None], centroids], dim=-1)
        flat = self.position_ffn(descriptor.reshape(num_rois * cells, 7).to(self.position_ffn[1].weight.dtype))
        grid_batch = roi_batch.repeat_interleave(cells)
        projection = project_to_cameras(global_xyz.reshape(-1, 3).detach(), cameras, grid_batch)
        fused = self.fusion(flat, image_features, projection.point_index, projection.camera_index,
                            projection.reference_points(cameras.input_hw))
        return self.up_ffn(fused).view(num_rois, cells, self.out_channels), counts


# ---------------------------------------------------------------------------------------------------------
# Feature dynamic aggregation
# ---------------------------------------------------------------------------------------------------------

class FeatureDynamicAggregation(nn.Module):
    r"""FDA: masked self-attention over the :math:`G^3` grid tokens of every RoI.

    A density positional encoding :math:`\mathrm{FFN}([g / s,\ \log_{10}(n + 0.5)])` (normalised cell
    position, cell point count; 4 -> C/2 -> C) is added to non-empty tokens, one post-norm transformer
    encoder layer (``num_heads`` heads, FFN ``ffn_channels``) runs with empty tokens masked out as keys, and
    its output is added to the input (residual). RoIs whose tokens are all empty are returned unchanged,
    so no softmax over an empty set ever runs (no NaN).

    Shapes: features ``[R, T, C]``, grid_local ``[R, T, 3]`` (cell centres in box units, e.g. in
    ``[-0.5, 0.5]``), counts ``[R, T]``, empty ``[R, T]`` bool (True = no support point); output ``[R, T, C]``.
    """

    def __init__(self, channels: int, num_heads: int = 1, ffn_channels: int = 128, dropout: float = 0.1,
                 norm: str = "batch"):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels: expected a multiple of num_heads={num_heads}, got {channels}")
        self.channels, self.num_heads, self.ffn_channels = channels, num_heads, ffn_channels
        self.position_encoding = nn.Sequential(_linear_block(4, channels // 2, norm),
                                               nn.Linear(channels // 2, channels))
        self.in_proj = nn.Linear(channels, 3 * channels)
        self.out_proj = nn.Linear(channels, channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_channels, channels))
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.attention_dropout = dropout

    def reset_parameters(self) -> None:
        reset_children(self)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.num_heads}, ffn={self.ffn_channels})"

    def _encoder(self, x: Tensor, key_mask: Tensor) -> Tensor:
        num_rois, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        q, k, v = self.in_proj(x).view(num_rois, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :],
            dropout_p=self.attention_dropout if self.training else 0.0)
        attended = self.out_proj(attended.transpose(1, 2).reshape(num_rois, tokens, channels))
        x = self.norm1(x + self.dropout1(attended))
        return self.norm2(x + self.dropout2(self.ffn(x)))

    def forward(self, features: Tensor, grid_local: Tensor, counts: Tensor, empty: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 3 or features.shape[2] != self.channels:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features: expected a tensor [R, T, {self.channels}], got {shape}")
        if features.dtype != self.in_proj.weight.dtype:
            raise TypeError(f"features: expected dtype {self.in_proj.weight.dtype} (the dtype of the layer's "
                            f"parameters), got {features.dtype}")
        num_rois, tokens, _ = features.shape
        if empty.shape != (num_rois, tokens) or counts.shape != (num_rois, tokens):
            raise ValueError(f"counts, empty: expected shape ({num_rois}, {tokens}), got "
                             f"{tuple(counts.shape)} and {tuple(empty.shape)}")
        occupied_rois = (~empty).any(dim=1).nonzero().flatten()
        if occupied_rois.numel() == 0:
            return features
        position = torch.cat([grid_local, torch.log10(counts.to(features.dtype) + 0.5)[..., None]], dim=-1)
        encoding = self.position_encoding(position.reshape(-1, 4).to(features.dtype)).view(num_rois, tokens, -1)
        x = features + encoding * (~empty)[..., None].to(features.dtype)
        update = self._encoder(x[occupied_rois], ~empty[occupied_rois])
        return features.index_add(0, occupied_rois, update)
