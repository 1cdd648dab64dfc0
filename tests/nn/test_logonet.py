import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.data.kitti import load_mmdet3d_frame
from geoattn.nn.logonet import (CameraSetup, FeatureDynamicAggregation, GlobalFusion, LocalFusion, PointImageFusion,
                                RoIGridPool, project_to_cameras, roi_grid_points, voxel_centroids)
from geoattn.sparse.boxes import box_corners, points_in_boxes
from geoattn.sparse.geometry import LidarAugmentation
from geoattn.sparse.voxel import voxelize


@pytest.fixture(scope="module")
def frame8(real_data):
    return load_mmdet3d_frame(real_data / "fusion" / "000008.pkl", load_image=False)


def _cameras(frame, names=("CAM2",), dtype=torch.float64, augmentations=None, image_scale=1.0):
    lidar2img = torch.stack([frame.lidar2img[name] for name in names]).to(dtype)
    height, width = frame.image_hw
    hw = (round(height * image_scale), round(width * image_scale))
    return CameraSetup(lidar2img, torch.zeros(len(names), dtype=torch.long), hw, hw, augmentations, image_scale)


# ---------------------------------------------------------------------------------------------------------
# projection on the real frame
# ---------------------------------------------------------------------------------------------------------

def _numpy_projection(points, lidar2img):
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], 1) @ lidar2img.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_lidar2img(frame8, dtype):
    points = frame8.points[:, :3].to(dtype)
    projection = project_to_cameras(points, _cameras(frame8, dtype=dtype))
    # the frame is FOV-cropped: every point lands inside CAM2
    assert projection.point_index.numel() == points.shape[0]
    assert torch.equal(projection.point_index, torch.arange(points.shape[0]))
    expected = _numpy_projection(frame8.points[:, :3].double().numpy(), frame8.lidar2img["CAM2"].numpy())
    error = np.abs(projection.uv.double().numpy() - expected).max()
    assert error < 1e-3
    height, width = frame8.image_hw
    assert (projection.uv[:, 0] >= 0).all() and (projection.uv[:, 0] < width).all()
    assert (projection.uv[:, 1] >= 0).all() and (projection.uv[:, 1] < height).all()
    assert (projection.depth > 0).all()


def test_projection_undoes_augmentation(frame8):
    points = frame8.points[:, :3].double()
    augmentation = LidarAugmentation().flip("x").rotate(0.4).scale(1.03).translate((0.3, -0.2, 0.1))
    augmented = augmentation.apply_points(points)
    assert (augmentation.invert_points(augmented) - points).abs().max() < 1e-5
    plain = project_to_cameras(points, _cameras(frame8))
    undone = project_to_cameras(augmented, _cameras(frame8, augmentations=[augmentation]))
    assert torch.equal(plain.point_index, undone.point_index)
    assert (plain.uv - undone.uv).abs().max() < 1e-3
    # without undoing it, the augmented cloud lands elsewhere
    wrong = project_to_cameras(augmented, _cameras(frame8))
    assert wrong.point_index.numel() < points.shape[0]
    # float32 augmented frame: round trip to 1e-5 m
    points32 = frame8.points[:, :3]
    assert (augmentation.invert_points(augmentation.apply_points(points32)) - points32).abs().max() < 1e-5


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), flip_y=st.booleans())
def test_projection_undoes_any_recorded_augmentation(frame8, seed, flip_y):
    points = frame8.points[::40, :3].double()
    generator = torch.Generator().manual_seed(seed)
    augmentation = LidarAugmentation.sample(generator, flip_y_prob=float(flip_y), translation_std=0.5)
    plain = project_to_cameras(points, _cameras(frame8))
    undone = project_to_cameras(augmentation.apply_points(points), _cameras(frame8, augmentations=[augmentation]))
    assert torch.equal(plain.point_index, undone.point_index)
    assert (plain.uv - undone.uv).abs().max() < 1e-3


