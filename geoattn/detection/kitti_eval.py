"""The KITTI object-detection metric: an exact, numba-free reimplementation of OpenPCDet's
``pcdet/datasets/kitti/kitti_object_eval_python/eval.py`` (``get_official_eval_result``).

For each class ``c``, difficulty ``l`` (easy / moderate / hard) and metric ``m`` (2-D ``image`` bbox, ``bev``,
``3d``; ``aos`` rides on the bbox pass) the official rules are:

* **Ground truth** ``ignored_gt``: ``0`` (counts) when its name is ``c`` and it passes the level
  (occlusion ``<= [0, 1, 2][l]``, truncation ``<= [0.15, 0.3, 0.5][l]``, 2-D height ``y2 - y1 > [40, 25, 25][l]``;
  cumulative: an easy object is also moderate and hard); ``1`` (ignored: neither TP nor FN, but it absorbs a
  detection) when it is ``c`` failing the level, or the neighbouring class (``Van`` for ``Car``, ``Person_sitting``
  for ``Pedestrian``); ``-1`` (plays no part) otherwise. Names are compared lower-case.
* **Detections** ``ignored_det``: ``1`` when ``|y2 - y1| < [40, 25, 25][l]`` (whatever the class), else ``0`` when
  the name is ``c``, else ``-1``.
* **DontCare** (name exactly ``"DontCare"``): for the bbox metric only, an unassigned counted detection with
  ``area(det ∩ dc) / area(det) > t`` for some DontCare box is removed from the false positives.
* **Overlaps** (all strict: a pair matches when ``overlap > t``): bbox = axis-aligned IoU without ``+1``;
  BEV = rotated IoU of ``(x, z, l, w, ry)`` in the camera frame (corners ``R [+-l/2, +-w/2]`` with
  ``x' = cos(ry) a + sin(ry) b, z' = -sin(ry) a + cos(ry) b``); 3-D = BEV intersection times the overlap of the
  vertical spans ``[y - h, y]`` over the union of the volumes ``l h w``. Thresholds ``t`` (bbox, bev, 3d):
  Car / Van / Truck 0.7, 0.7, 0.7, Pedestrian / Cyclist / Person_sitting 0.5, 0.5, 0.5 (the loose set: Car and
  Van 0.7, 0.5, 0.5, Pedestrian / Cyclist / Person_sitting 0.5, 0.25, 0.25, Truck 0.5, 0.5, 0.5).
* **Matching**, frame by frame, ground truths in file order, each taking one still-unassigned detection
  (``ignored_det != -1``) with ``overlap > t``:
  pass 1 (all scores) takes the highest score (first on ties); a match of a counted GT by a counted
  detection is a TP and its score is recorded. ``get_thresholds`` picks 41 score thresholds from the sorted TP
  scores so that recall lands on ``i / 40``. Pass 2, at each threshold ``s`` (detections with score ``< s``
  are dropped), takes the counted detection of largest overlap (first on ties), else the first ignored one.
  TP = counted GT matched by a counted detection; FN = counted GT unmatched; FP = counted, unassigned detections
  (minus the DontCare ones for bbox); AOS similarity = ``sum_TP (1 + cos(alpha_gt - alpha_det)) / 2``.
* **Precision** ``p_i = TP / (TP + FP)`` at threshold ``i`` (zero past the last one), then
  ``p_i = max_{j >= i} p_j``; ``AP_R11 = 100 / 11 sum_{i = 0, 4, .., 40} p_i``,
  ``AP_R40 = 100 / 40 sum_{i = 1..40} p_i``; AOS the same with ``sim / (TP + FP)``, computed only when the first
  non-empty detection frame's first alpha is not ``-10``.

Implementation: all overlaps are computed once per metric (the rotated intersection once per frame with
:func:`geoattn.sparse.boxes.boxes_intersection_bev`, shared by BEV and 3-D), then for every
(class, difficulty, metric) the frames are padded into ``[F, D, G]`` blocks and the greedy matching runs as a
loop over the ground-truth slot ``g`` only, vectorised over frames, detections and (pass 2) all 41 thresholds.

Result keys follow OpenPCDet: ``"<Class>_<image|bev|3d|aos>/<easy|moderate|hard>_<R11|R40>"``, values in
percent (``aos`` keys only when AOS is computed). With ``loose=True`` the loose-threshold set is added under
``"<Class>_<metric>_loose/<difficulty>_<R11|R40>"``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.kitti import (KittiCalibration, KittiLabels, boxes_lidar_to_camera, camera_box_corners,
                                read_label)
from geoattn.sparse.boxes import boxes_intersection_bev

__all__ = [
    "KITTI_EVAL_CLASSES",
    "camera_box_overlaps",
    "camera_bev_to_lidar_like",
    "evaluate_kitti",
    "evaluate_kitti_folders",
    "format_kitti_table",
    "lidar_detections_to_kitti",
    "get_thresholds",
]

#: classes the official evaluator knows, with their (bbox, bev, 3d) thresholds: main set, loose set.
KITTI_EVAL_CLASSES = {
    "Car": ((0.7, 0.7, 0.7), (0.7, 0.5, 0.5)),
    "Pedestrian": ((0.5, 0.5, 0.5), (0.5, 0.25, 0.25)),
    "Cyclist": ((0.5, 0.5, 0.5), (0.5, 0.25, 0.25)),
    "Van": ((0.7, 0.7, 0.7), (0.7, 0.5, 0.5)),
    "Person_sitting": ((0.5, 0.5, 0.5), (0.5, 0.25, 0.25)),
    "Truck": ((0.7, 0.7, 0.7), (0.5, 0.5, 0.5)),
}
_NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}
_MIN_HEIGHT = (40.0, 25.0, 25.0)
_MAX_OCCLUSION = (0, 1, 2)
_MAX_TRUNCATION = (0.15, 0.3, 0.5)
_DIFFICULTIES = ("easy", "moderate", "hard")
_METRICS = ("image", "bev", "3d")
_NUM_SAMPLE_PTS = 41
_NO_DETECTION = -10000000.0
#: element budget of one [T, F, D] block in the threshold pass (bounds memory at ~ a few tens of MB)
_BLOCK_ELEMENTS = 2_000_000


# ---------------------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------------------

def _numpy(tensor, dtype=np.float64) -> np.ndarray:
    if isinstance(tensor, Tensor):
        return tensor.detach().cpu().numpy().astype(dtype, copy=False)
    return np.asarray(tensor, dtype=dtype)


class _Flat:
    """All frames' annotations concatenated (frame order kept), as numpy arrays."""

    def __init__(self, annos: Sequence[KittiLabels], name: str, detections: bool):
        counts, names, bbox, alpha, trunc, occ, boxes, score = [], [], [], [], [], [], [], []
        for index, anno in enumerate(annos):
            if not isinstance(anno, KittiLabels):
                raise TypeError(f"{name}[{index}]: expected a KittiLabels, got {type(anno).__name__}")
            count = len(anno)
            fields = {"bbox": (anno.bbox, (count, 4)), "boxes_camera": (anno.boxes_camera, (count, 7)),
                      "alpha": (anno.alpha, (count,)), "truncated": (anno.truncated, (count,)),
                      "occluded": (anno.occluded, (count,))}
            for key, (value, shape) in fields.items():
                if tuple(value.shape) != shape:
                    raise ValueError(f"{name}[{index}].{key}: expected shape {shape} for {count} objects, "
                                     f"got {tuple(value.shape)}")
            counts.append(count)
            names.extend(str(n) for n in anno.names)
            bbox.append(_numpy(anno.bbox).reshape(-1, 4))
            boxes.append(_numpy(anno.boxes_camera).reshape(-1, 7))
            alpha.append(_numpy(anno.alpha).reshape(-1))
            trunc.append(_numpy(anno.truncated).reshape(-1))
            occ.append(_numpy(anno.occluded).reshape(-1))
            if detections:
                if anno.score is None:
                    if count:
                        raise ValueError(f"{name}[{index}].score: detections need scores, got None for "
                                         f"{count} objects")
                    score.append(np.zeros(0))
                else:
                    if tuple(anno.score.shape) != (count,):
                        raise ValueError(f"{name}[{index}].score: expected shape ({count},), got "
                                         f"{tuple(anno.score.shape)}")
                    score.append(_numpy(anno.score).reshape(-1))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.frame = np.repeat(np.arange(len(counts), dtype=np.int64), self.counts)
        self.names = np.asarray(names, dtype=str)
        self.lower = np.char.lower(self.names) if len(names) else self.names
        cat = lambda parts, width=None: (np.concatenate(parts) if parts else  # noqa: E731
                                         np.zeros((0, width) if width else (0,)))
        self.bbox = cat(bbox, 4)
        self.boxes = cat(boxes, 7)
        self.alpha = cat(alpha)
        self.truncated = cat(trunc)
        self.occluded = cat(occ)
        self.score = cat(score) if detections else None
        self.first_alpha = next((a[0] for a in alpha if a.shape[0]), None)


