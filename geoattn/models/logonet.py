r"""LoGoNet second-stage head: GoF + RoI grid pooling + LoF + FDA + box refinement (Li et al., CVPR 2023).

Pipeline for proposals ``rois [R, 7]`` (LiDAR frame ``(x, y, z, dx, dy, dz, heading)``):

1. GoF: the first voxel level (``fuse_level``) is fused with the image at the voxel point centroids.
2. RoI grid pooling: every level is ball-query pooled onto the ``G^3`` cell centres of each RoI
   (:class:`~geoattn.nn.logonet.RoIGridPool`); the pooled widths are concatenated to ``C``.
3. LoF: the position-decorated, image-fused grid feature (:class:`~geoattn.nn.logonet.LocalFusion`) is
   added.
4. FDA: masked self-attention over the ``G^3`` tokens (empty = no support point in the largest ball).
5. Flatten ``G^3 C`` -> shared FC (256, 256) -> a 1-logit IoU-score branch and a 7-d residual branch.

Targets and losses (OpenPCDet RoI-head conventions): each RoI is matched to the ground-truth box of its
batch element with the highest 3D IoU; the score target is ``clamp((IoU - 0.25) / 0.5, 0, 1)`` (binary
cross-entropy); RoIs with IoU > 0.55 get a smooth-L1 loss on the residuals in the canonical RoI frame and a
corner loss (Huber, heading-flip tolerant) on the decoded boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoattn.nn.logonet import (CameraSetup, FeatureDynamicAggregation, GlobalFusion, LocalFusion, RoIGridPool,
                                reset_children, roi_grid_points, voxel_centroids)
from geoattn.sparse.boxes import box_corners, boxes_iou3d, check_boxes, limit_angle, rotate_points_z
from geoattn.sparse.voxel import VoxelTensor

__all__ = ["PointSet", "LoGoNetHead", "encode_residuals", "decode_residuals", "assign_targets", "canonical_targets",
           "sample_rois"]


@dataclass
class PointSet:
    """One feature level for RoI pooling: ``pos [S, 3]`` (voxel centroids), ``features [S, C]``, ``batch [S]``."""

    pos: Tensor
    features: Tensor
    batch: Tensor

    @classmethod
    def from_voxels(cls, voxels: VoxelTensor, points: Tensor, voxel_size, point_range,
                    point_batch: Tensor | None = None, keep_empty: bool = False) -> "PointSet":
        """Sparse voxel features of one backbone level located at the centroid of their raw points.

        Args:
            voxels: the level's :class:`~geoattn.sparse.voxel.VoxelTensor` (e.g. ``VoxelTensor.from_spconv``).
            points: ``[N, 3+]`` raw LiDAR points (augmented frame); point_batch ``[N]``.
            voxel_size: the level's voxel size (base size times its stride); point_range as for voxelisation.
            keep_empty: keep voxels with no raw point (placed at their centre); LoGoNet drops them.
        """
        centroids, has_points = voxel_centroids(points[:, :3], voxels.coords, voxel_size, point_range, point_batch)
        batch = voxels.coords[:, 0].long()
        if keep_empty:
            return cls(centroids, voxels.features, batch)
        return cls(centroids[has_points], voxels.features[has_points], batch[has_points])


def encode_residuals(boxes: Tensor, anchors: Tensor) -> Tensor:
    r"""OpenPCDet ``ResidualCoder``: ``[(x_g - x_a) / d_a, (y_g - y_a) / d_a, (z_g - z_a) / dz_a,
    \log(dx_g / dx_a), \log(dy_g / dy_a), \log(dz_g / dz_a), \theta_g - \theta_a]`` with
    :math:`d_a = \sqrt{dx_a^2 + dy_a^2}`."""
    diagonal = torch.sqrt(anchors[:, 3] ** 2 + anchors[:, 4] ** 2)
    return torch.stack([
        (boxes[:, 0] - anchors[:, 0]) / diagonal, (boxes[:, 1] - anchors[:, 1]) / diagonal,
        (boxes[:, 2] - anchors[:, 2]) / anchors[:, 5],
        torch.log(boxes[:, 3] / anchors[:, 3]), torch.log(boxes[:, 4] / anchors[:, 4]),
        torch.log(boxes[:, 5] / anchors[:, 5]), boxes[:, 6] - anchors[:, 6]], dim=1)


def decode_residuals(residuals: Tensor, rois: Tensor) -> Tensor:
    """Boxes ``[R, 7]`` in the LiDAR frame from canonical-frame residuals ``[R, 7]`` w.r.t. ``rois``."""
    diagonal = torch.sqrt(rois[:, 3] ** 2 + rois[:, 4] ** 2)
    local = torch.stack([residuals[:, 0] * diagonal, residuals[:, 1] * diagonal, residuals[:, 2] * rois[:, 5]], 1)
    centre = rotate_points_z(local, rois[:, 6]) + rois[:, :3]
    sizes = torch.exp(residuals[:, 3:6].clamp(max=math.log(1e3))) * rois[:, 3:6]
    return torch.cat([centre, sizes, (residuals[:, 6] + rois[:, 6])[:, None]], dim=1)


def canonical_targets(gt_boxes: Tensor, rois: Tensor) -> Tensor:
    """Residual targets ``[R, 7]`` of matched ``gt_boxes`` in each RoI's canonical frame.

    The ground truth is moved to the RoI origin and rotated by the RoI heading; its heading difference is
    flipped by pi when it exceeds pi/2, since a box and its 180-degree twin are the same box.
    """
    local = rotate_points_z(gt_boxes[:, :3] - rois[:, :3], -rois[:, 6])
    heading = limit_angle(gt_boxes[:, 6] - rois[:, 6], offset=0.0)  # [0, 2 pi)
    flip = (heading > math.pi * 0.5) & (heading < math.pi * 1.5)
    heading = limit_angle(torch.where(flip, heading + math.pi, heading))  # [-pi/2, pi/2]
    canonical = torch.cat([local, gt_boxes[:, 3:6], heading[:, None]], 1)
    anchors = torch.cat([torch.zeros_like(rois[:, :3]), rois[:, 3:6], torch.zeros_like(rois[:, 6:])], 1)
    return encode_residuals(canonical, anchors)


def assign_targets(rois: Tensor, roi_batch: Tensor, gt_boxes: Tensor, gt_batch: Tensor) -> tuple[Tensor, Tensor]:
    """``(max IoU [R], matched gt index [R] (-1 when the batch element has no box))``."""
    with torch.no_grad():
        iou = boxes_iou3d(rois.detach(), gt_boxes.detach().to(rois.dtype))
        iou = iou.masked_fill(roi_batch[:, None] != gt_batch[None, :], -1.0)
        if gt_boxes.shape[0] == 0:
            return rois.new_zeros(rois.shape[0]), torch.full_like(roi_batch, -1)
        best, index = iou.max(dim=1)
        index = torch.where(best >= 0, index, torch.full_like(index, -1))
        return best.clamp(min=0), index


def sample_rois(iou: Tensor, roi_batch: Tensor, per_image: int = 128, fg_ratio: float = 0.5,
                fg_threshold: float = 0.55, hard_bg_range: tuple[float, float] = (0.1, 0.55),
                hard_bg_ratio: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    """Indices of a training subset of RoIs per batch element (OpenPCDet ``ProposalTargetLayer`` policy).

    Up to ``fg_ratio * per_image`` foreground RoIs (IoU >= ``fg_threshold``), the rest background, of which a
    ``hard_bg_ratio`` share comes from ``hard_bg_range`` (IoU in ``[lo, hi)``) and the remainder from below
    ``lo``. Sampling is without replacement, so an element with few RoIs yields fewer than ``per_image``.

    Args:
        iou: ``[R]`` max IoU of each RoI with the ground truth (:func:`assign_targets`).
        roi_batch: ``[R]`` long.

    Returns:
        ``[S]`` long indices into the RoIs, grouped by batch element.
    """
    if iou.shape != roi_batch.shape:
        raise ValueError(f"iou, roi_batch: expected equal shapes, got {tuple(iou.shape)} and {tuple(roi_batch.shape)}")

    def pick(candidates: Tensor, count: int) -> Tensor:
        count = min(count, candidates.numel())
        order = torch.randperm(candidates.numel(), generator=generator)[:count].to(candidates.device)
        return candidates[order]

    chosen = []
    for batch_id in torch.unique(roi_batch).tolist():
        members = roi_batch == batch_id
        foreground = (members & (iou >= fg_threshold)).nonzero().flatten()
        hard = (members & (iou >= hard_bg_range[0]) & (iou < hard_bg_range[1])).nonzero().flatten()
        easy = (members & (iou < hard_bg_range[0])).nonzero().flatten()
        fg = pick(foreground, int(round(fg_ratio * per_image)))
        background = per_image - fg.numel()
        hard_bg = pick(hard, int(round(hard_bg_ratio * background)))
        easy_bg = pick(easy, background - hard_bg.numel())
        if hard_bg.numel() + easy_bg.numel() < background:  # not enough easy ones: top up with hard
            rest = hard[~torch.isin(hard, hard_bg)]
            hard_bg = torch.cat([hard_bg, pick(rest, background - hard_bg.numel() - easy_bg.numel())])
        chosen.append(torch.cat([fg, hard_bg, easy_bg]))
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=iou.device)
    return torch.cat(chosen)


def _corner_loss(pred: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    """Huber loss on corner distances, the smaller of the target and its heading-flipped twin."""
    pred_corners = box_corners(pred)
    flipped = target.clone()
    flipped[:, 6] = flipped[:, 6] + math.pi
    distance = torch.minimum((pred_corners - box_corners(target)).norm(dim=2),
                             (pred_corners - box_corners(flipped)).norm(dim=2))
    return F.huber_loss(distance, torch.zeros_like(distance), delta=delta, reduction="none").mean(dim=1)


class LoGoNetHead(nn.Module):
    """LoGoNet's second stage; see the module docstring.

    Args:
        level_channels: feature widths of the voxel levels given to ``forward`` (KITTI: ``(64, 64)``).
        image_channels: width of the image feature maps (LoGoNet reduces FPN level 0 to 64).
        radii, num_samples, mlps: per level, the :class:`RoIGridPool` settings (KITTI: radii
            ``(0.4, 0.8)`` and ``(0.8, 1.6)``, MLPs ``(32, 32)``; pooled width C = 128).
        grid_size: cells per RoI side ``G`` (6).
        fuse_level: level fused with the image by GoF (``None`` disables GoF).
        fc_channels: shared FC widths.
        num_heads, num_points, num_image_levels, embed_dim: fusion attention settings (4, 4, 1, 64).
        fda_heads, fda_ffn: FDA encoder heads and FFN width (1, 128).
        dropout: shared-FC dropout (0.3).
        loss_weights: weights of the (score, residual, corner) losses.

    ``forward`` returns ``{'scores': [R] logits, 'residuals': [R, 7], 'boxes': [R, 7] decoded}``.
    The head runs in the dtype of its parameters (float32, float64 or bfloat16): level features and image
    features in that dtype, geometry (rois, positions, points, cameras) in any floating dtype; decoded
    boxes follow the promotion of the residuals with the rois (bfloat16 residuals on float32 rois give
    float32 boxes).
    """

    def __init__(self, level_channels: Sequence[int] = (64, 64), image_channels: int = 64,
                 radii: Sequence[Sequence[float]] = ((0.4, 0.8), (0.8, 1.6)),
                 num_samples: Sequence[Sequence[int]] = ((16, 16), (16, 16)),
                 mlps: Sequence[Sequence[Sequence[int]]] = (((32, 32), (32, 32)), ((32, 32), (32, 32))),
                 grid_size: int = 6, fuse_level: int | None = 0, fc_channels: Sequence[int] = (256, 256),
                 num_heads: int = 4, num_points: int = 4, num_image_levels: int = 1, embed_dim: int = 64,
                 fda_heads: int = 1, fda_ffn: int = 128, dropout: float = 0.3,
                 loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0), norm: str = "batch"):
        super().__init__()
        if not (len(level_channels) == len(radii) == len(num_samples) == len(mlps)):
            raise ValueError(f"level_channels, radii, num_samples, mlps: expected one entry per level, got "
                             f"{len(level_channels)}, {len(radii)}, {len(num_samples)}, {len(mlps)}")
        if fuse_level is not None and not 0 <= fuse_level < len(level_channels):
            raise ValueError(f"fuse_level: expected None or in [0, {len(level_channels)}), got {fuse_level}")
        self.level_channels, self.grid_size, self.fuse_level = tuple(level_channels), grid_size, fuse_level
        self.loss_weights = loss_weights
        self.global_fusion = None
        if fuse_level is not None:
            self.global_fusion = GlobalFusion(level_channels[fuse_level], image_channels, embed_dim, num_heads,
                                              num_points, num_image_levels, norm=norm)
        self.pools = nn.ModuleList(RoIGridPool(c, r, s, m, norm) for c, r, s, m in
                                   zip(level_channels, radii, num_samples, mlps))
        self.channels = sum(pool.out_channels for pool in self.pools)
        self.local_fusion = LocalFusion(self.channels, image_channels, grid_size, embed_dim=embed_dim,
                                        num_heads=num_heads, num_points=num_points,
                                        num_levels=num_image_levels, norm=norm)
        self.aggregation = FeatureDynamicAggregation(self.channels, fda_heads, fda_ffn, norm=norm)
        layers, previous = [], grid_size ** 3 * self.channels
        for width in fc_channels:
            layers += [nn.Linear(previous, width, bias=False), nn.BatchNorm1d(width) if norm == "batch"
                       else nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout)]
            previous = width
        self.shared_fc = nn.Sequential(*layers)
        self.score_head = nn.Linear(previous, 1)
        self.residual_head = nn.Linear(previous, 7)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_children(self)
        # small residual outputs at start: the refined box starts at the proposal
        nn.init.normal_(self.residual_head.weight, std=1e-3)
        nn.init.zeros_(self.residual_head.bias)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(levels={self.level_channels}, C={self.channels}, "
                f"grid={self.grid_size}, gof_level={self.fuse_level})")

    def forward(self, rois: Tensor, roi_batch: Tensor, levels: Sequence[PointSet], points: Tensor,
                point_batch: Tensor, image_features, cameras: CameraSetup) -> dict[str, Tensor]:
        """Args:
            rois: ``[R, 7]`` proposals; roi_batch ``[R]``.
            levels: one :class:`PointSet` per level (voxel centroids and features, augmented frame).
            points: ``[N, 3]`` raw LiDAR xyz (augmented frame) for the LoF cell statistics; point_batch ``[N]``.
            image_features: ``[V, C_i, H, W]`` (or a list per image level) for the ``V`` images of ``cameras``.
        """
        check_boxes(rois, "rois")
        if not isinstance(roi_batch, Tensor) or roi_batch.shape != (rois.shape[0],) or roi_batch.is_floating_point():
            shape = (roi_batch.dtype, tuple(roi_batch.shape)) if isinstance(roi_batch, Tensor) else roi_batch
            raise ValueError(f"roi_batch: expected an integer tensor [{rois.shape[0]}] (one id per RoI), got {shape}")
        if len(levels) != len(self.pools):
            raise ValueError(f"levels: expected {len(self.pools)} PointSets, got {len(levels)}")
        num_rois, cells = rois.shape[0], self.grid_size ** 3
        local, global_xyz = roi_grid_points(rois, self.grid_size)
        grid_batch = roi_batch.repeat_interleave(cells)
        pooled, count = [], None
        for level_index, (level, pool) in enumerate(zip(levels, self.pools)):
            features = level.features
            if level_index == self.fuse_level:
                features = self.global_fusion(features, level.pos, level.batch, image_features, cameras)
            level_pooled, count = pool(global_xyz.reshape(-1, 3), grid_batch, level.pos, features, level.batch)
            pooled.append(level_pooled)
        grid_features = torch.cat(pooled, dim=1).view(num_rois, cells, self.channels)
        local_features, point_counts = self.local_fusion(rois, roi_batch, points, point_batch, image_features, cameras)
        grid_features = grid_features + local_features
        empty = (count == 0).view(num_rois, cells)
        grid_features = self.aggregation(grid_features, local / rois[:, None, 3:6], point_counts, empty)
        # flatten channel-major (C, G, G, G) as the official head does
        shared = self.shared_fc(grid_features.transpose(1, 2).reshape(num_rois, cells * self.channels))
        residuals = self.residual_head(shared)
        return {"scores": self.score_head(shared).squeeze(1), "residuals": residuals,
                "boxes": decode_residuals(residuals, rois.detach())}

    def loss(self, outputs: dict[str, Tensor], rois: Tensor, roi_batch: Tensor, gt_boxes: Tensor, gt_batch: Tensor,
             fg_threshold: float = 0.55, score_range: tuple[float, float] = (0.25, 0.75)) -> dict[str, Tensor]:
        """Losses ``{'score', 'residual', 'corner', 'total'}`` and ``'iou'`` (the RoI IoU, detached)."""
        check_boxes(gt_boxes, "gt_boxes")
        iou, matched = assign_targets(rois, roi_batch, gt_boxes, gt_batch)
        low, high = score_range
        score_target = ((iou - low) / (high - low)).clamp(0, 1)
        score_loss = F.binary_cross_entropy_with_logits(outputs["scores"], score_target.to(outputs["scores"].dtype))
        foreground = (iou > fg_threshold) & (matched >= 0)
        zero = outputs["residuals"].abs().sum() * 0.0  # keeps the graph, exactly +0
        if foreground.any():
            fg_rois = rois[foreground].detach()
            targets = canonical_targets(gt_boxes[matched[foreground]].to(rois.dtype), fg_rois)
            residual_loss = F.smooth_l1_loss(outputs["residuals"][foreground], targets, beta=1.0 / 9.0,
                                             reduction="none").sum(dim=1).mean()
            matched_boxes = gt_boxes[matched[foreground]].to(rois.dtype)
            corner_loss = _corner_loss(outputs["boxes"][foreground], matched_boxes).mean()
        else:
            residual_loss, corner_loss = zero, zero
        weights = self.loss_weights
        total = weights[0] * score_loss + weights[1] * residual_loss + weights[2] * corner_loss
        return {"score": score_loss, "residual": residual_loss, "corner": corner_loss, "total": total,
                "iou": iou.detach()}
