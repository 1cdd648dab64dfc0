"""Rotated bird's-eye-view non-maximum suppression with bounded memory, on CPU and CUDA.

The result is, by construction, the one of the plain greedy loop

.. code-block:: python

    order = scores.sort(descending=True, stable=True).indices[:pre_max_size]
    suppressed = zeros(N, bool); keep = []
    for i in order:
        if suppressed[i]: continue
        keep.append(i)
        suppressed |= boxes_iou_bev(boxes[i:i+1], boxes)[0] > iou_threshold
    keep = keep[:post_max_size]

(strict ``>``; equal scores keep their input order), computed without a Python loop of N tensor operations and
without the dense all-pairs intersection tensor of :func:`geoattn.sparse.boxes.boxes_iou_bev` (at 4096 boxes
one ``[N, N, 24, 2]`` float32 tensor of it is ~3 GB). Two stages:

1. **Suppression matrix.** ``S[a, b]`` (boolean ``[n, n]`` in score order, only ``a < b`` set) is
   ``IoU(box_a, box_b) > t``. Boxes whose circumscribed BEV circles (radius ``hypot(dx, dy) / 2``) are farther
   apart than the sum of the radii cannot intersect and have IoU 0, which is never ``> t`` for ``t >= 0``; such
   pairs are pruned. The remaining pairs are evaluated with :func:`boxes_iou_bev` itself on row blocks of
   spatially sorted boxes against the union of their candidate columns, with ``rows * columns <=
   max_pairs_per_chunk``, so the intermediate tensors are bounded by the chunk, never by ``n^2``.
   :func:`boxes_iou_bev` evaluates every pair independently (no reduction across pairs), so an entry computed
   in a block is bit-identical to the entry the loop above computes, with the kept box as first argument.
2. **Greedy resolution in rounds.** Greedy NMS keeps box ``b`` iff no *kept* ``a < b`` has ``S[a, b]``. In
   every round each undecided box with no undecided predecessor ``a < b, S[a, b]`` is decided at once: all its
   predecessors are decided and none was kept (a kept predecessor would already have removed it), so greedy
   keeps it; every undecided box that one of the newly kept boxes suppresses is then removed, as greedy
   removes it. By induction every decision equals the greedy one, and the first undecided box in score order
   always has no undecided predecessor, so each round decides at least one box (at most ``n`` rounds; the
   number of rounds is the longest chain of suppression dependencies, a handful in real scenes). On CPU the
   suppression edges are listed once and each round costs O(edges + n) (a count of undecided predecessors
   per box, decremented with the edges leaving the boxes decided in the round); on CUDA each round is two
   matrix-vector products over ``S`` in float16 (only ``> 0`` is tested, which rounding cannot break).

Host synchronisations that remain on CUDA: one ``nonzero`` per row block of stage 1 (compacting the pruned
columns), one flag read every ``_CUDA_ROUNDS_PER_SYNC`` rounds of stage 2 and the final index compaction.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from geoattn.sparse.boxes import boxes_iou_bev, check_boxes

__all__ = ["nms_bev", "multiclass_nms_bev", "suppression_matrix", "greedy_keep"]

_DEFAULT_PAIRS = 1 << 16
_ROW_BLOCK = 16
_CUDA_ROUNDS_PER_SYNC = 4


def _check_threshold(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"{name}: expected a finite float in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1], got {value!r}")
    return float(value)


def _check_size(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected None or a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected None or a positive int, got {value}")
    return value


def _check_scores(boxes: Tensor, scores, name: str = "scores") -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{name}: expected shape [{boxes.shape[0]}] (one per box), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"{name}: expected device {boxes.device} (that of boxes), got {scores.device}")


def suppression_matrix(boxes: Tensor, thresholds: Tensor, labels: Tensor | None = None,
                       max_pairs_per_chunk: int = _DEFAULT_PAIRS) -> Tensor:
    """Boolean ``S [n, n]``: ``S[a, b] = a < b and IoU_bev(boxes[a], boxes[b]) > thresholds[a]``.

    Args:
        boxes: ``[n, 7]`` already in processing (score) order.
        thresholds: ``[n]`` float, the IoU threshold of each box acting as the suppressor (``>= 0``).
        labels: optional ``[n]`` long; when given only pairs with equal labels can be set.
        max_pairs_per_chunk: bound on ``rows * columns`` of every :func:`boxes_iou_bev` call.

    Pairs whose circumscribed BEV circles do not touch are pruned (their IoU is exactly 0). Memory:
    ``S`` (n^2 bytes), the ``[block, n]`` circle test and one bounded IoU chunk.
    """
    check_boxes(boxes)
    if isinstance(max_pairs_per_chunk, bool) or not isinstance(max_pairs_per_chunk, int) \
            or max_pairs_per_chunk < 1:
        raise ValueError(f"max_pairs_per_chunk: expected a positive int, got {max_pairs_per_chunk!r}")
    n = boxes.shape[0]
    device = boxes.device
    sup = torch.zeros(n, n, dtype=torch.bool, device=device)
    if n <= 1:
        return sup
    centre = boxes[:, :2]
    radius = 0.5 * torch.linalg.vector_norm(boxes[:, 3:5], dim=1)
    # Margin so that the (eps-tolerant) polygon test of boxes_iou_bev can never see an intersection of
    # pruned pairs: circles farther apart than r_a + r_b + slack are disjoint with room to spare.
    slack = 1e-3 * (1.0 + radius.max())
    # Spatial (Z-order) sort of grid cells of size 2 * max radius, so that a block of consecutive rows is
    # compact and has few candidate columns. Affects speed only, never the result.
    spatial = torch.argsort(_morton_code(centre, (2.0 * radius.max()).clamp(min=1e-3)), stable=True)
    rank = torch.arange(n, device=device)
    block = max(1, min(_ROW_BLOCK, max_pairs_per_chunk))
    for start in range(0, n, block):
        rows = spatial[start:start + block]
        dist2 = ((centre[rows, None, :] - centre[None, :, :]) ** 2).sum(-1)  # [r, n]
        near = dist2 <= (radius[rows, None] + radius[None, :] + slack) ** 2
        near &= rank[rows, None] < rank[None, :]  # only the suppressor -> later box direction
        if labels is not None:
            near &= labels[rows, None] == labels[None, :]
        step = rows.shape[0]
        sub = 0
        while sub < rows.shape[0]:
            part = near[sub:sub + step]
            cols = part.any(0).nonzero(as_tuple=True)[0]
            if cols.numel() * part.shape[0] > max_pairs_per_chunk and part.shape[0] > 1:
                step = max(1, max_pairs_per_chunk // max(1, cols.numel()))
                continue
            if cols.numel() > 0:
                row_idx = rows[sub:sub + part.shape[0]]
                col_sets = [cols]
                if cols.numel() > max_pairs_per_chunk:  # one row against more columns than the budget
                    col_sets = list(torch.split(cols, max_pairs_per_chunk))
                for col in col_sets:
                    iou = boxes_iou_bev(boxes[row_idx], boxes[col])
                    hit = (iou > thresholds[row_idx, None]) & part[:, col]
                    sup[row_idx[:, None], col[None, :]] = hit
            sub += part.shape[0]
    return sup


def _morton_code(centre: Tensor, cell: Tensor) -> Tensor:
    """Z-order code (long ``[n]``) of the grid cell of each BEV centre; 16 bits per axis (cells clamped)."""
    grid = torch.floor((centre - centre.min(dim=0).values) / cell).clamp(0, 65535).long()
    code = torch.zeros(centre.shape[0], dtype=torch.long, device=centre.device)
    for bit in range(16):
        code |= ((grid[:, 0] >> bit) & 1) << (2 * bit)
        code |= ((grid[:, 1] >> bit) & 1) << (2 * bit + 1)
    return code


def greedy_keep(sup: Tensor, dense: bool | None = None) -> Tensor:
    """Greedy NMS decisions ``keep [n]`` (bool) from an upper-triangular suppression matrix ``sup [n, n]``.

    ``keep[b]`` iff no ``a < b`` with ``keep[a] and sup[a, b]`` -- resolved in rounds (module docstring),
    each round deciding every box whose predecessors are all decided. ``dense`` picks the matrix-vector
    rounds (default on CUDA) instead of the edge-list rounds (default on CPU); both give the same result.
    """
    n = sup.shape[0]
    if dense is None:
        dense = sup.device.type != "cpu"
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=sup.device)
    return _dense_rounds(sup) if dense else _edge_rounds(sup)


def _edge_rounds(sup: Tensor) -> Tensor:
    """Rounds over the listed suppression edges (a -> b): each round costs O(edges + n)."""
    n = sup.shape[0]
    undecided = torch.ones(n, dtype=torch.bool, device=sup.device)
    kept = torch.zeros(n, dtype=torch.bool, device=sup.device)
    src, dst = sup.nonzero(as_tuple=True)
    pending = torch.bincount(dst, minlength=n)  # undecided predecessors that could suppress each box
    while True:
        ready = undecided & (pending == 0)
        if not bool(ready.any()):
            return kept
        kept |= ready
        hit = torch.zeros(n, dtype=torch.bool, device=sup.device)
        hit[dst[ready[src]]] = True
        decided = ready | (hit & undecided)
        undecided &= ~decided
        pending -= torch.bincount(dst[decided[src]], minlength=n)


def _dense_rounds(sup: Tensor) -> Tensor:
    """Rounds as two matrix-vector products over ``sup`` (float16 on CUDA, float32 on CPU); only ``> 0``
    is tested, which rounding of sums of zeros and ones cannot break. One host sync per
    ``_CUDA_ROUNDS_PER_SYNC`` rounds (extra rounds after convergence change nothing)."""
    n = sup.shape[0]
    undecided = torch.ones(n, dtype=torch.bool, device=sup.device)
    kept = torch.zeros(n, dtype=torch.bool, device=sup.device)
    dtype = torch.float16 if sup.device.type == "cuda" else torch.float32
    weights = sup.to(dtype)
    while True:
        for _ in range(_CUDA_ROUNDS_PER_SYNC):
            blocked = (undecided.to(dtype) @ weights) > 0
            new_kept = undecided & ~blocked
            hit = (new_kept.to(dtype) @ weights) > 0
            kept |= new_kept
            undecided &= ~(new_kept | hit)
        if not bool(undecided.any()):
            return kept


def nms_bev(boxes: Tensor, scores: Tensor, iou_threshold: float, pre_max_size: int | None = None,
            post_max_size: int | None = None, *, max_pairs_per_chunk: int = _DEFAULT_PAIRS) -> Tensor:
    """Greedy rotated-BEV NMS; kept indices (long ``[K]``) into the input in descending score order.

    Boxes are sorted by score, descending and stable (equal scores keep their input order), the first
    ``pre_max_size`` are considered, box ``j`` is suppressed by a kept higher-ranked ``i`` when
    ``IoU_bev(i, j) > iou_threshold`` (:func:`geoattn.sparse.boxes.boxes_iou_bev`), and the first
    ``post_max_size`` kept boxes are returned. Identical to the plain greedy loop in the module docstring.

    Args:
        boxes: float ``[N, 7]`` (x, y, z, dx, dy, dz, heading); only the BEV part is used.
        scores: float ``[N]`` on the same device.
        iou_threshold: in ``[0, 1]``.
        pre_max_size, post_max_size: ``None`` (no limit) or a positive int.
        max_pairs_per_chunk: bound on the pairs of one IoU evaluation (peak memory ~2.5 kB per pair in
            float32, twice that in float64: the default 65536 pairs take ~160 MB).
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    threshold = _check_threshold(iou_threshold, "iou_threshold")
    pre = _check_size(pre_max_size, "pre_max_size")
    post = _check_size(post_max_size, "post_max_size")
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre is not None:
        order = order[:pre]
    if order.numel() == 0:
        return order
    thresholds = torch.full((order.numel(),), threshold, dtype=boxes.dtype, device=boxes.device)
    keep = greedy_keep(suppression_matrix(boxes[order], thresholds, max_pairs_per_chunk=max_pairs_per_chunk))
    selected = order[keep]
    return selected if post is None else selected[:post]