def test_projection_image_scale_and_depth(frame8):
    points = frame8.points[:200, :3].double()
    full = project_to_cameras(points, _cameras(frame8))
    half = project_to_cameras(points, _cameras(frame8, image_scale=0.5))
    common = torch.isin(full.point_index, half.point_index)
    assert common.float().mean() > 0.99
    half_uv = dict(zip(half.point_index.tolist(), half.uv))
    for index, uv in list(zip(full.point_index.tolist(), full.uv))[:50]:
        if index in half_uv:
            assert torch.allclose(half_uv[index], uv * 0.5, atol=1e-9)
    behind = project_to_cameras(-points, _cameras(frame8))
    assert behind.point_index.numel() == 0 and behind.uv.shape == (0, 2)


def test_projection_multi_camera_pairs(frame8):
    points = frame8.points[:, :3].double()
    cameras = _cameras(frame8, names=("CAM2", "CAM3"))
    projection = project_to_cameras(points, cameras)
    per_point = torch.bincount(projection.point_index, minlength=points.shape[0])
    assert per_point.max() == 2 and (per_point == 2).sum() > 0.8 * points.shape[0]
    # sorted by point, then camera
    key = projection.point_index * 2 + projection.camera_index
    assert (key[1:] > key[:-1]).all()


def test_projection_batches_use_their_own_cameras(frame8):
    points = frame8.points[:100, :3].double()
    both = torch.cat([points, points])
    batch = torch.arange(2).repeat_interleave(100)
    lidar2img = torch.stack([frame8.lidar2img["CAM2"]] * 2)
    augmentation = LidarAugmentation().rotate(math.pi)
    both[100:] = augmentation.apply_points(points)
    cameras = CameraSetup(lidar2img, torch.tensor([0, 1]), frame8.image_hw, frame8.image_hw, [None, augmentation])
    projection = project_to_cameras(both, cameras, batch)
    first, second = projection.point_index < 100, projection.point_index >= 100
    assert (projection.camera_index[first] == 0).all() and (projection.camera_index[second] == 1).all()
    assert torch.allclose(projection.uv[first], projection.uv[second], atol=1e-6)


def test_camera_setup_validation():
    with pytest.raises(ValueError, match="lidar2img"):
        CameraSetup(torch.eye(4), torch.zeros(1, dtype=torch.long), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="camera_batch"):
        CameraSetup(torch.eye(4)[None], torch.zeros(2, dtype=torch.long), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="image_hw"):
        CameraSetup(torch.eye(4)[None], torch.zeros(1, dtype=torch.long), (10, 10, 3), (10, 10))
    with pytest.raises(ValueError, match="points"):
        project_to_cameras(torch.zeros(3, 4), CameraSetup(torch.eye(4)[None], torch.zeros(1, dtype=torch.long),
                                                         (10, 10), (10, 10)))


# ---------------------------------------------------------------------------------------------------------
# PointImageFusion
# ---------------------------------------------------------------------------------------------------------

def _bilinear(feature, x, y):
    """Zero-padded bilinear sample of ``feature [C, H, W]`` at continuous pixel ``(x, y)`` (centres at ints)."""
    channels, height, width = feature.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = feature.new_zeros(channels)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < width and 0 <= yi < height:
                out = out + weight * feature[:, yi, xi]
    return out


