"""Pose estimators recover known motions from noisy correspondences with outliers."""
from __future__ import annotations

import pytest
import torch

from geoattn.registration.metrics import relative_rotation_error, relative_translation_error
from geoattn.registration.pose import (compatibility_registration, local_to_global_registration, point_to_plane_icp,
                                       ransac_registration)
from geoattn.sparse.geometry import estimate_normals, make_transform, quaternion_to_matrix, random_rotation, transform_points


def _problem(n=300, outliers=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = make_transform(random_rotation(generator=g, dtype=torch.float64), torch.randn(3, generator=g,
                                                                                           dtype=torch.float64))
    src = torch.rand(n, 3, generator=g, dtype=torch.float64) * 3
    tgt = transform_points(src, truth) + 0.005 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    bad = torch.rand(n, generator=g) < outliers
    tgt[bad] = torch.rand(int(bad.sum()), 3, generator=g, dtype=torch.float64) * 3
    patch = torch.arange(n) // 10
    # keep a few patches clean so local hypotheses exist
    for p in range(3):
        sl = slice(p * 10, p * 10 + 10)
        tgt[sl] = transform_points(src[sl], truth)
    return src, tgt, truth, patch


def test_lgr_recovers_transform():
    src, tgt, truth, patch = _problem()
    estimate = local_to_global_registration(src, tgt, torch.ones(src.size(0), dtype=torch.float64), patch)
    assert float(relative_rotation_error(estimate.transform, truth)) < 1.0
    assert float(relative_translation_error(estimate.transform, truth)) < 0.02
    assert estimate.inliers.sum() > 100


def test_ransac_recovers_transform_and_is_seeded():
    src, tgt, truth, _ = _problem(outliers=0.7, seed=1)
    run = lambda: ransac_registration(src, tgt, distance=0.05, generator=torch.Generator().manual_seed(3))  # noqa: E731
    a, b = run(), run()
    assert torch.equal(a.transform, b.transform)
    assert float(relative_rotation_error(a.transform, truth)) < 1.0


def test_degenerate_and_bad_inputs():
    few = torch.rand(2, 3)
    assert torch.equal(local_to_global_registration(few, few, torch.ones(2), torch.zeros(2, dtype=torch.long))
                       .transform, torch.eye(4))
    assert torch.equal(ransac_registration(few, few).transform, torch.eye(4))
    with pytest.raises(ValueError, match="src, tgt"):
        ransac_registration(torch.rand(5, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match="confidence"):
        ransac_registration(torch.rand(5, 3), torch.rand(5, 3), confidence=1000)
    with pytest.raises(ValueError, match="weights"):
        local_to_global_registration(torch.rand(5, 3), torch.rand(5, 3), torch.ones(4), torch.zeros(5))


def test_compatibility_recovers_transform_at_a_low_inlier_ratio():
    # 95 % outliers and no clean patches: one minimal sample in 8000 is all-inlier, yet the second-order
    # compatibility of the 5 % inliers singles them out
    src, tgt, truth, _ = _problem(n=1000, outliers=0.95, seed=2)
    tgt[:30] = torch.rand(30, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3  # no clean patches
    estimate = compatibility_registration(src, tgt, acceptance_radius=0.05)
    assert float(relative_rotation_error(estimate.transform, truth)) < 1.0
    assert float(relative_translation_error(estimate.transform, truth)) < 0.02
    true_inliers = (transform_points(src, truth) - tgt).norm(dim=1) < 0.05
    assert int((estimate.inliers & true_inliers).sum()) >= 0.9 * int(true_inliers.sum())


def test_compatibility_is_deterministic_invariant_and_subsets_large_inputs():
    src, tgt, truth, _ = _problem(n=400, outliers=0.8, seed=4)
    weights = torch.rand(400, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = compatibility_registration(src, tgt, weights, acceptance_radius=0.05)
    assert torch.equal(a.transform, compatibility_registration(src, tgt, weights, acceptance_radius=0.05).transform)
    # rotating the source clouds rotates the answer (distances alone decide which correspondences agree)
    motion = make_transform(random_rotation(generator=torch.Generator().manual_seed(6), dtype=torch.float64),
                            torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    moved = compatibility_registration(transform_points(src, motion), tgt, weights, acceptance_radius=0.05)
    assert torch.allclose(moved.transform @ motion, a.transform, atol=1e-8)
    assert torch.equal(moved.inliers, a.inliers)
    # a compatibility matrix over the 150 most confident correspondences still finds the motion
    small = compatibility_registration(src, tgt, weights, acceptance_radius=0.05, max_correspondences=150)
    assert float(relative_rotation_error(small.transform, truth)) < 1.0


def test_compatibility_degenerate_and_bad_inputs():
    few = torch.rand(2, 3)
    assert torch.equal(compatibility_registration(few, few).transform, torch.eye(4))
    three = torch.rand(3, 3, dtype=torch.float64)
    assert torch.allclose(compatibility_registration(three, three + 1.0).transform[:3, 3],
                          torch.ones(3, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="src, tgt"):
        compatibility_registration(torch.rand(5, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match="weights"):
        compatibility_registration(torch.rand(5, 3), torch.rand(5, 3), torch.ones(4))
    with pytest.raises(ValueError, match="num_seeds"):
        compatibility_registration(torch.rand(5, 3), torch.rand(5, 3), num_seeds=0)


def _surface(n=2000, seed=0):
    """Points on a wavy height field (no sliding symmetry), in float64."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2
    z = 0.3 * torch.sin(3 * xy[:, :1]) * torch.cos(2 * xy[:, 1:]) + 0.1 * xy[:, :1] ** 2
    return torch.cat([xy, z], 1)


def test_point_to_plane_icp_refines_a_close_pose():
    tgt = _surface()
    truth = make_transform(quaternion_to_matrix(torch.tensor([1.0, 0.02, -0.03, 0.01], dtype=torch.float64)),
                           torch.tensor([0.05, -0.04, 0.03], dtype=torch.float64))
    src = transform_points(_surface(seed=1), torch.linalg.inv(truth))  # another sampling of the same surface
    start = make_transform(quaternion_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.03], dtype=torch.float64)),
                           torch.tensor([0.1, 0.0, -0.05], dtype=torch.float64)) @ truth
    refined = point_to_plane_icp(src, tgt, estimate_normals(tgt), start, max_distance=0.3)
    assert float(relative_rotation_error(start, truth)) > 3.0
    assert float(relative_rotation_error(refined, truth)) < 0.3
    assert float(relative_translation_error(refined, truth)) < 0.01
    assert refined.dtype == torch.float64


def test_point_to_plane_icp_degenerate_and_bad_inputs():
    tgt = _surface(100)
    far = make_transform(torch.eye(3, dtype=torch.float64), torch.tensor([10.0, 0, 0], dtype=torch.float64))
    # no pair within max_distance: the pose comes back unchanged
    assert torch.equal(point_to_plane_icp(tgt, tgt, estimate_normals(tgt), far, 0.1), far)
    with pytest.raises(ValueError, match="tgt_normal"):
        point_to_plane_icp(tgt, tgt, tgt[:5], far, 0.1)
    with pytest.raises(ValueError, match="transform"):
        point_to_plane_icp(tgt, tgt, tgt, far[:3], 0.1)
    with pytest.raises(ValueError, match="max_distance"):
        point_to_plane_icp(tgt, tgt, tgt, far, 0.0)
