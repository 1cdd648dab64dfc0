"""Waymo Open Dataset 3-D detection metric (mAP / mAPH at LEVEL_1 and LEVEL_2) without TensorFlow.

A reimplementation of the official C++ metric (waymo-open-dataset ``metrics/detection_metrics.cc``,
``metrics_utils.cc``, ``matcher.cc``, ``iou.cc``) with the configuration OpenPCDet's ``waymo_eval.py`` builds:
breakdown by object type, difficulties LEVEL_1 and LEVEL_2, Hungarian matching, 3-D boxes, IoU thresholds
Vehicle 0.7 / Pedestrian 0.5 / Cyclist 0.5, score cutoffs 0.00, 0.01, ..., 0.99, 1.0, ``desired_recall_delta``
0.05, ``min_precision`` 0 and ``min_heading_accuracy`` -1 (proto defaults).

Per frame, object type and score cutoff ``c`` (predictions with ``score >= c``, in float32 as the protos):

* IoU: 3-D IoU of the 7-DoF boxes (:func:`geoattn.sparse.boxes.boxes_iou3d`, float64), 0 when any dimension of
  either box is ``<= 0.01`` or ``>= 1e6`` (``iou.cc``), stored as float32. A pair can match when
  ``IoU >= threshold`` (float32, ``>=``); boxes of different types never match.
* Matching: maximise ``sum round(IoU * kMaxIoU)`` (``kMaxIoU = 1e6``) over pairs that can match
  (``scipy.optimize.linear_sum_assignment``); assigned pairs that cannot match are dropped (``matcher.cc``).
* TP: a matched prediction, whatever the level of its ground truth; its heading accuracy is
  ``1 - |dtheta| / pi`` with both headings wrapped into ``[-pi, pi)`` and ``dtheta`` folded into ``[0, pi]``.
  FP: an unmatched prediction (no no-label-zone flags, as OpenPCDet). FN at level ``L``: an unmatched ground
  truth of difficulty ``<= L`` (so at LEVEL_1 an unmatched LEVEL_2 object is no FN, a matched one is a TP).
* The counts are summed over frames; ``precision = TP / (TP + FP)`` (0 when no prediction),
  ``precision_H = sum(HA) / (TP + FP)``, ``recall = TP / (TP + FN)`` (0 without ground truth), and every
  cutoff whose recall is 0 gets precision 1.
* AP (``ComputeMeanAveragePrecision``): recall -> the largest precision at that recall, with (recall 0,
  precision 1) added; walking from high to low recall, every gap larger than 0.05 (+1e-6) is filled in steps of
  0.05 with the running maximum precision, each point takes the running maximum; the precision at recall 0 is
  replaced by that of its neighbour; trapezoid integration. The arithmetic follows the C++ float/double mix.

Ground-truth difficulty (OpenPCDet ``generate_waymo_type_results``): a difficulty of 0 (unknown) or a missing
one becomes LEVEL_2 when the box has ``<= 5`` LiDAR points, else LEVEL_1; ground truths with 0 points are
dropped. ``"Overall"`` is the mean over the evaluated classes.

Known differences from the official binary: equal-weight optimal assignments may be broken differently by
scipy's solver than by the official Hungarian code (only matters for exact ties of the quantised IoU sums);
``sum(HA)`` is accumulated in float64, not float32; the reported values are clipped to [0, 1] (the float32
integration can give 1 + 1 ulp); OpenPCDet's distance mask (1000 m in its evaluation) and its
sigmoid on scores above 1 are not applied.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from geoattn.sparse.boxes import boxes_iou3d

__all__ = [
    "WAYMO_IOU_THRESHOLDS", "SCORE_CUTOFFS", "K_MAX_IOU", "evaluate_waymo", "evaluate_waymo_infos",
    "mean_average_precision", "heading_accuracy",
]

WAYMO_IOU_THRESHOLDS = {"Vehicle": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
SCORE_CUTOFFS = np.array([x * 0.01 for x in range(100)] + [1.0], dtype=np.float32)
K_MAX_IOU = 1000 * 1000
_LEVELS = (1, 2)
_F32 = np.float32


def heading_accuracy(pred_heading: np.ndarray, gt_heading: np.ndarray) -> np.ndarray:
    """``1 - |dtheta| / pi`` per pair (float32 ``[...]``), ``dtheta`` of the wrapped headings folded into
    ``[0, pi]`` (``metrics_utils.cc: ComputeHeadingAccuracy``)."""
    def normalise(angle):  # WrapToRange(-pi, pi) in double, stored as float
        angle = np.asarray(angle, dtype=np.float32).astype(np.float64)
        shifted = angle + math.pi
        period = 2 * math.pi
        modulo = shifted - np.trunc(shifted * (1 / period)) * period
        wrapped = np.where(modulo >= 0, modulo, np.where(modulo + period >= period, 0.0, modulo + period))
        return (wrapped - math.pi).astype(np.float32)

    diff = np.abs(normalise(pred_heading) - normalise(gt_heading))
    diff = np.where(diff > math.pi, (2.0 * math.pi - diff.astype(np.float64)).astype(np.float32), diff)
    return np.clip(1.0 - diff.astype(np.float64) / math.pi, 0.0, 1.0).astype(np.float32)


def mean_average_precision(precisions, recalls, max_recall_delta: float = 0.05) -> float:
    """Area under the P/R curve exactly as ``metrics_utils.cc: ComputeMeanAveragePrecision`` (float32).

    Args:
        precisions, recalls: ``[C]`` one pair per score cutoff.
        max_recall_delta: the largest recall gap left unfilled (0.05).
    """
    precisions = np.asarray(precisions, dtype=np.float32).reshape(-1)
    recalls = np.asarray(recalls, dtype=np.float32).reshape(-1)
    if precisions.shape != recalls.shape:
        raise ValueError(f"precisions, recalls: expected equal lengths, got {precisions.shape} and {recalls.shape}")
    if not 0.0 < max_recall_delta <= 1.0:
        raise ValueError(f"max_recall_delta: expected a value in (0, 1], got {max_recall_delta}")
    if precisions.size == 0:
        return 0.0
    best: dict[np.float32, np.float32] = {_F32(0.0): _F32(1.0)}
    for p, r in zip(precisions, recalls):
        best[r] = max(best.get(r, _F32(0.0)), p)
    keys = sorted(best)
    delta = _F32(max_recall_delta)
    limit = delta + _F32(1e-6)
    curve: list[list[np.float32]] = []  # [precision, recall], recall descending
    last_recall = keys[0]
    max_precision = _F32(0.0)
    for r in reversed(keys):
        while last_recall - r > limit:
            last_recall = _F32(last_recall - delta)
            curve.append([max_precision, last_recall])
        max_precision = max(best[r], max_precision)
        curve.append([max_precision, r])
        last_recall = r
    if len(curve) >= 2:
        curve[-1][0] = curve[-2][0]
    area = _F32(0.0)
    for i in range(1, len(curve)):
        step = 0.5 * float(_F32(curve[i - 1][1] - curve[i][1])) * float(_F32(curve[i - 1][0] + curve[i][0]))
        area = _F32(float(area) + step)
    return float(area)


def _as_array(value, name: str, dtype, shape_tail=None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected an array of {np.dtype(dtype).name}, got {type(value).__name__}") from error
    if shape_tail is not None:
        if array.size == 0:
            array = array.reshape(0, shape_tail)
        if array.ndim != 2 or array.shape[1] < shape_tail:
            raise ValueError(f"{name}: expected shape [M, {shape_tail}], got {array.shape}")
        array = array[:, :shape_tail]
    elif array.ndim != 1:
        array = array.reshape(-1) if array.size == 0 else array
        if array.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    return array


def _check_labels(labels: np.ndarray, count: int, num_classes: int, name: str) -> None:
    if labels.shape[0] != count:
        raise ValueError(f"{name}: expected {count} entries (one per box), got {labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name}: expected class indices in [0, {num_classes}), got min {labels.min()} "
                         f"max {labels.max()}")


class _Accumulator:
    """Per class and cutoff: TP, FP, sum of heading accuracy, FN at LEVEL_1 and LEVEL_2."""

    def __init__(self, num_classes: int):
        cutoffs = SCORE_CUTOFFS.shape[0]
        self.tp = np.zeros((num_classes, cutoffs), dtype=np.int64)
        self.fp = np.zeros((num_classes, cutoffs), dtype=np.int64)
        self.fn = np.zeros((num_classes, len(_LEVELS), cutoffs), dtype=np.int64)
        self.ha = np.zeros((num_classes, cutoffs), dtype=np.float64)


def _match_class(iou: np.ndarray, ha: np.ndarray, threshold: np.float32, scores: np.ndarray,
                 gt_difficulty: np.ndarray, acc: _Accumulator, cls: int) -> None:
    """Accumulate one frame and class over all cutoffs.

    ``iou [P, G]`` float32 and ``ha [P, G]`` with predictions sorted by descending score ``scores [P]``;
    ``gt_difficulty [G]`` in {1, 2}. Cutoffs that select the same predictions share one matching.
    """
    num_pred, num_gt = iou.shape
    counts = num_pred - np.searchsorted(scores[::-1], SCORE_CUTOFFS, side="left")  # preds with s >= c
    gt_per_level = np.array([(gt_difficulty <= level).sum() for level in _LEVELS])
    if num_pred == 0 or num_gt == 0:
        acc.fp[cls] += counts
        acc.fn[cls] += gt_per_level[:, None]
        return
    can = iou >= threshold
    if not can.any():
        acc.fp[cls] += counts
        acc.fn[cls] += gt_per_level[:, None]
        return
    if (can.sum(1) <= 1).all() and (can.sum(0) <= 1).all():
        # No two candidates compete: every candidate pair is matched once its prediction is selected.
        matched = can.any(1)
        gt_of = can.argmax(1)
        pred_ha = np.where(matched, ha[np.arange(num_pred), gt_of], 0.0)
        level_hits = [np.cumsum(matched & (gt_difficulty[gt_of] <= level)) for level in _LEVELS]
        cum_tp = np.concatenate([[0], np.cumsum(matched)])
        cum_ha = np.concatenate([[0.0], np.cumsum(pred_ha.astype(np.float64))])
        tp = cum_tp[counts]
        acc.tp[cls] += tp
        acc.fp[cls] += counts - tp
        acc.ha[cls] += cum_ha[counts]
        for li, hits in enumerate(level_hits):
            acc.fn[cls, li] += gt_per_level[li] - np.concatenate([[0], hits])[counts]
        return
    from scipy.optimize import linear_sum_assignment

    weight = np.where(can, np.floor(iou.astype(np.float32) * _F32(K_MAX_IOU) + 0.5), 0.0)
    for n in np.unique(counts):
        columns = np.nonzero(counts == n)[0]
        if n == 0:
            acc.fn[cls][:, columns] += gt_per_level[:, None]
            continue
        rows, cols = linear_sum_assignment(weight[:n], maximize=True)
        ok = can[rows, cols]
        rows, cols = rows[ok], cols[ok]
        tp = rows.size
        acc.tp[cls, columns] += tp
        acc.fp[cls, columns] += n - tp
        acc.ha[cls, columns] += float(ha[rows, cols].astype(np.float64).sum())
        gt_matched = np.zeros(num_gt, dtype=bool)
        gt_matched[cols] = True
        for li, level in enumerate(_LEVELS):
            acc.fn[cls, li, columns] += int((~gt_matched & (gt_difficulty <= level)).sum())


def _frame_iou(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """3-D IoU ``[P, G]`` as ``iou.cc`` (float64 boxes, tiny/huge boxes give 0), stored as float32."""
    iou = boxes_iou3d(torch.from_numpy(pred_boxes), torch.from_numpy(gt_boxes)).numpy()
    dims_p, dims_g = pred_boxes[:, 3:6], gt_boxes[:, 3:6]
    bad_p = ((dims_p <= 1e-2) | (dims_p >= 1e6)).any(1)
    bad_g = ((dims_g <= 1e-2) | (dims_g >= 1e6)).any(1)
    iou = np.where(bad_p[:, None] | bad_g[None, :], 0.0, iou)
    return iou.astype(np.float32)


def evaluate_waymo(gt: Sequence[Mapping], predictions: Sequence[Mapping],
                   class_names: Sequence[str] = ("Vehicle", "Pedestrian", "Cyclist"),
                   iou_thresholds: Mapping[str, float] | None = None) -> dict[str, float]:
    """Waymo mAP / mAPH per class and level (module docstring) over frames.

    Args:
        gt: one dict per frame: ``boxes [M, 7]`` (x, y, z, dx, dy, dz, heading), ``labels [M]`` long indices into
            ``class_names``, ``num_points [M]`` LiDAR points per box (0-point boxes are dropped) and optionally
            ``difficulty [M]`` in {0, 1, 2} (0 or missing: from ``num_points``, ``<= 5`` -> LEVEL_2). Tensors or
            arrays.
        predictions: one dict per frame (same order): ``boxes [P, 7]``, ``scores [P]`` in [0, 1], ``labels [P]``.
        class_names: the evaluated classes; each must have an IoU threshold.
        iou_thresholds: class name -> IoU threshold; default :data:`WAYMO_IOU_THRESHOLDS`.

    Returns:
        ``{"<class>/L1 mAP", "<class>/L1 mAPH", "<class>/L2 mAP", "<class>/L2 mAPH", ..., "Overall/L2 mAPH"}``,
        floats in [0, 1].
    """
    names, thresholds = _check_classes(class_names, iou_thresholds)
    if not isinstance(gt, Sequence) or not isinstance(predictions, Sequence):
        raise TypeError(f"gt, predictions: expected sequences of per-frame dicts, got {type(gt).__name__} and "
                        f"{type(predictions).__name__}")
    if len(gt) != len(predictions):
        raise ValueError(f"gt, predictions: expected one prediction dict per frame, got {len(gt)} ground-truth "
                         f"frames and {len(predictions)} prediction frames")
    acc = _Accumulator(len(names))
    for index, (frame_gt, frame_pred) in enumerate(zip(gt, predictions)):
        _accumulate_frame(frame_gt, frame_pred, index, len(names), thresholds, acc)
    return _summarise(acc, names)


def _check_classes(class_names, iou_thresholds):
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) == 0:
        raise TypeError(f"class_names: expected a non-empty sequence of class names, got {class_names!r}")
    table = dict(WAYMO_IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds)
    names = [str(name) for name in class_names]
    missing = [name for name in names if name not in table]
    if missing:
        raise ValueError(f"class_names: no IoU threshold for {missing}; known: {sorted(table)} "
                         f"(pass iou_thresholds for other classes)")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: expected distinct names, got {names}")
    for name in names:
        if not 0.0 <= float(table[name]) <= 1.0:
            raise ValueError(f"iou_thresholds[{name!r}]: expected a value in [0, 1], got {table[name]}")
    return names, np.array([table[name] for name in names], dtype=np.float32)


def _gt_difficulty(difficulty, num_points, count: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Levels in {1, 2} and the keep mask (points > 0) of a frame's ground truth."""
    keep = np.ones(count, dtype=bool)
    points = None
    if num_points is not None:
        points = _as_array(num_points, f"{where}['num_points']", np.int64)
        if points.shape[0] != count:
            raise ValueError(f"{where}['num_points']: expected {count} entries, got {points.shape[0]}")
        keep = points > 0
    if difficulty is None:
        if points is None:
            raise ValueError(f"{where}: expected 'num_points' (or 'difficulty') for the ground-truth levels")
        level = np.zeros(count, dtype=np.int64)
    else:
        level = _as_array(difficulty, f"{where}['difficulty']", np.int64).copy()
        if level.shape[0] != count:
            raise ValueError(f"{where}['difficulty']: expected {count} entries, got {level.shape[0]}")
        if level.size and (level.min() < 0 or level.max() > 2):
            raise ValueError(f"{where}['difficulty']: expected values in {{0, 1, 2}}, got {np.unique(level)}")
    if points is not None:
        unknown = level == 0
        level[unknown & (points > 5)] = 1
        level[unknown & (points <= 5)] = 2
    return level, keep


