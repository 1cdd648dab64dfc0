"""3D pose metrics: MPJPE (P1), P-MPJPE (P2), N-MPJPE, PCK and AUC.

Poses are ``[..., V, 3]`` tensors (numpy arrays are accepted) in any length unit; errors come back in
the same unit (multiply metres by 1000 for the usual millimetres). Alignment runs per pose (over the
``V`` joints), in float64, and the result is returned in the input's floating dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor

from geoattn.sparse.geometry import weighted_kabsch

__all__ = ["mpjpe", "p_mpjpe", "n_mpjpe", "procrustes_align", "pck", "auc", "joint_errors"]


def _as_pair(prediction, target) -> tuple[Tensor, Tensor]:
    prediction = torch.as_tensor(prediction)
    target = torch.as_tensor(target, dtype=prediction.dtype, device=prediction.device)
    if not prediction.is_floating_point():
        raise TypeError(f"prediction: expected a floating tensor, got {prediction.dtype}")
    if prediction.shape != target.shape or prediction.dim() < 2:
        raise ValueError(f"prediction/target: expected equal shapes [..., V, D], got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    return prediction, target


def joint_errors(prediction, target) -> Tensor:
    """Euclidean error of every joint ``[..., V]``."""
    prediction, target = _as_pair(prediction, target)
    return torch.linalg.vector_norm(prediction - target, dim=-1)


def mpjpe(prediction, target) -> Tensor:
    """Mean per-joint position error: mean over all poses and joints of ``|p - q|``. Differentiable."""
    return joint_errors(prediction, target).mean()


def procrustes_align(prediction, target) -> Tensor:
    r"""``prediction`` aligned to ``target`` per pose by the optimal similarity transform.

    Minimises :math:`\sum_v |s R p_v + t - q_v|^2` over proper rotations. The optimal rotation is the
    rigid one (Kabsch with the reflection fix, :func:`geoattn.sparse.geometry.weighted_kabsch`); with
    centred points :math:`P, Q` the scale is then :math:`s = \sum_v \langle R p_v, q_v \rangle / |P|^2`.
    """
    prediction, target = _as_pair(prediction, target)
    p = prediction.double()
    q = target.double()
    if p.size(-1) != 3:
        raise ValueError(f"prediction: expected 3-D joints [..., V, 3], got shape {tuple(p.shape)}")
    rotation = weighted_kabsch(p, q)[..., :3, :3]
    p_centred = p - p.mean(-2, keepdim=True)
    q_mean = q.mean(-2, keepdim=True)
    rotated = p_centred @ rotation.transpose(-1, -2)
    norm = (p_centred ** 2).sum((-1, -2)).clamp_min(torch.finfo(torch.float64).tiny)
    scale = (rotated * (q - q_mean)).sum((-1, -2)) / norm
    return (scale[..., None, None] * rotated + q_mean).to(prediction.dtype)


def p_mpjpe(prediction, target) -> Tensor:
    """MPJPE after per-pose similarity Procrustes alignment (P2); reflections are not allowed."""
    prediction, target = _as_pair(prediction, target)
    return mpjpe(procrustes_align(prediction, target), target)


def n_mpjpe(prediction, target) -> Tensor:
    """MPJPE after the per-pose least-squares scale ``s = <p, q> / <p, p>`` (no rotation)."""
    prediction, target = _as_pair(prediction, target)
    numerator = (prediction * target).sum((-1, -2), keepdim=True)
    denominator = (prediction * prediction).sum((-1, -2), keepdim=True).clamp_min(torch.finfo(prediction.dtype).tiny)
    return mpjpe(numerator / denominator * prediction, target)


def pck(prediction, target, threshold: float = 0.15) -> Tensor:
    """Fraction of joints whose error is below ``threshold`` (0.15 = 150 mm for metre inputs)."""
    return (joint_errors(prediction, target) < threshold).to(torch.float64).mean()


def auc(prediction, target, max_threshold: float = 0.15, steps: int = 31) -> Tensor:
    """Mean PCK over ``steps`` thresholds evenly spaced in ``[0, max_threshold]`` (3DHP's AUC)."""
    if steps < 2:
        raise ValueError(f"steps: expected at least 2, got {steps}")
    errors = joint_errors(prediction, target).flatten().to(torch.float64)
    thresholds = torch.linspace(0.0, max_threshold, steps, dtype=torch.float64, device=errors.device)
    return (errors[None, :] < thresholds[:, None]).to(torch.float64).mean(1).mean()