def _reference_fusion(module, points, levels, point_index, image_index, reference):
    """Slow loop over pairs, heads, levels and samples."""
    heads, samples, embed = module.num_heads, module.num_points, module.embed_dim
    head_dim = embed // heads
    query = module.query_proj(points)
    image_feature = points.new_zeros(points.shape[0], embed)
    hits = points.new_zeros(points.shape[0])
    for pair in range(point_index.shape[0]):
        q = query[point_index[pair]]
        offsets = module.sampling_offsets(q).view(heads, len(levels), samples, 2)
        weights = module.attention_weights(q).view(heads, -1).softmax(-1).view(heads, len(levels), samples)
        heads_out = []
        for head in range(heads):
            acc = points.new_zeros(head_dim)
            for level, feature in enumerate(levels):
                value = module.value_proj(feature[image_index[pair]].permute(1, 2, 0)).permute(2, 0, 1)
                value = value[head * head_dim:(head + 1) * head_dim]
                height, width = feature.shape[-2:]
                for k in range(samples):
                    u = reference[pair, 0] * width + offsets[head, level, k, 0] - 0.5
                    v = reference[pair, 1] * height + offsets[head, level, k, 1] - 0.5
                    acc = acc + weights[head, level, k] * _bilinear(value, u.item(), v.item())
            heads_out.append(acc)
        attended = module.output_proj(torch.cat(heads_out))
        image_feature[point_index[pair]] += module.attention_norm(q + attended)
        hits[point_index[pair]] += 1
    image_feature = image_feature / hits.clamp(min=1)[:, None]
    return module.fuse(torch.relu(torch.cat([module.point_proj(points), image_feature], 1))), image_feature


def _random_fusion_inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(6, 4, generator=generator, dtype=dtype)
    levels = [torch.randn(2, 3, 5, 6, generator=generator, dtype=dtype),
              torch.randn(2, 3, 3, 4, generator=generator, dtype=dtype)]
    point_index = torch.tensor([0, 0, 1, 3, 3, 4, 5])
    image_index = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    reference = torch.rand(7, 2, generator=generator, dtype=dtype)
    reference[-1] = torch.tensor([0.999, 0.001], dtype=dtype)  # near a border: partial zero padding
    return points, levels, point_index, image_index, reference


def _fusion_module(**kwargs):
    module = PointImageFusion(4, 3, 10, embed_dim=8, num_heads=2, num_points=3, num_levels=2, dropout=0.0,
                              **kwargs).double()
    with torch.no_grad():  # non-trivial offsets and weights, not just the initial pattern
        module.sampling_offsets.weight.normal_(0, 0.5)
        module.attention_weights.weight.normal_(0, 0.5)
    return module.eval()


def test_fusion_matches_slow_reference():
    module = _fusion_module()
    points, levels, point_index, image_index, reference = _random_fusion_inputs()
    fused, image_feature = module(points, levels, point_index, image_index, reference, return_image_features=True)
    expected, expected_image = _reference_fusion(module, points, levels, point_index, image_index, reference)
    assert torch.allclose(image_feature, expected_image, atol=1e-10)
    assert torch.allclose(fused, expected, atol=1e-10)
    # point 2 has no pair: zero image feature
    assert torch.equal(image_feature[2], torch.zeros(8, dtype=torch.float64))


def test_fusion_averages_cameras():
    module = _fusion_module(norm="layer")
    points, levels, _, _, reference = _random_fusion_inputs()
    both = module(points, levels, torch.tensor([0, 0]), torch.tensor([0, 1]), reference[:2],
                  return_image_features=True)[1][0]
    first = module(points, levels, torch.tensor([0]), torch.tensor([0]), reference[:1],
                   return_image_features=True)[1][0]
    second = module(points, levels, torch.tensor([0]), torch.tensor([1]), reference[1:2],
                    return_image_features=True)[1][0]
    assert torch.allclose(both, (first + second) / 2, atol=1e-12)


def test_fusion_gradcheck_float64():
    module = _fusion_module()
    points, levels, point_index, image_index, reference = _random_fusion_inputs()
    inputs = (points.requires_grad_(), levels[0].requires_grad_(), levels[1].requires_grad_(),
              reference.requires_grad_())

    def run(points, level0, level1, reference):
        return module(points, [level0, level1], point_index, image_index, reference)

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    # parameters receive gradients in training mode with batch norm too
    module.train()
    run(*inputs).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_fusion_degenerate_inputs():
    module = _fusion_module()
    points, levels, *_ = _random_fusion_inputs()
    empty_pairs = torch.zeros(0, dtype=torch.long)
    out, image_feature = module(points, levels, empty_pairs, empty_pairs, torch.zeros(0, 2, dtype=torch.float64),
                                return_image_features=True)
    assert out.shape == (6, 10) and torch.equal(image_feature, torch.zeros_like(image_feature))
    none = module(points[:0], levels, empty_pairs, empty_pairs, torch.zeros(0, 2, dtype=torch.float64))
    assert none.shape == (0, 10)
    centre = torch.full((1, 2), 0.5, dtype=torch.float64)
    single = module(points[:1], levels, torch.tensor([0]), torch.tensor([1]), centre)
    assert torch.isfinite(single).all()