class _Pairs:
    """Every (detection, ground truth) pair of every frame, detection-major inside a frame:
    pair ``offset[f] + d * G_f + g`` for local indices ``d, g``."""

    def __init__(self, gt: _Flat, dt: _Flat):
        self.gt_counts, self.dt_counts = gt.counts, dt.counts
        sizes = dt.counts * gt.counts
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        frame = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        local = np.arange(int(self.offset[-1]), dtype=np.int64) - self.offset[frame]
        g_count = gt.counts[frame]
        self.det = dt.offsets[frame] + local // np.maximum(g_count, 1)
        self.gt = gt.offsets[frame] + local % np.maximum(g_count, 1)
        self.frame = frame


def _image_overlap(boxes: np.ndarray, query: np.ndarray, criterion: int = -1) -> np.ndarray:
    """Official ``image_box_overlap`` for aligned rows ``boxes [P, 4]``, ``query [P, 4]`` (x1, y1, x2, y2):
    ``iw ih / ua`` when ``iw, ih > 0`` (no ``+1``), ``ua`` = union (criterion -1) or the area of ``boxes`` (0)."""
    iw = np.minimum(boxes[:, 2], query[:, 2]) - np.maximum(boxes[:, 0], query[:, 0])
    ih = np.minimum(boxes[:, 3], query[:, 3]) - np.maximum(boxes[:, 1], query[:, 1])
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if criterion == -1:
        union = area + (query[:, 2] - query[:, 0]) * (query[:, 3] - query[:, 1]) - inter
    else:
        union = area
    hit = (iw > 0) & (ih > 0)
    out = np.zeros(boxes.shape[0])
    np.divide(inter, union, out=out, where=hit)
    return out


