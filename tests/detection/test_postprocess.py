"""CenterHead decoding: top-K, box decoding, score rectification, class-specific NMS, round trips."""
from __future__ import annotations

import math

import pytest
import torch

import geoattn.detection.postprocess as postprocess
from geoattn.detection.postprocess import CenterHeadPostProcessor, decode_center_head, topk_heatmap
from geoattn.detection.targets import assign_center_targets
from geoattn.sparse.boxes import boxes_iou_bev, limit_angle

VOXEL = (0.32, 0.32, 0.1)
RANGE = (0.0, -5.12, -3.0, 10.24, 5.12, 1.0)
STRIDE = 2
H, W = 16, 16
GEOMETRY = dict(voxel_size=VOXEL, point_range=RANGE, feature_map_stride=STRIDE)


def loop_multiclass_nms(boxes, scores, labels, iou_thresholds, pre_max_size=None, post_max_size=None):
    """Plain greedy loop per class over boxes_iou_bev (the reference for the real NMS)."""
    num_classes = len(iou_thresholds)
    pre = pre_max_size if isinstance(pre_max_size, (list, tuple)) else [pre_max_size] * num_classes
    post = post_max_size if isinstance(post_max_size, (list, tuple)) else [post_max_size] * num_classes
    out = []
    for k in range(num_classes):
        idx = [i for i in range(len(scores)) if int(labels[i]) == k]
        idx.sort(key=lambda i: -float(scores[i]))
        idx = idx[:pre[k]] if pre[k] is not None else idx
        kept = []
        for i in idx:
            if all(float(boxes_iou_bev(boxes[j:j + 1], boxes[i:i + 1])[0, 0]) <= iou_thresholds[k] for j in kept):
                kept.append(i)
        out += kept[:post[k]] if post[k] is not None else kept
    return torch.tensor(out, dtype=torch.long)


def _real_nms_available() -> bool:
    try:
        from geoattn.detection.nms import multiclass_nms_bev  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def plain_nms(monkeypatch):
    """Use the plain-loop NMS unless the real one is importable (then both are compared below)."""
    if not _real_nms_available():
        monkeypatch.setattr(postprocess, "_multiclass_nms", loop_multiclass_nms)


def empty_maps(batch=1, classes=3, logit=-10.0):
    return {
        "heatmap": torch.full((batch, classes, H, W), logit),
        "center": torch.full((batch, 2, H, W), 0.5),
        "center_z": torch.zeros(batch, 1, H, W),
        "dim": torch.zeros(batch, 3, H, W),
        "rot": torch.cat([torch.ones(batch, 1, H, W), torch.zeros(batch, 1, H, W)], dim=1),
        "iou": torch.ones(batch, 1, H, W),
    }


def put(maps, b, k, y, x, logit, center=(0.5, 0.5), z=0.0, dims=(1.0, 1.0, 1.0), heading=0.0, iou=1.0):
    maps["heatmap"][b, k, y, x] = logit
    maps["center"][b, :, y, x] = torch.tensor(center)
    maps["center_z"][b, 0, y, x] = z
    maps["dim"][b, :, y, x] = torch.tensor(dims).log()
    maps["rot"][b, :, y, x] = torch.tensor([math.cos(heading), math.sin(heading)])
    maps["iou"][b, 0, y, x] = iou


def logit(p):
    return math.log(p / (1 - p))