def test_fusion_bad_arguments():
    module = _fusion_module()
    points, levels, point_index, image_index, reference = _random_fusion_inputs()
    with pytest.raises(ValueError, match="point_features"):
        module(points[:, :2], levels, point_index, image_index, reference)
    with pytest.raises(ValueError, match="2 level"):
        module(points, levels[:1], point_index, image_index, reference)
    with pytest.raises(ValueError, match=r"image_features\[1\]"):
        module(points, [levels[0], levels[1][:, :2]], point_index, image_index, reference)
    with pytest.raises(ValueError, match="reference_points"):
        module(points, levels, point_index, image_index, reference[:3])
    with pytest.raises(TypeError, match="point_features: expected dtype torch.float64 .*, got torch.float32"):
        module(points.float(), levels, point_index, image_index, reference)
    with pytest.raises(TypeError, match="point_index: expected an int64 or int32 tensor, got torch.float64"):
        module(points, levels, point_index.double(), image_index, reference)
    with pytest.raises(ValueError, match=r"image_index: expected a 1-D tensor \[7\], got shape \(3,\)"):
        module(points, levels, point_index, image_index[:3], reference)
    with pytest.raises(TypeError, match="reference_points: expected a floating-point tensor"):
        module(points, levels, point_index, image_index, reference.long())
    with pytest.raises(TypeError, match=r"image_features\[0\]: expected a floating-point tensor"):
        module(points, [levels[0].long(), levels[1]], point_index, image_index, reference)
    with pytest.raises(ValueError, match="embed_dim"):
        PointImageFusion(4, 3, 10, embed_dim=10, num_heads=4)
    assert "heads=2" in repr(module)


def test_fusion_float32_and_shapes_follow_input():
    module = PointImageFusion(8, 5, 16).eval()
    points = torch.randn(4, 8)
    out = module(points, torch.randn(1, 5, 6, 6), torch.tensor([0, 2]), torch.tensor([0, 0]), torch.rand(2, 2))
    assert out.dtype == torch.float32 and out.shape == (4, 16)


# ---------------------------------------------------------------------------------------------------------
# GoF, RoI grid pooling, LoF, FDA
# ---------------------------------------------------------------------------------------------------------

def test_voxel_centroids_match_naive_means():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(300, 3, generator=generator, dtype=torch.float64) * 4
    batch = (torch.rand(300, generator=generator) > 0.5).long()
    point_range = [0, 0, 0, 4, 4, 4]
    voxels = voxelize(points, 1.0, point_range, batch=batch)
    extra = torch.tensor([[0, 3, 3, 3]])  # a voxel (at this level) without points in it
    coords = torch.cat([voxels.coords, extra]) if not (voxels.coords == extra).all(1).any() else voxels.coords
    centroids, has_points = voxel_centroids(points, coords, 1.0, point_range, batch)
    for row, (b, z, y, x) in enumerate(coords.tolist()):
        cell = (batch == b) & ((points // 1.0).long() == torch.tensor([x, y, z])).all(1)
        if cell.any():
            assert has_points[row] and torch.allclose(centroids[row], points[cell].mean(0))
        else:
            assert not has_points[row] and torch.allclose(centroids[row], torch.tensor([x, y, z]) + 0.5)


def test_roi_grid_points():
    rois = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, math.pi / 2]])
    local, global_xyz = roi_grid_points(rois, 2)
    assert local.shape == (1, 8, 3)
    assert torch.allclose(local[0, 0], torch.tensor([-1.0, -0.5, -0.25]))
    assert torch.allclose(global_xyz[0, 0], torch.tensor([1.5, 1.0, 0.25]), atol=1e-6)
    assert torch.allclose(global_xyz.mean(1), rois[:, :3])
    # every grid point is inside its RoI
    assert points_in_boxes(global_xyz[0], rois).all()


