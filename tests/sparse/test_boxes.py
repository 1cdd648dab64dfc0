import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.sparse.boxes import (box_corners, boxes_intersection_bev, boxes_iou3d, boxes_iou3d_pairs,
                                  boxes_iou_bev, limit_angle, points_in_boxes, points_in_boxes_pairs,
                                  points_to_box_frame)


def _random_boxes(num, generator, spread=2.0):
    centre = (torch.rand(num, 3, generator=generator, dtype=torch.float64) - 0.5) * spread
    size = torch.rand(num, 3, generator=generator, dtype=torch.float64) * 2 + 0.3
    heading = (torch.rand(num, 1, generator=generator, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([centre, size, heading], 1)


def _monte_carlo_iou(box_a, box_b, samples=200_000, bev=False):
    """Slow reference: fraction of uniform samples in the union's bounding region."""
    generator = torch.Generator().manual_seed(1)
    corners = torch.cat([box_corners(box_a[None])[0], box_corners(box_b[None])[0]])
    low, high = corners.min(0).values, corners.max(0).values
    pts = low + (high - low) * torch.rand(samples, 3, generator=generator, dtype=torch.float64)
    if bev:
        flat_a, flat_b = box_a.clone(), box_b.clone()
        flat_a[2] = flat_b[2] = 0.0
        flat_a[5] = flat_b[5] = 1e6
        box_a, box_b = flat_a, flat_b
    inside = points_in_boxes(pts, torch.stack([box_a, box_b]))
    return (inside.all(1).sum() / inside.any(1).sum().clamp(min=1)).item()


def test_corners_are_inside_and_symmetric():
    boxes = _random_boxes(5, torch.Generator().manual_seed(0))
    corners = box_corners(boxes)
    assert torch.allclose(corners.mean(1), boxes[:, :3])
    local = points_to_box_frame(corners[2], boxes[2:3])[0]
    assert torch.allclose(local.abs(), boxes[2, 3:6].expand(8, 3) / 2)


def test_points_in_boxes_matches_pairs():
    generator = torch.Generator().manual_seed(0)
    boxes = _random_boxes(7, generator)
    points = (torch.rand(500, 3, generator=generator, dtype=torch.float64) - 0.5) * 4
    dense = points_in_boxes(points, boxes)
    point_index, box_index = points_in_boxes_pairs(points, boxes, chunk_size=3)
    sparse = torch.zeros_like(dense)
    sparse[point_index, box_index] = True
    assert torch.equal(dense, sparse)
    assert dense.any()


def test_points_in_boxes_pairs_respects_batch():
    boxes = torch.tensor([[0, 0, 0, 2, 2, 2, 0.0], [0, 0, 0, 2, 2, 2, 0.0]])
    points = torch.zeros(3, 3)
    point_index, box_index = points_in_boxes_pairs(points, boxes, torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    assert sorted(zip(point_index.tolist(), box_index.tolist())) == [(0, 0), (1, 1), (2, 1)]
    empty = points_in_boxes_pairs(torch.zeros(0, 3), boxes)
    assert empty[0].numel() == 0


def test_iou_known_values():
    a = torch.tensor([[0, 0, 0, 2, 2, 2, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1, 0, 0, 2, 2, 2, 0.0], [0, 0, 0, 2, 2, 2, math.pi / 4], [5, 5, 0, 1, 1, 1, 0.0],
                      [0, 0, 1, 2, 2, 2, 0.0], [0, 0, 0, 2, 2, 2, math.pi / 2]], dtype=torch.float64)
    octagon = 8 * (math.sqrt(2) - 1)
    expected_bev = torch.tensor([1 / 3, octagon / (8 - octagon), 0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(boxes_iou_bev(a, b)[0], expected_bev, atol=1e-9)
    expected_3d = expected_bev.clone()
    expected_3d[3] = 1 / 3
    assert torch.allclose(boxes_iou3d(a, b)[0], expected_3d, atol=1e-9)
    assert boxes_iou3d(a, b[:0]).shape == (1, 0)


def test_intersection_bev_known_values():
    """4 x 2 rectangles: shifted by 1 along x -> 3 x 2 = 6; rotated 90 degrees -> the 2 x 2 centre square = 4;
    far apart -> 0; the areas agree with boxes_iou_bev = inter / (8 + 8 - inter)."""
    a = torch.tensor([[0, 0, 0, 4, 2, 1, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1, 0, 5, 4, 2, 3, 0.0], [0, 0, 0, 4, 2, 1, math.pi / 2], [10, 0, 0, 4, 2, 1, 0.3],
                      [1, 1, 0, 4, 2, 1, math.pi / 2]], dtype=torch.float64)
    inter = boxes_intersection_bev(a, b)
    # last: rotated box spans x in [0, 2], y in [-1, 3]; overlap with [-2, 2] x [-1, 1] is 2 x 2
    assert torch.allclose(inter[0], torch.tensor([6.0, 4.0, 0.0, 4.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(boxes_iou_bev(a, b), inter / (16 - inter), atol=1e-12)
    assert boxes_intersection_bev(a[:0], b).shape == (0, 4)
    assert boxes_intersection_bev(a, b[:0]).shape == (1, 0)
    with pytest.raises(ValueError, match="boxes_b"):
        boxes_intersection_bev(a, b[:, :5])


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000))
def test_iou_matches_monte_carlo(seed):
    boxes = _random_boxes(2, torch.Generator().manual_seed(seed), spread=1.5)
    fast = boxes_iou3d(boxes[:1], boxes[1:])[0, 0].item()
    assert abs(fast - _monte_carlo_iou(boxes[0], boxes[1])) < 0.01
    fast_bev = boxes_iou_bev(boxes[:1], boxes[1:])[0, 0].item()
    assert abs(fast_bev - _monte_carlo_iou(boxes[0], boxes[1], bev=True)) < 0.01
    # symmetric and invariant to a common rotation about z plus translation
    assert abs(boxes_iou3d(boxes[1:], boxes[:1])[0, 0].item() - fast) < 1e-9
    moved = boxes.clone()
    angle = 0.7
    cos, sin = math.cos(angle), math.sin(angle)
    moved[:, 0], moved[:, 1] = cos * boxes[:, 0] - sin * boxes[:, 1] + 3, sin * boxes[:, 0] + cos * boxes[:, 1]
    moved[:, 6] += angle
    assert abs(boxes_iou3d(moved[:1], moved[1:])[0, 0].item() - fast) < 1e-9


def test_limit_angle_range():
    angles = torch.linspace(-20, 20, 101, dtype=torch.float64)
    wrapped = limit_angle(angles)
    assert (wrapped >= -math.pi).all() and (wrapped < math.pi).all()
    assert torch.allclose(torch.cos(wrapped), torch.cos(angles))
    assert torch.allclose(torch.sin(wrapped), torch.sin(angles))


def test_bad_arguments():
    with pytest.raises(ValueError, match="boxes"):
        box_corners(torch.zeros(3, 6))
    with pytest.raises(TypeError, match="boxes"):
        boxes_iou_bev(torch.zeros(3, 7, dtype=torch.long), torch.zeros(1, 7))
    with pytest.raises(ValueError, match="points"):
        points_in_boxes(torch.zeros(3), torch.zeros(1, 7))
    with pytest.raises(ValueError, match="point_batch"):
        points_in_boxes_pairs(torch.zeros(3, 3), torch.zeros(1, 7), point_batch=torch.zeros(3, dtype=torch.long))


def test_iou3d_pairs_is_the_diagonal():
    gen = torch.Generator().manual_seed(7)
    a = torch.cat([torch.rand(25, 3, generator=gen) * 3, torch.rand(25, 3, generator=gen) + 0.5,
                   torch.rand(25, 1, generator=gen) * 6 - 3], dim=1).double()
    b = a + 0.3 * torch.randn(25, 7, generator=gen).double()
    b[:, 3:6] = b[:, 3:6].abs() + 0.1
    torch.testing.assert_close(boxes_iou3d_pairs(a, b), boxes_iou3d(a, b).diagonal(), rtol=0, atol=1e-13)
    assert boxes_iou3d_pairs(a[:0], b[:0]).shape == (0,)
