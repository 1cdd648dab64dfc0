"""Oriented 3D boxes in the LiDAR frame: corners, point membership, rotated IoU.

Boxes follow the library convention ``(x, y, z, dx, dy, dz, heading)``: ``(x, y, z)`` is the box centre,
``dx`` the length along the heading direction, ``dy`` the width, ``dz`` the height (along +z), and
``heading`` the yaw about +z measured from +x (OpenPCDet). Everything here is pure torch, works on any
device, and follows the dtype of its inputs. IoU is a target/metric computation and is not differentiable
in a useful way (it is computed under ``torch.no_grad`` semantics by callers).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_boxes",
    "rotate_points_z",
    "points_to_box_frame",
    "box_corners",
    "points_in_boxes",
    "points_in_boxes_pairs",
    "boxes_intersection_bev",
    "boxes_iou_bev",
    "boxes_iou3d",
    "boxes_iou3d_pairs",
    "limit_angle",
]


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``boxes`` is a floating ``[K, 7]`` tensor."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 7:
        raise ValueError(f"{name}: expected a 2-D tensor [K, 7] (x, y, z, dx, dy, dz, heading), "
                         f"got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {boxes.dtype}")


def limit_angle(angle: Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> Tensor:
    """Wrap ``angle`` into ``[-offset * period, (1 - offset) * period)``."""
    return angle - torch.floor(angle / period + offset) * period


def rotate_points_z(points: Tensor, angle: Tensor) -> Tensor:
    """Rotate ``points [..., 3]`` about +z by ``angle`` (broadcastable to ``points[..., 0]``; radians, CCW)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x * cos - y * sin, x * sin + y * cos, points[..., 2]], dim=-1)


def points_to_box_frame(points: Tensor, boxes: Tensor) -> Tensor:
    """Coordinates of ``points [N, 3]`` in the frame of each box ``[K, 7]`` -> ``[K, N, 3]``.

    The box frame has its origin at the box centre, +x along the heading and +z up, so a point is inside
    the box when ``|local| <= (dx, dy, dz) / 2`` component-wise.
    """
    shifted = points[None, :, :] - boxes[:, None, 0:3]
    return rotate_points_z(shifted, -boxes[:, 6:7].expand(-1, points.shape[0]))


def box_corners(boxes: Tensor) -> Tensor:
    """The 8 corners of each box ``[K, 7]`` -> ``[K, 8, 3]``.

    Corner order: bottom face (z = -dz/2) then top face, each counter-clockwise seen from above starting
    at (+dx/2, +dy/2): ``(+,+), (-,+), (-,-), (+,-)``.
    """
    check_boxes(boxes)
    signs = boxes.new_tensor([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                              [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]]) * 0.5
    local = signs[None, :, :] * boxes[:, None, 3:6]
    return rotate_points_z(local, boxes[:, 6:7].expand(-1, 8)) + boxes[:, None, 0:3]


def points_in_boxes(points: Tensor, boxes: Tensor, margin: float = 0.0) -> Tensor:
    """Membership mask ``[N, K]``: point ``n`` lies inside box ``k`` (faces enlarged by ``margin`` metres).

    Dense in ``N * K``; use :func:`points_in_boxes_pairs` for many boxes or batches.
    """
    check_boxes(boxes)
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected a 2-D tensor [N, >=3], got shape {tuple(points.shape)}")
    local = points_to_box_frame(points[:, :3].to(boxes.dtype), boxes)  # [K, N, 3]
    half = boxes[:, None, 3:6] * 0.5 + margin
    return (local.abs() <= half).all(dim=-1).transpose(0, 1)