def camera_bev_to_lidar_like(boxes_camera: Tensor) -> Tensor:
    """Camera boxes ``[K, 7] (x, y, z, l, h, w, ry)`` -> boxes ``[K, 7]`` for :mod:`geoattn.sparse.boxes`
    whose BEV rectangle is the official camera one: ``(u, v) = (x, z)``, size ``(l, w)``, heading ``-ry``
    (the official corners turn by ``-ry`` in the (x, z) plane, the library's by ``+heading``)."""
    zeros = torch.zeros_like(boxes_camera[:, 0])
    return torch.stack([boxes_camera[:, 0], boxes_camera[:, 2], zeros, boxes_camera[:, 3], boxes_camera[:, 5],
                        zeros + 1.0, -boxes_camera[:, 6]], 1)


def camera_box_overlaps(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    """Official BEV and 3-D overlaps ``([A, B], [A, B])`` of camera boxes ``[A, 7]``, ``[B, 7]``
    ``(x, y, z, l, h, w, ry)`` (bottom centre, y down).

    ``bev = I / (l_a w_a + l_b w_b - I)`` with ``I`` the intersection of the rotated ``(x, z, l, w, ry)``
    rectangles; ``3d = I dy / (V_a + V_b - I dy)`` with ``dy = min(y_a, y_b) - max(y_a - h_a, y_b - h_b)`` (the
    boxes span ``[y - h, y]``) and ``V = l h w``; both 0 where ``I <= 0`` (and ``dy <= 0`` for 3-D).
    """
    for name, boxes in (("boxes_a", boxes_a), ("boxes_b", boxes_b)):
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 7:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{name}: expected a tensor [K, 7] (x, y, z, l, h, w, ry), got {shape}")
    a, b = boxes_a.to(torch.float64), boxes_b.to(torch.float64)
    inter = boxes_intersection_bev(camera_bev_to_lidar_like(a), camera_bev_to_lidar_like(b))
    area_a, area_b = (a[:, 3] * a[:, 5])[:, None], (b[:, 3] * b[:, 5])[None]
    positive = inter > 0
    bev = torch.where(positive, inter / torch.where(positive, area_a + area_b - inter, 1.0), 0.0)
    dy = (torch.minimum(a[:, None, 1], b[None, :, 1])
          - torch.maximum((a[:, 1] - a[:, 4])[:, None], (b[:, 1] - b[:, 4])[None]))
    inc = inter * dy
    hit = positive & (dy > 0)
    union = area_a * a[:, 4, None] + area_b * b[None, :, 4] - inc
    d3 = torch.where(hit, inc / torch.where(hit, union, 1.0), 0.0)
    return bev, d3


def _overlaps(gt: _Flat, dt: _Flat, pairs: _Pairs, gt_used: np.ndarray) -> list[np.ndarray]:
    """Flat pair overlaps ``[P]`` for the three metrics (bbox, bev, 3d).

    The rotated overlaps are computed frame by frame with :func:`camera_box_overlaps`, only on the pairs whose
    BEV circumscribed circles meet (``|c_a - c_b| <= r_a + r_b``, ``r = sqrt(l^2 + w^2) / 2``; any other pair
    has zero intersection) and whose ground truth can take part (``gt_used``: a class evaluated or neighbouring).
    """
    bbox = _image_overlap(dt.bbox[pairs.det], gt.bbox[pairs.gt], -1)
    bev, d3 = np.zeros_like(bbox), np.zeros_like(bbox)
    dt_radius = 0.5 * np.hypot(dt.boxes[:, 3], dt.boxes[:, 5])
    gt_radius = 0.5 * np.hypot(gt.boxes[:, 3], gt.boxes[:, 5])
    distance = np.hypot(dt.boxes[pairs.det, 0] - gt.boxes[pairs.gt, 0], dt.boxes[pairs.det, 2] - gt.boxes[pairs.gt, 2])
    reach = dt_radius[pairs.det] + gt_radius[pairs.gt]
    candidate = np.nonzero((distance <= reach * (1 + 1e-9) + 1e-9) & gt_used[pairs.gt])[0]
    del distance, reach
    if candidate.size == 0:
        return [bbox, bev, d3]
    gt_boxes, dt_boxes = torch.from_numpy(gt.boxes), torch.from_numpy(dt.boxes)
    frame = pairs.frame[candidate]
    bounds = np.nonzero(np.diff(frame))[0] + 1
    for group in np.split(candidate, bounds):
        dets, det_pos = np.unique(pairs.det[group], return_inverse=True)
        gts, gt_pos = np.unique(pairs.gt[group], return_inverse=True)
        block_bev, block_3d = camera_box_overlaps(dt_boxes[dets], gt_boxes[gts])
        bev[group] = block_bev.numpy()[det_pos, gt_pos]
        d3[group] = block_3d.numpy()[det_pos, gt_pos]
    return [bbox, bev, d3]


def _dontcare_overlap(gt: _Flat, dt: _Flat) -> np.ndarray:
    """Per detection ``[D]``: the largest ``area(det ∩ dc) / area(det)`` over its frame's DontCare boxes."""
    out = np.zeros(dt.names.shape[0])
    dc = np.nonzero(gt.names == "DontCare")[0]
    if dc.size == 0 or out.size == 0:
        return out
    dc_frame = gt.frame[dc]
    per_frame = np.bincount(dc_frame, minlength=len(dt.counts))
    sizes = per_frame[dt.frame]  # DontCare boxes in each detection's frame
    det = np.repeat(np.arange(out.size), sizes)
    first = np.concatenate([[0], np.cumsum(per_frame)])[dt.frame]
    local = np.arange(det.size) - np.repeat(np.concatenate([[0], np.cumsum(sizes)])[:-1], sizes)
    dc_sorted = dc[np.argsort(dc_frame, kind="stable")]
    ov = _image_overlap(dt.bbox[det], gt.bbox[dc_sorted[np.repeat(first, sizes) + local]], 0)
    np.maximum.at(out, det, ov)
    return out


# ---------------------------------------------------------------------------------------------------------
# The official algorithm, vectorised
# ---------------------------------------------------------------------------------------------------------

def get_thresholds(scores: np.ndarray, num_gt: int, num_sample_pts: int = _NUM_SAMPLE_PTS) -> np.ndarray:
    """Official ``get_thresholds``: from the TP scores sorted in descending order, keep score ``i`` when the
    recall ``(i + 1) / num_gt`` is at least as close to the current sample point ``k / (num_sample_pts - 1)``
    as the next recall ``(i + 2) / num_gt`` is (always keep the last), then move to the next sample point.

    Same float arithmetic as the official loop (the sample point is accumulated by repeated addition); the
    search jumps from one kept score to the next with a vectorised test. Returns float64 ``[T]``.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    count = scores.shape[0]
    if count == 0:
        return np.zeros(0)
    index = np.arange(count, dtype=np.int64)
    l_recall = (index + 1) / num_gt
    r_recall = np.where(index < count - 1, (index + 2) / num_gt, l_recall)
    current, kept, start = 0, [], 0
    step = 1 / (num_sample_pts - 1.0)
    while start < count:
        skip = (r_recall[start:] - current) < (current - l_recall[start:])
        skip[-1] = False
        chosen = start + int(np.argmax(~skip))
        kept.append(scores[chosen])
        current += step
        start = chosen + 1
    return np.asarray(kept[:num_sample_pts], dtype=np.float64)


class _Layout:
    """Selected detections / ground truths of a set of frames padded into ``[F, D]`` / ``[F, G]`` slots.

    ``det[f, d]`` / ``gt[f, g]`` hold global indices (``-1`` for padding); frames are sorted by descending
    ground-truth count so that the frames still having a slot ``g`` form a prefix ``[:alive[g]]``.
    """

    def __init__(self, frames: np.ndarray, det_keep: np.ndarray, gt_keep: np.ndarray, dt: _Flat, gt: _Flat):
        det_idx, gt_idx = np.nonzero(det_keep)[0], np.nonzero(gt_keep)[0]
        det_n = np.bincount(dt.frame[det_idx], minlength=len(dt.counts))[frames]
        gt_n = np.bincount(gt.frame[gt_idx], minlength=len(gt.counts))[frames]
        order = np.argsort(-gt_n, kind="stable")
        frames, det_n, gt_n = frames[order], det_n[order], gt_n[order]
        self.frames, self.det_n, self.gt_n = frames, det_n, gt_n
        self.det = self._slots(frames, det_idx, dt.frame[det_idx], len(dt.counts), det_n)
        self.gt = self._slots(frames, gt_idx, gt.frame[gt_idx], len(gt.counts), gt_n)
        width = self.gt.shape[1]
        self.alive = (gt_n[None, :] > np.arange(width)[:, None]).sum(1) if width else np.zeros(0, np.int64)

    @staticmethod
    def _slots(frames, index, frame_of, num_frames, counts):
        width = int(counts.max()) if counts.size else 0
        out = np.full((frames.shape[0], width), -1, dtype=np.int64)
        if index.size == 0 or width == 0:
            return out
        row_of_frame = np.full(num_frames, -1, dtype=np.int64)
        row_of_frame[frames] = np.arange(frames.shape[0])
        rows = row_of_frame[frame_of]
        inside = rows >= 0
        index, frame_of, rows = index[inside], frame_of[inside], rows[inside]
        first = np.searchsorted(frame_of, frame_of, side="left")
        out[rows, np.arange(index.shape[0]) - first] = index
        return out


def _gather_overlap(layout: _Layout, pairs: _Pairs, dt: _Flat, gt: _Flat, flat_overlap: np.ndarray) -> np.ndarray:
    """``[F, D, G]`` overlaps of the layout's slots (0 for padding)."""
    det, g_idx = layout.det, layout.gt
    frames = layout.frames
    d_local = np.where(det >= 0, det - dt.offsets[frames][:, None], 0)
    g_local = np.where(g_idx >= 0, g_idx - gt.offsets[frames][:, None], 0)
    index = (pairs.offset[frames][:, None, None] + d_local[:, :, None] * pairs.gt_counts[frames][:, None, None]
             + g_local[:, None, :])
    valid = (det >= 0)[:, :, None] & (g_idx >= 0)[:, None, :]
    out = np.zeros(index.shape)
    if flat_overlap.size:
        out[valid] = flat_overlap[index[valid]]
    return out


def _first_pass(layout, overlap, det_ign, score, gt_ign, min_overlap):
    """Threshold pass (official ``compute_statistics_jit`` with ``compute_fp=False``): the TP scores."""
    det, g_idx = layout.det, layout.gt
    pad = det < 0
    d_ign = np.where(pad, -1, det_ign[np.maximum(det, 0)])
    d_score = np.where(pad, -np.inf, score[np.maximum(det, 0)])
    free = (~pad) & (d_score > _NO_DETECTION)
    tp_scores = []
    if det.shape[1] == 0:
        return np.zeros(0)
    for g in range(g_idx.shape[1]):
        k = int(layout.alive[g])
        candidate = free[:k] & (overlap[:k, :, g] > min_overlap)
        found = candidate.any(1)
        best = np.where(candidate, d_score[:k], -np.inf).argmax(1)
        rows = np.arange(k)
        g_ign = gt_ign[g_idx[:k, g]]
        is_tp = found & (g_ign == 0) & (d_ign[rows, best] == 0)
        tp_scores.append(d_score[rows[is_tp], best[is_tp]])
        free[rows[found], best[found]] = False
    return np.concatenate(tp_scores) if tp_scores else np.zeros(0)


def _second_pass(layout, overlap, det_ign, score, gt_ign, min_overlap, thresholds, dc_hit, gt_alpha, dt_alpha,
                 compute_aos):
    """Precision-recall pass (``compute_fp=True``) at all thresholds at once: ``[T, 4]`` = tp, fp, fn, sim."""
    det, g_idx = layout.det, layout.gt
    pad = det < 0
    safe = np.maximum(det, 0)
    d_ign = np.where(pad, -1, det_ign[safe])
    d_score = np.where(pad, -np.inf, score[safe])
    valid_det = d_ign == 0
    ignored_det = d_ign == 1
    free = (d_score[None] >= thresholds[:, None, None]) & (~pad)[None]  # [T, F, D]
    num_t = thresholds.shape[0]
    out = np.zeros((num_t, 4))
    if det.shape[1] == 0:  # no detections in these frames: only false negatives (unused by AP)
        out[:, 2] = (gt_ign[g_idx[g_idx >= 0]] == 0).sum()
        return out
    d_alpha = dt_alpha[safe] if compute_aos else None
    for g in range(g_idx.shape[1]):
        k = int(layout.alive[g])
        over = overlap[:k, :, g] > min_overlap  # [k, D]
        candidate = free[:, :k] & over[None]
        cand_valid = candidate & valid_det[None, :k]
        cand_ignored = candidate & ignored_det[None, :k]
        has_valid = cand_valid.any(2)
        best = np.where(cand_valid, overlap[None, :k, :, g], -1.0).argmax(2)
        has_ignored = cand_ignored.any(2)
        first_ignored = cand_ignored.argmax(2)
        found = has_valid | has_ignored
        chosen = np.where(has_valid, best, first_ignored)  # [T, k]
        g_ign = gt_ign[g_idx[:k, g]]  # [k]
        counted = (g_ign == 0)[None]
        is_tp = has_valid & counted
        out[:, 0] += is_tp.sum(1)
        out[:, 2] += (~found & counted).sum(1)
        if compute_aos:
            delta = gt_alpha[g_idx[:k, g]][None] - d_alpha[:k][np.arange(k)[None], chosen]
            out[:, 3] += np.where(is_tp, (1.0 + np.cos(delta)) / 2.0, 0.0).sum(1)
        t_hit, f_hit = np.nonzero(found)
        free[t_hit, f_hit, chosen[t_hit, f_hit]] = False
    unassigned = free & valid_det[None]
    out[:, 1] = unassigned.sum((1, 2))
    if dc_hit is not None:
        out[:, 1] -= (unassigned & dc_hit[safe][None] & (~pad)[None]).sum((1, 2))
    return out


def _chunks(frames: np.ndarray, det_counts: np.ndarray, num_t: int):
    """Split ``frames`` (sorted by detection count) into groups whose ``[T, F, D]`` block fits the budget."""
    order = np.argsort(det_counts, kind="stable")
    frames, counts = frames[order], det_counts[order]
    start = 0
    total = frames.shape[0]
    while start < total:
        # largest stop with (stop - start) * counts[stop - 1] * T <= budget (counts ascending)
        span = np.arange(1, total - start + 1)
        fits = span * np.maximum(counts[start:], 1) * max(num_t, 1) <= _BLOCK_ELEMENTS
        stop = start + max(1, int(fits.sum()))
        yield frames[start:stop]
        start = stop


def _precision_to_ap(values: np.ndarray) -> tuple[float, float]:
    """Max-accumulate from the right over 41 points, then (R11, R40) in percent (official sums, in order)."""
    padded = np.zeros(_NUM_SAMPLE_PTS)
    padded[:values.shape[0]] = values[:_NUM_SAMPLE_PTS]
    padded = np.maximum.accumulate(padded[::-1])[::-1]
    r11 = 0.0
    for i in range(0, _NUM_SAMPLE_PTS, 4):
        r11 = r11 + padded[i]
    r40 = 0.0
    for i in range(1, _NUM_SAMPLE_PTS):
        r40 = r40 + padded[i]
    return float(r11 / 11 * 100), float(r40 / 40 * 100)


def _ignore_flags(gt: _Flat, dt: _Flat, cls: str, level: int):
    name = cls.lower()
    height = gt.bbox[:, 3] - gt.bbox[:, 1]
    hard = ((gt.occluded > _MAX_OCCLUSION[level]) | (gt.truncated > _MAX_TRUNCATION[level])
            | (height <= _MIN_HEIGHT[level]))
    own = gt.lower == name
    neighbour = (gt.lower == _NEIGHBOUR[name]) if name in _NEIGHBOUR else np.zeros_like(own)
    gt_ign = np.full(own.shape, -1, dtype=np.int64)
    gt_ign[neighbour | (own & hard)] = 1
    gt_ign[own & ~hard] = 0
    dt_height = np.abs(dt.bbox[:, 3] - dt.bbox[:, 1])
    dt_ign = np.where(dt_height < _MIN_HEIGHT[level], 1, np.where(dt.lower == name, 0, -1)).astype(np.int64)
    return gt_ign, dt_ign, int((gt_ign == 0).sum())


def _eval_one(gt, dt, pairs, overlap, gt_ign, dt_ign, num_valid, min_overlap, dc_overlap, compute_aos):
    """Precision (and AOS) at the 41 sample points for one (class, difficulty, metric)."""
    num_frames = len(gt.counts)
    frames = np.arange(num_frames)
    layout = _Layout(frames, dt_ign != -1, gt_ign != -1, dt, gt)
    ov = _gather_overlap(layout, pairs, dt, gt, overlap)
    tp_scores = _first_pass(layout, ov, dt_ign, dt.score, gt_ign, min_overlap)
    thresholds = get_thresholds(tp_scores, num_valid)
    if thresholds.shape[0] == 0:
        return np.zeros(0), (np.zeros(0) if compute_aos else None)
    det_keep = (dt_ign != -1) & (dt.score >= thresholds[-1])
    gt_keep = gt_ign != -1
    det_counts = np.bincount(dt.frame[det_keep], minlength=num_frames)
    gt_counts = np.bincount(gt.frame[gt_keep], minlength=num_frames)
    used = np.nonzero((det_counts > 0) | (gt_counts > 0))[0]
    dc_hit = (dc_overlap > min_overlap) if dc_overlap is not None else None
    stats = np.zeros((thresholds.shape[0], 4))
    for chunk in _chunks(used, det_counts[used], thresholds.shape[0]):
        layout = _Layout(chunk, det_keep, gt_keep, dt, gt)
        ov = _gather_overlap(layout, pairs, dt, gt, overlap)
        stats += _second_pass(layout, ov, dt_ign, dt.score, gt_ign, min_overlap, thresholds, dc_hit, gt.alpha,
                              dt.alpha, compute_aos)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = stats[:, 0] / (stats[:, 0] + stats[:, 1])
        aos = stats[:, 3] / (stats[:, 0] + stats[:, 1]) if compute_aos else None
    return precision, aos


def _check_classes(classes) -> list[str]:
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c]
    if not isinstance(classes, Sequence) or not classes:
        raise ValueError(f"classes: expected a non-empty sequence of class names, got {classes!r}")
    out = []
    for cls in classes:
        if cls not in KITTI_EVAL_CLASSES:
            raise ValueError(f"classes: expected names among {sorted(KITTI_EVAL_CLASSES)}, got {cls!r}")
        out.append(cls)
    return out


