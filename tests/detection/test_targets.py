"""CenterHead targets: Gaussian radius, heatmaps and regression targets against slow references."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.detection.targets import (CenterTargetAssigner, assign_center_targets, decode_boxes, gather_maps,
                                       gaussian_radius)
from geoattn.sparse.boxes import limit_angle

VOXEL = (0.32, 0.32, 0.1)
RANGE = (0.0, -5.12, -3.0, 10.24, 5.12, 1.0)
STRIDE = 2  # cells of 0.64 m; the map is H = 16 (y) by W = 16 (x)
H, W = 16, 16


def scalar_radius(h: float, w: float, o: float) -> float:
    """The official formula transcribed on Python floats."""
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def test_gaussian_radius_hand_values():
    # h = w = 3, o = 0.1: r3 = (-1.2 + sqrt(1.44 + 4 * 0.4 * 8.1)) / 2 = (-1.2 + sqrt(14.4)) / 2
    # r1 = (6 + sqrt(36 - 4 * 8.1 / 1.1)) / 2 = 4.2792, r2 = (12 + sqrt(144 - 16 * 8.1)) / 2 = 7.8974
    h = torch.tensor([3.0, 6.0, 10.0], dtype=torch.float64)
    w = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    r = gaussian_radius(h, w, 0.1)
    assert r[0].item() == pytest.approx((-1.2 + math.sqrt(14.4)) / 2, abs=1e-12)
    # h = 6, w = 2, o = 0.1: b3 = -1.6, 4 a3 c3 = 4 * 0.4 * (-0.9 * 12) = -17.28 -> (-1.6 + sqrt(19.84)) / 2
    assert r[1].item() == pytest.approx((-1.6 + math.sqrt(2.56 + 17.28)) / 2, abs=1e-12)
    # h = 10, w = 1: b3 = -2.2, -4 a3 c3 = 1.6 * 9 = 14.4 -> (-2.2 + sqrt(4.84 + 14.4)) / 2
    assert r[2].item() == pytest.approx((-2.2 + math.sqrt(4.84 + 14.4)) / 2, abs=1e-12)
    assert r[0].item() == pytest.approx(1.29737, abs=1e-5)


def test_gaussian_radius_matches_scalar_transcription():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(200, generator=gen, dtype=torch.float64) * 40 + 0.1
    w = torch.rand(200, generator=gen, dtype=torch.float64) * 40 + 0.1
    for overlap in (0.1, 0.5, 0.7):
        r = gaussian_radius(h, w, overlap)
        ref = torch.tensor([scalar_radius(a, b, overlap) for a, b in zip(h.tolist(), w.tolist())],
                           dtype=torch.float64)
        torch.testing.assert_close(r, ref, rtol=1e-12, atol=1e-12)


def test_gaussian_radius_bad_input():
    with pytest.raises(TypeError, match="height"):
        gaussian_radius([1.0], torch.ones(1))
    with pytest.raises(ValueError, match="min_overlap"):
        gaussian_radius(torch.ones(1), torch.ones(1), 1.5)


def reference_targets(gt_boxes, gt_labels, num_classes, max_objs, overlap=0.1, min_radius=2,
                      clamp_outside=False):
    """Plain per-object loop, transcribing OpenPCDet's assign_target_of_single_head / draw_gaussian."""
    batch = gt_boxes.shape[0]
    heat = torch.zeros(batch, num_classes, H, W)
    inds = torch.zeros(batch, max_objs, dtype=torch.long)
    mask = torch.zeros(batch, max_objs, dtype=torch.bool)
    boxes = torch.zeros(batch, max_objs, 8)
    for b in range(batch):
        k = -1
        for m in range(gt_boxes.shape[1]):
            label = int(gt_labels[b, m])
            if not 0 <= label < num_classes:
                continue
            k += 1
            if k >= max_objs:
                break
            box = gt_boxes[b, m]
            u = (box[0] - RANGE[0]) / VOXEL[0] / STRIDE
            v = (box[1] - RANGE[1]) / VOXEL[1] / STRIDE
            if not clamp_outside and not (0 <= u <= W and 0 <= v <= H):
                continue
            u, v = u.clamp(0, W - 0.5), v.clamp(0, H - 0.5)
            du, dv = box[3] / VOXEL[0] / STRIDE, box[4] / VOXEL[1] / STRIDE
            if du <= 0 or dv <= 0 or box[5] <= 0:
                continue
            radius = max(min_radius, int(scalar_radius(float(du), float(dv), overlap)))
            x, y = int(u), int(v)
            sigma = (2 * radius + 1) / 6
            for yy in range(max(0, y - radius), min(H, y + radius + 1)):
                for xx in range(max(0, x - radius), min(W, x + radius + 1)):
                    g = math.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))
                    heat[b, label, yy, xx] = max(float(heat[b, label, yy, xx]), float(torch.tensor(g).float()))
            inds[b, k] = y * W + x
            mask[b, k] = True
            boxes[b, k] = torch.stack([u - x, v - y, box[2], box[3].log(), box[4].log(), box[5].log(),
                                       box[6].cos(), box[6].sin()])
    return heat, inds, mask, boxes


