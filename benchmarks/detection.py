"""The detector's hot paths, each against a baseline timed round-robin in the same process.

Records (one JSON object, ``records`` keyed by name; every record has the median ms of the candidate
(``geoattn_ms``) and of its baseline (``baseline_ms``) over ``--repeats`` rounds, their ratio, the sizes and a
``baseline`` sentence saying what the baseline is):

1. ``forward_kitti`` / ``forward_waymo``: detector forward (eval mode, ``torch.no_grad``) of the
   ``kitti_scatterformer`` and ``waymo_scatterformer`` configs (random init) on a real 360-degree KITTI frame
   (KITTI: points cropped to the config's range; Waymo: z + 1.73 m, as ``benchmarks/sla.py``, the KITTI
   reflectance as intensity without tanh, and a zero elongation column; ``--quick``: every 8th point and
   small ranges). Baseline: the same model with the reference SLA path forced (``GEOATTN_BACKEND=naive``,
   set in-process: ``geoattn.backends.forced_backend`` reads the variable at every call).
2. ``nms_bev``: ``geoattn.detection.nms.nms_bev`` on 4096 boxes (a crowded scene, ~256 objects x 16 jittered
   proposals, random scores, IoU threshold 0.7) against the plain greedy loop over ``boxes_iou_bev`` (IoU of the
   current box with the remaining candidates); both must keep the same indices.
3. ``kitti_metric``: ``evaluate_kitti`` on ``--frames`` (3,769) synthetic frames of ~10 GT (with DontCare rows)
   and ~30 detections; baseline: the pure-Python reference of the official algorithm
   (``ref_evaluate`` in ``tests/detection/test_kitti_eval.py``) on a ``--ref-frames`` (100) subset; both in ms
   per frame on that subset, plus the full-size run of geoattn.
4. ``voxel_encoder``: ``DynamicVoxelVFE`` of the KITTI config, forward + backward (train mode) on the frame,
   against the same maths written with ``torch.unique`` + ``index_add_`` (means) + ``scatter_reduce(amax)``
   (per-voxel max) sharing its weights; outputs and gradients must match.
5. ``gaussian_targets``: ``assign_center_targets`` for 4 frames x 30 objects on the KITTI map against the
   per-object drawing loop of the official ``draw_gaussian_to_heatmap``; heatmaps must be equal.

    python benchmarks/detection.py --json
    python benchmarks/detection.py --device cuda --json
    python benchmarks/detection.py --quick --repeats 1 --json     # smoke test sizes
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geoattn.data.kitti import KittiLabels
from geoattn.detection.config import load_config, point_cloud_range
from geoattn.detection.kitti_eval import evaluate_kitti
from geoattn.detection.nms import nms_bev
from geoattn.detection.targets import assign_center_targets, gaussian_radius
from geoattn.detection.training import build_detector_from_config
from geoattn.sparse.boxes import boxes_iou_bev

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FRAME = Path("lidar") / "kitti_360" / "velodyne" / "000000.bin"
SENSOR_HEIGHT = 1.73
# --quick: small BEV ranges (multiples of 64 voxels of 0.32 m) so that the dense 2-D part stays small
QUICK_RANGES = {"kitti_scatterformer": [0.0, -10.24, -3.0, 20.48, 10.24, 1.0],
                "waymo_scatterformer": [-10.24, -10.24, -2.0, 10.24, 10.24, 4.0]}


def data_root() -> Path:
    env = os.environ.get("GEOATTN_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def round_robin(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms of each callable: one untimed warm-up each, then ``repeats`` rounds in a rotating order."""
    for fn in fns.values():
        fn()
    times = {key: [] for key in fns}
    keys = list(fns)
    for round_index in range(repeats):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            synchronize(device)
            start = time.perf_counter()
            fns[key]()
            synchronize(device)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


def record(name: str, medians: dict, baseline: str, **sizes) -> dict:
    return {"name": name, "geoattn_ms": round(medians["geoattn"], 3), "baseline_ms": round(medians["baseline"], 3),
            "ratio": round(medians["geoattn"] / medians["baseline"], 4), "baseline": baseline, **sizes}


@contextlib.contextmanager
def forced_backend(value: str):
    old = os.environ.get("GEOATTN_BACKEND")
    os.environ["GEOATTN_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GEOATTN_BACKEND", None)
        else:
            os.environ["GEOATTN_BACKEND"] = old


def load_frame(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))


