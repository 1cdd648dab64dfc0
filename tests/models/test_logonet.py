import math

import pytest
import torch

from geoattn.data.kitti import load_mmdet3d_frame
from geoattn.models.logonet import (LoGoNetHead, PointSet, assign_targets, canonical_targets, decode_residuals,
                                    encode_residuals)
from geoattn.nn.logonet import CameraSetup, project_to_cameras
from geoattn.sparse.boxes import points_in_boxes
from geoattn.sparse.voxel import voxelize

POINT_RANGE = [0, -40, -3, 70.4, 40, 1]


def _boxes(num, generator):
    boxes = torch.rand(num, 7, generator=generator, dtype=torch.float64)
    boxes[:, :3] = boxes[:, :3] * 10 - 5
    boxes[:, 3:6] = boxes[:, 3:6] * 3 + 0.5
    boxes[:, 6] = (boxes[:, 6] - 0.5) * 2 * math.pi
    return boxes


def test_residual_coder_round_trip():
    generator = torch.Generator().manual_seed(0)
    rois, gt = _boxes(10, generator), _boxes(10, generator)
    residuals = canonical_targets(gt, rois)
    decoded = decode_residuals(residuals, rois)
    assert torch.allclose(decoded[:, :6], gt[:, :6], atol=1e-9)
    # heading equal up to the pi flip that canonical_targets folds away
    assert torch.allclose(torch.sin(2 * (decoded[:, 6] - gt[:, 6])), torch.zeros(10, dtype=torch.float64), atol=1e-9)
    assert (residuals[:, 6].abs() <= math.pi / 2 + 1e-9).all()
    assert torch.allclose(canonical_targets(rois, rois), torch.zeros(10, 7, dtype=torch.float64), atol=1e-12)
    flipped = rois.clone()
    flipped[:, 6] += math.pi
    assert torch.allclose(canonical_targets(flipped, rois), torch.zeros(10, 7, dtype=torch.float64), atol=1e-9)
    anchors = rois.clone()
    assert torch.allclose(encode_residuals(rois, anchors), torch.zeros(10, 7, dtype=torch.float64))


def test_assign_targets_respects_batches():
    rois = torch.tensor([[0, 0, 0, 2, 2, 2, 0.0], [0, 0, 0, 2, 2, 2, 0.0], [9, 9, 0, 1, 1, 1, 0.0]])
    gt = torch.tensor([[0, 0, 0, 2, 2, 2, 0.0], [0.5, 0, 0, 2, 2, 2, 0.0]])
    iou, matched = assign_targets(rois, torch.tensor([0, 1, 2]), gt, torch.tensor([1, 0]))
    assert matched.tolist() == [1, 0, -1]
    assert torch.allclose(iou, torch.tensor([0.6, 1.0, 0.0]), atol=1e-6)
    iou, matched = assign_targets(rois, torch.zeros(3, dtype=torch.long), gt[:0], torch.zeros(0, dtype=torch.long))
    assert (matched == -1).all() and (iou == 0).all()


class _Stems(torch.nn.Module):
    """Tiny learnable stand-ins for the voxel backbone levels and the image backbone."""

    def __init__(self, channels=16, image_channels=8):
        super().__init__()
        self.levels = torch.nn.ModuleList([torch.nn.Linear(4, channels), torch.nn.Linear(4, channels)])
        self.image = torch.nn.Conv2d(3, image_channels, 1)


def _small_head(channels=16, image_channels=8):
    return LoGoNetHead(level_channels=(channels, channels), image_channels=image_channels,
                       radii=((0.8,), (1.6,)), num_samples=((8,), (8,)), mlps=(((16,),), ((16,),)),
                       grid_size=3, fc_channels=(64, 64), num_heads=2, num_points=2, embed_dim=16, fda_ffn=32)


@pytest.fixture(scope="module")
def frame8_inputs(real_data):
    frame = load_mmdet3d_frame(real_data / "fusion" / "000008.pkl")
    points = frame.points
    # keep the points near the labelled cars: the test is about the head, not about 17k-point speed
    near = points_in_boxes(points[:, :3].double(), frame.boxes, margin=2.0).any(1)
    points = points[near]
    levels = [voxelize(points[:, :3], size, POINT_RANGE, features=points) for size in (0.4, 0.8)]
    image = frame.image.permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.avg_pool2d(image, 8)
    cameras = CameraSetup(frame.lidar2img["CAM2"][None].float(), torch.zeros(1, dtype=torch.long),
                          frame.image_hw, frame.image_hw)
    return frame, points, levels, image, cameras