def random_scene(batch=3, num=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num, 2, generator=gen) * torch.tensor([12.0, 12.0]) + torch.tensor([-1.0, -6.0])
    z = torch.rand(batch, num, 1, generator=gen) - 1
    dims = torch.rand(batch, num, 3, generator=gen) * torch.tensor([5.0, 2.5, 2.0]) + 0.3
    heading = (torch.rand(batch, num, 1, generator=gen) - 0.5) * 2 * math.pi
    boxes = torch.cat([xy, z, dims, heading], dim=-1)
    labels = torch.randint(-1, 3, (batch, num), generator=gen)
    return boxes, labels


@pytest.mark.parametrize("clamp_outside", [False, True])
def test_matches_per_object_loop_reference(clamp_outside):
    boxes, labels = random_scene()
    boxes[0, 0, 3] = 0.0  # degenerate: keeps its slot, masked
    boxes[1, 1, :2] = torch.tensor([10.24, 5.12])  # exactly on the far border: clamped
    t = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=10,
                              clamp_outside=clamp_outside)
    heat, inds, mask, reg = reference_targets(boxes, labels, 3, 10, clamp_outside=clamp_outside)
    assert torch.equal(t.heatmap, heat)
    assert torch.equal(t.mask, mask)
    assert torch.equal(t.indices, inds)
    torch.testing.assert_close(t.boxes, reg, rtol=0, atol=1e-6)
    assert t.heatmap.shape == (3, 3, H, W) and t.boxes.shape == (3, 10, 8) and t.gt_boxes.shape == (3, 10, 7)
    assert t.mask.any()


def test_peak_at_centre_cell_and_values():
    boxes = torch.tensor([[[3.2 + 0.1, 0.3, 0.0, 0.5, 0.5, 1.0, 0.0]]])
    t = assign_center_targets(boxes, torch.tensor([[1]]), 3, (H, W), VOXEL, RANGE, STRIDE)
    u, v = (3.3 - 0.0) / 0.64, (0.3 + 5.12) / 0.64  # 5.156.., 8.468..
    x, y = int(u), int(v)
    assert t.heatmap[0, 1, y, x] == 1.0 and (t.heatmap == 1).sum() == 1
    assert t.heatmap[0, 0].abs().sum() == 0 and t.heatmap[0, 2].abs().sum() == 0
    assert int(t.indices[0, 0]) == y * W + x
    torch.testing.assert_close(t.boxes[0, 0, :2], torch.tensor([u - x, v - y]), rtol=0, atol=1e-5)
    # a 0.5 m box is < 1 cell: radius = min_radius = 2 -> a 5 x 5 window, sigma = 5 / 6
    support = t.heatmap[0, 1] > 0
    assert support.sum() == 25 and support[y - 2:y + 3, x - 2:x + 3].all()
    sigma = 5 / 6
    assert t.heatmap[0, 1, y, x + 1].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-6)
    assert t.heatmap[0, 1, y + 2, x + 2].item() == pytest.approx(math.exp(-8 / (2 * sigma ** 2)), rel=1e-6)


def test_min_radius_parameter():
    boxes = torch.tensor([[[5.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0]]])
    t = assign_center_targets(boxes, torch.tensor([[0]]), 1, (H, W), VOXEL, RANGE, STRIDE, min_radius=1)
    assert (t.heatmap > 0).sum() == 9
    t = assign_center_targets(boxes, torch.tensor([[0]]), 1, (H, W), VOXEL, RANGE, STRIDE, min_radius=3)
    assert (t.heatmap > 0).sum() == 49