def points_in_boxes_pairs(points: Tensor, boxes: Tensor, point_batch: Tensor | None = None,
                          box_batch: Tensor | None = None, margin: float = 0.0,
                          chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Sparse (point, box) membership pairs, only within the same batch element.

    A cheap circumscribed-circle test in the bird's-eye view prunes candidates before the exact test; boxes
    are processed ``chunk_size`` at a time so memory stays ``O(N * chunk_size)``.

    Returns:
        ``(point_index [P], box_index [P])`` long, sorted by box then point.
    """
    check_boxes(boxes)
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected a 2-D tensor [N, >=3], got shape {tuple(points.shape)}")
    if (point_batch is None) != (box_batch is None):
        raise ValueError("point_batch and box_batch: give both or neither")
    xyz = points[:, :3].to(boxes.dtype)
    point_parts, box_parts = [], []
    for start in range(0, boxes.shape[0], chunk_size):
        chunk = boxes[start:start + chunk_size]
        radius = 0.5 * torch.linalg.vector_norm(chunk[:, 3:5], dim=1) + margin
        dist2 = ((xyz[None, :, :2] - chunk[:, None, :2]) ** 2).sum(-1)  # [k, N]
        near = dist2 <= radius[:, None] ** 2
        if point_batch is not None:
            near &= point_batch[None, :] == box_batch[start:start + chunk_size, None]
        box_local, point_local = near.nonzero(as_tuple=True)
        if box_local.numel() == 0:
            continue
        local = rotate_points_z(xyz[point_local] - chunk[box_local, :3], -chunk[box_local, 6])
        inside = (local.abs() <= chunk[box_local, 3:6] * 0.5 + margin).all(dim=-1)
        point_parts.append(point_local[inside])
        box_parts.append(box_local[inside] + start)
    if not point_parts:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty.clone()
    return torch.cat(point_parts), torch.cat(box_parts)


def _bev_corners(boxes: Tensor) -> Tensor:
    """Counter-clockwise BEV corners ``[K, 4, 2]``."""
    return box_corners(boxes)[:, :4, :2]


def _inside_convex(points: Tensor, polygon: Tensor, eps: float) -> Tensor:
    """``points [..., P, 2]`` inside counter-clockwise ``polygon [..., 4, 2]`` (boundary included)."""
    edge_start = polygon
    edge_vec = torch.roll(polygon, shifts=-1, dims=-2) - polygon  # [..., 4, 2]
    rel = points[..., :, None, :] - edge_start[..., None, :, :]  # [..., P, 4, 2]
    cross = edge_vec[..., None, :, 0] * rel[..., 1] - edge_vec[..., None, :, 1] * rel[..., 0]
    return (cross >= -eps).all(dim=-1)


def _bev_intersection_area(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Area ``[A, B]`` of the intersection of the rotated BEV rectangles.

    The intersection polygon of two rectangles has as vertices the corners of each rectangle inside the
    other plus the edge-edge crossings; these (up to 24 candidates) are ordered by angle about their mean
    and the shoelace formula gives the area. Fully vectorised over all pairs.
    """
    num_a, num_b = boxes_a.shape[0], boxes_b.shape[0]
    poly_a = _bev_corners(boxes_a)[:, None].expand(num_a, num_b, 4, 2)
    poly_b = _bev_corners(boxes_b)[None, :].expand(num_a, num_b, 4, 2)
    return _quad_intersection_area(poly_a, poly_b)


def _quad_intersection_area(poly_a: Tensor, poly_b: Tensor) -> Tensor:
    """Area ``[A, B]`` of the intersection of counter-clockwise quadrilaterals ``poly_a[i, j]`` and
    ``poly_b[i, j]`` (both ``[A, B, 4, 2]``); the shared body of the all-pairs and the paired IoU."""
    num_a, num_b = poly_a.shape[0], poly_a.shape[1]
    eps = 1e-12 if poly_a.dtype == torch.float64 else 1e-6
    a_in_b = _inside_convex(poly_a, poly_b, eps)  # [A, B, 4]
    b_in_a = _inside_convex(poly_b, poly_a, eps)
    # Edge i of a against edge j of b: p + t r = q + u s with t, u in [0, 1].
    p = poly_a[:, :, :, None, :]
    r = (torch.roll(poly_a, -1, dims=2) - poly_a)[:, :, :, None, :]
    q = poly_b[:, :, None, :, :]
    s = (torch.roll(poly_b, -1, dims=2) - poly_b)[:, :, None, :, :]
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]  # [A, B, 4, 4]
    qp = q - p
    parallel = denom.abs() <= eps
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / safe
    u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    crossing_valid = ~parallel & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    crossings = (p + t[..., None] * r).reshape(num_a, num_b, 16, 2)
    candidates = torch.cat([poly_a, poly_b, crossings], dim=2)  # [A, B, 24, 2]
    valid = torch.cat([a_in_b, b_in_a, crossing_valid.reshape(num_a, num_b, 16)], dim=2)
    count = valid.sum(dim=2)
    weights = valid.to(candidates.dtype)[..., None]
    centre = (candidates * weights).sum(2) / count.clamp(min=1)[..., None].to(candidates.dtype)
    rel = candidates - centre[:, :, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, float("inf")))
    ordered = torch.gather(candidates, 2, angle.argsort(dim=2)[..., None].expand(-1, -1, -1, 2))
    # Invalid slots (sorted last) repeat the last valid vertex: they add zero to the shoelace sum, and the
    # wrap-around term from slot 23 to slot 0 closes the polygon.
    slot = torch.arange(24, device=poly_a.device)[None, None, :]
    slot = torch.minimum(slot, (count - 1).clamp(min=0)[..., None])
    ordered = torch.gather(ordered, 2, slot[..., None].expand(-1, -1, -1, 2))
    following = torch.roll(ordered, -1, dims=2)
    cross = ordered[..., 0] * following[..., 1] - ordered[..., 1] * following[..., 0]
    area = 0.5 * cross.sum(dim=2).abs()
    return torch.where(count >= 3, area, torch.zeros_like(area))