def evaluate_kitti(gt_annos: Sequence[KittiLabels], dt_annos: Sequence[KittiLabels],
                   classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"), loose: bool = False) -> dict[str, float]:
    """KITTI AP of detections ``dt_annos`` against ground truth ``gt_annos`` (one :class:`KittiLabels` per
    frame, same order; ground truth with DontCare / Van / Person_sitting rows kept; detections with ``score``
    and 2-D boxes), following OpenPCDet's ``get_official_eval_result`` (see the module docstring).

    Returns ``{"Car_image/easy_R11": ..., "Car_bev/moderate_R40": ..., "Car_3d/hard_R40": ...,
    "Car_aos/easy_R40": ..., ...}`` in percent, for each class in ``classes`` (names of
    :data:`KITTI_EVAL_CLASSES`), the main threshold set (plus ``_loose`` keys when ``loose``). The ``aos`` keys
    are present only when the first non-empty detection frame's first alpha is not ``-10`` (the official test).
    """
    classes = _check_classes(classes)
    if not isinstance(gt_annos, Sequence) or not isinstance(dt_annos, Sequence):
        raise TypeError("gt_annos, dt_annos: expected sequences of KittiLabels, got "
                        f"{type(gt_annos).__name__}, {type(dt_annos).__name__}")
    if len(gt_annos) != len(dt_annos):
        raise ValueError(f"dt_annos: expected one entry per ground-truth frame ({len(gt_annos)}), "
                         f"got {len(dt_annos)}")
    gt = _Flat(gt_annos, "gt_annos", detections=False)
    dt = _Flat(dt_annos, "dt_annos", detections=True)
    compute_aos = dt.first_alpha is not None and dt.first_alpha != -10
    pairs = _Pairs(gt, dt)
    involved = {c.lower() for c in classes} | {_NEIGHBOUR[c.lower()] for c in classes if c.lower() in _NEIGHBOUR}
    overlaps = _overlaps(gt, dt, pairs, np.isin(gt.lower, sorted(involved)))
    dc_overlap = _dontcare_overlap(gt, dt)
    sets = [("", 0)] + ([("_loose", 1)] if loose else [])
    result: dict[str, float] = {}
    for cls in classes:
        for suffix, set_index in sets:
            thresholds = KITTI_EVAL_CLASSES[cls][set_index]
            for level, difficulty in enumerate(_DIFFICULTIES):
                gt_ign, dt_ign, num_valid = _ignore_flags(gt, dt, cls, level)
                for metric in range(3):
                    precision, aos = _eval_one(gt, dt, pairs, overlaps[metric], gt_ign, dt_ign, num_valid,
                                               thresholds[metric], dc_overlap if metric == 0 else None,
                                               compute_aos and metric == 0)
                    r11, r40 = _precision_to_ap(precision)
                    result[f"{cls}_{_METRICS[metric]}{suffix}/{difficulty}_R11"] = r11
                    result[f"{cls}_{_METRICS[metric]}{suffix}/{difficulty}_R40"] = r40
                    if aos is not None:
                        r11, r40 = _precision_to_ap(aos)
                        result[f"{cls}_aos{suffix}/{difficulty}_R11"] = r11
                        result[f"{cls}_aos{suffix}/{difficulty}_R40"] = r40
    return _ordered(result, classes, [s for s, _ in sets])


def _ordered(result: dict, classes, suffixes) -> dict:
    out = {}
    for cls in classes:
        for suffix in suffixes:
            for recall in ("R11", "R40"):
                for metric in (*_METRICS, "aos"):
                    for difficulty in _DIFFICULTIES:
                        key = f"{cls}_{metric}{suffix}/{difficulty}_{recall}"
                        if key in result:
                            out[key] = result[key]
    return out


# ---------------------------------------------------------------------------------------------------------
# Folders, table, conversion of LiDAR detections
# ---------------------------------------------------------------------------------------------------------

def _empty_labels() -> KittiLabels:
    zeros = torch.zeros(0, dtype=torch.float64)
    return KittiLabels([], zeros, torch.zeros(0, dtype=torch.long), zeros.clone(),
                       torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 7, dtype=torch.float64),
                       score=zeros.clone())