def _accumulate_frame(frame_gt, frame_pred, index, num_classes, thresholds, acc) -> None:
    where_gt, where_pred = f"gt[{index}]", f"predictions[{index}]"
    for value, where in ((frame_gt, where_gt), (frame_pred, where_pred)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(value).__name__}")
    for key in ("boxes", "labels"):
        if key not in frame_gt:
            raise ValueError(f"{where_gt}: missing key {key!r}")
    for key in ("boxes", "scores", "labels"):
        if key not in frame_pred:
            raise ValueError(f"{where_pred}: missing key {key!r}")
    gt_boxes = _as_array(frame_gt["boxes"], f"{where_gt}['boxes']", np.float64, 7)
    gt_labels = _as_array(frame_gt["labels"], f"{where_gt}['labels']", np.int64)
    _check_labels(gt_labels, gt_boxes.shape[0], num_classes, f"{where_gt}['labels']")
    level, keep = _gt_difficulty(frame_gt.get("difficulty"), frame_gt.get("num_points"), gt_boxes.shape[0],
                                 where_gt)
    gt_boxes, gt_labels, level = gt_boxes[keep], gt_labels[keep], level[keep]
    pred_boxes = _as_array(frame_pred["boxes"], f"{where_pred}['boxes']", np.float64, 7)
    scores = _as_array(frame_pred["scores"], f"{where_pred}['scores']", np.float32)
    pred_labels = _as_array(frame_pred["labels"], f"{where_pred}['labels']", np.int64)
    if scores.shape[0] != pred_boxes.shape[0]:
        raise ValueError(f"{where_pred}['scores']: expected {pred_boxes.shape[0]} entries, got {scores.shape[0]}")
    _check_labels(pred_labels, pred_boxes.shape[0], num_classes, f"{where_pred}['labels']")
    if not np.isfinite(scores).all() or not np.isfinite(pred_boxes).all() or not np.isfinite(gt_boxes).all():
        raise ValueError(f"{where_pred} / {where_gt}: expected finite boxes and scores")
    order = np.argsort(-scores, kind="stable")
    pred_boxes, scores, pred_labels = pred_boxes[order], scores[order], pred_labels[order]
    iou = ha = None
    if pred_boxes.shape[0] and gt_boxes.shape[0]:
        iou = _frame_iou(pred_boxes, gt_boxes)
        ha = heading_accuracy(pred_boxes[:, 6:7], gt_boxes[None, :, 6])
    for cls in range(num_classes):
        p = np.nonzero(pred_labels == cls)[0]
        g = np.nonzero(gt_labels == cls)[0]
        if iou is None or p.size == 0 or g.size == 0:
            sub_iou = np.zeros((p.size, g.size), dtype=np.float32)
            sub_ha = sub_iou
        else:
            sub_iou, sub_ha = iou[np.ix_(p, g)], ha[np.ix_(p, g)]
        _match_class(sub_iou, sub_ha, thresholds[cls], scores[p], level[g], acc, cls)


