"""CenterHead target assignment and box coding (CenterPoint, as OpenPCDet's ``CenterHead``).

For every ground-truth box the head is trained to predict, at the BEV cell that holds the box centre,

* a class heatmap: a Gaussian of radius ``r`` (CornerNet's radius for the box size in feature-map cells,
  ``r = max(min_radius, int(gaussian_radius(dx, dy)))``) and ``sigma = (2 r + 1) / 6`` drawn around the
  centre cell, overlapping objects of one class combined by a per-pixel maximum;
* eight regression targets ``(ox, oy, z, log dx, log dy, log dz, cos h, sin h)`` where ``(ox, oy)`` is the
  offset of the centre inside its cell, in cells.

The feature map ``[B, K, H, W]`` has ``H`` along y and ``W`` along x; the centre of a box at
``(x, y)`` lies at cell coordinates ``u = (x - range_x0) / voxel_x / stride``,
``v = (y - range_y0) / voxel_y / stride`` (clamped to ``[0, W - 0.5]`` and ``[0, H - 0.5]``), its cell
is ``(floor(v), floor(u))`` and its flat index ``floor(v) * W + floor(u)``.

:func:`decode_boxes` is the inverse used by the losses and by decoding, so there is one implementation
of the box coding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from geoattn.backends import debug_checks

__all__ = [
    "gaussian_radius",
    "CenterTargets",
    "assign_center_targets",
    "CenterTargetAssigner",
    "decode_boxes",
    "gather_maps",
]


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CornerNet Gaussian radius for boxes of size ``height x width`` (any shape, in feature-map cells).

    Three cases of a predicted box whose corners lie within ``r`` of the ground-truth corners and whose IoU
    with it is at least ``o = min_overlap``; each gives a quadratic ``a r^2 + b r + c = 0``:

    * one corner inside, one outside: ``a = 1``, ``b = -(h + w)`` (written as ``b1 = h + w``),
      ``c = h w (1 - o) / (1 + o)``;
    * both inside: ``a = 4``, ``b2 = 2 (h + w)``, ``c = (1 - o) h w``;
    * both outside: ``a = 4 o``, ``b3 = -2 o (h + w)``, ``c = (o - 1) h w``;

    and, exactly as the official CenterPoint/OpenPCDet code (``centernet_utils.gaussian_radius``), each root
    is taken as ``r_i = (b_i + sqrt(b_i^2 - 4 a_i c_i)) / 2`` -- divided by 2, not by ``2 a_i`` -- and the
    radius is ``min(r1, r2, r3)``. Returns a floating tensor of the broadcast shape of the inputs.
    """
    if not isinstance(height, Tensor):
        raise TypeError(f"height: expected a torch.Tensor, got {type(height).__name__}")
    if not isinstance(width, Tensor):
        raise TypeError(f"width: expected a torch.Tensor, got {type(width).__name__}")
    if not (isinstance(min_overlap, (int, float)) and 0.0 < float(min_overlap) < 1.0):
        raise ValueError(f"min_overlap: expected a float in (0, 1), got {min_overlap!r}")
    if not height.is_floating_point():
        height = height.float()
    if not width.is_floating_point():
        width = width.to(height.dtype)
    o = float(min_overlap)
    b1 = height + width
    c1 = width * height * (1 - o) / (1 + o)
    r1 = (b1 + (b1 ** 2 - 4 * c1).sqrt()) / 2
    b2 = 2 * (height + width)
    c2 = (1 - o) * width * height
    r2 = (b2 + (b2 ** 2 - 4 * 4 * c2).sqrt()) / 2
    a3 = 4 * o
    b3 = -2 * o * (height + width)
    c3 = (o - 1) * width * height
    r3 = (b3 + (b3 ** 2 - 4 * a3 * c3).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


@dataclass
class CenterTargets:
    """Training targets of a CenterHead for a batch of ``B`` frames, ``N = max_objs`` slots per frame.

    Attributes:
        heatmap: float ``[B, K, H, W]`` Gaussian class heatmaps in ``[0, 1]`` (1 at object centre cells).
        indices: long ``[B, N]`` flat cell index ``y * W + x`` of each slot's centre cell (0 when unused).
        mask: bool ``[B, N]`` slot holds an object that is trained on.
        boxes: float ``[B, N, 8]`` regression targets ``(ox, oy, z, log dx, log dy, log dz, cos, sin)``
            (zero where ``mask`` is false).
        gt_boxes: float ``[B, N, 7]`` the ground-truth box of each slot (zero for empty slots), used by
            the IoU losses.
        labels: long ``[B, N]`` 0-based class of each slot, -1 for empty slots.
    """

    heatmap: Tensor
    indices: Tensor
    mask: Tensor
    boxes: Tensor
    gt_boxes: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> "CenterTargets":
        """A copy with every tensor on ``device``."""
        return CenterTargets(*(getattr(self, f).to(device) for f in
                               ("heatmap", "indices", "mask", "boxes", "gt_boxes", "labels")))


def _check_triple(value: Any, name: str, length: int) -> tuple[float, ...]:
    if isinstance(value, Tensor):
        value = value.tolist()
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of {length} numbers, got {value!r}") from None
    if len(out) != length:
        raise ValueError(f"{name}: expected {length} numbers, got {len(out)} ({value!r})")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name}: expected finite numbers, got {value!r}")
    return out