def config_for(name: str, quick: bool) -> dict:
    config = load_config(name)
    if quick:
        config = copy.deepcopy(config)
        config["DATA_CONFIG"]["POINT_CLOUD_RANGE"] = list(QUICK_RANGES[name])
    return config


def frame_points(frame: torch.Tensor, name: str, config: dict) -> torch.Tensor:
    """The frame as the config's point rows, cropped to its range."""
    points = frame.clone()
    if name == "waymo_scatterformer":
        points[:, 2] += SENSOR_HEIGHT
        points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)  # elongation = 0 (tanh(0) = 0)
    low = torch.tensor(point_cloud_range(config)[:3])
    high = torch.tensor(point_cloud_range(config)[3:])
    inside = ((points[:, :3] >= low) & (points[:, :3] < high)).all(dim=1)
    return points[inside].contiguous()


# ---------------------------------------------------------------------------------------------------------
# 1. detector forward
# ---------------------------------------------------------------------------------------------------------
def bench_forward(frame: torch.Tensor, name: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = config_for(name, args.quick)
    model = build_detector_from_config(config).to(device).eval()
    points = frame_points(frame, name, config).to(device)
    batch = torch.zeros(points.shape[0], dtype=torch.long, device=device)

    def run():
        with torch.no_grad():
            return model(points, batch, 1)

    def run_naive():
        with forced_backend("naive"):
            return run()

    ours, ref = run(), run_naive()
    err = max(float((ours[k].float() - ref[k].float()).abs().max() / ref[k].float().abs().max().clamp_min(1e-12))
              for k in ours)
    voxels = model.vfe(points, batch, 1).coords.shape[0]
    medians = round_robin({"geoattn": run, "baseline": run_naive}, args.repeats, device)
    from geoattn.kernels.sla import select_backend

    return record(f"forward_{name.split('_')[0]}", medians,
                  "the same model (same weights, eval mode, no autograd) with the reference SLA path forced "
                  "in-process (GEOATTN_BACKEND=naive: a Python loop over windows)",
                  config=name, sla_backend=select_backend(points.new_zeros(1, 1, 32)), points=int(points.shape[0]),
                  voxels=int(voxels), point_range=point_cloud_range(config),
                  feature_map=list(model.feature_map_size), max_rel_err_vs_baseline=err)


# ---------------------------------------------------------------------------------------------------------
# 2. NMS
# ---------------------------------------------------------------------------------------------------------
def crowded_boxes(objects: int, proposals: int, seed: int = 0):
    """``objects`` cars/pedestrians in an 80 m x 80 m area, ``proposals`` jittered copies each, random scores."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=gen) * 80 - 40
    is_car = torch.rand(objects, generator=gen) < 0.7
    dims = torch.where(is_car[:, None], torch.tensor([3.9, 1.6, 1.56]), torch.tensor([0.8, 0.6, 1.73]))
    heading = torch.rand(objects, generator=gen) * 2 * math.pi - math.pi
    base = torch.cat([centre, torch.full((objects, 1), -1.0), dims, heading[:, None]], dim=1)
    boxes = base.repeat_interleave(proposals, dim=0)
    noise = torch.randn(boxes.shape[0], 7, generator=gen)
    boxes[:, :2] += noise[:, :2] * 0.15 * boxes[:, 3:5].mean(1, keepdim=True)
    boxes[:, 2] += noise[:, 2] * 0.1
    boxes[:, 3:6] *= 1 + 0.1 * noise[:, 3:6].clamp(-2, 2)
    boxes[:, 6] += noise[:, 6] * 0.1
    scores = torch.rand(boxes.shape[0], generator=gen)
    return boxes, scores


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Plain greedy NMS: take the best remaining box, drop the remaining ones with IoU > threshold."""
    remaining = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while remaining.numel():
        current = remaining[0]
        keep.append(current)
        rest = remaining[1:]
        iou = boxes_iou_bev(boxes[current].unsqueeze(0), boxes[rest])[0]
        remaining = rest[iou <= threshold]
    return torch.stack(keep) if keep else remaining


def bench_nms(args, device: torch.device) -> dict:
    objects, proposals = (32, 8) if args.quick else (256, 16)
    boxes, scores = crowded_boxes(objects, proposals)
    boxes, scores = boxes.to(device), scores.to(device)
    threshold = 0.7
    ours = nms_bev(boxes, scores, threshold)
    ref = greedy_nms(boxes, scores, threshold)
    if not torch.equal(ours.cpu(), ref.cpu()):
        raise AssertionError("nms_bev and the greedy loop keep different boxes")
    medians = round_robin({"geoattn": lambda: nms_bev(boxes, scores, threshold),
                           "baseline": lambda: greedy_nms(boxes, scores, threshold)}, args.repeats, device)
    return record("nms_bev", medians,
                  "plain greedy loop: best remaining box, boxes_iou_bev of it against the remaining candidates, "
                  "drop IoU > threshold (one IoU call per kept box); same kept indices checked",
                  boxes=int(boxes.shape[0]), objects=objects, proposals_per_object=proposals,
                  iou_threshold=threshold, kept=int(ours.numel()), same_indices=True)


# ---------------------------------------------------------------------------------------------------------
# 3. KITTI metric
# ---------------------------------------------------------------------------------------------------------
P2 = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]])
IMAGE_W, IMAGE_H = 1242, 375
DIMS = {"Car": (3.9, 1.56, 1.6), "Van": (5.0, 2.1, 1.9), "Pedestrian": (0.8, 1.75, 0.6),
        "Cyclist": (1.75, 1.7, 0.6)}  # (l, h, w)


