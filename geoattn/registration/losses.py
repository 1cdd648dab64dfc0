"""Training targets and losses of RoITr/GeoTransformer.

* :func:`patch_overlaps`: ground-truth overlap of every pair of source/target patches.
* :func:`overlap_circle_loss`: overlap-aware weighted circle loss on superpoint descriptors.
* :func:`transport_nll_loss`: negative log-likelihood of the optimal-transport assignment.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from geoattn.sparse.geometry import transform_points

__all__ = ["patch_overlaps", "overlap_circle_loss", "transport_labels", "transport_nll_loss"]


def patch_overlaps(
    src_points: Tensor,
    tgt_points: Tensor,
    src_patch: Tensor,
    tgt_patch: Tensor,
    transform: Tensor,
    radius: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor]:
    """Overlap of each source patch with each target patch under the ground-truth ``transform``.

    The overlap of patches (a, b) is the mean of (fraction of a's points with a partner in b closer than
    ``radius``) and the same fraction for b. Pairs whose enclosing spheres are farther apart than
    ``radius`` are skipped. ``src_patch [S, P]``, ``tgt_patch [T, Q]`` index the points (-1 = padding).
    Returns ``(src_node [G], tgt_node [G], overlap [G])`` for the pairs with a positive overlap.
    """
    with torch.no_grad():
        src_aligned = transform_points(src_points, transform)
        src_pts, src_mask = src_aligned[src_patch.clamp(min=0)], src_patch >= 0
        tgt_pts, tgt_mask = tgt_points[tgt_patch.clamp(min=0)], tgt_patch >= 0

        def sphere(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
            weight = mask.to(points.dtype).unsqueeze(-1)
            centre = (points * weight).sum(1) / weight.sum(1).clamp(min=1)
            extent = ((points - centre.unsqueeze(1)).norm(dim=-1) * mask).amax(dim=1)
            return centre, extent

        src_centre, src_radius = sphere(src_pts, src_mask)
        tgt_centre, tgt_radius = sphere(tgt_pts, tgt_mask)
        gap = torch.cdist(src_centre, tgt_centre) - src_radius.unsqueeze(1) - tgt_radius.unsqueeze(0)
        candidate = (gap < radius) & src_mask.any(1).unsqueeze(1) & tgt_mask.any(1).unsqueeze(0)
        src_node, tgt_node = candidate.nonzero(as_tuple=True)
        if src_node.numel() == 0:
            return src_node, tgt_node, src_points.new_zeros(0)
        close = torch.cdist(src_pts[src_node], tgt_pts[tgt_node]) < radius
        close &= src_mask[src_node].unsqueeze(2) & tgt_mask[tgt_node].unsqueeze(1)
        dtype = src_points.dtype
        src_ratio = close.any(2).sum(1).to(dtype) / src_mask[src_node].sum(1).clamp(min=1).to(dtype)
        tgt_ratio = close.any(1).sum(1).to(dtype) / tgt_mask[tgt_node].sum(1).clamp(min=1).to(dtype)
        overlap = (src_ratio + tgt_ratio) / 2
        keep = overlap > 0
        return src_node[keep], tgt_node[keep], overlap[keep]


def overlap_circle_loss(
    src_feats: Tensor,
    tgt_feats: Tensor,
    src_node: Tensor,
    tgt_node: Tensor,
    overlap: Tensor,
    positive_overlap: float = 0.1,
    pos_margin: float = 0.1,
    neg_margin: float = 1.4,
    pos_optimal: float = 0.1,
    neg_optimal: float = 1.4,
    log_scale: float = 24.0,
) -> Tensor:
    """Overlap-aware circle loss on L2-normalised superpoint features ``[S, C]`` and ``[T, C]``.

    Positives: pairs with overlap > ``positive_overlap``, weighted by sqrt(overlap); negatives: pairs with
    no overlap. Row (source) and column (target) terms are averaged over the anchors that have both a
    positive and a negative. Returns a scalar (zero, with a gradient path, when no anchor qualifies).
    """
    overlaps = src_feats.new_zeros(src_feats.size(0), tgt_feats.size(0))
    overlaps[src_node, tgt_node] = overlap.to(overlaps.dtype)
    distance = torch.sqrt((2.0 - 2.0 * src_feats @ tgt_feats.T).clamp(min=1e-12))
    positive = overlaps > positive_overlap
    negative = overlaps == 0
    pos_scale = torch.sqrt(overlaps * positive)
    with torch.no_grad():
        pos_weight = ((distance - pos_optimal).clamp(min=0) * pos_scale).masked_fill(~positive, 0)
        neg_weight = (neg_optimal - distance).clamp(min=0).masked_fill(~negative, 0)
    very_negative = -1e5
    pos_logits = (log_scale * (distance - pos_margin) * pos_weight).masked_fill(~positive, very_negative)
    neg_logits = (log_scale * (neg_margin - distance) * neg_weight).masked_fill(~negative, very_negative)
    row_anchor = positive.any(1) & negative.any(1)
    col_anchor = positive.any(0) & negative.any(0)
    if not bool(row_anchor.any()) and not bool(col_anchor.any()):
        return distance.sum() * 0.0
    row = F.softplus(torch.logsumexp(pos_logits, 1) + torch.logsumexp(neg_logits, 1)) / log_scale
    col = F.softplus(torch.logsumexp(pos_logits, 0) + torch.logsumexp(neg_logits, 0)) / log_scale
    terms = []
    if bool(row_anchor.any()):
        terms.append(row[row_anchor].mean())
    if bool(col_anchor.any()):
        terms.append(col[col_anchor].mean())
    return sum(terms) / len(terms)


def transport_labels(
    src_points: Tensor,
    tgt_points: Tensor,
    src_patch: Tensor,
    tgt_patch: Tensor,
    transform: Tensor,
    radius: float = 0.05,
) -> Tensor:
    """Ground-truth assignment ``[K, P + 1, Q + 1]`` (bool) for paired patches ``[K, P]`` / ``[K, Q]``.

    Point pairs closer than ``radius`` after alignment are matches; valid rows/columns without a match
    point at the dustbin.
    """
    with torch.no_grad():
        src = transform_points(src_points, transform)[src_patch.clamp(min=0)]
        tgt = tgt_points[tgt_patch.clamp(min=0)]
        valid = (src_patch >= 0).unsqueeze(2) & (tgt_patch >= 0).unsqueeze(1)
        match = (torch.cdist(src, tgt) < radius) & valid
        labels = torch.zeros(match.size(0), match.size(1) + 1, match.size(2) + 1, dtype=torch.bool,
                             device=match.device)
        labels[:, :-1, :-1] = match
        labels[:, :-1, -1] = (~match.any(2)) & (src_patch >= 0)
        labels[:, -1, :-1] = (~match.any(1)) & (tgt_patch >= 0)
        return labels


def transport_nll_loss(log_assignment: Tensor, labels: Tensor) -> Tensor:
    """``-mean(log_assignment[labels])`` (zero, with a gradient path, when there is no label)."""
    if log_assignment.shape != labels.shape:
        raise ValueError(
            f"labels: expected shape {tuple(log_assignment.shape)} like log_assignment, got {tuple(labels.shape)}"
        )
    if not bool(labels.any()):
        return log_assignment.sum() * 0.0
    return -log_assignment[labels].mean()