def test_roi_grid_pool_matches_reference():
    generator = torch.Generator().manual_seed(0)
    support = torch.rand(80, 3, generator=generator, dtype=torch.float64) * 2
    support_batch = torch.zeros(80, dtype=torch.long)
    features = torch.randn(80, 5, generator=generator, dtype=torch.float64)
    queries = torch.rand(10, 3, generator=generator, dtype=torch.float64) * 2
    queries[0] = 50.0  # empty ball
    pool = RoIGridPool(5, radii=(0.3, 0.6), num_samples=(4, 8), mlps=((6,), (7, 3))).double().eval()
    out, count = pool(queries, torch.zeros(10, dtype=torch.long), support, features, support_batch)
    assert out.shape == (10, 9) and count[0] == 0 and torch.equal(out[0], torch.zeros(9, dtype=torch.float64))
    column = 0
    for r, samples, mlp in zip(pool.radii, pool.num_samples, pool.mlps):
        width = mlp[-1][0].out_features
        for q in range(10):
            dist = (support - queries[q]).norm(dim=1)
            order = torch.argsort(dist)
            chosen = order[dist[order] <= r][:samples]
            if chosen.numel() == 0:
                continue
            density = math.log1p(chosen.numel() / (4 / 3 * math.pi * r ** 3))
            inputs = torch.cat([(support[chosen] - queries[q]) / r,
                                torch.full((chosen.numel(), 1), density, dtype=torch.float64), features[chosen]], 1)
            expected = mlp(inputs).max(0).values
            assert torch.allclose(out[q, column:column + width], expected, atol=1e-10)
        column += width


def test_local_fusion_cell_statistics_and_output(frame8):
    points = frame8.points[:, :3].double()
    rois = frame8.boxes[1:2].double()
    fusion = LocalFusion(16, 4, grid_size=3, embed_channels=8, up_hidden=8, embed_dim=8, num_heads=2,
                         num_points=2).double().eval()
    batch = torch.zeros(points.shape[0], dtype=torch.long)
    counts, centroids = fusion.cell_statistics(rois, torch.zeros(1, dtype=torch.long), points, batch)
    inside = points_in_boxes(points, rois)[:, 0]
    assert counts.sum() == inside.sum() == frame8.num_lidar_pts[1]
    # naive per-cell count for one occupied cell
    local = points[inside] - rois[0, :3]
    c, s = math.cos(-rois[0, 6].item()), math.sin(-rois[0, 6].item())
    local = torch.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    cell = ((local / rois[0, 3:6] + 0.5) * 3).floor().long().clamp(0, 2)
    flat = (cell[:, 2] * 3 + cell[:, 1]) * 3 + cell[:, 0]
    busiest = torch.bincount(flat, minlength=27).argmax()
    assert counts[0, busiest] == (flat == busiest).sum()
    assert torch.allclose(centroids[0, busiest], local[flat == busiest].mean(0))
    cameras = _cameras(frame8)
    images = torch.randn(1, 4, 20, 60, dtype=torch.float64)
    out, out_counts = fusion(rois, torch.zeros(1, dtype=torch.long), points, batch, images, cameras)
    assert out.shape == (1, 27, 16) and torch.equal(out_counts, counts) and torch.isfinite(out).all()


def test_global_fusion_on_real_frame(frame8):
    points = frame8.points[:, :3]
    voxels = voxelize(points, 0.8, [0, -40, -3, 70.4, 40, 1])
    fusion = GlobalFusion(8, 4, embed_dim=8, num_heads=2, num_points=2).eval()
    features = torch.randn(voxels.num_voxels, 8)
    batch = torch.zeros(voxels.num_voxels, dtype=torch.long)
    out = fusion(features, voxels.centroids, batch, torch.randn(1, 4, 24, 78), _cameras(frame8, dtype=torch.float32))
    assert out.shape == features.shape and torch.isfinite(out).all()
    assert "voxel=8" in repr(fusion)


