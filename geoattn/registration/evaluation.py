"""3DMatch / 3DLoMatch evaluation: register every ``gt.log`` pair and report IR, FMR and RR.

Protocol (the reference notes): a pair ``(i, j)`` registers fragment ``j`` (source) onto fragment ``i``
(target). IR is the fraction of the method's correspondences within 0.1 m under the ground truth, FMR
the fraction of pairs with IR > 5 %, RR the fraction of non-consecutive pairs whose ``gt.info`` RMSE is
at most 0.2 m; each is averaged per scene, then over scenes. Methods without correspondences
(``fpfh``) report IR/FMR as ``None``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from geoattn.data.threedmatch import find_benchmark_dir, fragment_path, read_fragment, read_gt_info, read_gt_log
from geoattn.registration.metrics import (
    information_rmse,
    relative_rotation_error,
    relative_translation_error,
    summarize_benchmark,
)
from geoattn.registration.pipeline import RegistrationResult
from geoattn.sparse.geometry import transform_points

__all__ = ["evaluate_3dmatch"]


def evaluate_3dmatch(root: str | Path, benchmark: str, register_pair: Callable[[torch.Tensor, torch.Tensor], tuple],
                     scenes: list[str] | None = None, max_pairs: int | None = None, acceptance_radius: float = 0.1,
                     progress: bool = True) -> dict:
    """Evaluate ``register_pair(src, tgt) -> (RegistrationResult, src_corr, tgt_corr)`` (correspondences in the
    input frames, or ``None``) on a 3DMatch-style benchmark under ``root``.

    Returns the :func:`~geoattn.registration.metrics.summarize_benchmark` dict plus ``pairs`` (per-pair
    records) and ``protocol``.
    """
    bench_dir = find_benchmark_dir(root, benchmark)
    scene_dirs = sorted(p.parent for p in bench_dir.glob("*/gt.log"))
    if scenes:
        scene_dirs = [d for d in scene_dirs if d.name in scenes]
        if not scene_dirs:
            raise ValueError(f"scenes: none of {scenes} found under {bench_dir}")
    jobs = []
    for scene_dir in scene_dirs:
        info_path = scene_dir / "gt.info"
        info = read_gt_info(info_path) if info_path.is_file() else {}
        for entry in read_gt_log(scene_dir / "gt.log"):
            jobs.append((scene_dir.name, entry, info.get((entry.i, entry.j))))
    if max_pairs is not None:
        jobs = jobs[:max_pairs]
    if not jobs:
        raise ValueError(f"{bench_dir}: no pairs to evaluate")
    records = []
    for scene, entry, information in tqdm(jobs, desc=f"{benchmark}", disable=not progress, leave=False):
        src = read_fragment(fragment_path(root, scene, entry.j))
        tgt = read_fragment(fragment_path(root, scene, entry.i))
        result, src_corr, tgt_corr = register_pair(src, tgt)
        result: RegistrationResult
        truth = entry.transform.double()
        estimate = result.transform.double()
        ir = None
        if src_corr is not None:
            if src_corr.size(0) == 0:
                ir = 0.0
            else:
                residual = (transform_points(src_corr.double(), truth) - tgt_corr.double()).norm(dim=1)
                ir = float((residual < acceptance_radius).double().mean())
        rmse = information_rmse(estimate, truth, information) if information is not None else float("nan")
        records.append({
            "scene": scene, "src": entry.j, "tgt": entry.i, "inlier_ratio": ir, "rmse": rmse,
            "rre": float(relative_rotation_error(estimate, truth)),
            "rte": float(relative_translation_error(estimate, truth)), "seconds": result.seconds,
        })
    has_ir = all(r["inlier_ratio"] is not None for r in records)
    summary = summarize_benchmark([{**r, "inlier_ratio": r["inlier_ratio"] or 0.0} for r in records])
    if not has_ir:
        summary["inlier_ratio"] = summary["feature_matching_recall"] = None
        for scene in summary["scenes"].values():
            scene["inlier_ratio"] = scene["feature_matching_recall"] = None
    summary["pairs"] = records
    summary["protocol"] = {"benchmark": benchmark, "ir_radius": acceptance_radius, "fmr_ir_threshold": 0.05,
                           "rr_rmse_threshold": 0.2, "rr_pairs": "non-consecutive (|i - j| > 1)",
                           "averaging": "per scene, then over scenes"}
    return summary