def test_overlapping_objects_take_max():
    a = [4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    b = [4.0 + 0.64 * 2, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    both = assign_center_targets(torch.tensor([[a, b]]), torch.tensor([[0, 0]]), 1, (H, W), VOXEL, RANGE, STRIDE)
    one_a = assign_center_targets(torch.tensor([[a]]), torch.tensor([[0]]), 1, (H, W), VOXEL, RANGE, STRIDE)
    one_b = assign_center_targets(torch.tensor([[b]]), torch.tensor([[0]]), 1, (H, W), VOXEL, RANGE, STRIDE)
    assert torch.equal(both.heatmap, torch.maximum(one_a.heatmap, one_b.heatmap))
    assert (both.heatmap == 1).sum() == 2
    # different classes do not mix
    split = assign_center_targets(torch.tensor([[a, b]]), torch.tensor([[0, 1]]), 2, (H, W), VOXEL, RANGE, STRIDE)
    assert torch.equal(split.heatmap[:, 0], one_a.heatmap[:, 0])
    assert torch.equal(split.heatmap[:, 1], one_b.heatmap[:, 0])


def test_border_clamping():
    # centre exactly on the far x edge (u = W) and below the near y edge inside the tolerance
    boxes = torch.tensor([[[10.24, 5.12, 0.0, 1.0, 1.0, 1.0, 0.0]]])
    t = assign_center_targets(boxes, torch.tensor([[0]]), 1, (H, W), VOXEL, RANGE, STRIDE)
    assert t.mask[0, 0]
    assert int(t.indices[0, 0]) == (H - 1) * W + (W - 1)
    torch.testing.assert_close(t.boxes[0, 0, :2], torch.tensor([0.5, 0.5]))
    assert t.heatmap[0, 0, H - 1, W - 1] == 1.0
    # the window is clipped to the map: a 5 x 5 window at the corner keeps 3 x 3 cells
    assert (t.heatmap > 0).sum() == 9


def test_outside_objects_skipped_unless_clamped():
    boxes = torch.tensor([[[12.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [5.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]])
    labels = torch.tensor([[0, 0]])
    t = assign_center_targets(boxes, labels, 1, (H, W), VOXEL, RANGE, STRIDE)
    assert t.mask.tolist()[0][:2] == [False, True]
    assert (t.heatmap == 1).sum() == 1
    assert t.labels[0, 0] == 0  # the slot is still taken
    t = assign_center_targets(boxes, labels, 1, (H, W), VOXEL, RANGE, STRIDE, clamp_outside=True)
    assert t.mask.tolist()[0][:2] == [True, True]
    assert int(t.indices[0, 0]) % W == W - 1


def test_padding_and_bad_labels_skipped():
    boxes, labels = random_scene(batch=1, num=6, seed=3)
    labels = torch.tensor([[-1, 0, -1, 5, 1, -1]])
    t = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=8,
                              clamp_outside=True)
    # valid objects (m = 1, 4) fill slots 0, 1 in order
    assert t.labels[0].tolist() == [0, 1, -1, -1, -1, -1, -1, -1]
    assert t.mask[0].tolist() == [True, True] + [False] * 6
    torch.testing.assert_close(t.gt_boxes[0, :2], boxes[0, [1, 4]])
    assert t.gt_boxes[0, 2:].abs().sum() == 0


def test_max_objs_truncation():
    xs = torch.arange(6, dtype=torch.float32) * 1.5 + 0.5
    boxes = torch.zeros(1, 6, 7)
    boxes[0, :, 0] = xs
    boxes[0, :, 3:6] = 1.0
    t = assign_center_targets(boxes, torch.zeros(1, 6, dtype=torch.long), 1, (H, W), VOXEL, RANGE, STRIDE,
                              max_objs=4)
    assert t.mask.shape == (1, 4) and t.mask.all()
    assert (t.heatmap == 1).sum() == 4  # the last two objects are dropped, also from the heatmap
    torch.testing.assert_close(t.gt_boxes[0], boxes[0, :4])


def test_empty_ground_truth():
    for boxes, labels in ((torch.zeros(2, 0, 7), torch.zeros(2, 0, dtype=torch.long)),
                          (torch.zeros(2, 3, 7), torch.full((2, 3), -1))):
        t = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=5)
        assert t.heatmap.shape == (2, 3, H, W) and t.heatmap.abs().sum() == 0
        assert not t.mask.any() and t.indices.shape == (2, 5) and (t.labels == -1).all()
    t = assign_center_targets(torch.zeros(0, 0, 7), torch.zeros(0, 0, dtype=torch.long), 3, (H, W), VOXEL,
                              RANGE, STRIDE)
    assert t.heatmap.shape == (0, 3, H, W) and t.mask.shape == (0, 500)


def test_bad_arguments():
    boxes, labels = random_scene(batch=1, num=2)
    with pytest.raises(ValueError, match="gt_boxes"):
        assign_center_targets(boxes[..., :6], labels, 3, (H, W), VOXEL, RANGE, STRIDE)
    with pytest.raises(ValueError, match="gt_labels"):
        assign_center_targets(boxes, labels[:, :1], 3, (H, W), VOXEL, RANGE, STRIDE)
    with pytest.raises(TypeError, match="gt_labels"):
        assign_center_targets(boxes, labels.float(), 3, (H, W), VOXEL, RANGE, STRIDE)
    with pytest.raises(ValueError, match="feature_map_stride"):
        assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, 0)
    with pytest.raises(ValueError, match="voxel_size"):
        assign_center_targets(boxes, labels, 3, (H, W), (0.3, 0.3), RANGE, STRIDE)
    with pytest.raises(ValueError, match="num_classes"):
        assign_center_targets(boxes, labels, 0, (H, W), VOXEL, RANGE, STRIDE)


def test_debug_mode_rejects_labels_beyond_classes(monkeypatch):
    boxes, _ = random_scene(batch=1, num=2)
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match="gt_labels"):
        assign_center_targets(boxes, torch.tensor([[0, 3]]), 3, (H, W), VOXEL, RANGE, STRIDE)