def test_topk_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 4, 5, generator=gen)
    score, index, cls, ys, xs = topk_heatmap(scores, 7)
    for b in range(2):
        flat = scores[b].reshape(-1)
        ref_score, ref = torch.topk(flat, 7)
        torch.testing.assert_close(score[b], ref_score)
        torch.testing.assert_close(cls[b], ref // 20)
        torch.testing.assert_close(index[b], ref % 20)
        torch.testing.assert_close(ys[b] * 5 + xs[b], ref % 20)
    # K larger than the map: everything, still sorted
    score, *_ = topk_heatmap(scores, 1000)
    assert score.shape == (2, 60) and (score[:, :-1] >= score[:, 1:]).all()


def test_single_detection_decoded():
    maps = empty_maps()
    put(maps, 0, 1, 3, 5, logit(0.9), center=(0.25, 0.75), z=-1.0, dims=(4.0, 2.0, 1.5), heading=2.5, iou=0.2)
    out = decode_center_head(maps, iou_rectifier=None, **GEOMETRY)
    assert len(out) == 1 and out[0]["boxes"].shape == (1, 7)
    want = torch.tensor([(5 + 0.25) * 0.64, (3 + 0.75) * 0.64 - 5.12, -1.0, 4.0, 2.0, 1.5, 2.5])
    torch.testing.assert_close(out[0]["boxes"][0], want, rtol=0, atol=1e-5)
    assert out[0]["labels"].tolist() == [1] and out[0]["labels"].dtype == torch.long
    assert out[0]["scores"].item() == pytest.approx(0.9, rel=1e-5)


def test_score_rectification_values():
    maps = empty_maps()
    put(maps, 0, 0, 2, 2, logit(0.8), iou=0.2)   # iou = (0.2 + 1) / 2 = 0.6
    put(maps, 0, 1, 8, 8, logit(0.5), iou=3.0)   # clamped to 1
    put(maps, 0, 2, 12, 12, logit(0.7), iou=-2.0)  # clamped to 0
    out = decode_center_head(maps, iou_rectifier=(0.68, 0.71, 0.65), **GEOMETRY)[0]
    by_label = dict(zip(out["labels"].tolist(), out["scores"].tolist()))
    assert by_label[0] == pytest.approx(0.8 ** 0.32 * 0.6 ** 0.68, rel=1e-5)
    assert by_label[1] == pytest.approx(0.5 ** 0.29, rel=1e-5)
    assert by_label[2] == pytest.approx(0.0, abs=1e-12)
    # without the iou map there is nothing to rectify with
    no_iou = {k: v for k, v in maps.items() if k != "iou"}
    out = decode_center_head(no_iou, **GEOMETRY)[0]
    assert sorted(out["scores"].tolist()) == pytest.approx([0.5, 0.7, 0.8], rel=1e-5)


def test_score_threshold_and_centre_limit():
    maps = empty_maps()
    put(maps, 0, 0, 2, 2, logit(0.09))
    put(maps, 0, 0, 8, 8, logit(0.11))
    put(maps, 0, 0, 12, 12, logit(0.5), z=12.0)  # centre above the z limit of 10
    out = decode_center_head(maps, iou_rectifier=None, **GEOMETRY)[0]
    assert out["scores"].tolist() == pytest.approx([0.11], rel=1e-5)
    out = decode_center_head(maps, iou_rectifier=None, post_center_limit_range=(-80, -80, -20, 80, 80, 20),
                             **GEOMETRY)[0]
    assert len(out["scores"]) == 2


def test_class_specific_nms_applied():
    maps = empty_maps(batch=2)
    # frame 0: two overlapping class-0 boxes (one survives), the same place in class 1 (kept)
    put(maps, 0, 0, 5, 5, logit(0.9), dims=(3.0, 3.0, 1.0))
    put(maps, 0, 0, 5, 6, logit(0.8), dims=(3.0, 3.0, 1.0))  # BEV IoU of 0.64 m shifted 3 m boxes: 0.65
    put(maps, 0, 1, 5, 6, logit(0.7), dims=(3.0, 3.0, 1.0))
    # frame 1: the same two class-0 boxes; threshold 0.75 for class 0 would keep both, 0.6 removes one
    put(maps, 1, 0, 5, 5, logit(0.9), dims=(3.0, 3.0, 1.0))
    put(maps, 1, 0, 5, 6, logit(0.8), dims=(3.0, 3.0, 1.0))
    out = decode_center_head(maps, iou_rectifier=None, nms_thresholds=(0.6, 0.6, 0.6), **GEOMETRY)
    assert out[0]["labels"].tolist() == [0, 1]
    assert out[0]["scores"].tolist() == pytest.approx([0.9, 0.7], rel=1e-5)
    assert out[1]["labels"].tolist() == [0] and out[1]["scores"].tolist() == pytest.approx([0.9], rel=1e-5)
    out = decode_center_head(maps, iou_rectifier=None, nms_thresholds=(0.75, 0.6, 0.55), **GEOMETRY)
    assert out[0]["labels"].tolist() == [0, 0, 1] and out[1]["labels"].tolist() == [0, 0]


def test_empty_predictions_and_empty_batch():
    out = decode_center_head(empty_maps(batch=2), **GEOMETRY)
    assert len(out) == 2
    for frame in out:
        assert frame["boxes"].shape == (0, 7) and frame["scores"].shape == (0,) and frame["labels"].shape == (0,)
        assert frame["labels"].dtype == torch.long
    assert decode_center_head(empty_maps(batch=0), **GEOMETRY) == []


def scene(seed):
    gen = torch.Generator().manual_seed(seed)
    # well-separated boxes on distinct cells inside the map
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij"), -1).reshape(12, 2)
    boxes = torch.zeros(2, 12, 7, dtype=torch.float64)
    boxes[..., 0] = 1.0 + grid[:, 0] * 2.5 + 0.3 * torch.rand(2, 12, generator=gen)
    boxes[..., 1] = -4.0 + grid[:, 1] * 3.5 + 0.3 * torch.rand(2, 12, generator=gen)
    boxes[..., 2] = torch.rand(2, 12, generator=gen) - 1.5
    boxes[..., 3:6] = torch.rand(2, 12, 3, generator=gen) * torch.tensor([1.5, 1.0, 1.0]) + 0.4
    boxes[..., 6] = (torch.rand(2, 12, generator=gen) - 0.5) * 2 * math.pi
    labels = torch.randint(0, 3, (2, 12), generator=gen)
    labels[1, 8:] = -1
    return boxes, labels


def test_decode_of_targets_reproduces_ground_truth():
    boxes, labels = scene(1)
    t = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=16)
    # ideal head: heatmap logit from the Gaussian targets (peaks 1 -> very confident), maps from the targets
    hm = t.heatmap.clamp(1e-6, 1 - 1e-6)
    maps = {"heatmap": torch.log(hm / (1 - hm)) * torch.where(t.heatmap == 1, 3.0, 1.0)}
    flat = torch.zeros(2, 8, H * W, dtype=torch.float64)
    flat.scatter_(2, t.indices[:, None, :].expand(-1, 8, -1), t.boxes.transpose(1, 2))
    flat = flat.reshape(2, 8, H, W)
    maps.update(center=flat[:, 0:2], center_z=flat[:, 2:3], dim=flat[:, 3:6], rot=flat[:, 6:8])
    out = decode_center_head(maps, score_threshold=0.5, iou_rectifier=None, nms_thresholds=(0.9, 0.9, 0.9),
                             **GEOMETRY)
    for b in range(2):
        want = boxes[b][labels[b] >= 0]
        want_labels = labels[b][labels[b] >= 0]
        got = out[b]["boxes"]
        assert got.shape == want.shape
        # match by centre
        order = torch.cdist(got[:, :2], want[:, :2]).argmin(dim=1)
        assert sorted(order.tolist()) == list(range(len(want)))
        torch.testing.assert_close(got[:, :6], want[order, :6], rtol=0, atol=1e-9)
        torch.testing.assert_close(limit_angle(got[:, 6] - want[order, 6]), torch.zeros(len(got), dtype=got.dtype),
                                   rtol=0, atol=1e-9)
        assert out[b]["labels"].tolist() == want_labels[order].tolist()


