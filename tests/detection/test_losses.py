"""CenterHead losses against direct formulas, plain loops and gradcheck."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.detection.losses import (CenterHeadLoss, center_head_loss, clamped_sigmoid, diou_3d, diou_loss,
                                      focal_loss_centernet, iou_branch_loss, reg_l1_loss)
from geoattn.detection.targets import assign_center_targets, decode_boxes, gather_maps
from geoattn.sparse.boxes import boxes_iou3d, boxes_iou3d_pairs

VOXEL = (0.32, 0.32, 0.1)
RANGE = (0.0, -2.56, -3.0, 5.12, 2.56, 1.0)
STRIDE = 2
H, W = 8, 8


def direct_focal(pred, target):
    pos, neg, n = 0.0, 0.0, 0
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t == 1:
            pos += math.log(p) * (1 - p) ** 2
            n += 1
        else:
            neg += math.log(1 - p) * p ** 2 * (1 - t) ** 4
    return -neg if n == 0 else -(pos + neg) / n


def test_focal_loss_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    pred = clamped_sigmoid(torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 3)
    target = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 0.9
    target[0, 1, 2, 3] = 1.0
    target[1, 2, 0, 0] = 1.0
    assert focal_loss_centernet(pred, target).item() == pytest.approx(direct_focal(pred, target), rel=1e-12)


def test_focal_loss_zero_positives():
    gen = torch.Generator().manual_seed(1)
    pred = clamped_sigmoid(torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64))
    target = torch.rand(1, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5
    value = focal_loss_centernet(pred, target)
    assert torch.isfinite(value) and value.item() == pytest.approx(direct_focal(pred, target), rel=1e-12)
    assert focal_loss_centernet(pred, torch.zeros_like(pred)).item() > 0


def test_clamped_sigmoid():
    out = clamped_sigmoid(torch.tensor([-100.0, 0.0, 100.0]))
    torch.testing.assert_close(out, torch.tensor([1e-4, 0.5, 1 - 1e-4]))


def test_reg_l1_with_mask_matches_loop():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    target = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    ref = torch.zeros(8, dtype=torch.float64)
    for b in range(2):
        for n in range(5):
            if mask[b, n]:
                ref += (pred[b, n] - target[b, n]).abs()
    torch.testing.assert_close(reg_l1_loss(pred, mask, target), ref / 4)
    assert reg_l1_loss(pred, torch.zeros_like(mask), target).abs().sum() == 0


def random_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 4
    dims = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 + 0.5
    heading = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 6
    return torch.cat([centre, dims, heading], dim=1)


def test_paired_iou_is_the_diagonal():
    a, b = random_boxes(37, 3), random_boxes(37, 4)
    b[:10] = a[:10] + 0.1  # some overlapping pairs
    b[10] = a[10]  # identical
    full = boxes_iou3d(a, b).diagonal()
    torch.testing.assert_close(boxes_iou3d_pairs(a, b), full, rtol=0, atol=1e-13)
    assert (full[:10] > 0).all() and boxes_iou3d_pairs(a, b)[10].item() == pytest.approx(1.0)
    assert boxes_iou3d_pairs(a[:0], b[:0]).shape == (0,)
    with pytest.raises(ValueError, match="boxes_b"):
        boxes_iou3d_pairs(a, b[:3])


def test_iou_branch_loss_value():
    pred_boxes = random_boxes(6, 5).reshape(2, 3, 7)
    gt = pred_boxes + 0.2
    mask = torch.tensor([[True, True, False], [False, True, False]])
    iou_pred = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    ref = 0.0
    for b in range(2):
        for n in range(3):
            if mask[b, n]:
                iou = boxes_iou3d(pred_boxes[b, n:n + 1], gt[b, n:n + 1])[0, 0]
                ref += abs(float(iou_pred[b, n]) - (2 * float(iou) - 1))
    assert iou_branch_loss(iou_pred, pred_boxes, gt, mask).item() == pytest.approx(ref / 3, rel=1e-12)
    assert iou_branch_loss(iou_pred, pred_boxes, gt, torch.zeros_like(mask)).item() == 0


def scalar_diou(p, g):
    p, g = p.tolist(), g.tolist()
    lo = [max(p[i] - p[i + 3] / 2, g[i] - g[i + 3] / 2) for i in range(3)]
    hi = [min(p[i] + p[i + 3] / 2, g[i] + g[i + 3] / 2) for i in range(3)]
    inter = math.prod(max(0.0, h - low) for low, h in zip(lo, hi))
    union = p[3] * p[4] * p[5] + g[3] * g[4] * g[5] - inter
    olo = [min(p[i] - p[i + 3] / 2, g[i] - g[i + 3] / 2) for i in range(3)]
    ohi = [max(p[i] + p[i + 3] / 2, g[i] + g[i + 3] / 2) for i in range(3)]
    diag = sum((h - low) ** 2 for low, h in zip(olo, ohi))
    dist = sum((p[i] - g[i]) ** 2 for i in range(3))
    return max(-1.0, min(1.0, inter / union - dist / diag))


def test_diou_matches_scalar_formula():
    p, g = random_boxes(20, 6), random_boxes(20, 7)
    g[:8] = p[:8] + 0.3
    ref = torch.tensor([scalar_diou(a, b) for a, b in zip(p, g)], dtype=torch.float64)
    torch.testing.assert_close(diou_3d(p, g), ref, rtol=1e-12, atol=1e-12)
    assert diou_3d(p[:1], p[:1]).item() == pytest.approx(1.0)
    mask = torch.ones(1, 20, dtype=torch.bool)
    assert diou_loss(p[None], g[None], mask).item() == pytest.approx(float((1 - ref).mean()), rel=1e-12)
    assert diou_loss(p[None], g[None], torch.zeros_like(mask)).item() == 0


def make_batch(dtype=torch.float64, seed=0, with_objects=True):
    gen = torch.Generator().manual_seed(seed)
    if with_objects:
        boxes = torch.tensor([[[1.3, 0.2, -1.0, 3.9, 1.7, 1.5, 0.4], [3.5, -1.4, -0.8, 0.8, 0.7, 1.8, -2.0]],
                              [[2.2, 1.1, -1.2, 1.8, 0.6, 1.7, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]],
                             dtype=dtype)
        labels = torch.tensor([[0, 1], [2, -1]])
    else:
        boxes, labels = torch.zeros(2, 1, 7, dtype=dtype), torch.full((2, 1), -1)
    targets = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=4)
    outputs = {
        "heatmap": torch.randn(2, 3, H, W, generator=gen, dtype=dtype),
        "center": torch.rand(2, 2, H, W, generator=gen, dtype=dtype),
        "center_z": torch.randn(2, 1, H, W, generator=gen, dtype=dtype) - 1,
        "dim": torch.randn(2, 3, H, W, generator=gen, dtype=dtype) * 0.3 + 0.2,
        "rot": torch.randn(2, 2, H, W, generator=gen, dtype=dtype),
        "iou": torch.rand(2, 1, H, W, generator=gen, dtype=dtype) * 2 - 1,
    }
    return outputs, targets


GEOMETRY = dict(voxel_size=VOXEL, point_range=RANGE, feature_map_stride=STRIDE)


def test_center_head_loss_is_the_sum_of_its_parts():
    outputs, targets = make_batch()
    code = (1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 2.0, 1.0)
    loss, parts = center_head_loss(outputs, targets, cls_weight=1.5, loc_weight=2.0, code_weights=code, **GEOMETRY)
    hm = focal_loss_centernet(clamped_sigmoid(outputs["heatmap"]), targets.heatmap) * 1.5
    pred = torch.cat([gather_maps(outputs[k], targets.indices) for k in ("center", "center_z", "dim", "rot")], -1)
    reg = reg_l1_loss(pred, targets.mask, targets.boxes)
    loc = (reg * torch.tensor(code, dtype=torch.float64)).sum() * 2.0
    xs, ys = targets.indices % W, targets.indices // W
    boxes = decode_boxes(pred[..., 0:2], pred[..., 2:3], pred[..., 3:6], pred[..., 6:8], xs, ys, VOXEL, RANGE,
                         STRIDE)
    iou = iou_branch_loss(gather_maps(outputs["iou"], targets.indices)[..., 0], boxes, targets.gt_boxes,
                          targets.mask)
    diou = diou_loss(boxes, targets.gt_boxes, targets.mask) * 2.0
    for key, value in (("hm_loss", hm), ("loc_loss", loc), ("iou_loss", iou), ("iou_reg_loss", diou)):
        assert parts[key].item() == pytest.approx(value.item(), rel=1e-12), key
    assert loss.item() == pytest.approx((hm + loc + iou + diou).item(), rel=1e-12)
    assert targets.mask.sum() == 3
    # the masked regression sum, written out on the three objects
    manual = 0.0
    for b, n in targets.mask.nonzero().tolist():
        manual += float(((pred[b, n] - targets.boxes[b, n]).abs() * torch.tensor(code, dtype=torch.float64)).sum())
    assert loc.item() == pytest.approx(manual / 3 * 2.0, rel=1e-12)


def test_iou_reg_off_and_no_iou_head():
    outputs, targets = make_batch()
    _, parts = center_head_loss(outputs, targets, iou_reg_loss=False, **GEOMETRY)
    assert parts["iou_reg_loss"].item() == 0 and parts["iou_loss"].item() > 0
    no_iou = {k: v for k, v in outputs.items() if k != "iou"}
    loss, parts = center_head_loss(no_iou, targets, iou_reg_loss=False)
    assert parts["iou_loss"].item() == 0
    assert loss.item() == pytest.approx((parts["hm_loss"] + parts["loc_loss"]).item())
    with pytest.raises(ValueError, match="voxel_size"):
        center_head_loss(outputs, targets)


def test_no_objects_gives_finite_loss_and_gradients():
    outputs, targets = make_batch(with_objects=False)
    for value in outputs.values():
        value.requires_grad_(True)
    loss, parts = center_head_loss(outputs, targets, **GEOMETRY)
    loss.backward()
    assert torch.isfinite(loss)
    assert parts["loc_loss"].item() == 0 and parts["iou_loss"].item() == 0 and parts["iou_reg_loss"].item() == 0
    for value in outputs.values():
        assert value.grad is not None and torch.isfinite(value.grad).all()
    assert outputs["heatmap"].grad.abs().sum() > 0


def test_gradcheck_losses():
    outputs, targets = make_batch()
    names = ("heatmap", "center", "center_z", "dim", "rot", "iou")
    inputs = tuple(outputs[k].clone().requires_grad_(True) for k in names)

    # The IoU branch's target uses detached boxes (official), so its finite differences in the box heads
    # are not part of the analytic gradient: check it with iou_weight 0 here and on its own below.
    def fn(*maps):
        return center_head_loss(dict(zip(names, maps)), targets, iou_weight=0.0, **GEOMETRY)[0]

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
    boxes = random_boxes(4, 9).reshape(1, 4, 7)
    iou_pred = (torch.rand(1, 4, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    iou_mask = torch.tensor([[True, False, True, True]])
    assert torch.autograd.gradcheck(lambda x: iou_branch_loss(x, boxes, boxes + 0.2, iou_mask), (iou_pred,))
    p = random_boxes(5, 8)[None].requires_grad_(True)
    g = (random_boxes(5, 8) + 0.3)[None]
    mask = torch.tensor([[True, True, False, True, True]])
    assert torch.autograd.gradcheck(lambda x: diou_loss(x, g, mask), (p,), eps=1e-6, atol=1e-5)
    pred = torch.rand(1, 2, 3, 3, dtype=torch.float64) * 0.8 + 0.1
    target = torch.rand(1, 2, 3, 3, dtype=torch.float64) * 0.9
    target[0, 0, 1, 1] = 1
    assert torch.autograd.gradcheck(lambda x: focal_loss_centernet(x, target), (pred.requires_grad_(True),))


def test_gradients_reach_every_regression_head():
    outputs, targets = make_batch()
    for value in outputs.values():
        value.requires_grad_(True)
    loss, _ = center_head_loss(outputs, targets, **GEOMETRY)
    loss.backward()
    for name, value in outputs.items():
        assert value.grad.abs().sum() > 0, name


def test_float32_and_bad_inputs():
    outputs, targets = make_batch(dtype=torch.float32)
    loss, _ = center_head_loss(outputs, targets, **GEOMETRY)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    bad = dict(outputs, center=outputs["center"][:, :1])
    with pytest.raises(ValueError, match="center"):
        center_head_loss(bad, targets, **GEOMETRY)
    with pytest.raises(ValueError, match="code_weights"):
        center_head_loss(outputs, targets, code_weights=(1.0,) * 7, **GEOMETRY)
    with pytest.raises(TypeError, match="targets"):
        center_head_loss(outputs, {"heatmap": targets.heatmap}, **GEOMETRY)


def test_loss_from_config():
    cfg = {"TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": STRIDE}, "IOU_REG_LOSS": True,
           "LOSS_CONFIG": {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 2.0, "code_weights": [1.0] * 8}}}
    loss_fn = CenterHeadLoss.from_config(cfg, RANGE, VOXEL)
    outputs, targets = make_batch()
    loss, _ = loss_fn(outputs, targets)
    ref, _ = center_head_loss(outputs, targets, **GEOMETRY)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    bad = {"LOSS_CONFIG": {"LOSS_WEIGHTS": {"code_weights": [1.0] * 3}}}
    with pytest.raises(ValueError, match="LOSS_WEIGHTS.code_weights"):
        CenterHeadLoss.from_config(bad)
    with pytest.raises(ValueError, match="IOU_REG_LOSS"):
        CenterHeadLoss.from_config(dict(cfg, IOU_REG_LOSS="yes"))