def test_fda_masks_empty_tokens_and_skips_empty_rois():
    torch.manual_seed(0)
    fda = FeatureDynamicAggregation(8, num_heads=2, ffn_channels=16, dropout=0.0).double().eval()
    features = torch.randn(3, 27, 8, dtype=torch.float64)
    local, _ = roi_grid_points(torch.tensor([[0, 0, 0, 1, 1, 1, 0.0]], dtype=torch.float64), 3)
    grid_local = local.expand(3, -1, -1)
    counts = torch.randint(0, 4, (3, 27))
    empty = torch.rand(3, 27) > 0.5
    empty[2] = True  # an all-empty RoI
    out = fda(features, grid_local, counts, empty)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], features[2])
    # empty tokens are not keys: changing them leaves the non-empty tokens' outputs unchanged
    changed = features.clone()
    changed[empty] = torch.randn(int(empty.sum()), 8, dtype=torch.float64)
    again = fda(changed, grid_local, counts, empty)
    assert torch.allclose(again[~empty], out[~empty], atol=1e-10)
    # all RoIs empty
    assert torch.equal(fda(features, grid_local, counts, torch.ones_like(empty)), features)
    with pytest.raises(ValueError, match="features"):
        fda(features[..., :4], grid_local, counts, empty)
    # gradients flow through the encoder in float64
    small = features[:2, :8].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: fda(f, grid_local[:2, :8], counts[:2, :8], empty[:2, :8]), (small,),
                                    eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.slow
def test_fusion_gradcheck_float64_full():
    module = _fusion_module()
    points, levels, point_index, image_index, reference = _random_fusion_inputs()
    inputs = (points.requires_grad_(), levels[0].requires_grad_(), levels[1].requires_grad_(),
              reference.requires_grad_())
    assert torch.autograd.gradcheck(lambda p, a, b, r: module(p, [a, b], point_index, image_index, r), inputs,
                                    eps=1e-6, atol=1e-6)


def test_camera_setup_from_intrinsics(frame8):
    cam2img = frame8.extra["cam2img"]["CAM2"]
    # KITTI's P2 has a translation column; fold it into the extrinsic to get a pure pinhole K
    intrinsics = cam2img[:3, :3]
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = torch.linalg.solve(intrinsics, cam2img[:3, 3])
    lidar2cam = shift @ frame8.lidar2cam
    cameras = CameraSetup.from_intrinsics(intrinsics[None], lidar2cam[None], torch.zeros(1, dtype=torch.long),
                                          frame8.image_hw, frame8.image_hw)
    assert torch.allclose(cameras.lidar2img[0], frame8.lidar2img["CAM2"], atol=1e-9)
    with pytest.raises(ValueError, match="intrinsics"):
        CameraSetup.from_intrinsics(intrinsics[None, :2], lidar2cam[None], torch.zeros(1, dtype=torch.long), (1, 1),
                                    (1, 1))
    with pytest.raises(ValueError, match="lidar2cam"):
        CameraSetup.from_intrinsics(intrinsics[None], lidar2cam, torch.zeros(1, dtype=torch.long), (1, 1), (1, 1))