def _summarise(acc: _Accumulator, names: list[str]) -> dict[str, float]:
    result: dict[str, float] = {}
    per_level = {level: ([], []) for level in _LEVELS}
    for cls, name in enumerate(names):
        tp, fp = acc.tp[cls], acc.fp[cls]
        tp_fp = tp + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp_fp > 0, tp.astype(np.float32) / tp_fp.astype(np.float32), 0.0)
            precision_ha = np.where(tp_fp > 0, acc.ha[cls].astype(np.float32) / tp_fp.astype(np.float32), 0.0)
        for li, level in enumerate(_LEVELS):
            tp_fn = tp + acc.fn[cls, li]
            with np.errstate(divide="ignore", invalid="ignore"):
                recall = np.where(tp_fn > 0, tp.astype(np.float32) / tp_fn.astype(np.float32), 0.0)
            recall = recall.astype(np.float32)
            zero = recall == 0
            p = np.where(zero, 1.0, precision).astype(np.float32)
            p_ha = np.where(zero, 1.0, precision_ha).astype(np.float32)
            # float32 steps of 0.05 can sum to 1 + 1 ulp (1.0000001) for a perfect curve: clip to [0, 1]
            ap = min(1.0, max(0.0, mean_average_precision(p, recall)))
            aph = min(1.0, max(0.0, mean_average_precision(p_ha, recall)))
            result[f"{name}/L{level} mAP"] = ap
            result[f"{name}/L{level} mAPH"] = aph
            per_level[level][0].append(ap)
            per_level[level][1].append(aph)
    for level in _LEVELS:
        result[f"Overall/L{level} mAP"] = float(np.mean(per_level[level][0]))
        result[f"Overall/L{level} mAPH"] = float(np.mean(per_level[level][1]))
    return result


