"""Coarse-to-fine correspondence extraction (GeoTransformer/RoITr head, no learnable parameters).

1. :func:`partition_points_to_nodes`: every dense point joins its nearest superpoint; each superpoint
   keeps its ``point_limit`` nearest members as a padded patch.
2. :func:`superpoint_matching`: Gaussian feature similarity, dual normalisation, global top-k.
3. The model's :class:`~geoattn.nn.LearnableLogOptimalTransport` scores the patch pairs
   (:func:`patch_scores`), and :func:`fine_correspondences` keeps mutual top-k entries above a
   confidence threshold.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from geoattn.sparse.neighbors import knn

__all__ = [
    "Patches",
    "Correspondences",
    "partition_points_to_nodes",
    "superpoint_matching",
    "patch_scores",
    "fine_correspondences",
]


class Patches(NamedTuple):
    """Padded patches of a cloud: ``index [S, P]`` into the points (-1 = padding), ``mask [S, P]``,
    ``node_valid [S]`` (the node owns at least one point) and ``point_to_node [N]``."""

    index: Tensor
    mask: Tensor
    node_valid: Tensor
    point_to_node: Tensor


class Correspondences(NamedTuple):
    """Point correspondences ``src [C, 3] <-> tgt [C, 3]`` with confidences ``scores [C]`` and the
    coarse (patch-pair) id of each one in ``patch [C]``."""

    src: Tensor
    tgt: Tensor
    scores: Tensor
    patch: Tensor


def partition_points_to_nodes(points: Tensor, nodes: Tensor, point_limit: int = 64) -> Patches:
    """Group ``points [N, 3]`` into patches around ``nodes [S, 3]`` (nearest-node assignment).

    Each patch lists up to ``point_limit`` of its node's points, nearest first, padded with -1 at the end;
    the width is the largest patch size (at most ``point_limit``).
    """
    if points.size(0) == 0 or nodes.size(0) == 0:
        raise ValueError(
            f"points, nodes: expected non-empty clouds, got {points.size(0)} points and {nodes.size(0)} nodes"
        )
    nearest, _ = knn(nodes, points, 1)
    point_to_node = nearest[:, 0]
    node_valid = torch.zeros(nodes.size(0), dtype=torch.bool, device=points.device)
    node_valid[point_to_node] = True
    index, _ = knn(points, nodes, min(point_limit, points.size(0)))
    owned = index >= 0
    owned &= point_to_node[index.clamp(min=0)] == torch.arange(nodes.size(0), device=points.device).unsqueeze(1)
    # move each row's members to the front (nearest first) and drop all-padding columns: the optimal
    # transport cost grows with the patch width
    order = torch.sort((~owned).to(torch.uint8), dim=1, stable=True).indices
    index, owned = index.gather(1, order), owned.gather(1, order)
    width = max(int(owned.sum(1).max()), 1)
    index, owned = index[:, :width], owned[:, :width]
    index = torch.where(owned, index, torch.full_like(index, -1))
    return Patches(index, owned, node_valid, point_to_node)


def superpoint_matching(
    src_feats: Tensor,
    tgt_feats: Tensor,
    num_correspondences: int,
    src_valid: Tensor | None = None,
    tgt_valid: Tensor | None = None,
    dual_normalization: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k superpoint pairs by ``exp(-|f_i - g_j|^2)`` on L2-normalised features.

    Dual normalisation multiplies the row- and column-normalised similarities, which favours pairs
    that are each other's best match. Returns ``(src_index [K], tgt_index [K], score [K])``.
    """
    distance2 = (2.0 - 2.0 * src_feats @ tgt_feats.T).clamp(min=0)
    similarity = torch.exp(-distance2)
    if src_valid is not None:
        similarity = similarity * src_valid.unsqueeze(1).to(similarity.dtype)
    if tgt_valid is not None:
        similarity = similarity * tgt_valid.unsqueeze(0).to(similarity.dtype)
    if dual_normalization:
        row = similarity / similarity.sum(dim=1, keepdim=True).clamp(min=1e-12)
        col = similarity / similarity.sum(dim=0, keepdim=True).clamp(min=1e-12)
        similarity = row * col
    count = min(num_correspondences, int((similarity > 0).sum()))
    score, flat = similarity.flatten().topk(count)
    return flat // similarity.size(1), flat % similarity.size(1), score


def patch_scores(src_feats: Tensor, tgt_feats: Tensor, src_patch: Tensor, tgt_patch: Tensor) -> Tensor:
    """Scaled dot products between the fine features of paired patches.

    ``src_feats [N, C]``, ``src_patch [K, P]`` (-1 padding) -> ``[K, P, Q]`` = ``<f_a, g_b>/sqrt(C)``.
    """
    src = src_feats[src_patch.clamp(min=0)]
    tgt = tgt_feats[tgt_patch.clamp(min=0)]
    return torch.einsum("kpc,kqc->kpq", src, tgt) / src_feats.size(1) ** 0.5


def fine_correspondences(
    src_points: Tensor,
    tgt_points: Tensor,
    src_patch: Tensor,
    tgt_patch: Tensor,
    log_assignment: Tensor,
    k: int = 3,
    threshold: float = 0.05,
    mutual: bool = True,
) -> Correspondences:
    """Dense correspondences from the optimal-transport assignment of each patch pair.

    ``log_assignment [K, P + 1, Q + 1]`` (dustbins dropped here). An entry is kept when its confidence
    ``exp(log_assignment)`` exceeds ``threshold`` and it is among the top-``k`` of its row and (mutual) of
    its column (or of either, when ``mutual`` is False).
    """
    scores = log_assignment[:, :-1, :-1].exp()
    valid = (src_patch >= 0).unsqueeze(2) & (tgt_patch >= 0).unsqueeze(1)
    scores = scores * valid.to(scores.dtype)
    row_k = min(k, scores.size(2))
    col_k = min(k, scores.size(1))
    if row_k == 0 or col_k == 0:
        empty = src_points.new_zeros(0, 3)
        return Correspondences(empty, empty.clone(), src_points.new_zeros(0),
                               torch.zeros(0, dtype=torch.long, device=src_points.device))
    row_top = scores.topk(row_k, dim=2).indices
    col_top = scores.topk(col_k, dim=1).indices
    in_row = torch.zeros_like(scores, dtype=torch.bool).scatter_(2, row_top, True)
    in_col = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, col_top, True)
    keep = (in_row & in_col) if mutual else (in_row | in_col)
    keep &= (scores > threshold) & valid
    patch, row, col = keep.nonzero(as_tuple=True)
    return Correspondences(
        src_points[src_patch[patch, row]], tgt_points[tgt_patch[patch, col]], scores[patch, row, col], patch
    )