def test_decode_of_encoded_targets_reproduces_boxes():
    boxes, labels = random_scene(batch=2, num=10, seed=5)
    # distinct cells well inside the map (no clamping, no two objects in one cell)
    grid = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(2), indexing="ij"), -1).reshape(10, 2)
    boxes[:, :, 0] = 0.5 + grid[:, 0] * 2.0 + 0.3 * torch.rand(2, 10)
    boxes[:, :, 1] = -4.0 + grid[:, 1] * 4.0 + 0.3 * torch.rand(2, 10)
    t = assign_center_targets(boxes.double(), labels, 3, (H, W), VOXEL, RANGE, STRIDE, max_objs=12)
    # head maps holding the targets at the object cells
    maps = torch.zeros(2, 8, H * W, dtype=torch.float64)
    maps.scatter_(2, t.indices[:, None, :].expand(-1, 8, -1), t.boxes.transpose(1, 2))
    maps = maps.reshape(2, 8, H, W)
    g = gather_maps(maps, t.indices)
    xs, ys = t.indices % W, t.indices // W
    decoded = decode_boxes(g[..., 0:2], g[..., 2:3], g[..., 3:6], g[..., 6:8], xs, ys, VOXEL, RANGE, STRIDE)
    m = t.mask
    got, want = decoded[m], t.gt_boxes[m]
    torch.testing.assert_close(got[:, :6], want[:, :6], rtol=0, atol=1e-9)
    torch.testing.assert_close(limit_angle(got[:, 6] - want[:, 6]), torch.zeros_like(got[:, 6]), rtol=0, atol=1e-9)
    assert m.sum() >= 5


def test_assigner_from_config():
    cfg = {"CLASS_NAMES_EACH_HEAD": [["Car", "Pedestrian", "Cyclist"]],
           "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 2, "NUM_MAX_OBJS": 7, "GAUSSIAN_OVERLAP": 0.1,
                                      "MIN_RADIUS": 2}}
    assigner = CenterTargetAssigner.from_config(cfg, ["Car", "Pedestrian", "Cyclist"], RANGE, VOXEL)
    boxes, labels = random_scene(batch=2, num=5)
    t = assigner(boxes, labels, (H, W))
    ref = assign_center_targets(boxes, labels, 3, (H, W), VOXEL, RANGE, 2, max_objs=7)
    assert torch.equal(t.heatmap, ref.heatmap) and torch.equal(t.indices, ref.indices)
    bad = dict(cfg, TARGET_ASSIGNER_CONFIG={"FEATURE_MAP_STRIDE": "x"})
    with pytest.raises(ValueError, match="TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE"):
        CenterTargetAssigner.from_config(bad, ["Car", "Pedestrian", "Cyclist"], RANGE, VOXEL)
    with pytest.raises(ValueError, match="CLASS_NAMES_EACH_HEAD"):
        CenterTargetAssigner.from_config(dict(cfg, CLASS_NAMES_EACH_HEAD=[["Car"], ["Pedestrian", "Cyclist"]]),
                                         ["Car", "Pedestrian", "Cyclist"], RANGE, VOXEL)
