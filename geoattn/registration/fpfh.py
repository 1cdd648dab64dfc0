"""Classical baseline: Open3D FPFH + RANSAC + point-to-plane ICP (Open3D's global registration recipe).

With voxel size ``v``: voxel downsampling at ``v``; normals from a hybrid search (radius 2v, 30 neighbours);
FPFH (radius 5v, 100 neighbours); feature-matching RANSAC (mutual filter, distance 1.5v, edge-length 0.9
and distance checkers, 100k iterations, confidence 0.999); point-to-plane ICP on clouds downsampled at
``v/2`` with threshold ``0.4 v`` (50 iterations).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from geoattn.registration.io import check_cloud, check_downsampled

__all__ = ["fpfh_registration", "icp_refine"]


def _prepare(points: np.ndarray, voxel_size: float):
    import open3d as o3d

    registration = o3d.pipelines.registration
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    down = cloud.voxel_down_sample(voxel_size)
    check_downsampled(len(down.points), voxel_size)
    down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel_size, max_nn=30))
    feature = registration.compute_fpfh_feature(
        down, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel_size, max_nn=100)
    )
    fine = cloud.voxel_down_sample(voxel_size / 2)
    fine.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=voxel_size, max_nn=30))
    return down, feature, fine


def fpfh_registration(src: torch.Tensor, tgt: torch.Tensor, voxel_size: float = 0.05, seed: int = 0,
                      max_iterations: int = 100000, confidence: float = 0.999, icp: bool = True) -> dict:
    """Register ``src [N, 3]`` onto ``tgt [M, 3]``; returns ``transform`` (4x4 float64 tensor),
    ``fitness``, ``inlier_rmse``, ``num_correspondences`` and per-stage ``timings`` (seconds)."""
    import open3d as o3d

    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence: expected a probability in [0, 1], got {confidence}")
    check_cloud(src, "src")
    check_cloud(tgt, "tgt")
    if not voxel_size > 0 or not math.isfinite(voxel_size):
        raise ValueError(f"voxel_size: expected a positive size, got {voxel_size}")
    registration = o3d.pipelines.registration
    start = time.perf_counter()
    src_down, src_feat, src_fine = _prepare(src.detach().cpu().double().numpy(), voxel_size)
    tgt_down, tgt_feat, tgt_fine = _prepare(tgt.detach().cpu().double().numpy(), voxel_size)
    prepared = time.perf_counter()
    o3d.utility.random.seed(int(seed))
    distance = 1.5 * voxel_size
    result = registration.registration_ransac_based_on_feature_matching(
        src_down, tgt_down, src_feat, tgt_feat, True, distance,
        registration.TransformationEstimationPointToPoint(False), 3,
        [registration.CorrespondenceCheckerBasedOnEdgeLength(0.9),
         registration.CorrespondenceCheckerBasedOnDistance(distance)],
        registration.RANSACConvergenceCriteria(max_iterations, confidence),
    )
    global_done = time.perf_counter()
    transform = np.asarray(result.transformation)
    fitness, rmse, correspondences = result.fitness, result.inlier_rmse, len(result.correspondence_set)
    if icp:
        refined = registration.registration_icp(
            src_fine, tgt_fine, 0.4 * voxel_size, transform,
            registration.TransformationEstimationPointToPlane(),
            registration.ICPConvergenceCriteria(max_iteration=50),
        )
        transform, fitness, rmse = np.asarray(refined.transformation), refined.fitness, refined.inlier_rmse
    end = time.perf_counter()
    return {
        "transform": torch.from_numpy(transform.copy()),
        "fitness": float(fitness),
        "inlier_rmse": float(rmse),
        "num_correspondences": int(correspondences),
        "num_points": (len(src_down.points), len(tgt_down.points)),
        "timings": {"prepare": prepared - start, "global": global_done - prepared, "icp": end - global_done},
    }


def icp_refine(src: torch.Tensor, tgt: torch.Tensor, transform: torch.Tensor, voxel_size: float,
               max_iterations: int = 50) -> torch.Tensor:
    """Point-to-plane ICP from ``transform`` on clouds downsampled at ``voxel_size / 2`` (threshold 0.4 v)."""
    import open3d as o3d

    registration = o3d.pipelines.registration
    clouds = []
    for points in (src, tgt):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.detach().cpu().double().numpy()))
        cloud = cloud.voxel_down_sample(voxel_size / 2)
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=voxel_size, max_nn=30))
        clouds.append(cloud)
    refined = registration.registration_icp(
        clouds[0], clouds[1], 0.4 * voxel_size, transform.detach().cpu().double().numpy(),
        registration.TransformationEstimationPointToPlane(),
        registration.ICPConvergenceCriteria(max_iteration=max_iterations),
    )
    return torch.from_numpy(np.asarray(refined.transformation).copy())