def evaluate_kitti_folders(label_dir, prediction_dir, classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                           frame_ids: Sequence[str] | None = None, loose: bool = False) -> dict[str, float]:
    """:func:`evaluate_kitti` over ``label_dir/<frame>.txt`` and ``prediction_dir/<frame>.txt`` (KITTI label
    format, 16th column = score).

    Frames: ``frame_ids`` (each needs a label file) or every ``*.txt`` in ``label_dir``, sorted. A frame
    without a prediction file has no detections; a prediction file whose frame has no label file raises
    ``ValueError`` naming it.
    """
    label_dir, prediction_dir = Path(label_dir), Path(prediction_dir)
    for name, folder in (("label_dir", label_dir), ("prediction_dir", prediction_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name}: no such folder: {folder}")
    labelled = {path.stem for path in label_dir.glob("*.txt")}
    orphans = sorted(path for path in prediction_dir.glob("*.txt") if path.stem not in labelled)
    if orphans:
        raise ValueError(f"prediction_dir: {orphans[0]} has no label file {label_dir / orphans[0].name}"
                         + (f" (and {len(orphans) - 1} more predictions without labels)" if len(orphans) > 1 else ""))
    if frame_ids is None:
        frame_ids = sorted(labelled)
    else:
        frame_ids = [str(f) for f in frame_ids]
        missing = [f for f in frame_ids if f not in labelled]
        if missing:
            raise FileNotFoundError(f"frame_ids: no label file {label_dir / (missing[0] + '.txt')}"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    gt_annos, dt_annos = [], []
    for frame in frame_ids:
        gt_annos.append(read_label(label_dir / f"{frame}.txt"))
        path = prediction_dir / f"{frame}.txt"
        if path.exists():
            labels = read_label(path)
            if len(labels) and labels.score is None:
                raise ValueError(f"prediction_dir: {path} has no score column (16th); detections need scores")
            if labels.score is None:
                labels.score = torch.zeros(0, dtype=torch.float64)
            dt_annos.append(labels)
        else:
            dt_annos.append(_empty_labels())
    return evaluate_kitti(gt_annos, dt_annos, classes, loose=loose)


def format_kitti_table(result: dict[str, float]) -> str:
    """A text table like OpenPCDet's printout: per class and threshold set an ``AP@`` block (R11) and an
    ``AP_R40@`` block, rows ``bbox / bev / 3d / aos`` with the easy, moderate, hard values."""
    if not isinstance(result, dict):
        raise TypeError(f"result: expected the dict of evaluate_kitti, got {type(result).__name__}")
    lines = []
    classes = [c for c in KITTI_EVAL_CLASSES if any(k.startswith(f"{c}_") for k in result)]
    classes.sort(key=lambda c: min(i for i, k in enumerate(result) if k.startswith(f"{c}_")))
    for cls in classes:
        for suffix, set_index in (("", 0), ("_loose", 1)):
            if f"{cls}_image{suffix}/easy_R40" not in result:
                continue
            thresholds = ", ".join(f"{t:.2f}" for t in KITTI_EVAL_CLASSES[cls][set_index])
            for recall, title in (("R11", "AP"), ("R40", "AP_R40")):
                lines.append(f"{cls} {title}@{thresholds}:")
                for metric, label, digits in (("image", "bbox", 4), ("bev", "bev ", 4), ("3d", "3d  ", 4),
                                              ("aos", "aos ", 2)):
                    keys = [f"{cls}_{metric}{suffix}/{d}_{recall}" for d in _DIFFICULTIES]
                    if all(k in result for k in keys):
                        lines.append(f"{label} AP:" + ", ".join(f"{result[k]:.{digits}f}" for k in keys))
    return "\n".join(lines) + ("\n" if lines else "")


def lidar_detections_to_kitti(boxes: Tensor, scores: Tensor, labels: Tensor, class_names: Sequence[str],
                              calib: KittiCalibration, image_shape: tuple[int, int]) -> KittiLabels:
    """LiDAR detections -> KITTI camera-frame labels with 2-D boxes, as OpenPCDet's ``generate_prediction_dicts``.

    Args:
        boxes: ``[P, 7]`` LiDAR boxes ``(x, y, z, dx, dy, dz, heading)``.
        scores: ``[P]``; labels: ``[P]`` long, 0-based indices into ``class_names``.
        calib: the frame's calibration (``lidar2cam`` and ``P[2]`` are used).
        image_shape: ``(H, W)`` of the image.

    Camera boxes ``(x, y, z, l, h, w, ry)`` come from :func:`geoattn.data.kitti.boxes_lidar_to_camera`; the
    2-D box is the min / max of the 8 projected corners (``P2 [X; 1]``, corners ``x = +-l/2``, ``y in {0, -h}``,
    ``z = +-w/2`` turned by ``ry``) clipped to ``[0, W - 1] x [0, H - 1]``; ``alpha = -atan2(-y, x) + ry`` with
    ``(x, y)`` the LiDAR centre. Detections whose box centre is not in front of the camera (depth ``<= 0``) or
    whose unclipped 2-D box lies entirely outside the image are dropped; corners of a kept box behind the
    camera are projected at a 0.01 m depth (so the 2-D box extends to the image border on that side).
    Returns a float64 CPU :class:`KittiLabels` with ``score`` (truncation and occlusion 0).
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 7:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes: expected a tensor [P, 7], got {shape}")
    count = boxes.shape[0]
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (count,):
        raise ValueError(f"scores: expected a tensor [{count}], got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (count,) or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [{count}], got "
                         f"{(tuple(labels.shape), labels.dtype) if isinstance(labels, Tensor) else type(labels)}")
    if not isinstance(calib, KittiCalibration):
        raise TypeError(f"calib: expected a KittiCalibration, got {type(calib).__name__}")
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in image_shape)):
        raise ValueError(f"image_shape: expected (H, W) positive ints, got {image_shape!r}")
    class_names = list(class_names)
    labels = labels.detach().cpu().long()
    if count and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
        raise ValueError(f"labels: expected values in [0, {len(class_names)}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    boxes = boxes.detach().cpu().to(torch.float64)
    scores = scores.detach().cpu().to(torch.float64)
    height, width = int(image_shape[0]), int(image_shape[1])
    camera = boxes_lidar_to_camera(boxes, calib.lidar2cam)
    corners = camera_box_corners(camera)  # [P, 8, 3]
    corners = torch.cat([corners[..., :2], corners[..., 2:3].clamp(min=0.01)], -1)
    projection = calib.P[2].to(torch.float64)
    pixels = corners @ projection[:3, :3].T + projection[:3, 3]
    uv = pixels[..., :2] / pixels[..., 2:3]
    low, high = uv.min(1).values, uv.max(1).values
    keep = ((camera[:, 2] > 0) & (high[:, 0] >= 0) & (low[:, 0] <= width - 1) & (high[:, 1] >= 0)
            & (low[:, 1] <= height - 1))
    bbox = torch.stack([low[:, 0].clamp(0, width - 1), low[:, 1].clamp(0, height - 1),
                        high[:, 0].clamp(0, width - 1), high[:, 1].clamp(0, height - 1)], 1)
    alpha = -torch.atan2(-boxes[:, 1], boxes[:, 0]) + camera[:, 6]
    index = keep.nonzero().flatten()
    names = [class_names[i] for i in labels[index].tolist()]
    kept = index.shape[0]
    return KittiLabels(names, torch.zeros(kept, dtype=torch.float64), torch.zeros(kept, dtype=torch.long),
                       alpha[index], bbox[index], camera[index], score=scores[index])