def _bbox2d(box: np.ndarray) -> np.ndarray | None:
    """Projected 2-D box of a camera box (x, y, z, l, h, w, ry; bottom centre), clipped; None if unseen."""
    x, y, z, l, h, w, ry = box
    cx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    cz = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    cy = np.array([0, 0, 0, 0, -h, -h, -h, -h])
    c, s = np.cos(ry), np.sin(ry)
    corners = np.stack([c * cx + s * cz + x, cy + y, -s * cx + c * cz + z, np.ones(8)])
    uvw = P2 @ corners
    if (uvw[2] <= 0.1).any():
        return None
    u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
    out = np.array([max(u.min(), 0), max(v.min(), 0), min(u.max(), IMAGE_W - 1), min(v.max(), IMAGE_H - 1)])
    return out if out[2] - out[0] > 1 and out[3] - out[1] > 1 else None


def _labels(rows: list, scores: list | None) -> KittiLabels:
    f = lambda i: torch.tensor([r[i] for r in rows], dtype=torch.float64)  # noqa: E731
    return KittiLabels([r[0] for r in rows], f(1), f(2).long(), f(3),
                       torch.tensor([r[4:8] for r in rows], dtype=torch.float64).reshape(-1, 4),
                       torch.tensor([r[8:15] for r in rows], dtype=torch.float64).reshape(-1, 7),
                       None if scores is None else torch.tensor(scores, dtype=torch.float64))


