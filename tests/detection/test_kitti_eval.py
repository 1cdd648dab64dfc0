"""KITTI metric: hand-computed cases, a plain-loop reference of the official algorithm, real label files.

Under the official rules a class with n < 41 counted ground truths, all found with no false positive, scores
R11 = 100 ceil(n / 4) / 11 and R40 = 100 (n - 1) / 40 (get_thresholds keeps one threshold per TP, the
precision past the last threshold is 0); 41 or more give 100.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from geoattn.data.kitti import KittiLabels, boxes_camera_to_lidar, read_calib, read_label
from geoattn.detection.kitti_eval import (camera_bev_to_lidar_like, camera_box_overlaps, evaluate_kitti,
                                          evaluate_kitti_folders, format_kitti_table, get_thresholds,
                                          lidar_detections_to_kitti)
from geoattn.sparse.boxes import boxes_intersection_bev


def labels(rows, scores=None):
    """rows: (name, truncated, occluded, alpha, x1, y1, x2, y2, x, y, z, l, h, w, ry)."""
    f = lambda i: torch.tensor([r[i] for r in rows], dtype=torch.float64)  # noqa: E731
    bbox = torch.tensor([r[4:8] for r in rows], dtype=torch.float64).reshape(-1, 4)
    boxes = torch.tensor([r[8:15] for r in rows], dtype=torch.float64).reshape(-1, 7)
    return KittiLabels([r[0] for r in rows], f(1), f(2).long(), f(3), bbox, boxes,
                       None if scores is None else torch.tensor(scores, dtype=torch.float64))


def car(x=0.0, bbox=(100, 100, 200, 200), name="Car", trunc=0.0, occ=0, alpha=0.0, z=20.0, ry=0.0):
    return (name, trunc, occ, alpha, *bbox, x, 1.5, z, 4.0, 1.5, 1.8, ry)


def far_fp(name="Car"):
    return car(x=-30.0, bbox=(900, 100, 1000, 200), name=name, z=60.0)


def r11(n):
    return 100 * math.ceil(min(n, 41) / 4) / 11 if n < 41 else 100.0


def r40(n):
    return 100 * (n - 1) / 40 if 0 < n < 41 else (100.0 if n else 0.0)


def many_cars(n, alpha_shift=0.0):
    """n frames, one perfectly detected Car each (scores distinct)."""
    gts = [labels([car(alpha=0.3)]) for _ in range(n)]
    dts = [labels([car(alpha=0.3 + alpha_shift)], [1.0 - i / (2 * n)]) for i in range(n)]
    return gts, dts


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------

def test_perfect_detections():
    result = evaluate_kitti(*many_cars(41))
    for metric in ("image", "bev", "3d", "aos"):
        for level in ("easy", "moderate", "hard"):
            assert result[f"Car_{metric}/{level}_R40"] == pytest.approx(100.0)
            assert result[f"Car_{metric}/{level}_R11"] == pytest.approx(100.0)
    assert result["Pedestrian_3d/moderate_R40"] == 0.0
    # one perfect detection: the official evaluator gives R11 = 100 / 11 and R40 = 0
    single = evaluate_kitti(*many_cars(1))
    assert single["Car_3d/moderate_R11"] == pytest.approx(100 / 11)
    assert single["Car_3d/moderate_R40"] == 0.0
    for n in (2, 5, 20, 40):
        result = evaluate_kitti(*many_cars(n), classes=("Car",))
        assert result["Car_bev/hard_R11"] == pytest.approx(r11(n))
        assert result["Car_bev/hard_R40"] == pytest.approx(r40(n))


def test_known_pr_curve_r11_r40():
    """4 GT cars; detections TP .9, FP .8, TP .7, TP .6, FP .5; one car missed. Thresholds .9, .7, .6 give
    precision 1, 2/3, 3/4 -> max from the right 1, 3/4, 3/4, 0, ... -> R11 = 100/11, R40 = 1.5/40."""
    gts = [labels([car()]) for _ in range(4)]
    dts = [labels([car(), far_fp()], [0.9, 0.8]), labels([car(), far_fp()], [0.7, 0.5]), labels([car()], [0.6]),
           labels([], [])]
    result = evaluate_kitti(gts, dts, classes=("Car",))
    assert result["Car_image/easy_R11"] == pytest.approx(100 / 11)
    assert result["Car_image/easy_R40"] == pytest.approx(100 * 1.5 / 40)
    # 40 cars, 20 found without FP: precision 1 on 20 thresholds -> R11 5/11, R40 19/40
    gts = [labels([car()]) for _ in range(40)]
    dts = [labels([car()], [1 - i / 100]) if i < 20 else labels([], []) for i in range(40)]
    result = evaluate_kitti(gts, dts, classes=("Car",))
    assert result["Car_3d/moderate_R11"] == pytest.approx(100 * 5 / 11)
    assert result["Car_3d/moderate_R40"] == pytest.approx(100 * 19 / 40)


def test_fp_ranked_above_tp():
    gts = [labels([car()])]
    dts = [labels([far_fp(), car()], [0.9, 0.5])]
    result = evaluate_kitti(gts, dts, classes=("Car",))
    # one threshold (0.5): precision 1/2 at index 0 only
    assert result["Car_3d/easy_R11"] == pytest.approx(50 / 11)
    assert result["Car_3d/easy_R40"] == 0.0
    # the FP ranked below the TP costs nothing
    dts = [labels([far_fp(), car()], [0.4, 0.5])]
    assert evaluate_kitti(gts, dts, classes=("Car",))["Car_3d/easy_R11"] == pytest.approx(100 / 11)


def test_neighbouring_classes_are_not_false_positives():
    van = car(x=6.0, bbox=(300, 100, 400, 200), name="Van")
    det_on_van = car(x=6.0, bbox=(300, 100, 400, 200))
    gts = [labels([car(), van])]
    dts = [labels([det_on_van, car()], [0.9, 0.5])]
    assert evaluate_kitti(gts, dts, ("Car",))["Car_3d/easy_R11"] == pytest.approx(100 / 11)
    truck = ("Truck",) + van[1:]
    gts = [labels([car(), truck])]
    assert evaluate_kitti(gts, dts, ("Car",))["Car_3d/easy_R11"] == pytest.approx(50 / 11)
    # Person_sitting for Pedestrian
    ped = lambda name, x: (name, 0.0, 0, 0.0, 300 + 50 * x, 100, 330 + 50 * x, 200, x, 1.7, 15.0, 0.8, 1.7, 0.6,  # noqa
                           0.0)
    gts = [labels([ped("Pedestrian", 0), ped("Person_sitting", 3)])]
    dts = [labels([ped("Pedestrian", 3), ped("Pedestrian", 0)], [0.9, 0.5])]
    assert evaluate_kitti(gts, dts, ("Pedestrian",))["Pedestrian_3d/easy_R11"] == pytest.approx(100 / 11)


def test_dontcare_removes_bbox_false_positive_only():
    dc = ("DontCare", -1.0, -1, -10.0, 880, 90, 1020, 210, -1000.0, -1000.0, -1000.0, -1.0, -1.0, -1.0, -10.0)
    gts = [labels([car(), dc])]
    dts = [labels([far_fp(), car()], [0.9, 0.5])]  # the FP's 2-D box lies inside the DontCare box
    result = evaluate_kitti(gts, dts, ("Car",))
    assert result["Car_image/easy_R11"] == pytest.approx(100 / 11)
    assert result["Car_bev/easy_R11"] == pytest.approx(50 / 11)
    assert result["Car_3d/easy_R11"] == pytest.approx(50 / 11)
    # the official "DontCare" test is case-sensitive and needs the share of the detection's area > threshold
    gts = [labels([car(), ("dontcare",) + dc[1:]])]
    assert evaluate_kitti(gts, dts, ("Car",))["Car_image/easy_R11"] == pytest.approx(50 / 11)
    half = dc[:4] + (950, 90, 1020, 210) + dc[8:]  # covers half of the FP
    assert evaluate_kitti([labels([car(), half])], dts, ("Car",))["Car_image/easy_R11"] == pytest.approx(50 / 11)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(bbox=(100, 100, 200, 130)), (0, 1, 1)),   # height 30: <= 40 fails easy
    (dict(bbox=(100, 100, 200, 140)), (0, 1, 1)),   # height exactly 40 fails easy (<=)
    (dict(bbox=(100, 100, 200, 125)), (0, 0, 0)),   # height 25 fails all (<= 25)
    (dict(occ=1), (0, 1, 1)),
    (dict(occ=2), (0, 0, 1)),
    (dict(occ=3), (0, 0, 0)),
    (dict(trunc=0.15), (1, 1, 1)),                  # <= 0.15 passes easy
    (dict(trunc=0.2), (0, 1, 1)),
    (dict(trunc=0.4), (0, 0, 1)),
    (dict(trunc=0.6), (0, 0, 0)),
])
def test_difficulty_levels(kwargs, expected):
    gts = [labels([car(**kwargs)]) for _ in range(41)]
    dts = [labels([car(**kwargs)], [0.9]) for _ in range(41)]
    result = evaluate_kitti(gts, dts, ("Car",))
    for level, counted in zip(("easy", "moderate", "hard"), expected):
        assert result[f"Car_image/{level}_R40"] == pytest.approx(100.0 * counted)


def test_thresholds_are_strict():
    gts = [labels([car(bbox=(0, 0, 100, 100))])]
    exact = [labels([car(bbox=(0, 0, 70, 100))], [0.9])]  # IoU exactly 0.7
    above = [labels([car(bbox=(0, 0, 71, 100))], [0.9])]
    assert evaluate_kitti(gts, exact, ("Car",))["Car_image/easy_R11"] == 0.0
    assert evaluate_kitti(gts, above, ("Car",))["Car_image/easy_R11"] == pytest.approx(100 / 11)
    # the precision pass is strict too: a detection at exactly 0.7 stays a FP (and its GT a FN) once another
    # TP has set the threshold 0.5 -> precision 1/2
    gts = [labels([car(bbox=(0, 0, 100, 100)), car(x=8.0, bbox=(300, 0, 400, 100))])]
    dts = [labels([car(bbox=(0, 0, 70, 100)), car(x=8.0, bbox=(300, 0, 400, 100))], [0.9, 0.5])]
    assert evaluate_kitti(gts, dts, ("Car",))["Car_image/easy_R11"] == pytest.approx(50 / 11)
    # Pedestrian uses 0.5: IoU exactly 0.5 fails, 0.51 passes
    ped = lambda x2: ("Pedestrian", 0.0, 0, 0.0, 0, 0, x2, 100, 0.0, 1.7, 10.0, 0.8, 1.7, 0.6, 0.0)  # noqa: E731
    assert evaluate_kitti([labels([ped(100)])], [labels([ped(50)], [0.5])], ("Pedestrian",))[
        "Pedestrian_image/easy_R11"] == 0.0
    assert evaluate_kitti([labels([ped(100)])], [labels([ped(51)], [0.5])], ("Pedestrian",))[
        "Pedestrian_image/easy_R11"] == pytest.approx(100 / 11)


def test_aos():
    assert evaluate_kitti(*many_cars(41, alpha_shift=math.pi))["Car_aos/easy_R40"] == pytest.approx(0.0, abs=1e-9)
    half = evaluate_kitti(*many_cars(41, alpha_shift=math.pi / 2))
    assert half["Car_aos/moderate_R40"] == pytest.approx(50.0)
    assert half["Car_3d/moderate_R40"] == pytest.approx(100.0)
    # every other detection flipped: sim / (TP + FP) = ceil(i / 2) / i at threshold i, max from the right
    gts, dts = many_cars(41)
    for i in range(1, 41, 2):
        dts[i].alpha += math.pi
    prefix = np.array([math.ceil((i + 1) / 2) / (i + 1) for i in range(41)])
    prefix = np.maximum.accumulate(prefix[::-1])[::-1]
    result = evaluate_kitti(gts, dts, ("Car",))
    assert result["Car_aos/hard_R40"] == pytest.approx(100 * prefix[1:].sum() / 40)
    assert result["Car_aos/hard_R11"] == pytest.approx(100 * prefix[::4].sum() / 11)
    # alpha -10 on the first detection: no AOS (official test)
    gts, dts = many_cars(3)
    dts[0].alpha[:] = -10
    assert not any("_aos/" in key for key in evaluate_kitti(gts, dts))


def test_empty_inputs():
    empty = labels([], [])
    result = evaluate_kitti([labels([])], [empty])
    assert set(result.values()) == {0.0} and len(result) == 3 * 3 * 3 * 2
    assert set(evaluate_kitti([], []).values()) == {0.0}
    assert set(evaluate_kitti([labels([car()])], [empty]).values()) == {0.0}
    assert set(evaluate_kitti([labels([])], [labels([car()], [0.5])]).values()) == {0.0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt_annos"):
        evaluate_kitti([labels([car()])], [])
    with pytest.raises(ValueError, match="score"):
        evaluate_kitti([labels([car()])], [labels([car()])])
    with pytest.raises(ValueError, match="classes"):
        evaluate_kitti([], [], classes=("Bus",))
    with pytest.raises(TypeError, match=r"gt_annos\[0\]"):
        evaluate_kitti([{"name": []}], [labels([], [])])


# ---------------------------------------------------------------------------------------------------------
# Overlaps and the rotation sense
# ---------------------------------------------------------------------------------------------------------

def cam(x, y, z, l, h, w, ry):
    return torch.tensor([[x, y, z, l, h, w, ry]], dtype=torch.float64)


def test_camera_bev_rotation_sense():
    """The official corners turn (l/2, 0) by ry to (l/2 cos ry, -l/2 sin ry) in (x, z). A 0.5 x 0.5 box at
    (x, z) = (1, -1) lies inside a 4 x 2 box turned by ry = +pi/4 (its long axis points to (1, -1)), and outside
    the one turned by -pi/4."""
    small = cam(1.0, 1.5, -1.0, 0.5, 1.5, 0.5, 0.0)
    bev, d3 = camera_box_overlaps(cam(0, 1.5, 0, 4, 1.5, 2, math.pi / 4), small)
    assert bev.item() == pytest.approx(0.25 / 8)
    assert d3.item() == pytest.approx(0.25 * 1.5 / (12 + 0.375 - 0.375))
    assert camera_box_overlaps(cam(0, 1.5, 0, 4, 1.5, 2, -math.pi / 4), small)[0].item() == 0.0
    # two 4 x 2 boxes, one turned 90 degrees: the 2 x 2 centre square
    bev, _ = camera_box_overlaps(cam(0, 1.5, 0, 4, 1.5, 2, 0.0), cam(0, 1.5, 0, 4, 1.5, 2, math.pi / 2))
    assert bev.item() == pytest.approx(4 / 12)
    # the camera -> LiDAR-like map agrees with the library's real camera -> LiDAR conversion (rigid motion)
    lidar2cam = torch.tensor([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    a, b = cam(1, 1.5, 10, 4, 1.5, 2, 0.4), cam(2, 1.5, 11, 3, 1.5, 1.5, -0.7)
    via_lidar = boxes_intersection_bev(boxes_camera_to_lidar(a, lidar2cam), boxes_camera_to_lidar(b, lidar2cam))
    direct = boxes_intersection_bev(camera_bev_to_lidar_like(a), camera_bev_to_lidar_like(b))
    assert direct.item() == pytest.approx(via_lidar.item(), abs=1e-9) and direct.item() > 0


def test_3d_overlap_uses_y_minus_h_to_y():
    # spans [0, 1.5] and [0.5, 2.0]: dy = 1, same footprint 4 x 2 -> 8 / (12 + 12 - 8)
    _, d3 = camera_box_overlaps(cam(0, 1.5, 0, 4, 1.5, 2, 0), cam(0, 2.0, 0, 4, 1.5, 2, 0))
    assert d3.item() == pytest.approx(0.5)
    _, d3 = camera_box_overlaps(cam(0, 1.5, 0, 4, 1.5, 2, 0), cam(0, 3.0, 0, 4, 1.5, 2, 0))
    assert d3.item() == 0.0


def test_get_thresholds_matches_loop():
    rng = np.random.default_rng(3)
    for count, num_gt in ((1, 1), (5, 9), (40, 41), (100, 120), (300, 300), (77, 1000)):
        scores = rng.random(count)
        assert np.array_equal(get_thresholds(scores, num_gt), np.array(ref_thresholds(list(scores), num_gt)))


# ---------------------------------------------------------------------------------------------------------
# Plain-loop reference of the official algorithm
# ---------------------------------------------------------------------------------------------------------

def ref_thresholds(scores, num_gt):
    scores = sorted(scores, reverse=True)
    current, out = 0.0, []
    for i, score in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if (right - current) < (current - left) and i < len(scores) - 1:
            continue
        out.append(score)
        current += 1 / 40.0
    return out


def ref_corners(x, z, l, w, ry):
    c, s = math.cos(ry), math.sin(ry)
    local = [(-l / 2, -w / 2), (-l / 2, w / 2), (l / 2, w / 2), (l / 2, -w / 2)]
    return [(c * a + s * b + x, -s * a + c * b + z) for a, b in local]


def ref_area(poly):
    return abs(sum(poly[i][0] * poly[i - 1][1] - poly[i - 1][0] * poly[i][1] for i in range(len(poly)))) / 2


def ref_clip(subject, clip):
    """Sutherland-Hodgman: ``subject`` clipped by convex ``clip`` (either orientation)."""
    sign = 1 if sum(clip[i - 1][0] * clip[i][1] - clip[i][0] * clip[i - 1][1] for i in range(4)) > 0 else -1
    out = subject
    for i in range(len(clip)):
        p, q = clip[i - 1], clip[i]
        side = lambda v: sign * ((q[0] - p[0]) * (v[1] - p[1]) - (q[1] - p[1]) * (v[0] - p[0]))  # noqa: E731
        points, out = out, []
        for j in range(len(points)):
            a, b = points[j - 1], points[j]
            sa, sb = side(a), side(b)
            if sb >= 0:
                if sa < 0:
                    t = sa / (sa - sb)
                    out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
                out.append(b)
            elif sa >= 0:
                t = sa / (sa - sb)
                out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
        if not out:
            return []
    return out


def ref_overlap(metric, d, g):
    """d, g: dicts with bbox (4) and box (x, y, z, l, h, w, ry)."""
    if metric == 0:
        a, b = d["bbox"], g["bbox"]
        iw = min(a[2], b[2]) - max(a[0], b[0])
        ih = min(a[3], b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih)
    x1, y1, z1, l1, h1, w1, r1 = d["box"]
    x2, y2, z2, l2, h2, w2, r2 = g["box"]
    poly = ref_clip(ref_corners(x1, z1, l1, w1, r1), ref_corners(x2, z2, l2, w2, r2))
    inter = ref_area(poly) if len(poly) >= 3 else 0.0
    if inter <= 0:
        return 0.0
    if metric == 1:
        return inter / (l1 * w1 + l2 * w2 - inter)
    iw = min(y1, y2) - max(y1 - h1, y2 - h2)
    if iw <= 0:
        return 0.0
    inc = iw * inter
    return inc / (l1 * h1 * w1 + l2 * h2 * w2 - inc)


def ref_clean(gt, dt, cls, level):
    name = cls.lower()
    ignored_gt, ignored_dt, dontcare, valid = [], [], [], 0
    for g in gt:
        gname = g["name"].lower()
        if gname == name:
            kind = 1
        elif (name, gname) in (("car", "van"), ("pedestrian", "person_sitting")):
            kind = 0
        else:
            kind = -1
        hard = (g["occ"] > [0, 1, 2][level] or g["trunc"] > [0.15, 0.3, 0.5][level]
                or g["bbox"][3] - g["bbox"][1] <= [40, 25, 25][level])
        if kind == 1 and not hard:
            ignored_gt.append(0)
            valid += 1
        elif kind == 0 or (hard and kind == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
        if g["name"] == "DontCare":
            dontcare.append(g["bbox"])
    for d in dt:
        if abs(d["bbox"][3] - d["bbox"][1]) < [40, 25, 25][level]:
            ignored_dt.append(1)
        elif d["name"].lower() == name:
            ignored_dt.append(0)
        else:
            ignored_dt.append(-1)
    return valid, ignored_gt, ignored_dt, dontcare


def ref_statistics(overlap, gt, dt, ignored_gt, ignored_dt, dontcare, metric, min_overlap, thresh, compute_fp,
                   compute_aos):
    assigned = [False] * len(dt)
    below = [compute_fp and d["score"] < thresh for d in dt]
    tp = fp = fn = 0
    similarity, scores = 0.0, []
    for i, _ in enumerate(gt):
        if ignored_gt[i] == -1:
            continue
        chosen, best_score, best_overlap, chosen_ignored = -1, None, 0.0, False
        for j, d in enumerate(dt):
            if ignored_dt[j] == -1 or assigned[j] or below[j] or not overlap[j][i] > min_overlap:
                continue
            if not compute_fp:
                if best_score is None or d["score"] > best_score:
                    chosen, best_score = j, d["score"]
            elif ignored_dt[j] == 0 and (overlap[j][i] > best_overlap or chosen_ignored):
                chosen, best_overlap, chosen_ignored = j, overlap[j][i], False
            elif ignored_dt[j] == 1 and chosen == -1:
                chosen, chosen_ignored = j, True
        if chosen == -1:
            if ignored_gt[i] == 0:
                fn += 1
        elif ignored_gt[i] == 1 or ignored_dt[chosen] == 1:
            assigned[chosen] = True
        else:
            tp += 1
            scores.append(dt[chosen]["score"])
            if compute_aos:
                similarity += (1 + math.cos(gt[i]["alpha"] - dt[chosen]["alpha"])) / 2
            assigned[chosen] = True
    if compute_fp:
        for j in range(len(dt)):
            if not assigned[j] and ignored_dt[j] == 0 and not below[j]:
                fp += 1
        if metric == 0:
            for box in dontcare:
                for j, d in enumerate(dt):
                    if assigned[j] or ignored_dt[j] != 0 or below[j]:
                        continue
                    a = d["bbox"]
                    iw = min(a[2], box[2]) - max(a[0], box[0])
                    ih = min(a[3], box[3]) - max(a[1], box[1])
                    if iw > 0 and ih > 0 and iw * ih / ((a[2] - a[0]) * (a[3] - a[1])) > min_overlap:
                        assigned[j] = True
                        fp -= 1
    return tp, fp, fn, similarity, scores


def ref_evaluate(gt_annos, dt_annos, classes, loose=False):
    main = {"Car": (0.7, 0.7, 0.7), "Pedestrian": (0.5, 0.5, 0.5), "Cyclist": (0.5, 0.5, 0.5)}
    if loose:
        main = {"Car": (0.7, 0.5, 0.5), "Pedestrian": (0.5, 0.25, 0.25), "Cyclist": (0.5, 0.25, 0.25)}
    as_dicts = lambda anno, det: [  # noqa: E731
        {"name": anno.names[i], "trunc": float(anno.truncated[i]), "occ": int(anno.occluded[i]),
         "alpha": float(anno.alpha[i]), "bbox": anno.bbox[i].tolist(), "box": anno.boxes_camera[i].tolist(),
         "score": float(anno.score[i]) if det else None} for i in range(len(anno))]
    gts = [as_dicts(a, False) for a in gt_annos]
    dts = [as_dicts(a, True) for a in dt_annos]
    first = next((d[0]["alpha"] for d in dts if d), None)
    compute_aos = first is not None and first != -10
    out = {}
    for cls in classes:
        for metric, metric_name in enumerate(("image", "bev", "3d")):
            overlaps = [[[ref_overlap(metric, d, g) for g in gt] for d in dt] for gt, dt in zip(gts, dts)]
            for level, level_name in enumerate(("easy", "moderate", "hard")):
                cleaned = [ref_clean(gt, dt, cls, level) for gt, dt in zip(gts, dts)]
                num_valid = sum(c[0] for c in cleaned)
                scores = []
                for f, (gt, dt) in enumerate(zip(gts, dts)):
                    scores += ref_statistics(overlaps[f], gt, dt, cleaned[f][1], cleaned[f][2], cleaned[f][3],
                                             metric, main[cls][metric], 0.0, False, False)[4]
                thresholds = ref_thresholds(scores, num_valid)
                aos_on = compute_aos and metric == 0
                precision, aos = [0.0] * 41, [0.0] * 41
                for t, thresh in enumerate(thresholds):
                    tp = fp = sim = 0
                    for f, (gt, dt) in enumerate(zip(gts, dts)):
                        a, b, _, s, _ = ref_statistics(overlaps[f], gt, dt, cleaned[f][1], cleaned[f][2],
                                                       cleaned[f][3], metric, main[cls][metric], thresh, True, aos_on)
                        tp, fp, sim = tp + a, fp + b, sim + s
                    precision[t] = tp / (tp + fp)
                    aos[t] = sim / (tp + fp)
                curves = [(metric_name, precision)] + ([("aos", aos)] if aos_on else [])
                for name, curve in curves:
                    curve = [max(curve[i:]) for i in range(41)]
                    out[f"{cls}_{name}/{level_name}_R11"] = sum(curve[0::4]) / 11 * 100
                    out[f"{cls}_{name}/{level_name}_R40"] = sum(curve[1:]) / 40 * 100
    return out


def random_frames(num_frames, seed, num_gt=6, num_dt=10, ties=False):
    rng = np.random.default_rng(seed)
    names = ["Car", "Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "DontCare", "Truck", "Misc"]
    gts, dts = [], []
    for _ in range(num_frames):
        rows = []
        for _ in range(int(rng.integers(0, num_gt + 1))):
            x1, y1 = rng.uniform(0, 1000), rng.uniform(50, 300)
            rows.append((str(rng.choice(names)), float(rng.choice([0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.7])),
                         int(rng.choice([0, 0, 0, 1, 2, 3])), rng.uniform(-3, 3), x1, y1, x1 + rng.uniform(10, 120),
                         y1 + rng.uniform(15, 110), rng.uniform(-8, 8), rng.uniform(1, 2), rng.uniform(5, 25),
                         rng.uniform(0.6, 4.5), rng.uniform(1.4, 1.9), rng.uniform(0.5, 1.9), rng.uniform(-3, 3)))
        det_rows, scores = [], []
        for _ in range(int(rng.integers(0, num_dt + 1))):
            if rows and rng.random() < 0.75:
                src = list(rows[int(rng.integers(0, len(rows)))])
                noise = float(rng.choice([0.1, 0.3, 1.0]))
                src[0] = str(rng.choice(["Car", "Pedestrian", "Cyclist"])) if rng.random() < 0.3 else src[0]
                for k in range(4, 8):
                    src[k] += rng.normal(0, 6 * noise)
                for k in (8, 9, 10):
                    src[k] += rng.normal(0, 0.25 * noise)
                for k in (11, 12, 13):
                    src[k] *= 1 + noise * rng.uniform(-0.15, 0.15)
                src[14] += rng.normal(0, 0.3 * noise)
                src[3] += rng.normal(0, 0.5)
                src[1], src[2] = 0.0, 0
                score = float(rng.uniform(0.3, 1.0)) * (1 - noise / 2)
            else:
                x1, y1 = rng.uniform(0, 1000), rng.uniform(50, 300)
                src = [str(rng.choice(["Car", "Pedestrian", "Cyclist"])), 0.0, 0, rng.uniform(-3, 3), x1, y1,
                       x1 + rng.uniform(10, 120), y1 + rng.uniform(15, 110), rng.uniform(-8, 8), rng.uniform(1, 2),
                       rng.uniform(5, 25), rng.uniform(0.6, 4.5), rng.uniform(1.4, 1.9), rng.uniform(0.5, 1.9),
                       rng.uniform(-3, 3)]
                score = float(rng.uniform(0.0, 0.7))
            det_rows.append(tuple(src))
            scores.append(round(score, 1) if ties else score)
            if ties and rng.random() < 0.3:  # an exact duplicate: equal overlaps and scores
                det_rows.append(tuple(src))
                scores.append(scores[-1])
        gts.append(labels(rows))
        dts.append(labels(det_rows, scores))
    return gts, dts


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True)])
def test_matches_plain_loop_reference(seed, ties):
    gts, dts = random_frames(100, seed, num_gt=8, num_dt=12, ties=ties)
    fast = evaluate_kitti(gts, dts)
    slow = ref_evaluate(gts, dts, ("Car", "Pedestrian", "Cyclist"))
    assert set(fast) == set(slow)
    assert max(abs(fast[k] - slow[k]) for k in fast) < 1e-6
    assert max(fast.values()) > 4
    assert any(v > 0 for k, v in fast.items() if "_3d/" in k) and any(v > 0 for k, v in fast.items() if "aos" in k)


def test_chunked_threshold_pass_matches(monkeypatch):
    import geoattn.detection.kitti_eval as module

    gts, dts = random_frames(40, 7, num_gt=8, num_dt=14)
    whole = evaluate_kitti(gts, dts)
    monkeypatch.setattr(module, "_BLOCK_ELEMENTS", 500)
    assert evaluate_kitti(gts, dts) == pytest.approx(whole, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Real label files, folders, table, LiDAR conversion
# ---------------------------------------------------------------------------------------------------------

def counted(gt_list, cls, level):
    n = 0
    for anno in gt_list:
        for i, name in enumerate(anno.names):
            h = float(anno.bbox[i, 3] - anno.bbox[i, 1])
            n += (name == cls and int(anno.occluded[i]) <= [0, 1, 2][level]
                  and float(anno.truncated[i]) <= [0.15, 0.3, 0.5][level] and h > [40, 25, 25][level])
    return n


def self_detections(anno, offset=0.0):
    det = anno.without_dontcare()
    det.score = torch.linspace(0.9, 0.5, len(det), dtype=torch.float64) - offset
    return det


def real_labels(real_data):
    paths = sorted((real_data / "lidar/kitti_360/label_2").glob("*.txt"))
    paths += sorted((real_data / "lidar/kitti_fov/val").glob("*_gt.txt"))
    assert paths
    return [read_label(p) for p in paths]


def test_real_labels_against_themselves(real_data):
    gts = real_labels(real_data)
    result = evaluate_kitti(gts, [self_detections(g) for g in gts])
    assert counted(gts, "Car", 1) > 0
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for level, name in enumerate(("easy", "moderate", "hard")):
            n = counted(gts, cls, level)
            for metric in ("image", "bev", "3d", "aos"):
                assert result[f"{cls}_{metric}/{name}_R11"] == pytest.approx(r11(n))
                assert result[f"{cls}_{metric}/{name}_R40"] == pytest.approx(r40(n))
    # tiled until every class with objects has >= 41 counted ones: 100 where objects exist
    copies = 41
    result = evaluate_kitti(gts * copies, [self_detections(g, i / 1000) for i in range(copies) for g in gts])
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for level, name in enumerate(("easy", "moderate", "hard")):
            expected = 100.0 if counted(gts, cls, level) else 0.0
            assert result[f"{cls}_3d/{name}_R40"] == pytest.approx(expected)
            assert result[f"{cls}_image/{name}_R11"] == pytest.approx(expected)


def write(path, anno):
    rows = []
    for i, name in enumerate(anno.names):
        x, y, z, length, h, w, ry = anno.boxes_camera[i].tolist()
        values = [float(anno.truncated[i]), int(anno.occluded[i]), float(anno.alpha[i]), *anno.bbox[i].tolist(),
                  h, w, length, x, y, z, ry]
        if anno.score is not None:
            values.append(float(anno.score[i]))
        rows.append(" ".join([name] + [f"{v:.6f}" if isinstance(v, float) else str(v) for v in values]))
    path.write_text("\n".join(rows) + ("\n" if rows else ""))


def test_folders_and_table(tmp_path, real_data):
    gts = real_labels(real_data)
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "pred"
    label_dir.mkdir()
    pred_dir.mkdir()
    for i, g in enumerate(gts):
        write(label_dir / f"{i:06d}.txt", g)
    for i, g in enumerate(gts[:-1]):  # the last frame has no prediction file: no detections
        write(pred_dir / f"{i:06d}.txt", self_detections(g))
    result = evaluate_kitti_folders(label_dir, pred_dir, ("Car", "Pedestrian"))
    expected = evaluate_kitti([read_label(label_dir / f"{i:06d}.txt") for i in range(len(gts))],
                              [read_label(pred_dir / f"{i:06d}.txt") for i in range(len(gts) - 1)]
                              + [labels([], [])], ("Car", "Pedestrian"))
    assert result == pytest.approx(expected)
    assert sorted({k.split("_")[0] for k in result}) == ["Car", "Pedestrian"]
    subset = evaluate_kitti_folders(label_dir, pred_dir, ("Car",), frame_ids=["000000"])
    assert subset["Car_3d/moderate_R40"] == pytest.approx(r40(counted(gts[:1], "Car", 1)))
    table = format_kitti_table(result)
    assert "Car AP@0.70, 0.70, 0.70:" in table and "Pedestrian AP_R40@0.50, 0.50, 0.50:" in table
    assert f"3d   AP:{result['Car_3d/easy_R11']:.4f}, " in table
    assert "aos  AP:" in table
    (pred_dir / "999999.txt").write_text("")
    with pytest.raises(ValueError, match="999999.txt"):
        evaluate_kitti_folders(label_dir, pred_dir)
    (pred_dir / "999999.txt").unlink()
    with pytest.raises(FileNotFoundError, match="123456"):
        evaluate_kitti_folders(label_dir, pred_dir, frame_ids=["123456"])


def test_lidar_detections_to_kitti(real_data):
    root = real_data / "lidar/kitti_360"
    calib = read_calib(root / "calib/000000.txt")
    gt = read_label(root / "label_2/000000.txt").without_dontcare()
    lidar = boxes_camera_to_lidar(gt.boxes_camera, calib.lidar2cam)
    behind = lidar[:1].clone()
    behind[0, 0] = -10.0  # behind the camera
    boxes = torch.cat([lidar, behind])
    scores = torch.linspace(0.9, 0.1, boxes.shape[0])
    names = ["Car", "Pedestrian", "Cyclist"]
    labels_ = torch.tensor([names.index(n) if n in names else 0 for n in gt.names] + [0])
    det = lidar_detections_to_kitti(boxes, scores, labels_, names, calib, (375, 1242))
    assert len(det) <= len(gt) and det.score is not None
    assert float(det.boxes_camera[:, 2].min()) > 0
    # objects fully inside the image: the projected box matches the hand label to a few pixels
    inside = [i for i in range(len(gt)) if float(gt.truncated[i]) == 0 and int(gt.occluded[i]) == 0]
    kept_x = det.boxes_camera[:, 0].tolist()
    for i in inside:
        j = min(range(len(det)), key=lambda k: abs(kept_x[k] - float(gt.boxes_camera[i, 0])))
        assert torch.allclose(det.bbox[j], gt.bbox[i], atol=15.0)
        assert abs(math.remainder(float(det.alpha[j] - gt.alpha[i]), 2 * math.pi)) < 0.05
    assert (det.bbox[:, 0] >= 0).all() and (det.bbox[:, 2] <= 1241).all() and (det.bbox[:, 3] <= 374).all()
    empty = lidar_detections_to_kitti(torch.zeros(0, 7), torch.zeros(0), torch.zeros(0, dtype=torch.long), names,
                                      calib, (375, 1242))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="labels"):
        lidar_detections_to_kitti(boxes, scores, labels_ + 5, names, calib, (375, 1242))
    with pytest.raises(ValueError, match="image_shape"):
        lidar_detections_to_kitti(boxes, scores, labels_, names, calib, (375,))


@pytest.mark.slow
def test_speed_3769_frames():
    gts, dts = random_frames(3769, 11, num_gt=20, num_dt=60)  # about 10 GT and 30 detections per frame
    start = time.perf_counter()
    evaluate_kitti(gts, dts)
    elapsed = time.perf_counter() - start
    print(f"KITTI metric, 3769 frames: {elapsed:.1f} s")
    assert elapsed < 60


def test_loose_threshold_set():
    gts, dts = random_frames(40, 5, num_gt=8, num_dt=12)
    main = evaluate_kitti(gts, dts, ("Car", "Pedestrian"))
    both = evaluate_kitti(gts, dts, ("Car", "Pedestrian"), loose=True)
    assert {k: v for k, v in both.items() if "_loose" not in k} == main
    # Car keeps 0.7 for bbox in the loose set; Pedestrian's BEV drops to 0.25 (more matches, here a higher AP)
    assert both["Car_image_loose/moderate_R40"] == main["Car_image/moderate_R40"]
    slow = ref_evaluate(gts, dts, ("Car", "Pedestrian"), loose=True)
    for key, value in slow.items():
        assert both[key.replace("/", "_loose/")] == pytest.approx(value, abs=1e-6)