@pytest.mark.skipif(not _real_nms_available(), reason="geoattn.detection.nms not present")
def test_real_nms_matches_plain_loop(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    maps = empty_maps(batch=2)
    maps["heatmap"] = torch.randn(2, 3, H, W, generator=gen) * 2
    maps["dim"] = torch.rand(2, 3, H, W, generator=gen) * 1.5 + 0.3  # 1.3 - 6 m: many overlaps
    maps["rot"] = torch.randn(2, 2, H, W, generator=gen)
    maps["iou"] = torch.rand(2, 1, H, W, generator=gen) * 2 - 1
    real = decode_center_head(maps, max_obj_per_sample=60, nms_pre_max_size=40, nms_post_max_size=9, **GEOMETRY)
    monkeypatch.setattr(postprocess, "_multiclass_nms", loop_multiclass_nms)
    ref = decode_center_head(maps, max_obj_per_sample=60, nms_pre_max_size=40, nms_post_max_size=9, **GEOMETRY)
    for a, b in zip(real, ref):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["scores"], b["scores"])
    assert sum(len(r["scores"]) for r in ref) > 5


def test_bad_inputs():
    maps = empty_maps()
    with pytest.raises(ValueError, match="heatmap"):
        decode_center_head({"center": maps["center"]}, **GEOMETRY)
    with pytest.raises(ValueError, match="dim"):
        decode_center_head(dict(maps, dim=maps["dim"][:, :2]), **GEOMETRY)
    with pytest.raises(ValueError, match="nms_thresholds"):
        decode_center_head(maps, nms_thresholds=(0.5, 0.5), **GEOMETRY)
    with pytest.raises(ValueError, match="max_obj_per_sample"):
        decode_center_head(maps, max_obj_per_sample=0, **GEOMETRY)
    with pytest.raises(ValueError, match="post_center_limit_range"):
        decode_center_head(maps, post_center_limit_range=(0, 0, 0), **GEOMETRY)


def test_post_processor_from_config():
    cfg = {"TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": STRIDE},
           "POST_PROCESSING": {"SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-80, -80, -10.0, 80, 80, 10.0],
                               "MAX_OBJ_PER_SAMPLE": 500, "USE_IOU_TO_RECTIFY_SCORE": True,
                               "IOU_RECTIFIER": [0.68, 0.71, 0.65],
                               "NMS_CONFIG": {"NMS_TYPE": "class_specific_nms", "NMS_THRESH": [0.75, 0.6, 0.55],
                                              "NMS_PRE_MAXSIZE": [4096, 4096, 4096],
                                              "NMS_POST_MAXSIZE": [500, 500, 500]}}}
    post = CenterHeadPostProcessor.from_config(cfg, RANGE, VOXEL)
    maps = empty_maps()
    put(maps, 0, 0, 2, 2, logit(0.8), iou=0.2)
    out = post(maps)[0]
    assert out["scores"].tolist() == pytest.approx([0.8 ** 0.32 * 0.6 ** 0.68], rel=1e-5)
    bad = {**cfg, "POST_PROCESSING": {**cfg["POST_PROCESSING"], "NMS_CONFIG": {"NMS_TYPE": "circle_nms"}}}
    with pytest.raises(ValueError, match="NMS_CONFIG.NMS_TYPE"):
        CenterHeadPostProcessor.from_config(bad, RANGE, VOXEL)
    bad = {**cfg, "POST_PROCESSING": {**cfg["POST_PROCESSING"], "MAX_OBJ_PER_SAMPLE": -1}}
    with pytest.raises(ValueError, match="POST_PROCESSING.MAX_OBJ_PER_SAMPLE"):
        CenterHeadPostProcessor.from_config(bad, RANGE, VOXEL)