def test_waymo_style_cameras_from_intrinsics(real_data):
    from geoattn.data.kitti import load_info_pickle, read_velodyne

    root = real_data / "lidar" / "snippets" / "waymo" / "kitti_format"
    entry = load_info_pickle(root / "waymo_infos_train.pkl")["data_list"][0]
    camera = entry["images"]["CAM_FRONT"]
    intrinsics = torch.tensor(camera["cam2img"], dtype=torch.float64)[None]
    lidar2cam = torch.tensor(camera["lidar2cam"], dtype=torch.float64)[None]
    hw = (int(camera["height"]), int(camera["width"]))
    cameras = CameraSetup.from_intrinsics(intrinsics, lidar2cam, torch.zeros(1, dtype=torch.long), hw, hw,
                                          image_scale=0.5)
    stored = torch.tensor(camera["lidar2img"], dtype=torch.float64)
    assert torch.allclose(cameras.lidar2img[0, :3], stored, atol=1e-3)
    # the snippet cloud is a side crop that misses CAM_FRONT: project the labelled box's corners instead
    assert read_velodyne(root / "training" / "velodyne" / "0000000.bin", 6).shape == (800, 6)
    instance = entry["instances"][0]
    box = torch.tensor(instance["bbox_3d"], dtype=torch.float64)[None]
    box[:, 2] += box[:, 5] / 2  # mmdet3d LiDAR boxes store the bottom centre
    corners = box_corners(box)[0]
    projection = project_to_cameras(corners, cameras)
    assert projection.point_index.numel() == 8
    expected = _numpy_projection(corners.numpy(), torch.cat([stored, torch.tensor([[0, 0, 0, 1.0]])]).numpy())
    assert np.abs(projection.uv.numpy() - 0.5 * expected).max() < 1e-3
    # the projected corners span the labelled 2D box (the label is the tight box of the visible object)
    left, top, right, bottom = (0.5 * torch.tensor(instance["bbox"], dtype=torch.float64)).tolist()
    u_min, v_min = projection.uv.min(0).values.tolist()
    u_max, v_max = projection.uv.max(0).values.tolist()
    assert abs(u_min - left) < 15 and abs(u_max - right) < 15 and abs(v_min - top) < 15 and abs(v_max - bottom) < 15


def test_fusion_index_ranges_are_debug_checks(monkeypatch):
    module = _fusion_module()
    points, levels, point_index, image_index, reference = _random_fusion_inputs()
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"point_index: expected values in \[0, 6\), got range \[10, 15\]"):
        module(points, levels, point_index + 10, image_index, reference)
    with pytest.raises(ValueError, match=r"image_index: expected values in \[0, 2\), got range \[-1, 0\]"):
        module(points, levels, point_index, image_index - 1, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fusion_runs_in_every_dtype(dtype):
    """bfloat16 used to come back all NaN (CPU grid_sample on the strided bfloat16 value map)."""
    module = _fusion_module().float()
    points, levels, point_index, image_index, reference = _random_fusion_inputs(torch.float32)
    expected = module(points, levels, point_index, image_index, reference, return_image_features=True)
    module = module.to(dtype)
    out = module(points.to(dtype), [level.to(dtype) for level in levels], point_index, image_index, reference,
                 return_image_features=True)
    tolerance = 6e-2 if dtype == torch.bfloat16 else 1e-5
    for got, want in zip(out, expected):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


def test_local_fusion_checks_its_inputs():
    fusion = LocalFusion(8, 3, grid_size=2, embed_channels=8, up_hidden=8, embed_dim=8, num_heads=2, num_points=2)
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], [5.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    points, point_batch = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    cameras = CameraSetup(torch.eye(4).unsqueeze(0), torch.zeros(1, dtype=torch.long), (8, 8), (8, 8))
    image = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"roi_batch: expected a 1-D tensor \[2\], got shape \(3,\)"):
        fusion(rois, torch.zeros(3, dtype=torch.long), points, point_batch, image, cameras)
    with pytest.raises(TypeError, match="roi_batch: expected an int64 or int32 tensor, got torch.float32"):
        fusion(rois, torch.zeros(2), points, point_batch, image, cameras)
    with pytest.raises(ValueError, match=r"point_batch: expected a 1-D tensor \[4\]"):
        fusion(rois, torch.zeros(2, dtype=torch.long), points, point_batch[:2], image, cameras)
    with pytest.raises(TypeError, match="points: expected a floating-point tensor"):
        fusion(rois, torch.zeros(2, dtype=torch.long), points.long(), point_batch, image, cameras)
    features, counts = fusion(rois, torch.zeros(2, dtype=torch.long), points, point_batch, image, cameras)
    assert features.shape == (2, 8, 8) and counts.shape == (2, 8)
