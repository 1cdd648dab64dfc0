"""Tests for geoattn.sparse.geometry against slow references, gradients and invariance properties."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.sparse.geometry import (
    LidarAugmentation,
    compose_transforms,
    estimate_normals,
    invert_transform,
    make_transform,
    point_pair_features,
    project_to_image,
    axis_angle_to_matrix,
    quaternion_to_matrix,
    random_rotation,
    transform_points,
    vector_angle,
    weighted_kabsch,
)

SEEDS = st.integers(0, 2**31 - 1)


def _rigid(seed: int, num=None, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    rotation = random_rotation(num, generator=generator, dtype=dtype)
    shape = (3,) if num is None else (num, 3)
    return make_transform(rotation, torch.randn(shape, generator=generator, dtype=dtype) * 3)


def kitti_frame(real_data):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / "000000.bin"
    if not path.exists():
        pytest.skip(f"KITTI frame missing: {path}")
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4).copy())


# ---------------------------------------------------------------------------------------------
# point pair features
# ---------------------------------------------------------------------------------------------
def ppf_reference(p_i, n_i, p_j, n_j):
    """Per pair with numpy float64 and acos (fine away from 0 and pi)."""
    out = []
    for a, na, b, nb in zip(p_i.tolist(), n_i.tolist(), p_j.tolist(), n_j.tolist()):
        d = np.subtract(b, a)

        def angle(u, v):
            return math.acos(max(-1.0, min(1.0, np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))))

        out.append([np.linalg.norm(d), angle(na, d), angle(nb, d), angle(na, nb)])
    return torch.tensor(out, dtype=torch.float64)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_ppf_matches_reference_and_normalisation():
    p_i, p_j = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    n_i, n_j = _unit(torch.randn(50, 3, dtype=torch.float64)), _unit(torch.randn(50, 3, dtype=torch.float64))
    features = point_pair_features(p_i, n_i, p_j, n_j)
    assert features.shape == (50, 4)
    assert torch.allclose(features, ppf_reference(p_i, n_i, p_j, n_j), atol=1e-9)
    scaled = point_pair_features(p_i, n_i, p_j, n_j, normalize_angles=True)
    assert torch.allclose(scaled[:, 1:], features[:, 1:] / math.pi) and torch.equal(scaled[:, 0], features[:, 0])


def test_ppf_broadcast_and_self_pair():
    pos = torch.randn(7, 3)
    normals = _unit(torch.randn(7, 3))
    index = torch.randint(0, 7, (7, 5))  # kNN-style groups: [7, 5, 4]
    features = point_pair_features(pos[:, None], normals[:, None], pos[index], normals[index])
    assert features.shape == (7, 5, 4)
    self_pair = point_pair_features(pos, normals, pos, normals)
    assert torch.equal(self_pair[:, :3], torch.zeros(7, 3))
    assert torch.allclose(self_pair[:, 3], torch.zeros(7), atol=1e-6)  # |n x n| is only zero up to rounding


def test_vector_angle_stable_near_parallel():
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1e-9, 0.0], dtype=torch.float64)
    assert torch.isclose(vector_angle(a, b), torch.tensor(1e-9, dtype=torch.float64), rtol=1e-6)
    assert torch.isclose(vector_angle(a, -b), torch.tensor(math.pi - 1e-9, dtype=torch.float64), rtol=1e-12)


def test_ppf_gradcheck_including_self_pairs():
    p_i = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    n_i = _unit(torch.randn(6, 3, dtype=torch.float64)).requires_grad_()
    p_j = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    n_j = _unit(torch.randn(6, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(point_pair_features, (p_i, n_i, p_j, n_j))
    same = p_i.detach().clone().requires_grad_()
    features = point_pair_features(same, n_i, same, n_j)
    features.sum().backward()
    assert torch.isfinite(same.grad).all() and torch.isfinite(n_i.grad).all()


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS)
def test_ppf_rotation_invariance_with_oriented_normals(seed):
    generator = torch.Generator().manual_seed(seed)
    # a curved patch (a bumpy sphere cap) so the orientation rule is well defined almost everywhere
    direction = _unit(torch.randn(300, 3, generator=generator, dtype=torch.float64))
    direction = direction[direction[:, 2] > 0]
    pos = direction * (1 + 0.05 * torch.sin(4 * direction[:, :1]))
    normals = estimate_normals(pos, k=12)
    transform = _rigid(seed)
    moved = transform_points(pos, transform)
    normals_moved = estimate_normals(moved, k=12)
    rotation = transform[:3, :3]
    agree = (normals @ rotation.T - normals_moved).norm(dim=1) < 1e-6
    assert agree.float().mean() > 0.99  # only near-degenerate neighbourhoods may flip
    pairs = torch.randint(0, len(pos), (2, 200), generator=generator)
    keep = agree[pairs[0]] & agree[pairs[1]]
    before = point_pair_features(pos[pairs[0]], normals[pairs[0]], pos[pairs[1]], normals[pairs[1]])
    after = point_pair_features(
        moved[pairs[0]], normals_moved[pairs[0]], moved[pairs[1]], normals_moved[pairs[1]]
    )
    assert torch.allclose(before[keep], after[keep], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# normals
# ---------------------------------------------------------------------------------------------
def test_normals_of_plane_and_sphere():
    generator = torch.Generator().manual_seed(1)
    plane = torch.cat([torch.rand(200, 2, generator=generator), torch.zeros(200, 1)], 1)
    normals = estimate_normals(plane, k=10)
    assert torch.allclose(normals.abs(), torch.tensor([0.0, 0.0, 1.0]).expand(200, 3), atol=1e-5)
    sphere = _unit(torch.randn(2000, 3, generator=generator))
    normals = estimate_normals(sphere, k=10)
    assert ((normals * sphere).sum(1) > 0.99).float().mean() > 0.99  # outwards: away from the local centroid
    towards = estimate_normals(sphere, k=10, viewpoint=torch.zeros(3))
    assert ((towards * sphere).sum(1) < -0.99).float().mean() > 0.99  # facing the viewpoint at the centre


def test_normals_batched_equals_separate():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(60, 3, generator=generator), torch.randn(40, 3, generator=generator) + 5
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([60, 40]))
    together = estimate_normals(torch.cat([a, b]), k=8, batch=batch)
    assert torch.allclose(together, torch.cat([estimate_normals(a, k=8), estimate_normals(b, k=8)]))
    tiny = estimate_normals(torch.randn(2, 3), k=8)  # fewer than 3 points: still unit vectors
    assert torch.allclose(tiny.norm(dim=1), torch.ones(2))
    assert estimate_normals(torch.empty(0, 3)).shape == (0, 3)


def test_normals_kitti_frame(real_data):
    points = kitti_frame(real_data)[:20000, :3]
    normals = estimate_normals(points, k=16)
    assert torch.allclose(normals.norm(dim=1), torch.ones(len(points)), atol=1e-5)
    ground = points[:, 2] < -1.6  # the road around the car (sensor 1.73 m above it)
    assert (normals[ground, 2].abs() > 0.9).float().mean() > 0.8


# ---------------------------------------------------------------------------------------------
# SE(3)
# ---------------------------------------------------------------------------------------------
def test_random_rotation_is_rotation_and_reproducible():
    rotations = random_rotation(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(1000, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(1000, dtype=torch.float64))
    again = random_rotation(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(rotations, again)
    assert random_rotation().shape == (3, 3) and random_rotation().dtype == torch.get_default_dtype()


def test_random_rotation_is_haar_uniform():
    rotations = random_rotation(20000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # Haar measure: E[R] = 0, and the angle theta has density (1 - cos theta) / pi on [0, pi]
    assert rotations.mean(0).abs().max() < 0.02
    cos_angle = ((rotations.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos_angle)
    # CDF F(theta) = (theta - sin theta) / pi; compare at a few points
    for theta in (0.5, 1.5, 2.5):
        expected = (theta - math.sin(theta)) / math.pi
        assert abs((angle < theta).double().mean().item() - expected) < 0.015


def test_quaternion_to_matrix_matches_axis_angle():
    angle = 0.7
    quaternion = torch.tensor([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)], dtype=torch.float64)
    expected = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]],
        dtype=torch.float64,
    )
    assert torch.allclose(quaternion_to_matrix(quaternion), expected)
    assert torch.allclose(quaternion_to_matrix(3 * quaternion), expected)  # normalised


def test_axis_angle_to_matrix_matches_rodrigues_and_handles_zero():
    vectors = torch.tensor([[0.0, 0.0, 0.7], [0.3, -1.2, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    got = axis_angle_to_matrix(vectors)
    for vector, rotation in zip(vectors, got):
        angle = vector.norm()
        axis = vector / angle if angle > 0 else vector
        cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                             dtype=torch.float64)
        expected = torch.eye(3, dtype=torch.float64) + angle.sin() * cross + (1 - angle.cos()) * cross @ cross
        assert torch.allclose(rotation, expected)
    assert torch.equal(got[2], torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="rotation_vector"):
        axis_angle_to_matrix(torch.zeros(2, 4))
    # differentiable away from zero
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (vectors[:2].clone().requires_grad_(),))


@settings(max_examples=25, deadline=None)
@given(seed_a=SEEDS, seed_b=SEEDS)
def test_compose_invert_identities(seed_a, seed_b):
    t_a, t_b = _rigid(seed_a, 4), _rigid(seed_b, 4)
    eye = torch.eye(4, dtype=torch.float64).expand(4, 4, 4)
    assert torch.allclose(compose_transforms(t_a, invert_transform(t_a)), eye, atol=1e-12)
    assert torch.allclose(compose_transforms(invert_transform(t_a), t_a), eye, atol=1e-12)
    assert torch.allclose(invert_transform(compose_transforms(t_a, t_b)),
                          compose_transforms(invert_transform(t_b), invert_transform(t_a)), atol=1e-12)
    points = torch.randn(4, 10, 3, dtype=torch.float64)
    assert torch.allclose(transform_points(transform_points(points, t_b), t_a),
                          transform_points(points, compose_transforms(t_a, t_b)), atol=1e-12)
    assert torch.allclose(invert_transform(t_a), torch.linalg.inv(t_a), atol=1e-12)


def test_transform_points_reference_broadcast_and_gradcheck():
    transform = _rigid(5)
    points = torch.randn(9, 3, dtype=torch.float64)
    expected = torch.stack([transform[:3, :3] @ p + transform[:3, 3] for p in points])
    assert torch.allclose(transform_points(points, transform), expected)
    batched = transform_points(points, _rigid(6, 2))  # [N, 3] with [2, 4, 4] -> [2, N, 3]
    assert batched.shape == (2, 9, 3)
    points.requires_grad_()
    matrix = transform.clone().requires_grad_()
    assert torch.autograd.gradcheck(transform_points, (points, matrix))


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, num=st.integers(3, 40), noise=st.sampled_from([0.0, 1e-3]))
def test_weighted_kabsch_recovers_rigid_transform(seed, num, noise):
    generator = torch.Generator().manual_seed(seed)
    transform = _rigid(seed, 3)
    src = torch.randn(3, num, 3, generator=generator, dtype=torch.float64)
    dst = transform_points(src, transform) + noise * torch.randn(3, num, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(3, num, generator=generator, dtype=torch.float64) + 0.1
    estimate = weighted_kabsch(src, dst, weights)
    assert torch.allclose(estimate, transform, atol=1e-9 if noise == 0 else 2e-2)
    assert torch.allclose(torch.linalg.det(estimate[:, :3, :3]), torch.ones(3, dtype=torch.float64))


def test_weighted_kabsch_outliers_weighted_out_and_reflection_fix():
    generator = torch.Generator().manual_seed(7)
    transform = _rigid(7)
    src = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    dst = transform_points(src, transform)
    dst[:5] += 10 * torch.randn(5, 3, generator=generator, dtype=torch.float64)
    weights = torch.ones(30, dtype=torch.float64)
    weights[:5] = 0
    assert torch.allclose(weighted_kabsch(src, dst, weights), transform, atol=1e-9)
    # a mirrored target: the best proper rotation still has det +1
    mirrored = src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    estimate = weighted_kabsch(src, mirrored)
    assert torch.isclose(torch.linalg.det(estimate[:3, :3]), torch.tensor(1.0, dtype=torch.float64))
    assert weighted_kabsch(src.float(), dst.float()).dtype == torch.float32


def test_weighted_kabsch_gradcheck():
    generator = torch.Generator().manual_seed(8)
    src = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    dst = (transform_points(src, _rigid(8)) + 0.05 * torch.randn(8, 3, generator=generator, dtype=torch.float64))
    weights = torch.rand(8, generator=generator, dtype=torch.float64) + 0.5
    inputs = (src.requires_grad_(), dst.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(weighted_kabsch, inputs)


# ---------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------
def _camera(dtype=torch.float64):
    intrinsics = torch.tensor([[700.0, 0, 600], [0, 700, 180], [0, 0, 1]], dtype=dtype)
    lidar2cam = torch.tensor([[0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, -0.3], [0, 0, 0, 1]], dtype=dtype)
    lidar2img = torch.eye(4, dtype=dtype)
    lidar2img[:3, :4] = intrinsics @ lidar2cam[:3]
    return lidar2img


def test_project_to_image_reference_and_cameras():
    lidar2img = _camera()
    points = torch.tensor([[10.0, 0.5, -0.5], [-5.0, 0.0, 0.0], [10.0, -100.0, 0.0], [0.3, 0, 0]],
                          dtype=torch.float64)
    uv, depth, valid = project_to_image(points, lidar2img, (375, 1242))
    for i, p in enumerate(points):
        x, y, z, _ = (lidar2img @ torch.cat([p, torch.ones(1, dtype=torch.float64)])).tolist()
        assert math.isclose(depth[i].item(), z)
        if z > 1e-5:
            assert torch.allclose(uv[i], torch.tensor([x / z, y / z], dtype=torch.float64))
    assert valid.tolist() == [True, False, False, False]  # behind, outside, depth 0
    assert torch.isfinite(uv).all()
    views = torch.stack([lidar2img, lidar2img @ make_transform(random_rotation(dtype=torch.float64),
                                                               torch.zeros(3, dtype=torch.float64))])
    uv_v, depth_v, valid_v = project_to_image(points, views, torch.tensor([[375, 1242], [100, 100]]))
    assert uv_v.shape == (2, 4, 2) and depth_v.shape == (2, 4) and valid_v.shape == (2, 4)
    assert torch.equal(uv_v[0], uv) and torch.equal(valid_v[0], valid)


def test_project_to_image_gradcheck():
    points = torch.tensor([[10.0, 0.5, -0.5], [8.0, -1.0, 0.3], [-3.0, 0.0, 0.0]], dtype=torch.float64,
                          requires_grad=True)
    lidar2img = _camera().requires_grad_()
    assert torch.autograd.gradcheck(lambda p, m: project_to_image(p, m, (375, 1242))[:2], (points, lidar2img))


def test_project_to_image_kitti_fixture(real_data):
    root = real_data / "fusion"
    if not (root / "000008.bin").exists() or not (root / "000008.pkl").exists():
        pytest.skip(f"KITTI fusion fixture missing under {root}")
    points = torch.from_numpy(np.fromfile(root / "000008.bin", dtype=np.float32).reshape(-1, 4)[:, :3].copy())
    with open(root / "000008.pkl", "rb") as handle:
        cameras = pickle.load(handle)["data_list"][0]["images"]
    names = ["CAM0", "CAM1", "CAM2", "CAM3"]
    lidar2img = torch.tensor(np.stack([cameras[name]["lidar2img"] for name in names]), dtype=torch.float32)
    image_hw = (cameras["CAM2"]["height"], cameras["CAM2"]["width"])
    uv, depth, valid = project_to_image(points, lidar2img, image_hw)
    assert uv.shape == (4, len(points), 2)
    assert valid[2].float().mean() > 0.99  # the FOV-cropped cloud projects into the CAM2 image
    assert (depth[valid] > 0).all() and (uv[valid] >= 0).all()
    single = project_to_image(points, lidar2img[2], image_hw)
    assert torch.equal(single[0], uv[2]) and torch.equal(single[2], valid[2])


# ---------------------------------------------------------------------------------------------
# LiDAR augmentation
# ---------------------------------------------------------------------------------------------
def test_augmentation_steps_match_reference():
    points = torch.tensor([[1.0, 2.0, 3.0, 0.5]], dtype=torch.float64)
    cases = [
        (LidarAugmentation().flip("x"), [1.0, -2.0, 3.0]),
        (LidarAugmentation().flip("y"), [-1.0, 2.0, 3.0]),
        (LidarAugmentation().rotate(math.pi / 2), [-2.0, 1.0, 3.0]),
        (LidarAugmentation().scale(2.0), [2.0, 4.0, 6.0]),
        (LidarAugmentation().translate((1, 1, 1)), [2.0, 3.0, 4.0]),
        (LidarAugmentation().flip("x").rotate(math.pi / 2), [2.0, 1.0, 3.0]),  # order matters
        (LidarAugmentation().rotate(math.pi / 2).flip("x"), [-2.0, -1.0, 3.0]),
    ]
    for aug, expected in cases:
        out = aug.apply_points(points)
        assert torch.allclose(out[0, :3], torch.tensor(expected, dtype=torch.float64), atol=1e-12), aug
        assert out[0, 3] == 0.5


def test_augmentation_boxes_consistent_with_points():
    generator = torch.Generator().manual_seed(9)
    aug = LidarAugmentation().flip("x").rotate(0.4).flip("y").scale(1.03).translate((0.2, -0.1, 0.05))
    boxes = torch.tensor([[5.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3, 1.0, -0.5]], dtype=torch.float64)
    out = aug.apply_boxes(boxes, has_velocity=True)
    # the box's centre and its front point move like points; sizes scale; velocity is a direction
    heading = boxes[0, 6]
    front = boxes[:, :3] + torch.stack([torch.cos(heading), torch.sin(heading), torch.zeros(())]) * boxes[0, 3] / 2
    moved = aug.apply_points(torch.cat([boxes[:, :3], front]))
    assert torch.allclose(out[0, :3], moved[0])
    new_heading = out[0, 6]
    expected_front = out[0, :3] + torch.stack([torch.cos(new_heading), torch.sin(new_heading), torch.zeros(())]) * out[0, 3] / 2
    assert torch.allclose(expected_front, moved[1], atol=1e-12)
    assert torch.allclose(out[0, 3:6], boxes[0, 3:6] * 1.03)
    linear = aug.matrix()[:3, :3]
    assert torch.allclose(out[0, 7:9], (linear @ torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64))[:2])
    assert torch.allclose(aug.invert_boxes(out, has_velocity=True), boxes, atol=1e-12)
    del generator


def test_augmentation_matrices_and_sampling():
    aug = LidarAugmentation.sample(torch.Generator().manual_seed(10), flip_x_prob=1.0, translation_std=0.5)
    assert [name for name, _ in aug.operations] == ["flip", "rotate", "scale", "translate"]
    points = torch.randn(20, 3, dtype=torch.float64)
    assert torch.allclose(transform_points(points, aug.matrix()), aug.apply_points(points))
    assert torch.allclose(transform_points(aug.apply_points(points), aug.inverse_matrix()), points)
    rebuilt = LidarAugmentation(aug.operations)
    assert torch.equal(rebuilt.apply_points(points), aug.apply_points(points))
    assert pickle.loads(pickle.dumps(aug)).operations == aug.operations
    assert len(LidarAugmentation()) == 0 and "flip" in repr(aug)


def test_augmentation_round_trip_kitti_float32(real_data):
    frame = kitti_frame(real_data)
    aug = LidarAugmentation().flip("x").rotate(-0.6).scale(1.05).translate((0.4, -0.3, 0.2)).flip("y")
    augmented = aug.apply_points(frame)
    assert augmented.dtype == torch.float32
    back = aug.invert_points(augmented)
    assert (back[:, :3] - frame[:, :3]).norm(dim=1).max() < 1e-5  # metres, Euclidean
    assert torch.equal(back[:, 3], frame[:, 3])


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"pos_i: expected shape \[\.\.\., 3\], got \(4, 2\)"):
        point_pair_features(torch.rand(4, 2), torch.rand(4, 3), torch.rand(4, 3), torch.rand(4, 3))
    with pytest.raises(TypeError, match="points: expected a floating-point tensor"):
        transform_points(torch.ones(3, 3, dtype=torch.long), torch.eye(4))
    with pytest.raises(ValueError, match=r"transform: expected shape \[\.\.\., 4, 4\], got \(3, 3\)"):
        transform_points(torch.rand(5, 3), torch.eye(3))
    with pytest.raises(ValueError, match=r"dst: expected the shape of src \(5, 3\), got \(4, 3\)"):
        weighted_kabsch(torch.rand(5, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"weights: expected shape \(5,\), got \(4,\)"):
        weighted_kabsch(torch.rand(5, 3), torch.rand(5, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"image_hw: expected \(H, W\) or \[2, 2\]"):
        project_to_image(torch.rand(5, 3), torch.eye(4).expand(2, 4, 4), torch.ones(3, 2))
    with pytest.raises(ValueError, match="axis: expected 'x' or 'y', got 'z'"):
        LidarAugmentation().flip("z")
    with pytest.raises(ValueError, match="factor: expected a positive finite scale, got -1.0"):
        LidarAugmentation().scale(-1)
    with pytest.raises(ValueError, match="num: expected None or a non-negative int"):
        random_rotation(-2)
    with pytest.raises(ValueError, match="operations: expected names flip/rotate/scale/translate, got 'apply_points'"):
        LidarAugmentation([("apply_points", 1.0)])
    with pytest.raises(ValueError, match=r"boxes: expected a 2-D tensor \[N, >= 7\]"):
        LidarAugmentation().apply_boxes(torch.rand(3, 6))


def test_closed_form_smallest_eigenvector_matches_eigh_including_degenerate_cases():
    from geoattn.sparse.geometry import _smallest_eigenvector_3x3

    generator = torch.Generator().manual_seed(3)
    points = torch.randn(500, 16, 3, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.05],
                                                                                            dtype=torch.float64)
    centred = points - points.mean(1, keepdim=True)
    covariance = centred.transpose(1, 2) @ centred / 16
    line = torch.diag(torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64))  # two zero eigenvalues
    isotropic = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    covariance = torch.cat([covariance, line[None], isotropic[None], zero[None]])
    vectors = _smallest_eigenvector_3x3(covariance)
    assert torch.isfinite(vectors).all()
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors), dtype=torch.float64))
    expected = torch.linalg.eigh(covariance[:500]).eigenvectors[:, :, 0]
    torch.testing.assert_close((vectors[:500] * expected).sum(1).abs(), torch.ones(500, dtype=torch.float64))
    # degenerate rows: any unit vector of the smallest eigenspace is right
    assert abs(float(vectors[500, 0])) < 1e-9
    residual = covariance[500:] @ vectors[500:, :, None]
    smallest = torch.linalg.eigvalsh(covariance[500:])[:, 0]
    torch.testing.assert_close(residual.squeeze(-1), smallest[:, None] * vectors[500:])


def test_point_pair_features_same_values_with_and_without_autograd():
    generator = torch.Generator().manual_seed(4)
    pos_i, pos_j = torch.randn(2, 64, 3, generator=generator)
    normal_i, normal_j = torch.nn.functional.normalize(torch.randn(2, 64, 3, generator=generator), dim=-1)
    pos_j[0] = pos_i[0]  # a point paired with itself
    plain = point_pair_features(pos_i, normal_i, pos_j, normal_j)
    tracked = point_pair_features(pos_i.requires_grad_(), normal_i, pos_j, normal_j)
    assert torch.equal(plain, tracked.detach())