def _per_class(value, num_classes: int, name: str, check) -> list:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return [check(value, name)] * num_classes
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != num_classes:
        raise ValueError(f"{name}: expected None, one value or {num_classes} values (one per class), got {value!r}")
    return [check(v, f"{name}[{k}]") for k, v in enumerate(value)]


def multiclass_nms_bev(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresholds: Sequence[float],
                       pre_max_size: int | Sequence[int] | None = None,
                       post_max_size: int | Sequence[int] | None = None, *,
                       max_pairs_per_chunk: int = _DEFAULT_PAIRS) -> Tensor:
    """Class-specific rotated-BEV NMS (OpenPCDet ``class_specific_nms``); boxes of different classes never
    suppress each other.

    For every class ``k`` (``0 <= k < len(iou_thresholds)``): the boxes with ``labels == k``, sorted by score
    (descending, stable), the first ``pre_max_size[k]``, greedy NMS at ``iou_thresholds[k]``, the first
    ``post_max_size[k]`` kept. The result concatenates the classes in class order, each in descending score
    order -- OpenPCDet's order (``torch.cat`` of the per-class selections). All classes run in one pass: the
    suppression matrix only links boxes of equal label, so the greedy decisions equal the per-class ones.

    Args:
        boxes: float ``[N, 7]``; scores: float ``[N]``; labels: long ``[N]`` in ``[0, K)``.
        iou_thresholds: ``K`` floats in ``[0, 1]``.
        pre_max_size, post_max_size: ``None``, one positive int for all classes, or ``K`` of them (``None``
            entries allowed). OpenPCDet's CUDA ``nms_gpu`` ignores its ``post_max_size``; pass ``None`` for
            that behaviour.

    Returns:
        long ``[P]`` indices into the input.
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    if not isinstance(labels, Tensor) or labels.dtype != torch.long:
        raise TypeError(f"labels: expected a torch.long tensor, got "
                        f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}")
    if labels.shape != scores.shape or labels.device != boxes.device:
        raise ValueError(f"labels: expected shape [{boxes.shape[0]}] on {boxes.device}, got "
                         f"{tuple(labels.shape)} on {labels.device}")
    if isinstance(iou_thresholds, (str, bytes)) or not isinstance(iou_thresholds, Sequence) \
            or len(iou_thresholds) == 0:
        raise TypeError(f"iou_thresholds: expected a non-empty sequence of floats (one per class), "
                        f"got {iou_thresholds!r}")
    num_classes = len(iou_thresholds)
    thresholds = [_check_threshold(v, f"iou_thresholds[{k}]") for k, v in enumerate(iou_thresholds)]
    pre = _per_class(pre_max_size, num_classes, "pre_max_size", _check_size)
    post = _per_class(post_max_size, num_classes, "post_max_size", _check_size)
    device = boxes.device
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels: expected values in [0, {num_classes}) (one IoU threshold per class), got "
                         f"min {int(labels.min())} max {int(labels.max())}")
    big = torch.iinfo(torch.long).max
    pre_t = torch.tensor([big if v is None else v for v in pre], dtype=torch.long, device=device)
    post_t = torch.tensor([big if v is None else v for v in post], dtype=torch.long, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices
    order_labels = labels[order]
    order = order[_rank_within_class(order_labels, num_classes) < pre_t[order_labels]]
    if order.numel() == 0:
        return order
    order_labels = labels[order]
    thr = torch.tensor(thresholds, dtype=boxes.dtype, device=device)[order_labels]
    keep = greedy_keep(suppression_matrix(boxes[order], thr, labels=order_labels,
                                          max_pairs_per_chunk=max_pairs_per_chunk))
    selected, selected_labels = order[keep], order_labels[keep]
    within = _rank_within_class(selected_labels, num_classes) < post_t[selected_labels]
    selected, selected_labels = selected[within], selected_labels[within]
    class_major = torch.sort(selected_labels, stable=True).indices
    return selected[class_major]


def _rank_within_class(labels: Tensor, num_classes: int) -> Tensor:
    """Position of each element among the earlier elements of its own class (``[n]`` long)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes)
    return (onehot.cumsum(0) - onehot).gather(1, labels[:, None])[:, 0]
