"""Waymo mAP / mAPH: hand-computed cases and a brute-force matching reference."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from geoattn.detection.waymo_eval import (
    K_MAX_IOU, SCORE_CUTOFFS, evaluate_waymo, evaluate_waymo_infos, heading_accuracy, mean_average_precision,
)
from geoattn.sparse.boxes import boxes_iou3d

VEHICLE = [0.0, 0.0, 0.0, 4.5, 2.0, 1.6, 0.3]
PEDESTRIAN = [10.0, 0.0, 0.0, 0.9, 0.9, 1.8, 0.0]
CYCLIST = [0.0, 10.0, 0.0, 1.8, 0.7, 1.7, 1.0]


def frame_gt(boxes, labels, num_points=None, difficulty=None):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    out = {"boxes": boxes, "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
           "num_points": np.full(len(boxes), 100) if num_points is None else np.asarray(num_points)}
    if difficulty is not None:
        out["difficulty"] = np.asarray(difficulty)
    return out


def frame_pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 7),
            "scores": np.asarray(scores, dtype=np.float32).reshape(-1),
            "labels": np.asarray(labels, dtype=np.int64).reshape(-1)}


def test_perfect_frame_gives_one():
    gt = [frame_gt([VEHICLE, PEDESTRIAN, CYCLIST], [0, 1, 2])]
    pred = [frame_pred([VEHICLE, PEDESTRIAN, CYCLIST], [0.9, 0.8, 0.5], [0, 1, 2])]
    result = evaluate_waymo(gt, pred)
    assert set(result) == {f"{c}/L{l} {m}" for c in ("Vehicle", "Pedestrian", "Cyclist", "Overall")
                           for l in (1, 2) for m in ("mAP", "mAPH")}
    for key, value in result.items():
        assert value == pytest.approx(1.0, abs=1e-6), key
        assert 0.0 <= value <= 1.0


def test_heading_off_by_pi_gives_map_one_and_maph_zero():
    flipped = list(VEHICLE)
    flipped[6] += math.pi
    result = evaluate_waymo([frame_gt([VEHICLE], [0])], [frame_pred([flipped], [0.7], [0])])
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    assert result["Vehicle/L1 mAPH"] == pytest.approx(0.0, abs=1e-6)
    # a square turned by 90 degrees has the same footprint: IoU 1, heading accuracy 0.5
    square = [0.0, 0.0, 0.0, 2.0, 2.0, 1.6, 0.2]
    turned = [0.0, 0.0, 0.0, 2.0, 2.0, 1.6, 0.2 + math.pi / 2]
    result = evaluate_waymo([frame_gt([square], [0])], [frame_pred([turned], [0.7], [0])])
    assert result["Vehicle/L2 mAP"] == pytest.approx(1.0, abs=1e-6)
    assert result["Vehicle/L2 mAPH"] == pytest.approx(0.5, abs=1e-6)


def test_heading_accuracy_wraps():
    assert heading_accuracy(np.array([3.0]), np.array([-3.0]))[0] == pytest.approx(1 - (2 * math.pi - 6) / math.pi,
                                                                                     abs=1e-6)
    assert heading_accuracy(np.array([0.1 + 4 * math.pi]), np.array([0.1]))[0] == pytest.approx(1.0, abs=1e-5)
    assert heading_accuracy(np.array([math.pi]), np.array([0.0]))[0] == pytest.approx(0.0, abs=1e-6)


def test_level_2_ground_truth_rules():
    # a LEVEL_2 object (3 points) that is matched: a TP at both levels
    gt = [frame_gt([VEHICLE], [0], num_points=[3])]
    result = evaluate_waymo(gt, [frame_pred([VEHICLE], [0.9], [0])])
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    assert result["Vehicle/L2 mAP"] == pytest.approx(1.0, abs=1e-6)
    # a matched LEVEL_1 object and an unmatched LEVEL_2 one: no FN at L1, recall 0.5 at L2 (area 0.5)
    far = list(VEHICLE)
    far[0] = 30.0
    gt = [frame_gt([VEHICLE, far], [0, 0], num_points=[50, 5])]
    result = evaluate_waymo(gt, [frame_pred([VEHICLE], [0.9], [0])])
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    assert result["Vehicle/L2 mAP"] == pytest.approx(0.5, abs=1e-5)
    # an explicit difficulty wins over the point count; 0 falls back to it
    gt = [frame_gt([VEHICLE, far], [0, 0], num_points=[50, 500], difficulty=[0, 2])]
    result = evaluate_waymo(gt, [frame_pred([VEHICLE], [0.9], [0])])
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    assert result["Vehicle/L2 mAP"] == pytest.approx(0.5, abs=1e-5)
    # a 0-point ground truth is dropped: the unmatched far box is no FN at any level
    gt = [frame_gt([VEHICLE, far], [0, 0], num_points=[50, 0])]
    result = evaluate_waymo(gt, [frame_pred([VEHICLE], [0.9], [0])])
    assert result["Vehicle/L2 mAP"] == pytest.approx(1.0, abs=1e-6)


def test_iou_exactly_at_threshold_matches():
    gt_box = [0.0, 0, 0, 2, 1, 1, 0]
    inside = [0.5, 0, 0, 1, 1, 1, 0]  # IoU exactly 0.5 = the Pedestrian threshold
    iou = boxes_iou3d(torch.tensor([inside], dtype=torch.float64), torch.tensor([gt_box], dtype=torch.float64))
    assert iou.item() == 0.5
    result = evaluate_waymo([frame_gt([gt_box], [1])], [frame_pred([inside], [0.6], [1])])
    assert result["Pedestrian/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    smaller = [0.5, 0, 0, 0.99, 1, 1, 0]
    result = evaluate_waymo([frame_gt([gt_box], [1])], [frame_pred([smaller], [0.6], [1])])
    assert result["Pedestrian/L1 mAP"] == 0.0
    # the same pair is below the Vehicle threshold 0.7
    result = evaluate_waymo([frame_gt([gt_box], [0])], [frame_pred([inside], [0.6], [0])])
    assert result["Vehicle/L1 mAP"] == 0.0


def test_types_never_match():
    result = evaluate_waymo([frame_gt([VEHICLE], [0])], [frame_pred([VEHICLE], [0.9], [1])])
    assert result["Vehicle/L1 mAP"] == 0.0 and result["Pedestrian/L1 mAP"] == 0.0


def test_score_cutoffs_and_false_positives():
    # TP at score 0.3, FP at 0.8: cutoffs <= 0.3 give P 0.5 R 1; (0.3, 0.8] give P 0 R 0 -> P 1
    far = list(VEHICLE)
    far[0] = 40.0
    gt = [frame_gt([VEHICLE], [0])]
    pred = [frame_pred([VEHICLE, far], [0.3, 0.8], [0, 0])]
    result = evaluate_waymo(gt, pred)
    # curve: (1, 0.5) then gap filling 0.95 .. 0.05 with 0.5, (0, 1 -> replaced by 0.5): area 0.5
    assert result["Vehicle/L1 mAP"] == pytest.approx(0.5, abs=1e-5)
    assert SCORE_CUTOFFS.dtype == np.float32 and SCORE_CUTOFFS.shape == (101,) and SCORE_CUTOFFS[-1] == 1.0
    assert K_MAX_IOU == 1_000_000


def test_recall_gap_filling_on_hand_made_curve():
    # map {0: 1, 0.2: 1, 1: 0.5}; gaps 1 -> 0.2 filled with 0.5 at 0.95, ..., 0.25; 0.2 -> 0 with 1
    # area = 0.75 * 0.5 + 0.05 * (0.5 + 1) / 2 + 0.2 * 1 = 0.6125 (plain trapezoids would give 0.8)
    assert mean_average_precision([0.5, 1.0], [1.0, 0.2]) == pytest.approx(0.6125, abs=1e-5)
    # recall-0 replacement: the fake (0, 1) point takes its neighbour's precision 0.3 -> area 0.15
    assert mean_average_precision([0.3], [0.5]) == pytest.approx(0.15, abs=1e-5)
    # a gap of exactly 0.05 is not filled; no points: 0
    assert mean_average_precision([1.0, 1.0], [0.1, 0.05]) == pytest.approx(0.1, abs=1e-6)
    assert mean_average_precision([], []) == 0.0
    # the running maximum runs from high to low recall: a high precision at low recall does not lift the
    # point at recall 0.1: (0.2, 0.1), (0.9, 0.05), (0 -> 0.9): 0.05 * 1.1 / 2 + 0.05 * 0.9 = 0.0725
    assert mean_average_precision([0.2, 0.9], [0.1, 0.05]) == pytest.approx(0.0725, abs=1e-5)


def test_empty_frames():
    empty_gt = frame_gt(np.zeros((0, 7)), [])
    empty_pred = frame_pred(np.zeros((0, 7)), [], [])
    assert all(v == 0.0 for v in evaluate_waymo([empty_gt], [empty_pred]).values())
    assert all(v == 0.0 for v in evaluate_waymo([], []).values())
    # an empty frame next to a perfect one changes nothing; predictions on an empty frame are FPs
    perfect = evaluate_waymo([frame_gt([VEHICLE], [0]), empty_gt],
                             [frame_pred([VEHICLE], [0.9], [0]), empty_pred])
    assert perfect["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)
    with_fp = evaluate_waymo([frame_gt([VEHICLE], [0]), empty_gt],
                             [frame_pred([VEHICLE], [0.5], [0]), frame_pred([VEHICLE], [0.9], [0])])
    assert with_fp["Vehicle/L1 mAP"] == pytest.approx(0.5, abs=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        evaluate_waymo([frame_gt([VEHICLE], [0])], [])
    with pytest.raises(ValueError, match="labels"):
        evaluate_waymo([frame_gt([VEHICLE], [3])], [frame_pred([], [], [])])
    with pytest.raises(ValueError, match="boxes"):
        evaluate_waymo([frame_gt([VEHICLE], [0])], [{"boxes": np.zeros((1, 5)), "scores": [0.5], "labels": [0]}])
    with pytest.raises(ValueError, match="class_names"):
        evaluate_waymo([], [], class_names=("Car",))
    with pytest.raises(ValueError, match="num_points"):
        evaluate_waymo([{"boxes": np.zeros((1, 7)), "labels": [0]}], [frame_pred([], [], [])])


# --- brute-force reference -------------------------------------------------------------------------------------
def brute_force(gt, predictions, thresholds=(0.7, 0.5, 0.5)):
    """Independent slow path: per frame, class and cutoff enumerate every partial matching."""
    num_classes = len(thresholds)
    tp = np.zeros((num_classes, 101)); fp = np.zeros((num_classes, 101)); ha = np.zeros((num_classes, 101))
    fn = np.zeros((num_classes, 2, 101))
    for g, p in zip(gt, predictions):
        keep = g["num_points"] > 0
        gb, gl = g["boxes"][keep], g["labels"][keep]
        level = np.where(g["num_points"][keep] <= 5, 2, 1)
        for c in range(num_classes):
            gi = [i for i in range(len(gb)) if gl[i] == c]
            all_pi = [j for j in range(len(p["boxes"])) if p["labels"][j] == c]
            weights = {}
            for j in all_pi:
                for i in gi:
                    iou = float(np.float32(boxes_iou3d(torch.tensor(p["boxes"][j:j + 1]),
                                                       torch.tensor(gb[i:i + 1])).item()))
                    if iou >= np.float32(thresholds[c]):
                        weights[(j, i)] = round(iou * K_MAX_IOU)
            for k, cutoff in enumerate(SCORE_CUTOFFS):
                pi = [j for j in all_pi if p["scores"][j] >= cutoff]
                best, best_pairs = -1, []
                pairs_ok = {q: w for q, w in weights.items() if q[0] in pi}
                for r in range(min(len(pi), len(gi)) + 1):
                    for js in itertools.permutations(pi, r):
                        for is_ in itertools.combinations(gi, r):
                            pairs = list(zip(js, is_))
                            if all(q in pairs_ok for q in pairs):
                                w = sum(pairs_ok[q] for q in pairs)
                                if w > best:
                                    best, best_pairs = w, pairs
                tp[c, k] += len(best_pairs)
                fp[c, k] += len(pi) - len(best_pairs)
                for j, i in best_pairs:
                    d = abs((p["boxes"][j, 6] - gb[i, 6] + math.pi) % (2 * math.pi) - math.pi)
                    ha[c, k] += 1 - d / math.pi
                matched = {i for _, i in best_pairs}
                for li, lev in enumerate((1, 2)):
                    fn[c, li, k] += sum(1 for i in gi if i not in matched and level[i] <= lev)
    out = {}
    names = ("Vehicle", "Pedestrian", "Cyclist")
    for c in range(num_classes):
        for li in range(2):
            recall = np.where(tp[c] + fn[c, li] > 0, tp[c] / np.maximum(tp[c] + fn[c, li], 1), 0.0)
            prec = np.where(tp[c] + fp[c] > 0, tp[c] / np.maximum(tp[c] + fp[c], 1), 0.0)
            prec_h = np.where(tp[c] + fp[c] > 0, ha[c] / np.maximum(tp[c] + fp[c], 1), 0.0)
            prec[recall == 0] = 1.0
            prec_h[recall == 0] = 1.0
            out[f"{names[c]}/L{li + 1} mAP"] = mean_average_precision(prec, recall)
            out[f"{names[c]}/L{li + 1} mAPH"] = mean_average_precision(prec_h, recall)
    return out


def tiny_frames(seed, frames=6):
    rng = np.random.default_rng(seed)
    sizes = np.array([[4.0, 2.0, 1.6], [1.0, 1.0, 1.8], [1.8, 0.8, 1.7]])
    gt, pred = [], []
    for _ in range(frames):
        m = int(rng.integers(0, 4))
        labels = rng.integers(0, 2, m)
        boxes = np.zeros((m, 7))
        boxes[:, 0] = rng.uniform(0, 3, m)  # crowded: objects overlap, several predictions compete
        boxes[:, 1] = rng.uniform(0, 2, m)
        boxes[:, 3:6] = sizes[labels]
        boxes[:, 6] = rng.uniform(-3, 3, m)
        gt.append(frame_gt(boxes, labels, num_points=rng.integers(0, 12, m)))
        n = int(rng.integers(0, 5)) if m else int(rng.integers(0, 2))
        src = rng.integers(0, max(m, 1), n)
        d = boxes[src].copy() if m else np.tile([[0.0, 0, 0, 4, 2, 1.6, 0]], (n, 1))
        d[:, :2] += rng.normal(0, 0.15, (n, 2))
        d[:, 3:6] *= rng.uniform(0.85, 1.1, (n, 3))
        d[:, 6] += rng.normal(0, 0.5, n)
        plabels = labels[src] if m else np.zeros(n, dtype=np.int64)
        pred.append(frame_pred(d, np.round(rng.random(n), 3), plabels))
    return gt, pred


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_path_equals_brute_force(seed, monkeypatch):
    import scipy.optimize

    calls = []
    real = scipy.optimize.linear_sum_assignment

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "linear_sum_assignment", counting)
    gt, pred = tiny_frames(seed)
    got = evaluate_waymo(gt, pred)
    expected = brute_force(gt, pred)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=2e-6), key
    if seed == 0:
        assert calls  # the crowded frames exercise the assignment solver, not only the conflict-free path


def test_competing_predictions_best_total_iou():
    # Vehicle threshold 0.7: p0 overlaps g0 and g1 (0.739 each), p1 only g0 (1.0). Taking p0 (higher score)
    # first with g0 would leave p1 unmatched; the assignment maximising the IoU sum matches both
    g0 = [0.0, 0, 0, 2, 1, 1, 0]
    g1 = [0.6, 0, 0, 2, 1, 1, 0]
    p0 = [0.3, 0, 0, 2, 1, 1, 0]  # IoU 0.7391 with g0 and with g1
    p1 = [0.0, 0, 0, 2, 1, 1, 0]  # IoU 1 with g0, 0.5385 with g1
    result = evaluate_waymo([frame_gt([g0, g1], [0, 0])], [frame_pred([p0, p1], [0.9, 0.8], [0, 0])])
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0, abs=1e-6)


def test_infos_interface_matches_plain_api():
    infos = [
        {"frame_id": "seg_000", "annos": {
            "name": np.array(["Vehicle", "Sign", "Pedestrian", "Cyclist"]),
            "difficulty": np.array([0, 0, 2, 0]),
            "gt_boxes_lidar": np.array([VEHICLE + [0, 0], VEHICLE + [0, 0], PEDESTRIAN + [0, 0], CYCLIST + [0, 0]]),
            "num_points_in_gt": np.array([50, 9, 40, 0])}},
        {"frame_id": "seg_001", "annos": {"name": np.array([], dtype="<U10"), "difficulty": np.zeros(0, np.int32),
                                          "gt_boxes_lidar": np.zeros((0, 9)), "num_points_in_gt": np.zeros(0)}},
    ]
    results = [
        {"frame_id": "seg_001", "name": np.array(["Vehicle"]), "score": np.array([0.2]),
         "boxes_lidar": np.array([VEHICLE])},
        {"frame_id": "seg_000", "name": np.array(["Vehicle", "Pedestrian", "Sign"]), "score": np.array([0.9, 0.4, 0.9]),
         "boxes_lidar": np.array([VEHICLE, PEDESTRIAN, VEHICLE])},
    ]
    got = evaluate_waymo_infos(infos, results)
    gt = [frame_gt([VEHICLE, PEDESTRIAN, CYCLIST], [0, 1, 2], num_points=[50, 40, 0], difficulty=[0, 2, 0]),
          frame_gt(np.zeros((0, 7)), [])]
    pred = [frame_pred([VEHICLE, PEDESTRIAN], [0.9, 0.4], [0, 1]), frame_pred([VEHICLE], [0.2], [0])]
    assert got == evaluate_waymo(gt, pred)
    assert got["Pedestrian/L1 mAP"] == pytest.approx(1.0, abs=1e-6)  # the LEVEL_2 pedestrian is matched
    # annos dicts carrying frame_id (OpenPCDet waymo_eval.py main) work too
    flat = [dict(info["annos"], frame_id=info["frame_id"]) for info in infos]
    assert evaluate_waymo_infos(flat, results) == got
    with pytest.raises(ValueError, match="frame_id"):
        evaluate_waymo_infos(infos, results + [{"frame_id": "other", "name": np.array([]), "score": np.zeros(0),
                                                "boxes_lidar": np.zeros((0, 7))}])


def _synthetic_frames(num_frames, seed=0, gt_per_frame=10, det_per_frame=30):
    rng = np.random.default_rng(seed)
    sizes = np.array([[4.5, 2.0, 1.6], [0.9, 0.9, 1.8], [1.8, 0.7, 1.7]])
    gt, pred = [], []
    for _ in range(num_frames):
        labels = rng.integers(0, 3, gt_per_frame)
        boxes = np.zeros((gt_per_frame, 7))
        boxes[:, :2] = rng.uniform(-70, 70, (gt_per_frame, 2))
        boxes[:, 3:6] = sizes[labels] * rng.uniform(0.9, 1.1, (gt_per_frame, 3))
        boxes[:, 6] = rng.uniform(-math.pi, math.pi, gt_per_frame)
        gt.append(frame_gt(boxes, labels, num_points=rng.integers(0, 200, gt_per_frame)))
        src = rng.integers(0, gt_per_frame, det_per_frame)
        d = boxes[src].copy()
        d[:, :3] += rng.normal(0, 0.15, (det_per_frame, 3))
        d[:, 3:6] *= rng.uniform(0.9, 1.1, (det_per_frame, 3))
        d[:, 6] += rng.normal(0, 0.2, det_per_frame)
        fake = rng.random(det_per_frame) < 0.3
        d[fake, :2] = rng.uniform(-70, 70, (int(fake.sum()), 2))
        pred.append(frame_pred(d, rng.random(det_per_frame), labels[src]))
    return gt, pred


def test_speed_small():
    gt, pred = _synthetic_frames(100)
    start = time.perf_counter()
    result = evaluate_waymo(gt, pred)
    elapsed = time.perf_counter() - start
    print(f"evaluate_waymo 100 frames x 10 GT x 30 detections: {elapsed:.2f} s")
    assert 0.0 < result["Overall/L2 mAP"] < 1.0
    assert elapsed < 10.0


@pytest.mark.slow
def test_speed_3769_frames():
    gt, pred = _synthetic_frames(3769)
    start = time.perf_counter()
    evaluate_waymo(gt, pred)
    elapsed = time.perf_counter() - start
    print(f"evaluate_waymo 3769 frames x 10 GT x 30 detections: {elapsed:.1f} s")
    assert elapsed < 60.0
