"""Registration metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.registration.metrics import (inlier_ratio, information_rmse, mean_distance_rmse,
                                          relative_rotation_error, relative_translation_error,
                                          rotation_to_quaternion, summarize_benchmark)
from geoattn.sparse.geometry import make_transform


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_rre_rte_and_inlier_ratio():
    a = make_transform(_rot_z(10), torch.tensor([1.0, 0, 0], dtype=torch.float64))
    b = make_transform(_rot_z(35), torch.tensor([1.0, 0.3, 0.4], dtype=torch.float64))
    assert float(relative_rotation_error(a, b)) == pytest.approx(25.0)
    assert float(relative_translation_error(a, b)) == pytest.approx(0.5)
    src = torch.zeros(4, 3, dtype=torch.float64)
    tgt = torch.tensor([[0.0, 0, 0], [0.05, 0, 0], [0.2, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    assert inlier_ratio(src, tgt, torch.eye(4, dtype=torch.float64)) == 0.5
    assert inlier_ratio(src[:0], tgt[:0], torch.eye(4)) == 0.0
    assert mean_distance_rmse(src + 1, a, a) == 0.0
    with pytest.raises(ValueError, match="estimate"):
        relative_rotation_error(torch.eye(3), b)


def test_quaternion_and_information_rmse():
    q = rotation_to_quaternion(_rot_z(90))
    assert torch.allclose(q, torch.tensor([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], dtype=torch.float64))
    for axis_matrix in (_rot_z(179), _rot_z(-120).T):
        q = rotation_to_quaternion(axis_matrix)
        assert q[0] >= 0 and torch.isclose(q.norm(), torch.tensor(1.0, dtype=torch.float64))
    truth = torch.eye(4, dtype=torch.float64)
    estimate = make_transform(torch.eye(3, dtype=torch.float64), torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64))
    info = torch.eye(6, dtype=torch.float64) * 5000
    assert information_rmse(estimate, truth, info) == pytest.approx(0.3)


def test_summarize_benchmark_scene_averages_and_non_consecutive_rr():
    rows = [
        {"scene": "a", "src": 1, "tgt": 0, "inlier_ratio": 0.5, "rmse": 0.1, "rre": 1.0, "rte": 0.01},  # consecutive
        {"scene": "a", "src": 5, "tgt": 0, "inlier_ratio": 0.01, "rmse": 0.5, "rre": 40.0, "rte": 1.0},
        {"scene": "a", "src": 7, "tgt": 0, "inlier_ratio": 0.2, "rmse": 0.1, "rre": 2.0, "rte": 0.05},
        {"scene": "b", "src": 9, "tgt": 2, "inlier_ratio": 0.3, "rmse": 0.05, "rre": 3.0, "rte": 0.02},
    ]
    s = summarize_benchmark(rows)
    assert s["registration_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["feature_matching_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert s["inlier_ratio"] == pytest.approx(((0.5 + 0.01 + 0.2) / 3 + 0.3) / 2)
    assert s["median_rre"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="records"):
        summarize_benchmark([])