def synthetic_kitti_frames(num_frames: int, seed: int = 0, num_gt: int = 10, num_dt: int = 30):
    """Random KITTI label pairs: ~``num_gt`` objects in front of the camera (2-D boxes from the projection,
    truncation/occlusion drawn, 1-2 DontCare rows) and ~``num_dt`` scored detections (2/3 jittered copies of
    the objects, some with the wrong class, the rest false positives)."""
    rng = np.random.default_rng(seed)
    names = ["Car"] * 5 + ["Pedestrian"] * 2 + ["Cyclist", "Van"]
    gts, dts = [], []

    def row(name, trunc, occ, box):
        bbox = _bbox2d(box)
        if bbox is None:
            return None
        alpha = box[6] - math.atan2(box[0], box[2])
        return (name, trunc, occ, alpha, *bbox.tolist(), *box.tolist())

    def random_box(name):
        l, h, w = DIMS[name]
        z = rng.uniform(4, 60)
        scale = 1 + rng.normal(0, 0.05, 3)
        return np.array([rng.uniform(-0.6, 0.6) * z, 1.65 + rng.normal(0, 0.1), z, l * scale[0], h * scale[1],
                         w * scale[2], rng.uniform(-math.pi, math.pi)])

    for _ in range(num_frames):
        rows, wanted = [], int(rng.integers(num_gt // 2, 3 * num_gt // 2 + 1))
        while len(rows) < wanted:
            name = str(rng.choice(names))
            r = row(name, float(rng.choice([0.0, 0.0, 0.0, 0.2, 0.4])), int(rng.choice([0, 0, 1, 2])),
                    random_box(name))
            if r is not None:
                rows.append(r)
        for _ in range(int(rng.integers(1, 3))):
            x1, y1 = rng.uniform(0, 1150), rng.uniform(140, 200)
            rows.append(("DontCare", -1.0, -1, -10.0, x1, y1, x1 + rng.uniform(10, 60), y1 + rng.uniform(8, 30),
                         -1000.0, -1000.0, -1000.0, -1.0, -1.0, -1.0, -10.0))
        objects = [r for r in rows if r[0] != "DontCare"]
        det_rows, scores, wanted = [], [], int(rng.integers(num_dt // 2, 3 * num_dt // 2 + 1))
        while len(det_rows) < wanted:
            if objects and rng.random() < 2 / 3:
                src = objects[int(rng.integers(0, len(objects)))]
                box = np.array(src[8:15])
                noise = float(rng.choice([0.1, 0.3, 1.0]))
                box[[0, 2]] += rng.normal(0, 0.3 * noise, 2)
                box[3:6] *= 1 + rng.normal(0, 0.08 * noise, 3)
                box[6] += rng.normal(0, 0.2 * noise)
                name = src[0] if rng.random() > 0.15 else str(rng.choice(["Car", "Pedestrian", "Cyclist"]))
                score = float(rng.uniform(0.3, 1.0)) * (1 - noise / 3)
            else:
                name = str(rng.choice(["Car", "Pedestrian", "Cyclist"]))
                box, score = random_box(name), float(rng.uniform(0.0, 0.6))
            r = row(name, 0.0, 0, box)
            if r is not None:
                det_rows.append(r)
                scores.append(score)
        gts.append(_labels(rows, None))
        dts.append(_labels(det_rows, scores))
    return gts, dts


def _reference_evaluate():
    """``ref_evaluate`` of tests/detection/test_kitti_eval.py (the slow pure-Python official algorithm)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tests.detection.test_kitti_eval import ref_evaluate
    except ImportError:
        return None
    return ref_evaluate


def bench_kitti_metric(args) -> dict:
    frames = 40 if args.quick else args.frames
    subset = min(frames, 8 if args.quick else args.ref_frames)
    gts, dts = synthetic_kitti_frames(frames)
    classes = ("Car", "Pedestrian", "Cyclist")
    ref_evaluate = _reference_evaluate()
    repeats = max(1, min(args.repeats, 3))
    start = time.perf_counter()
    full = evaluate_kitti(gts, dts, classes)
    full_s = time.perf_counter() - start
    out = {"name": "kitti_metric", "frames": frames, "gt_per_frame": sum(len(g) for g in gts) / frames,
           "detections_per_frame": sum(len(d) for d in dts) / frames, "subset_frames": subset,
           "repeats": repeats, "full_run_s": round(full_s, 3),
           "full_car_3d_moderate_R40": round(full["Car_3d/moderate_R40"], 3)}
    if ref_evaluate is None:
        out["baseline"] = "unavailable (tests/detection/test_kitti_eval.py not importable)"
        return out
    sub_g, sub_d = gts[:subset], dts[:subset]
    ours, ref = evaluate_kitti(sub_g, sub_d, classes), ref_evaluate(sub_g, sub_d, classes)
    err = max(abs(ours[k] - ref[k]) for k in ours)
    if set(ours) != set(ref) or err > 1e-6:
        raise AssertionError(f"evaluate_kitti and the reference disagree (max diff {err})")
    medians = round_robin({"geoattn": lambda: evaluate_kitti(sub_g, sub_d, classes),
                           "baseline": lambda: ref_evaluate(sub_g, sub_d, classes)}, repeats, torch.device("cpu"))
    out.update({
        "geoattn_ms": round(medians["geoattn"] / subset, 3), "baseline_ms": round(medians["baseline"] / subset, 3),
        "ratio": round(medians["geoattn"] / medians["baseline"], 4), "unit": "ms per frame on the subset",
        "full_run_ms_per_frame": round(full_s * 1e3 / frames, 3), "max_abs_diff_vs_baseline": err,
        "baseline": "ref_evaluate of tests/detection/test_kitti_eval.py: the official kitti_object_eval_python "
                    "algorithm as plain Python loops (per-pair polygon overlaps, per-threshold matching), same "
                    "classes, all 4 metrics x 3 levels x R11/R40, on the first subset_frames frames; "
                    "geoattn timed on the same subset (full_run_*: geoattn on all frames, one run)",
    })
    return out


# ---------------------------------------------------------------------------------------------------------
# 4. voxel encoder
# ---------------------------------------------------------------------------------------------------------
def plain_vfe(vfe, points: torch.Tensor) -> torch.Tensor:
    """DynamicVoxelVFE's maths with torch.unique, index_add_ (means) and scatter_reduce amax (max), its weights."""
    low = torch.tensor(vfe.point_range[:3], device=points.device)
    high = torch.tensor(vfe.point_range[3:], device=points.device)
    size = torch.tensor(vfe.voxel_size, device=points.device)
    xyz = points[:, :3]
    inside = ((xyz >= low) & (xyz < high)).all(dim=1)
    points, xyz = points[inside], xyz[inside]
    cells = torch.floor((xyz - low) / size).long()
    grid_z, grid_y, grid_x = vfe.grid
    cells = torch.minimum(cells, torch.tensor([grid_x - 1, grid_y - 1, grid_z - 1], device=points.device))
    key = (cells[:, 2] * grid_y + cells[:, 1]) * grid_x + cells[:, 0]  # (z, y, x) order, batch 0
    unique, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    num = unique.numel()
    mean = xyz.new_zeros(num, 3).index_add_(0, inverse, xyz) / counts[:, None].to(xyz.dtype)
    centre = (cells.to(xyz.dtype) + 0.5) * size + low
    features = torch.cat([points, xyz - mean[inverse], xyz - centre], dim=1)
    for layer in vfe.pfn_layers:
        h = layer.relu(layer.norm(layer.linear(features)))
        index = inverse[:, None].expand_as(h)
        h_max = h.new_zeros(num, h.shape[1]).scatter_reduce(0, index, h, "amax", include_self=False)
        features = h_max if layer.last_layer else torch.cat([h, h_max[inverse]], dim=1)
    return features


def bench_vfe(frame: torch.Tensor, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = config_for("kitti_scatterformer", args.quick)
    vfe = build_detector_from_config(config).vfe.to(device).train()
    if vfe.with_distance or not vfe.use_absolute_xyz:
        raise AssertionError("the plain VFE baseline covers use_absolute_xyz=True, with_distance=False only")
    points = frame_points(frame, "kitti_scatterformer", config).to(device)
    grad = torch.randn(1, vfe.num_output_features, device=device)

    def ours():
        out = vfe(points).features
        out.backward(grad.expand_as(out))
        return out

    def base():
        out = plain_vfe(vfe, points)
        out.backward(grad.expand_as(out))
        return out

    def grads():
        g = [p.grad.clone() for p in vfe.parameters()]
        vfe.zero_grad(set_to_none=True)
        return g

    a, ga = ours().detach(), grads()
    b, gb = base().detach(), grads()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)

    def step(fn):
        def run():
            fn()
            vfe.zero_grad(set_to_none=True)
        return run

    medians = round_robin({"geoattn": step(ours), "baseline": step(base)}, args.repeats, device)
    return record("voxel_encoder", medians,
                  "same maths and weights in plain torch: torch.unique voxel ids, index_add_ voxel means, "
                  "Tensor.scatter_reduce(amax) per-voxel max; forward + backward (train-mode BN), outputs and "
                  "parameter gradients checked equal",
                  points=int(points.shape[0]), voxels=int(a.shape[0]), input_features=vfe.num_input_features,
                  output_features=vfe.num_output_features, max_abs_diff=float((a - b).abs().max()))


# ---------------------------------------------------------------------------------------------------------
# 5. Gaussian targets
# ---------------------------------------------------------------------------------------------------------
def gaussian_2d(radius: int) -> np.ndarray:
    """The official gaussian2D((2r + 1, 2r + 1), sigma=(2r + 1) / 6), tiny values zeroed."""
    sigma = (2 * radius + 1) / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def loop_heatmaps(gt_boxes, gt_labels, num_classes, size, voxel, prange, stride, min_overlap=0.1, min_radius=2):
    """Per-object loop as the official CenterHead + draw_gaussian_to_heatmap (max of each object's Gaussian)."""
    height, width = size
    batch = gt_boxes.shape[0]
    heatmap = gt_boxes.new_zeros(batch, num_classes, height, width)
    for b in range(batch):
        valid = gt_labels[b] >= 0
        boxes, labels = gt_boxes[b][valid], gt_labels[b][valid]
        dx, dy = boxes[:, 3] / voxel[0] / stride, boxes[:, 4] / voxel[1] / stride
        radii = gaussian_radius(dx, dy, min_overlap=min_overlap).int().clamp(min=min_radius)
        cx = ((boxes[:, 0] - prange[0]) / voxel[0] / stride).clamp(0, width - 0.5)
        cy = ((boxes[:, 1] - prange[1]) / voxel[1] / stride).clamp(0, height - 0.5)
        for k in range(boxes.shape[0]):
            radius, x, y = int(radii[k]), int(cx[k]), int(cy[k])
            gaussian = gaussian_2d(radius)
            left, right = min(x, radius), min(width - x, radius + 1)
            top, bottom = min(y, radius), min(height - y, radius + 1)
            masked = heatmap[b, int(labels[k]), y - top:y + bottom, x - left:x + right]
            patch = torch.from_numpy(gaussian[radius - top:radius + bottom, radius - left:radius + right])
            if min(patch.shape) > 0 and min(masked.shape) > 0:
                torch.max(masked, patch.to(masked), out=masked)
    return heatmap


def bench_targets(args, device: torch.device) -> dict:
    config = config_for("kitti_scatterformer", args.quick)
    model = build_detector_from_config(config)
    size, voxel, prange = model.feature_map_size, model.voxel_size, model.point_range
    stride, num_classes = model.feature_map_stride, len(model.class_names)
    batch, objects = 4, 30
    gen = torch.Generator().manual_seed(0)
    centre = torch.rand(batch, objects, 2, generator=gen)
    centre[..., 0] = prange[0] + centre[..., 0] * (prange[3] - prange[0])
    centre[..., 1] = prange[1] + centre[..., 1] * (prange[4] - prange[1])
    labels = torch.randint(0, num_classes, (batch, objects), generator=gen)
    dims = torch.tensor([[3.9, 1.6, 1.56], [0.8, 0.6, 1.73], [1.76, 0.6, 1.73]])[labels]
    dims = dims * (1 + 0.1 * torch.randn(batch, objects, 3, generator=gen))
    heading = torch.rand(batch, objects, 1, generator=gen) * 2 * math.pi - math.pi
    boxes = torch.cat([centre, torch.full((batch, objects, 1), -1.0), dims, heading], dim=-1).to(device)
    labels = labels.to(device)

    def ours():
        return assign_center_targets(boxes, labels, num_classes, size, voxel, prange, stride).heatmap

    def base():
        return loop_heatmaps(boxes, labels, num_classes, size, voxel, prange, stride)

    if not torch.equal(ours(), base()):
        raise AssertionError("assign_center_targets and the per-object loop draw different heatmaps")
    medians = round_robin({"geoattn": ours, "baseline": base}, args.repeats, device)
    return record("gaussian_targets", medians,
                  "per-object Python loop as the official draw_gaussian_to_heatmap (numpy gaussian2D patch, "
                  "torch.max into the heatmap slice), radii from the same gaussian_radius; geoattn also computes "
                  "the regression targets, the loop only the heatmaps; heatmaps checked equal",
                  frames=batch, objects_per_frame=objects, feature_map=list(size), classes=num_classes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame", type=Path, default=None,
                        help="KITTI velodyne .bin, 360 degrees (default: ../shared/data/" + str(DEFAULT_FRAME) + ")")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=3769, help="synthetic frames for the KITTI metric")
    parser.add_argument("--ref-frames", type=int, default=100, help="frames of the metric's reference subset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", default="", help="comma-separated subset of forward,nms,metric,vfe,targets")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.exit(2, "detection.py: --repeats must be >= 1\n")
    frame_path = args.frame or data_root() / DEFAULT_FRAME
    if not frame_path.is_file():
        parser.exit(2, f"detection.py: frame not found: {frame_path} (pass --frame PATH.bin)\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "detection.py: --device cuda requested but CUDA is not available\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    only = {s for s in args.only.split(",") if s} or {"forward", "nms", "metric", "vfe", "targets"}
    frame = load_frame(frame_path)
    if args.quick:
        frame = frame[::8].contiguous()
    records = {}

    def add(rec):
        records[rec["name"]] = rec
        if not args.json and "ratio" in rec:
            print(f"{rec['name']:<18} geoattn {rec['geoattn_ms']:10.3f} ms   baseline {rec['baseline_ms']:10.3f} ms"
                  f"   ratio {rec['ratio']:.3f}", file=sys.stderr)

    if "forward" in only:
        add(bench_forward(frame, "kitti_scatterformer", args, device))
        add(bench_forward(frame, "waymo_scatterformer", args, device))
    if "nms" in only:
        add(bench_nms(args, device))
    if "metric" in only:
        add(bench_kitti_metric(args))
    if "vfe" in only:
        add(bench_vfe(frame, args, device))
    if "targets" in only:
        add(bench_targets(args, device))
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "frame": frame_path.name, "repeats": args.repeats,
           "quick": args.quick, "records": records}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
