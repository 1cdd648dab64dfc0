"""Rigid pose from weighted correspondences: second-order spatial compatibility (SC2), local-to-global
registration (LGR) and RANSAC; point-to-plane ICP to refine a pose on the clouds themselves.

Both return a 4x4 ``T`` mapping source into target (``p' = p @ R.T + t``) and are deterministic
given their inputs (RANSAC takes a ``torch.Generator``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from geoattn.sparse.geometry import axis_angle_to_matrix, make_transform, transform_points, weighted_kabsch
from geoattn.sparse.neighbors import knn

__all__ = ["PoseEstimate", "compatibility_registration", "local_to_global_registration", "point_to_plane_icp",
           "ransac_registration", "refine_pose"]


class PoseEstimate(NamedTuple):
    """An estimated transform with the inlier mask of the correspondences it was scored on."""

    transform: Tensor  # [4, 4]
    inliers: Tensor  # [C] bool


def _check_correspondences(src: Tensor, tgt: Tensor, weights: Tensor | None) -> None:
    if src.dim() != 2 or src.size(1) != 3 or src.shape != tgt.shape:
        raise ValueError(
            f"src, tgt: expected two [C, 3] tensors of equal shape, got {tuple(src.shape)} and {tuple(tgt.shape)}"
        )
    if weights is not None and weights.shape != src.shape[:1]:
        raise ValueError(f"weights: expected shape ({src.size(0)},), got {tuple(weights.shape)}")


def _identity(like: Tensor) -> Tensor:
    return torch.eye(4, dtype=like.dtype, device=like.device)


def _residuals(transforms: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
    """``|T_h src_c - tgt_c|`` for hypotheses ``[H, 4, 4]`` -> ``[H, C]``."""
    moved = src.unsqueeze(0) @ transforms[:, :3, :3].transpose(1, 2) + transforms[:, None, :3, 3]
    return (moved - tgt.unsqueeze(0)).norm(dim=-1)


def refine_pose(transform: Tensor, src: Tensor, tgt: Tensor, weights: Tensor, radius: float,
                iterations: int = 5) -> PoseEstimate:
    """Re-fit by weighted SVD on the correspondences within ``radius`` of ``transform``, ``iterations`` times."""
    inliers = (transform_points(src, transform) - tgt).norm(dim=1) < radius
    for _ in range(iterations):
        if int(inliers.sum()) < 3:
            break
        transform = weighted_kabsch(src, tgt, weights * inliers.to(weights.dtype))
        inliers = (transform_points(src, transform) - tgt).norm(dim=1) < radius
    return PoseEstimate(transform, inliers)


def _refine_best_hypothesis(hypotheses: Tensor, src: Tensor, tgt: Tensor, weights: Tensor, radius: float,
                            iterations: int) -> PoseEstimate:
    """The hypothesis ``[H, 4, 4]`` with most correspondences within ``radius``, refined by :func:`refine_pose`."""
    inlier_counts = (_residuals(hypotheses, src, tgt) < radius).sum(dim=1)
    return refine_pose(hypotheses[int(inlier_counts.argmax())], src, tgt, weights, radius, iterations)


def local_to_global_registration(
    src: Tensor,
    tgt: Tensor,
    weights: Tensor,
    patch: Tensor,
    acceptance_radius: float = 0.1,
    min_local_correspondences: int = 3,
    refine_iterations: int = 5,
) -> PoseEstimate:
    """GeoTransformer's LGR: one weighted-Procrustes hypothesis per patch pair, the one with the most
    global inliers (residual < ``acceptance_radius``) wins, then weighted SVD on its inliers.

    ``src, tgt [C, 3]``, ``weights [C]``, ``patch [C]`` (patch-pair id of each correspondence).
    With fewer than three correspondences the identity is returned with no inliers.
    """
    _check_correspondences(src, tgt, weights)
    if src.size(0) < 3:
        return PoseEstimate(_identity(src), torch.zeros(src.size(0), dtype=torch.bool, device=src.device))
    patch_ids, local = torch.unique(patch, return_inverse=True)
    counts = torch.bincount(local, minlength=patch_ids.numel())
    usable = counts >= min_local_correspondences
    if not bool(usable.any()):
        transform = weighted_kabsch(src, tgt, weights)
        return refine_pose(transform, src, tgt, weights, acceptance_radius, refine_iterations)
    # pad each patch's correspondences into [P, L, 3] with zero weights on the padding
    order = torch.argsort(local, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(src.size(0), device=src.device) - starts[local[order]]
    width = int(counts.max())
    padded_src = src.new_zeros(patch_ids.numel(), width, 3)
    padded_tgt = src.new_zeros(patch_ids.numel(), width, 3)
    padded_w = weights.new_zeros(patch_ids.numel(), width)
    padded_src[local[order], slot] = src[order]
    padded_tgt[local[order], slot] = tgt[order]
    padded_w[local[order], slot] = weights[order]
    hypotheses = weighted_kabsch(padded_src[usable], padded_tgt[usable], padded_w[usable])
    return _refine_best_hypothesis(hypotheses, src, tgt, weights, acceptance_radius, refine_iterations)


def ransac_registration(
    src: Tensor,
    tgt: Tensor,
    weights: Tensor | None = None,
    distance: float = 0.05,
    max_iterations: int = 50000,
    confidence: float = 0.999,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    refine_iterations: int = 5,
) -> PoseEstimate:
    """RANSAC over correspondences with early stopping.

    Minimal samples of three are drawn with probability proportional to ``weights`` (uniform when
    ``None``), ``batch_size`` hypotheses at a time; a sample whose edge lengths disagree by more than
    10 % between the clouds is rejected before scoring (Open3D's edge-length checker). The loop stops
    once ``log(1 - confidence) / log(1 - w^3)`` hypotheses were scored, ``w`` being the best inlier
    fraction so far (``confidence`` in [0, 1)). The winner is re-fitted on its inliers.
    """
    _check_correspondences(src, tgt, weights)
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence: expected a probability in [0, 1), got {confidence}")
    count = src.size(0)
    if count < 3:
        return PoseEstimate(_identity(src), torch.zeros(count, dtype=torch.bool, device=src.device))
    probability = (weights if weights is not None else src.new_ones(count)).clamp(min=0).double()
    if float(probability.sum()) <= 0:
        probability = torch.ones_like(probability)
    best_transform, best_count = _identity(src), -1
    scored, required = 0, max_iterations
    while scored < min(required, max_iterations):
        draws = min(batch_size, max_iterations - scored)
        sample = torch.multinomial(probability.expand(draws, -1), 3, replacement=False, generator=generator)
        sample = sample.to(src.device)
        s, t = src[sample], tgt[sample]
        edge_s = (s - s.roll(1, dims=1)).norm(dim=-1)
        edge_t = (t - t.roll(1, dims=1)).norm(dim=-1)
        consistent = ((edge_s > 0.9 * edge_t) & (edge_t > 0.9 * edge_s)).all(dim=1)
        scored += draws
        if not bool(consistent.any()):
            continue
        hypotheses = weighted_kabsch(s[consistent], t[consistent])
        inlier_counts = (_residuals(hypotheses, src, tgt) < distance).sum(dim=1)
        top = int(inlier_counts.argmax())
        if int(inlier_counts[top]) > best_count:
            best_count, best_transform = int(inlier_counts[top]), hypotheses[top]
            fraction = best_count / count
            if fraction >= 1.0:
                break
            if fraction > 0:
                required = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - fraction**3))
    final_weights = weights if weights is not None else src.new_ones(count)
    return refine_pose(best_transform, src, tgt, final_weights, distance, refine_iterations)


def compatibility_registration(
    src: Tensor,
    tgt: Tensor,
    weights: Tensor | None = None,
    acceptance_radius: float = 0.1,
    compatibility_threshold: float | None = None,
    max_correspondences: int = 1000,
    num_seeds: int = 100,
    seed_size: int = 30,
    refine_iterations: int = 5,
) -> PoseEstimate:
    r"""Pose from second-order spatial compatibility (in the spirit of SC\ :sup:`2`-PCR, Chen et al. 2022).

    A rigid motion keeps distances, so two inlier correspondences :math:`i, j` satisfy
    :math:`|\lVert s_i - s_j\rVert - \lVert t_i - t_j\rVert| < \tau` (compatibility :math:`A_{ij} = 1`).
    Outliers are compatible with some inliers by chance, but rarely with the same ones, so the second-order
    score :math:`S_{ij} = A_{ij} \sum_k A_{ik} A_{kj}` (common compatible correspondences) is large for inlier
    pairs only. The ``num_seeds`` correspondences of highest degree :math:`\sum_j A_{ij}` each give one
    hypothesis: the Kabsch fit of the seed and its ``seed_size`` partners of highest :math:`S` (those with
    :math:`S > 0`). The hypothesis with the most correspondences within ``acceptance_radius`` wins and is
    re-fitted on its inliers (:func:`refine_pose`). It needs no random sampling, so its cost does not grow
    as the inlier ratio falls, unlike RANSAC, and it is deterministic and rotation invariant.

    Args:
        src, tgt: ``[C, 3]`` correspondences; weights: ``[C]`` confidences (uniform when ``None``).
        acceptance_radius: inlier residual for scoring and refinement.
        compatibility_threshold: :math:`\tau` (default ``acceptance_radius``).
        max_correspondences: the compatibility matrix uses at most this many correspondences, the most
            confident ones (memory and time are quadratic in it); hypotheses are scored on all of them.
        num_seeds, seed_size: hypotheses and correspondences per hypothesis.

    Returns:
        :class:`PoseEstimate`; with fewer than three correspondences, the identity and no inliers.
    """
    _check_correspondences(src, tgt, weights)
    count = src.size(0)
    if count < 3:
        return PoseEstimate(_identity(src), torch.zeros(count, dtype=torch.bool, device=src.device))
    for name, value in (("num_seeds", num_seeds), ("seed_size", seed_size), ("max_correspondences", max_correspondences)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    weights = weights if weights is not None else src.new_ones(count)
    tau = acceptance_radius if compatibility_threshold is None else compatibility_threshold
    if count > max_correspondences:
        subset = weights.topk(max_correspondences).indices
        sub_src, sub_tgt = src[subset], tgt[subset]
    else:
        sub_src, sub_tgt = src, tgt
    compatible = ((torch.cdist(sub_src, sub_src) - torch.cdist(sub_tgt, sub_tgt)).abs() < tau).to(src.dtype)
    compatible.fill_diagonal_(0)
    seeds = compatible.sum(1).topk(min(num_seeds, compatible.size(0))).indices
    seed_rows = compatible[seeds]
    second_order = seed_rows * (seed_rows @ compatible)  # [seeds, K]
    partner_score, partners = second_order.topk(min(seed_size, compatible.size(0)), dim=1)
    members = torch.cat([seeds[:, None], partners], dim=1)
    member_weights = torch.cat([torch.ones_like(partner_score[:, :1]), (partner_score > 0).to(src.dtype)], dim=1)
    hypotheses = weighted_kabsch(sub_src[members], sub_tgt[members], member_weights)
    return _refine_best_hypothesis(hypotheses, src, tgt, weights, acceptance_radius, refine_iterations)


def point_to_plane_icp(
    src: Tensor,
    tgt: Tensor,
    tgt_normal: Tensor,
    transform: Tensor,
    max_distance: float,
    iterations: int = 30,
    tolerance: float = 1e-6,
) -> Tensor:
    r"""Refine ``transform`` (source into target) by point-to-plane ICP on the clouds themselves.

    Each iteration pairs every moved source point with its nearest target point, keeps pairs closer than
    ``max_distance`` and solves the linearised problem
    :math:`\min_{\omega, \tau} \sum_i ((p_i - q_i)\cdot n_i + \omega\cdot(p_i \times n_i) + \tau\cdot n_i)^2`
    (a 6x6 normal system in float64) for a small rotation :math:`\omega` and translation :math:`\tau`,
    applied on the left. Stops after ``iterations`` or when the update is below ``tolerance`` (radians /
    units). With fewer than six pairs the pose is returned unchanged.

    ``src [N, 3]``, ``tgt [M, 3]``, ``tgt_normal [M, 3]`` (unit), ``transform [4, 4]`` -> ``[4, 4]`` (the
    dtype of ``transform``).
    """
    if src.dim() != 2 or src.size(1) != 3 or tgt.dim() != 2 or tgt.size(1) != 3:
        raise ValueError(f"src, tgt: expected [N, 3] and [M, 3], got {tuple(src.shape)} and {tuple(tgt.shape)}")
    if tgt_normal.shape != tgt.shape:
        raise ValueError(f"tgt_normal: expected shape {tuple(tgt.shape)} like tgt, got {tuple(tgt_normal.shape)}")
    if transform.shape != (4, 4):
        raise ValueError(f"transform: expected [4, 4], got {tuple(transform.shape)}")
    if not max_distance > 0:
        raise ValueError(f"max_distance: expected a positive distance, got {max_distance}")
    current = transform.double()
    src64, tgt64, normal64 = src.double(), tgt.double(), tgt_normal.double()
    for _ in range(iterations):
        moved = transform_points(src64, current)
        nearest, dist2 = knn(tgt64, moved, 1)
        close = (nearest[:, 0] >= 0) & (dist2[:, 0] < max_distance**2)
        if int(close.sum()) < 6:
            break
        p, q, n = moved[close], tgt64[nearest[close, 0]], normal64[nearest[close, 0]]
        design = torch.cat([torch.linalg.cross(p, n, dim=1), n], dim=1)  # [K, 6]
        residual = ((p - q) * n).sum(1)
        normal_matrix = design.T @ design + 1e-12 * torch.eye(6, dtype=torch.float64, device=src.device)
        update = torch.linalg.solve(normal_matrix, -(design.T @ residual))
        omega, tau = update[:3], update[3:]
        current = make_transform(axis_angle_to_matrix(omega), tau) @ current
        if float(omega.norm()) < tolerance and float(tau.norm()) < tolerance:
            break
    return current.to(transform.dtype)