def _run(head, stems, inputs, rois):
    frame, points, levels, image, cameras = inputs
    point_sets = [PointSet(v.centroids, stem(v.features), torch.zeros(v.num_voxels, dtype=torch.long))
                  for v, stem in zip(levels, stems.levels)]
    roi_batch = torch.zeros(rois.shape[0], dtype=torch.long)
    outputs = head(rois, roi_batch, point_sets, points[:, :3], torch.zeros(points.shape[0], dtype=torch.long),
                   stems.image(image), cameras)
    losses = head.loss(outputs, rois, roi_batch, frame.boxes.float(), torch.zeros(len(frame.boxes), dtype=torch.long))
    return outputs, losses


def _jittered(frame, copies=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rois = frame.boxes.float().repeat(copies, 1)
    rois[:, :3] += torch.randn(rois.shape[0], 3, generator=generator) * 0.3
    rois[:, 3:6] *= 1 + torch.randn(rois.shape[0], 3, generator=generator) * 0.1
    rois[:, 6] += torch.randn(rois.shape[0], generator=generator) * 0.2
    return rois


def test_head_overfits_one_frame(frame8_inputs):
    torch.manual_seed(0)
    head, stems = _small_head(), _Stems()
    rois = _jittered(frame8_inputs[0])
    optimiser = torch.optim.Adam(list(head.parameters()) + list(stems.parameters()), lr=1e-3)
    history = []
    for _ in range(50):
        outputs, losses = _run(head, stems, frame8_inputs, rois)
        assert all(torch.isfinite(value).all() for value in losses.values())
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        history.append({key: value.item() for key, value in losses.items() if key != "iou"})
    assert outputs["scores"].shape == (12,) and outputs["boxes"].shape == (12, 7)
    # IoU targets are soft, so the score loss bottoms out at their entropy; the box losses go towards 0
    first, last = history[0], history[-1]
    assert last["total"] < 0.75 * first["total"]
    assert last["residual"] < 0.5 * first["residual"] and last["corner"] < 0.5 * first["corner"]
    assert last["score"] < first["score"]
    # the trained head improves on its own proposals
    head.eval()
    stems.eval()
    with torch.no_grad():
        outputs, losses = _run(head, stems, frame8_inputs, rois)
    from geoattn.sparse.boxes import boxes_iou3d

    refined = boxes_iou3d(outputs["boxes"].double(), frame8_inputs[0].boxes).max(1).values
    assert refined.mean() > losses["iou"].mean()


def test_head_all_empty_rois_are_finite(frame8_inputs):
    torch.manual_seed(0)
    head, stems = _small_head(), _Stems()
    far = torch.tensor([[60.0, 35.0, 0.0, 4.0, 1.8, 1.6, 0.3], [65.0, -35.0, 0.5, 1.0, 0.8, 1.7, -1.0]])
    outputs, losses = _run(head, stems, frame8_inputs, far)
    assert all(torch.isfinite(value).all() for value in outputs.values())
    assert all(torch.isfinite(value).all() for value in losses.values())
    assert losses["residual"].item() == 0.0 and losses["corner"].item() == 0.0
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    # a batch with no RoIs at all
    head.eval()
    with torch.no_grad():
        outputs, _ = _run(head, stems, frame8_inputs, far[:0])
    assert outputs["boxes"].shape == (0, 7)


def test_head_arguments_and_repr():
    with pytest.raises(ValueError, match="one entry per level"):
        LoGoNetHead(level_channels=(64,))
    with pytest.raises(ValueError, match="fuse_level"):
        LoGoNetHead(fuse_level=3)
    head = LoGoNetHead()
    assert head.channels == 128 and "C=128" in repr(head)
    # KITTI shared-FC size from the reference (216 * 128 -> 256)
    assert head.shared_fc[0].weight.shape == (256, 216 * 128)


@pytest.mark.slow
def test_head_overfits_one_frame_kitti_config(real_data):
    """The full KITTI configuration (G = 6, C = 128, 64-channel levels, 2 x 2 radii, all 17k points)."""
    frame = load_mmdet3d_frame(real_data / "fusion" / "000008.pkl")
    points = frame.points
    levels = [voxelize(points[:, :3], size, POINT_RANGE, features=points) for size in (0.2, 0.4)]
    image = torch.nn.functional.avg_pool2d(frame.image.permute(2, 0, 1)[None].float() / 255, 4)
    cameras = CameraSetup(frame.lidar2img["CAM2"][None].float(), torch.zeros(1, dtype=torch.long),
                          frame.image_hw, frame.image_hw)
    torch.manual_seed(0)
    head, stems = LoGoNetHead(), _Stems(64, 64)
    rois = _jittered(frame)
    optimiser = torch.optim.Adam(list(head.parameters()) + list(stems.parameters()), lr=1e-3)
    totals = []
    for _ in range(50):
        _, losses = _run(head, stems, (frame, points, levels, image, cameras), rois)
        assert all(torch.isfinite(value).all() for value in losses.values())
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        totals.append(losses["total"].item())
    assert totals[-1] < 0.75 * totals[0]


def test_sample_rois_policy():
    from geoattn.models.logonet import sample_rois

    generator = torch.Generator().manual_seed(0)
    iou = torch.cat([torch.full((50,), 0.8), torch.full((100,), 0.3), torch.full((100,), 0.05),
                     torch.full((10,), 0.9)])
    roi_batch = torch.cat([torch.zeros(250, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    index = sample_rois(iou, roi_batch, per_image=64, generator=generator)
    first = index[roi_batch[index] == 0]
    assert first.numel() == 64 and first.unique().numel() == 64
    assert (iou[first] >= 0.55).sum() == 32
    hard = ((iou[first] >= 0.1) & (iou[first] < 0.55)).sum()
    assert hard == round(0.8 * 32)
    second = index[roi_batch[index] == 1]
    assert second.numel() == 10  # only 10 RoIs there, all foreground
    assert sample_rois(iou[:0], roi_batch[:0]).numel() == 0
    with pytest.raises(ValueError, match="iou, roi_batch"):
        sample_rois(iou, roi_batch[:3])


def test_head_batch_elements_are_independent(frame8_inputs):
    """Element 0's outputs do not change when an augmented second frame joins the batch (eval mode)."""
    from geoattn.sparse.geometry import LidarAugmentation

    torch.manual_seed(0)
    frame, points, levels, image, cameras = frame8_inputs
    head, stems = _small_head().eval(), _Stems().eval()
    rois = _jittered(frame, copies=1)
    with torch.no_grad():
        alone, _ = _run(head, stems, frame8_inputs, rois)
        augmentation = LidarAugmentation().flip("x").rotate(0.3).scale(1.02)
        points_aug = augmentation.apply_points(points)
        levels_aug = [voxelize(points_aug[:, :3], size, [-80, -80, -5, 80, 80, 5], features=points_aug)
                      for size in (0.4, 0.8)]
        point_sets = []
        for level, level_aug, stem in zip(levels, levels_aug, stems.levels):
            point_sets.append(PointSet(torch.cat([level.centroids, level_aug.centroids]),
                                       stem(torch.cat([level.features, level_aug.features])),
                                       torch.cat([torch.zeros(level.num_voxels, dtype=torch.long),
                                                  torch.ones(level_aug.num_voxels, dtype=torch.long)])))
        all_points = torch.cat([points, points_aug])[:, :3]
        point_batch = torch.arange(2).repeat_interleave(len(points))
        both_cameras = CameraSetup(cameras.lidar2img.repeat(2, 1, 1), torch.tensor([0, 1]), frame.image_hw,
                                   frame.image_hw, [None, augmentation])
        all_rois = torch.cat([rois, augmentation.apply_boxes(rois)])
        roi_batch = torch.cat([torch.zeros(len(rois), dtype=torch.long), torch.ones(len(rois), dtype=torch.long)])
        images = stems.image(image).repeat(2, 1, 1, 1)
        together = head(all_rois, roi_batch, point_sets, all_points, point_batch, images, both_cameras)
    for key in ("scores", "residuals", "boxes"):
        assert torch.allclose(together[key][: len(rois)], alone[key], atol=1e-5)


def test_point_set_from_voxels(frame8_inputs):
    from geoattn.sparse.voxel import VoxelTensor

    _, points, levels, _, _ = frame8_inputs
    base = voxelize(points[:, :3], 0.4, POINT_RANGE)
    # a stride-2 level of the base grid, plus one voxel outside the range grid (as spconv's padded z-cells)
    coords = torch.unique(base.coords // torch.tensor([1, 2, 2, 2]), dim=0)
    coords = torch.cat([coords, torch.tensor([[0, 5, 0, 0]])])
    voxels = VoxelTensor(torch.randn(len(coords), 3), coords, (6, 100, 88), 1)
    point_set = PointSet.from_voxels(voxels, points, 0.8, POINT_RANGE)
    assert len(point_set.pos) == len(coords) - 1  # the padded voxel has no point and is dropped
    assert torch.allclose(point_set.pos, levels[1].centroids, atol=1e-5)
    kept = PointSet.from_voxels(voxels, points, 0.8, POINT_RANGE, keep_empty=True)
    assert len(kept.pos) == len(coords) and torch.equal(kept.features, voxels.features)


def _synthetic_scene():
    """Two RoIs among random points in front of one pinhole camera looking along +x (no real data)."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(400, 3, generator=generator) * torch.tensor([10.0, 8.0, 2.0]) + torch.tensor([5.0, -4.0, -1.0])
    rois = torch.tensor([[8.0, 0.0, 0.0, 3.9, 1.6, 1.5, 0.3], [11.0, 2.0, 0.0, 4.0, 1.7, 1.5, -0.2]])
    intrinsics = torch.tensor([[[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]], dtype=torch.float64)
    lidar2cam = torch.tensor([[[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]], dtype=torch.float64)
    cameras = CameraSetup.from_intrinsics(intrinsics, lidar2cam, torch.zeros(1, dtype=torch.long), (48, 64), (48, 64))
    levels = [PointSet(points[::2], torch.randn(200, 16, generator=generator), torch.zeros(200, dtype=torch.long)),
              PointSet(points[::4], torch.randn(100, 16, generator=generator), torch.zeros(100, dtype=torch.long))]
    image = torch.randn(1, 8, 12, 16, generator=generator)
    return rois, levels, points, image, cameras


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_head_runs_in_every_dtype(dtype):
    """bfloat16 used to fail in radius() (``.numpy()`` on bfloat16) and give NaN image features."""
    rois, levels, points, image, cameras = _synthetic_scene()
    assert project_to_cameras(points, cameras).point_index.numel() > 100  # the fusion has pairs to sample
    head = _small_head().eval()
    zeros = torch.zeros(points.shape[0], dtype=torch.long)
    expected = head(rois, torch.zeros(2, dtype=torch.long), levels, points, zeros, image, cameras)
    head = head.to(dtype)
    typed = [PointSet(level.pos, level.features.to(dtype), level.batch) for level in levels]
    outputs = head(rois, torch.zeros(2, dtype=torch.long), typed, points, zeros, image.to(dtype), cameras)
    tolerance = 1e-1 if dtype == torch.bfloat16 else 1e-4
    for key in ("scores", "residuals"):
        assert outputs[key].dtype == dtype
        torch.testing.assert_close(outputs[key].float(), expected[key], atol=tolerance, rtol=tolerance)
    head.train()
    outputs = head(rois, torch.zeros(2, dtype=torch.long), typed, points, zeros, image.to(dtype), cameras)
    losses = head.loss(outputs, rois, torch.zeros(2, dtype=torch.long), rois + 0.1, torch.zeros(2, dtype=torch.long))
    losses["total"].backward()
    assert torch.isfinite(losses["total"].float())


def test_head_checks_roi_batch_and_feature_dtype():
    rois, levels, points, image, cameras = _synthetic_scene()
    head = _small_head().eval()
    zeros = torch.zeros(points.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=r"roi_batch: expected an integer tensor \[2\] \(one id per RoI\)"):
        head(rois, torch.zeros(3, dtype=torch.long), levels, points, zeros, image, cameras)
    doubled = [PointSet(level.pos, level.features.double(), level.batch) for level in levels]
    with pytest.raises(TypeError, match="expected dtype torch.float32 .*, got torch.float64"):
        head(rois, torch.zeros(2, dtype=torch.long), doubled, points, zeros, image, cameras)