def evaluate_waymo_infos(gt_infos: Sequence[Mapping], results: Sequence[Mapping],
                         class_names: Sequence[str] = ("Vehicle", "Pedestrian", "Cyclist")) -> dict[str, float]:
    """:func:`evaluate_waymo` over OpenPCDet-structured inputs, matched by ``frame_id``.

    Args:
        gt_infos: OpenPCDet processed Waymo infos (``waymo_infos_val.pkl`` or a segment's ``.pkl``): dicts with
            ``frame_id`` and ``annos`` = {``name`` [N], ``difficulty`` [N], ``gt_boxes_lidar`` [N, 7 or 9],
            ``num_points_in_gt`` [N]}; also accepted: the ``annos`` dicts themselves carrying ``frame_id``
            (OpenPCDet's ``waymo_eval.py`` main). Names outside ``class_names`` (``Sign``, unknown) are ignored.
        results: OpenPCDet ``result.pkl`` entries: {``frame_id``, ``name`` [P], ``score`` [P],
            ``boxes_lidar`` [P, 7 or 9]}; names outside ``class_names`` are ignored. A ground-truth frame without
            an entry has no predictions; an entry whose ``frame_id`` is not in ``gt_infos`` is an error.
        class_names: the evaluated classes.
    """
    names, _ = _check_classes(class_names, None)
    index = {name: k for k, name in enumerate(names)}
    if not isinstance(gt_infos, Sequence) or not isinstance(results, Sequence):
        raise TypeError(f"gt_infos, results: expected lists of dicts, got {type(gt_infos).__name__} and "
                        f"{type(results).__name__}")
    by_frame: dict[str, Mapping] = {}
    for i, entry in enumerate(results):
        if not isinstance(entry, Mapping):
            raise TypeError(f"results[{i}]: expected a dict, got {type(entry).__name__}")
        for key in ("frame_id", "name", "score", "boxes_lidar"):
            if key not in entry:
                raise ValueError(f"results[{i}]: missing key {key!r}")
        frame_id = str(entry["frame_id"])
        if frame_id in by_frame:
            raise ValueError(f"results[{i}]: frame_id {frame_id!r} appears twice")
        by_frame[frame_id] = entry
    gt, predictions, seen = [], [], set()
    for i, info in enumerate(gt_infos):
        if not isinstance(info, Mapping):
            raise TypeError(f"gt_infos[{i}]: expected a dict, got {type(info).__name__}")
        annos = info.get("annos", info)
        frame_id = info.get("frame_id", annos.get("frame_id") if isinstance(annos, Mapping) else None)
        if frame_id is None or not isinstance(annos, Mapping):
            raise ValueError(f"gt_infos[{i}]: expected 'frame_id' and 'annos'")
        for key in ("name", "gt_boxes_lidar", "num_points_in_gt"):
            if key not in annos:
                raise ValueError(f"gt_infos[{i}]['annos']: missing key {key!r} (num_points_in_gt is needed for the "
                                 f"difficulty levels; re-create old infos with OpenPCDet's current converter)")
        frame_id = str(frame_id)
        seen.add(frame_id)
        gt_names = np.asarray(annos["name"]).reshape(-1)
        mask = np.array([str(n) in index for n in gt_names], dtype=bool)
        boxes = _as_array(annos["gt_boxes_lidar"], f"gt_infos[{i}]['annos']['gt_boxes_lidar']", np.float64, 7)
        if boxes.shape[0] != gt_names.shape[0]:
            raise ValueError(f"gt_infos[{i}]['annos']: {gt_names.shape[0]} names but {boxes.shape[0]} boxes")
        entry = {"boxes": boxes[mask], "labels": np.array([index[str(n)] for n in gt_names[mask]], dtype=np.int64),
                 "num_points": np.asarray(annos["num_points_in_gt"]).reshape(-1)[mask]}
        if "difficulty" in annos:
            entry["difficulty"] = np.asarray(annos["difficulty"]).reshape(-1)[mask]
        gt.append(entry)
        result = by_frame.get(frame_id)
        if result is None:
            predictions.append({"boxes": np.zeros((0, 7)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)})
            continue
        pred_names = np.asarray(result["name"]).reshape(-1)
        pmask = np.array([str(n) in index for n in pred_names], dtype=bool)
        pboxes = _as_array(result["boxes_lidar"], f"results[{frame_id!r}]['boxes_lidar']", np.float64, 7)
        pscores = np.asarray(result["score"], dtype=np.float32).reshape(-1)
        if not pboxes.shape[0] == pscores.shape[0] == pred_names.shape[0]:
            raise ValueError(f"results[{frame_id!r}]: {pred_names.shape[0]} names, {pscores.shape[0]} scores and "
                             f"{pboxes.shape[0]} boxes")
        predictions.append({"boxes": pboxes[pmask], "scores": pscores[pmask],
                            "labels": np.array([index[str(n)] for n in pred_names[pmask]], dtype=np.int64)})
    unknown = sorted(set(by_frame) - seen)
    if unknown:
        raise ValueError(f"results: {len(unknown)} frame_id(s) not in the ground truth, e.g. {unknown[0]!r}")
    return evaluate_waymo(gt, predictions, names)