def boxes_intersection_bev(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Area ``[A, B]`` of the intersection of the rotated bird's-eye-view rectangles of boxes ``[A, 7]`` and
    ``[B, 7]``: the polygon ``R(heading) [+-dx/2, +-dy/2] + (x, y)`` of each box, intersected pairwise
    (``boxes_iou_bev = inter / (dx_a dy_a + dx_b dy_b - inter)`` uses the same areas)."""
    check_boxes(boxes_a, "boxes_a")
    check_boxes(boxes_b, "boxes_b")
    if boxes_a.shape[0] == 0 or boxes_b.shape[0] == 0:
        return boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    return _bev_intersection_area(boxes_a, boxes_b)


def boxes_iou_bev(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Rotated bird's-eye-view IoU ``[A, B]`` of boxes ``[A, 7]`` and ``[B, 7]``."""
    check_boxes(boxes_a, "boxes_a")
    check_boxes(boxes_b, "boxes_b")
    if boxes_a.shape[0] == 0 or boxes_b.shape[0] == 0:
        return boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    inter = _bev_intersection_area(boxes_a, boxes_b)
    area_a = (boxes_a[:, 3] * boxes_a[:, 4])[:, None]
    area_b = (boxes_b[:, 3] * boxes_b[:, 4])[None, :]
    return _intersection_over_union(inter, area_a, area_b)


def _intersection_over_union(inter: Tensor, size_a: Tensor, size_b: Tensor) -> Tensor:
    union = (size_a + size_b - inter).clamp(min=torch.finfo(inter.dtype).tiny)
    return (inter / union).clamp(0.0, 1.0)


def boxes_iou3d(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Rotated 3D IoU ``[A, B]`` (BEV intersection times vertical overlap over the volume union)."""
    check_boxes(boxes_a, "boxes_a")
    check_boxes(boxes_b, "boxes_b")
    if boxes_a.shape[0] == 0 or boxes_b.shape[0] == 0:
        return boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    inter_bev = _bev_intersection_area(boxes_a, boxes_b)
    top = torch.minimum((boxes_a[:, 2] + boxes_a[:, 5] / 2)[:, None], (boxes_b[:, 2] + boxes_b[:, 5] / 2)[None])
    bottom = torch.maximum((boxes_a[:, 2] - boxes_a[:, 5] / 2)[:, None], (boxes_b[:, 2] - boxes_b[:, 5] / 2)[None])
    inter = inter_bev * (top - bottom).clamp(min=0)
    vol_a = boxes_a[:, 3:6].prod(dim=1)[:, None]
    vol_b = boxes_b[:, 3:6].prod(dim=1)[None, :]
    return _intersection_over_union(inter, vol_a, vol_b)


def boxes_iou3d_pairs(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Rotated 3D IoU ``[N]`` of matched pairs ``(boxes_a[i], boxes_b[i])``, boxes ``[N, 7]`` each.

    The diagonal of :func:`boxes_iou3d` computed for the ``N`` pairs only (``O(N)``, not ``O(N^2)``), as
    OpenPCDet's ``boxes_aligned_iou3d_gpu``; used for IoU targets of matched predictions.
    """
    check_boxes(boxes_a, "boxes_a")
    check_boxes(boxes_b, "boxes_b")
    if boxes_a.shape[0] != boxes_b.shape[0]:
        raise ValueError(f"boxes_b: expected as many boxes as boxes_a ({boxes_a.shape[0]}), got {boxes_b.shape[0]}")
    if boxes_a.shape[0] == 0:
        return boxes_a.new_zeros(0)
    inter_bev = _quad_intersection_area(_bev_corners(boxes_a)[:, None], _bev_corners(boxes_b)[:, None])[:, 0]
    top = torch.minimum(boxes_a[:, 2] + boxes_a[:, 5] / 2, boxes_b[:, 2] + boxes_b[:, 5] / 2)
    bottom = torch.maximum(boxes_a[:, 2] - boxes_a[:, 5] / 2, boxes_b[:, 2] - boxes_b[:, 5] / 2)
    inter = inter_bev * (top - bottom).clamp(min=0)
    return _intersection_over_union(inter, boxes_a[:, 3:6].prod(dim=1), boxes_b[:, 3:6].prod(dim=1))