def _check_geometry(voxel_size: Any, point_range: Any, feature_map_stride: Any
                    ) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    voxel = _check_triple(voxel_size, "voxel_size", 3)
    if min(voxel) <= 0:
        raise ValueError(f"voxel_size: expected positive sizes, got {voxel_size!r}")
    prange = _check_triple(point_range, "point_range", 6)
    if isinstance(feature_map_stride, bool) or not isinstance(feature_map_stride, int) or feature_map_stride < 1:
        raise ValueError(f"feature_map_stride: expected a positive int, got {feature_map_stride!r}")
    return voxel, prange, int(feature_map_stride)


def _check_positive_int(value: Any, name: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected a {kind} int, got {value!r}")
    return int(value)


def assign_center_targets(gt_boxes: Tensor, gt_labels: Tensor, num_classes: int,
                          feature_map_size: Sequence[int], voxel_size: Sequence[float],
                          point_range: Sequence[float], feature_map_stride: int, max_objs: int = 500,
                          gaussian_overlap: float = 0.1, min_radius: int = 2,
                          clamp_outside: bool = False) -> CenterTargets:
    """CenterHead targets for padded ground truth (``CenterHead.assign_target_of_single_head``, batched).

    Args:
        gt_boxes: float ``[B, M, 7]`` boxes ``(x, y, z, dx, dy, dz, heading)``, padded.
        gt_labels: long ``[B, M]`` 0-based class, ``-1`` for padding (any label outside ``[0, K)`` is
            skipped; with ``GEOATTN_DEBUG=1`` a label ``>= K`` raises).
        num_classes: ``K``, the heatmap channels.
        feature_map_size: ``(H, W)`` of the head's maps.
        voxel_size, point_range, feature_map_stride: the BEV geometry (cell = ``voxel * stride``).
        max_objs: slots per frame; the valid objects of a frame fill slots ``0, 1, ...`` in their order,
            objects beyond ``max_objs`` are dropped (official ``NUM_MAX_OBJS``).
        gaussian_overlap, min_radius: the Gaussian radius ``max(min_radius, int(gaussian_radius(du, dv,
            gaussian_overlap)))`` with ``du = dx / voxel_x / stride``, ``dv = dy / voxel_y / stride``.
        clamp_outside: an object whose centre lies outside the map (``u`` not in ``[0, W]`` or ``v`` not in
            ``[0, H]``) is skipped (its slot stays unmasked) unless this is true, in which case it is clamped
            into the border cell like any other centre. OpenPCDet clamps before its in-map test, so its test
            never fires: ``clamp_outside=True`` is its exact behaviour (its data pipeline has already removed
            boxes without a corner inside the range).

    Per object: ``u, v`` clamped to ``[0, W - 0.5] x [0, H - 0.5]``, cell ``(iu, iv) = (int(u), int(v))``,
    a Gaussian ``exp(-(du^2 + dv^2) / (2 sigma^2))`` (``sigma = (2 r + 1) / 6``, computed in float64 and cast)
    on the square ``|du|, |dv| <= r`` around the cell, clipped to the map, max-combined into the class
    channel; regression target ``(u - iu, v - iv, z, log dx, log dy, log dz, cos h, sin h)``. Objects with
    ``dx <= 0`` or ``dy <= 0`` (official) or ``dz <= 0`` or non-finite values keep their slot but are masked.

    Vectorised over all objects of the batch (scatter-max of every object's window); the window size
    ``2 R + 1`` with ``R`` the largest radius needs one device-to-host read (this is a target computation,
    outside the model forward). Runs under ``torch.no_grad``.

    Returns:
        :class:`CenterTargets`.
    """
    if not isinstance(gt_boxes, Tensor):
        raise TypeError(f"gt_boxes: expected a torch.Tensor, got {type(gt_boxes).__name__}")
    if not isinstance(gt_labels, Tensor):
        raise TypeError(f"gt_labels: expected a torch.Tensor, got {type(gt_labels).__name__}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[2] != 7:
        raise ValueError(f"gt_boxes: expected a tensor [B, M, 7], got shape {tuple(gt_boxes.shape)}")
    if not gt_boxes.is_floating_point():
        raise TypeError(f"gt_boxes: expected a floating dtype, got {gt_boxes.dtype}")
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels: expected shape {tuple(gt_boxes.shape[:2])} (as gt_boxes[..., 0]), "
                         f"got {tuple(gt_labels.shape)}")
    if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        raise TypeError(f"gt_labels: expected an integer dtype, got {gt_labels.dtype}")
    num_classes = _check_positive_int(num_classes, "num_classes")
    try:
        height, width = (int(s) for s in feature_map_size)
    except (TypeError, ValueError):
        raise ValueError(f"feature_map_size: expected (H, W), got {feature_map_size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"feature_map_size: expected positive (H, W), got {feature_map_size!r}")
    voxel, prange, stride = _check_geometry(voxel_size, point_range, feature_map_stride)
    max_objs = _check_positive_int(max_objs, "max_objs")
    min_radius = _check_positive_int(min_radius, "min_radius", allow_zero=True)
    if debug_checks() and gt_labels.numel() and bool((gt_labels >= num_classes).any()):
        raise ValueError(f"gt_labels: expected labels in [-1, {num_classes}), got max {int(gt_labels.max())}")

    with torch.no_grad():
        return _assign(gt_boxes, gt_labels.long(), num_classes, height, width, voxel, prange, stride,
                       max_objs, float(gaussian_overlap), min_radius, bool(clamp_outside))


def _assign(gt_boxes: Tensor, labels: Tensor, num_classes: int, height: int, width: int,
            voxel: tuple[float, ...], prange: tuple[float, ...], stride: int, max_objs: int,
            overlap: float, min_radius: int, clamp_outside: bool) -> CenterTargets:
    device, dtype = gt_boxes.device, gt_boxes.dtype
    batch, num = labels.shape
    heatmap = torch.zeros(batch * num_classes * height * width + 1, dtype=dtype, device=device)
    # Slot of each object: rank among the frame's valid-label objects; one spare slot collects the rest.
    valid = (labels >= 0) & (labels < num_classes)
    slot = torch.cumsum(valid.long(), dim=1) - 1
    in_slot = valid & (slot < max_objs)
    slot = torch.where(in_slot, slot, torch.full_like(slot, max_objs))

    x, y, z = gt_boxes[..., 0], gt_boxes[..., 1], gt_boxes[..., 2]
    coord_x = (x - prange[0]) / voxel[0] / stride
    coord_y = (y - prange[1]) / voxel[1] / stride
    inside = (coord_x >= 0) & (coord_x <= width) & (coord_y >= 0) & (coord_y <= height)
    cx = coord_x.clamp(min=0, max=width - 0.5)
    cy = coord_y.clamp(min=0, max=height - 0.5)
    size_x = gt_boxes[..., 3] / voxel[0] / stride
    size_y = gt_boxes[..., 4] / voxel[1] / stride
    finite = torch.isfinite(gt_boxes).all(dim=-1)
    positive = in_slot & finite & (size_x > 0) & (size_y > 0) & (gt_boxes[..., 5] > 0)
    if not clamp_outside:
        positive &= inside
    cx = torch.where(positive, cx, torch.zeros_like(cx))
    cy = torch.where(positive, cy, torch.zeros_like(cy))
    ix, iy = cx.long(), cy.long()  # truncation == floor for the non-negative clamped centres
    safe_x = torch.where(positive, size_x, torch.ones_like(size_x))
    safe_y = torch.where(positive, size_y, torch.ones_like(size_y))
    radius = gaussian_radius(safe_x, safe_y, min_overlap=overlap).to(torch.int32).clamp(min=min_radius).long()
    radius = torch.where(positive, radius, torch.zeros_like(radius))

    # Gaussian windows of all objects at once: offsets in [-R, R]^2, masked to each object's own radius.
    max_r = int(radius.max()) if radius.numel() else 0
    offsets = torch.arange(-max_r, max_r + 1, device=device)
    off_y, off_x = torch.meshgrid(offsets, offsets, indexing="ij")
    off_y, off_x = off_y.reshape(-1), off_x.reshape(-1)  # [P]
    r = radius[..., None]  # [B, M, 1]
    px = ix[..., None] + off_x
    py = iy[..., None] + off_y
    keep = (off_x.abs() <= r) & (off_y.abs() <= r) & positive[..., None]
    keep &= (px >= 0) & (px < width) & (py >= 0) & (py < height)
    sigma = (2 * r + 1).to(torch.float64) / 6
    dist2 = (off_x * off_x + off_y * off_y).to(torch.float64)
    value = torch.exp(-dist2 / (2 * sigma * sigma))
    value = torch.where(value < torch.finfo(torch.float64).eps, torch.zeros_like(value), value).to(dtype)
    frame = torch.arange(batch, device=device)[:, None, None]
    channel = labels.clamp(min=0, max=num_classes - 1)[..., None]
    flat = ((frame * num_classes + channel) * height + py) * width + px
    flat = torch.where(keep, flat, torch.full_like(flat, heatmap.numel() - 1))
    value = torch.where(keep, value, torch.zeros_like(value))
    heatmap.scatter_reduce_(0, flat.reshape(-1), value.reshape(-1), reduce="amax", include_self=True)
    heatmap = heatmap[:-1].reshape(batch, num_classes, height, width)

    # Per-slot tensors: scatter every object into [B, max_objs + 1] and drop the spare slot.
    zero = torch.zeros((), dtype=dtype, device=device)
    targets = torch.stack([cx - ix.to(dtype), cy - iy.to(dtype), z,
                           torch.where(positive, gt_boxes[..., 3], zero + 1).log(),
                           torch.where(positive, gt_boxes[..., 4], zero + 1).log(),
                           torch.where(positive, gt_boxes[..., 5], zero + 1).log(),
                           torch.cos(gt_boxes[..., 6]), torch.sin(gt_boxes[..., 6])], dim=-1)
    targets = torch.where(positive[..., None], targets, zero)
    index = torch.where(positive, iy * width + ix, torch.zeros_like(ix))

    def scatter(values: Tensor, fill: float | bool) -> Tensor:
        out = torch.full((batch, max_objs + 1) + values.shape[2:], fill, dtype=values.dtype, device=device)
        idx = slot.reshape(batch, num, *([1] * (values.dim() - 2))).expand_as(values)
        return out.scatter_(1, idx, values)[:, :max_objs]

    # Objects outside the slots all land in the spare slot; values written there are discarded.
    slot_boxes = torch.where(in_slot[..., None], gt_boxes, zero)
    return CenterTargets(
        heatmap=heatmap,
        indices=scatter(index, 0),
        mask=scatter(positive, False),
        boxes=scatter(targets, 0.0),
        gt_boxes=scatter(slot_boxes, 0.0),
        labels=scatter(torch.where(in_slot, labels, torch.full_like(labels, -1)), -1),
    )


class CenterTargetAssigner:
    """Callable wrapper of :func:`assign_center_targets` with the geometry and options of a config.

    ``assigner(gt_boxes [B, M, 7], gt_labels [B, M], feature_map_size (H, W)) -> CenterTargets``.
    """

    def __init__(self, num_classes: int, voxel_size: Sequence[float], point_range: Sequence[float],
                 feature_map_stride: int, max_objs: int = 500, gaussian_overlap: float = 0.1,
                 min_radius: int = 2, clamp_outside: bool = False) -> None:
        self.num_classes = _check_positive_int(num_classes, "num_classes")
        self.voxel_size, self.point_range, self.feature_map_stride = _check_geometry(
            voxel_size, point_range, feature_map_stride)
        self.max_objs = _check_positive_int(max_objs, "max_objs")
        if not (isinstance(gaussian_overlap, (int, float)) and 0 < float(gaussian_overlap) < 1):
            raise ValueError(f"gaussian_overlap: expected a float in (0, 1), got {gaussian_overlap!r}")
        self.gaussian_overlap = float(gaussian_overlap)
        self.min_radius = _check_positive_int(min_radius, "min_radius", allow_zero=True)
        self.clamp_outside = bool(clamp_outside)

    @classmethod
    def from_config(cls, dense_head_cfg: Mapping[str, Any], class_names: Sequence[str],
                    point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> "CenterTargetAssigner":
        """Build from the ``MODEL.DENSE_HEAD`` section (``TARGET_ASSIGNER_CONFIG``, ``CLASS_NAMES_EACH_HEAD``).

        One head whose classes are ``class_names`` in the same order is supported (the official Waymo and
        KITTI configs); anything else raises ``ValueError`` naming the key.
        """
        head_classes(dense_head_cfg, class_names)
        tcfg = _section(dense_head_cfg, "TARGET_ASSIGNER_CONFIG", "MODEL.DENSE_HEAD")
        path = "MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG"
        stride = tcfg.get("FEATURE_MAP_STRIDE")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"{path}.FEATURE_MAP_STRIDE: expected a positive int, got {stride!r}")
        max_objs = tcfg.get("NUM_MAX_OBJS", 500)
        if isinstance(max_objs, bool) or not isinstance(max_objs, int) or max_objs < 1:
            raise ValueError(f"{path}.NUM_MAX_OBJS: expected a positive int, got {max_objs!r}")
        overlap = tcfg.get("GAUSSIAN_OVERLAP", 0.1)
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 < overlap < 1:
            raise ValueError(f"{path}.GAUSSIAN_OVERLAP: expected a float in (0, 1), got {overlap!r}")
        min_radius = tcfg.get("MIN_RADIUS", 2)
        if isinstance(min_radius, bool) or not isinstance(min_radius, int) or min_radius < 0:
            raise ValueError(f"{path}.MIN_RADIUS: expected a non-negative int, got {min_radius!r}")
        return cls(len(class_names), voxel_size, point_cloud_range, stride, max_objs, float(overlap),
                   min_radius)

    def __call__(self, gt_boxes: Tensor, gt_labels: Tensor, feature_map_size: Sequence[int]) -> CenterTargets:
        return assign_center_targets(gt_boxes, gt_labels, self.num_classes, feature_map_size, self.voxel_size,
                                     self.point_range, self.feature_map_stride, self.max_objs,
                                     self.gaussian_overlap, self.min_radius, self.clamp_outside)


def _section(cfg: Any, key: str, path: str) -> Mapping[str, Any]:
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{path}: expected a mapping, got {type(cfg).__name__}")
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}.{key}: expected a mapping, got {value!r}")
    return value


def head_classes(dense_head_cfg: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    """Validate ``MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD``: one head with exactly ``class_names``, in order."""
    if not isinstance(dense_head_cfg, Mapping):
        raise TypeError(f"MODEL.DENSE_HEAD: expected a mapping, got {type(dense_head_cfg).__name__}")
    names = list(class_names)
    heads = dense_head_cfg.get("CLASS_NAMES_EACH_HEAD", [names])
    if (not isinstance(heads, (list, tuple)) or len(heads) != 1 or not isinstance(heads[0], (list, tuple))
            or list(heads[0]) != names):
        raise ValueError(f"MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD: expected one head [{names!r}] "
                         f"(multi-head CenterHead is not supported), got {heads!r}")
    return names


def gather_maps(maps: Tensor, indices: Tensor) -> Tensor:
    """Values of ``maps [B, C, H, W]`` at flat cells ``indices [B, N]`` (``y * W + x``) -> ``[B, N, C]``."""
    batch, channels = maps.shape[:2]
    flat = maps.reshape(batch, channels, -1)
    idx = indices[:, None, :].expand(batch, channels, indices.shape[1])
    return torch.gather(flat, 2, idx).transpose(1, 2)


def decode_boxes(center: Tensor, center_z: Tensor, dim: Tensor, rot: Tensor, xs: Tensor, ys: Tensor,
                 voxel_size: Sequence[float], point_range: Sequence[float], feature_map_stride: int) -> Tensor:
    """Boxes ``[..., 7]`` from gathered head outputs at cells ``(ys, xs)``; inverse of the targets' coding.

    Args:
        center ``[..., 2]`` offset in cells, center_z ``[..., 1]`` z in metres, dim ``[..., 3]`` log sizes,
        rot ``[..., 2]`` (cos, sin); xs, ys ``[...]`` the integer cell column and row (any dtype).

    ``x = (xs + ox) * stride * voxel_x + range_x0``, ``y = (ys + oy) * stride * voxel_y + range_y0``,
    ``z = center_z``, ``(dx, dy, dz) = exp(dim)``, ``heading = atan2(sin, cos)``. Differentiable.
    """
    dtype = center.dtype
    px = (xs.to(dtype) + center[..., 0]) * feature_map_stride * float(voxel_size[0]) + float(point_range[0])
    py = (ys.to(dtype) + center[..., 1]) * feature_map_stride * float(voxel_size[1]) + float(point_range[1])
    heading = torch.atan2(rot[..., 1], rot[..., 0])
    return torch.cat([px[..., None], py[..., None], center_z[..., :1], dim.exp(), heading[..., None]], dim=-1)
