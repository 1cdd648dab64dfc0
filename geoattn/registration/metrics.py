"""Registration metrics: RRE, RTE, inlier ratio, mean-distance RMSE, the 3DMatch ``gt.info`` RMSE, and
scene-averaged IR / FMR / RR (3DMatch protocol, see the reference notes in the docs)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from geoattn.sparse.geometry import invert_transform, transform_points

__all__ = [
    "relative_rotation_error",
    "relative_translation_error",
    "inlier_ratio",
    "mean_distance_rmse",
    "information_rmse",
    "rotation_to_quaternion",
    "summarize_benchmark",
]


def _check_transform(name: str, value: Tensor) -> None:
    if value.shape[-2:] != (4, 4):
        raise ValueError(f"{name}: expected a [..., 4, 4] transform, got shape {tuple(value.shape)}")


def relative_rotation_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """RRE in degrees: ``arccos((tr(R_est^T R_gt) - 1) / 2)``."""
    _check_transform("estimate", estimate)
    _check_transform("truth", truth)
    product = estimate[..., :3, :3].transpose(-1, -2) @ truth[..., :3, :3]
    cos = ((product.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def relative_translation_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """RTE: ``|t_est - t_gt|`` (in the units of the clouds)."""
    _check_transform("estimate", estimate)
    _check_transform("truth", truth)
    return (estimate[..., :3, 3] - truth[..., :3, 3]).norm(dim=-1)


def inlier_ratio(src: Tensor, tgt: Tensor, transform: Tensor, radius: float = 0.1) -> float:
    """Fraction of correspondences with ``|T src - tgt| < radius`` (0 for no correspondence)."""
    if src.size(0) == 0:
        return 0.0
    return float(((transform_points(src, transform) - tgt).norm(dim=1) < radius).float().mean())


def mean_distance_rmse(points: Tensor, estimate: Tensor, truth: Tensor) -> float:
    """Mean over ``points`` of ``|T_gt p - T_est p|`` (the "RMSE" of rotated benchmarks)."""
    return float((transform_points(points, truth) - transform_points(points, estimate)).norm(dim=1).mean())


def rotation_to_quaternion(rotation: Tensor) -> Tensor:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a 3x3 rotation (float64)."""
    m = rotation.double()
    trace = float(m[0, 0] + m[1, 1] + m[2, 2])
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + float(m[0, 0] - m[1, 1] - m[2, 2]))
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + float(m[1, 1] - m[0, 0] - m[2, 2]))
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + float(m[2, 2] - m[0, 0] - m[1, 1]))
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    quaternion = torch.tensor([float(v) for v in q], dtype=torch.float64)
    return quaternion if quaternion[0] >= 0 else -quaternion


def information_rmse(estimate: Tensor, truth: Tensor, information: Tensor) -> float:
    """3DMatch/Redwood RMSE approximation ``sqrt(e^T I e / I[0, 0])`` with ``e = [t; q_xyz]`` of
    ``T_gt^-1 T_est`` and ``I`` the 6x6 ``gt.info`` matrix. Success is ``rmse <= 0.2``."""
    delta = invert_transform(truth.double()) @ estimate.double()
    error = torch.cat([delta[:3, 3], rotation_to_quaternion(delta[:3, :3])[1:]])
    info = information.double()
    return math.sqrt(max(float(error @ info @ error) / float(info[0, 0]), 0.0))


def summarize_benchmark(records: Iterable[Mapping], ir_threshold: float = 0.05, rmse_threshold: float = 0.2) -> dict:
    """Scene-averaged 3DMatch metrics from per-pair records.

    Each record: ``scene``, ``src`` / ``tgt`` fragment ids, ``inlier_ratio``, ``rmse`` (``gt.info``
    RMSE), ``rre``, ``rte``. IR and FMR average all pairs of a scene; RR counts non-consecutive pairs only
    (``|src - tgt| > 1``), as in the 3DMatch protocol. Each metric is averaged per scene, then over
    scenes; median RRE/RTE are over registered pairs.
    """
    scenes: dict[str, list[Mapping]] = {}
    for record in records:
        scenes.setdefault(record["scene"], []).append(record)
    if not scenes:
        raise ValueError("records: expected at least one evaluated pair, got none")
    per_scene = {}
    rre, rte = [], []
    for scene, rows in scenes.items():
        irs = [float(r["inlier_ratio"]) for r in rows]
        far = [r for r in rows if abs(int(r["src"]) - int(r["tgt"])) > 1]
        registered = [r for r in far if float(r["rmse"]) <= rmse_threshold]
        rre += [float(r["rre"]) for r in registered]
        rte += [float(r["rte"]) for r in registered]
        per_scene[scene] = {
            "pairs": len(rows),
            "inlier_ratio": sum(irs) / len(irs),
            "feature_matching_recall": sum(ir > ir_threshold for ir in irs) / len(irs),
            "registration_recall": len(registered) / len(far) if far else float("nan"),
        }

    def scene_mean(key: str) -> float:
        values = [s[key] for s in per_scene.values() if not math.isnan(s[key])]
        return sum(values) / len(values) if values else float("nan")

    def median(values: list[float]) -> float:
        return float(torch.tensor(values).median()) if values else float("nan")

    return {
        "inlier_ratio": scene_mean("inlier_ratio"),
        "feature_matching_recall": scene_mean("feature_matching_recall"),
        "registration_recall": scene_mean("registration_recall"),
        "median_rre": median(rre),
        "median_rte": median(rte),
        "scenes": per_scene,
    }
