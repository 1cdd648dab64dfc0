import numpy as np
import pytest
import torch

from geoattn.data.h36m import world_to_camera
from geoattn.pose.cameras import (look_at_camera, random_cameras, ray_aligned_keypoints, ray_aligned_pairs,
                                  ray_frame_to_camera, ray_rotations, render_pairs, virtual_cameras)


def test_look_at_camera_geometry():
    camera = look_at_camera([0, -5, 1], [0, 0, 1])
    assert np.allclose(camera.rotation @ camera.rotation.T, np.eye(3))
    assert np.isclose(np.linalg.det(camera.rotation), 1.0)
    poses = np.array([[[0, 0, 1.0], [0, 0, 2.0], [1, 0, 1.0]]])
    two_d, three_d = render_pairs(poses, camera)
    assert np.allclose(two_d[0, 0], [0, 0], atol=1e-6)  # the target lands on the image centre
    assert two_d[0, 1, 1] < 0  # world up is image up (y down)
    assert two_d[0, 2, 0] > 0  # world +x is to the right seen from -y
    assert np.allclose(three_d[:, 0], 0) and np.allclose(three_d[0, 1], [0, -1, 0], atol=1e-6)
    with pytest.raises(ValueError, match="up"):
        look_at_camera([0, 0, 5], [0, 0, 0])


def test_virtual_cameras_are_seeded_and_surround_the_target():
    cameras = virtual_cameras(6, [1.0, 2.0, 0.9], seed=3)
    again = virtual_cameras(6, [1.0, 2.0, 0.9], seed=3)
    assert all(np.array_equal(a.rotation, b.rotation) for a, b in zip(cameras, again))
    azimuths = [np.arctan2(c.centre[1] - 2.0, c.centre[0] - 1.0) for c in cameras]
    assert len(set(np.round(np.mod(azimuths, 2 * np.pi) // (np.pi / 3)))) >= 5
    with pytest.raises(ValueError, match="num_cameras"):
        virtual_cameras(0, [0, 0, 0])


def test_render_rejects_points_behind_the_camera(real_data):
    poses = np.load(real_data / "pose/cmu_131_01_h36m17.npy")[:20]
    camera = look_at_camera([0.3, 3.0, 1.0], [0.3, 10.0, 1.0])
    with pytest.raises(ValueError, match="behind"):
        render_pairs(poses, camera)
    two_d, three_d = render_pairs(poses, virtual_cameras(1, poses[:, 0].mean(0))[0])
    assert two_d.shape == (20, 17, 2) and three_d.dtype == np.float32


def test_random_cameras_respect_ranges_and_avoid_held_out_azimuths():
    target = np.array([0.3, 0.9, 0.8])
    held_out = virtual_cameras(4, target, seed=1)
    cameras = random_cameras(300, target, np.random.default_rng(0), avoid=held_out, min_separation=12.0)
    again = random_cameras(300, target, np.random.default_rng(0), avoid=held_out, min_separation=12.0)
    assert len(cameras) == 300 and all(np.array_equal(a.centre, b.centre) for a, b in zip(cameras, again))

    def azimuth(camera):
        offset = camera.centre - target
        return np.degrees(np.arctan2(offset[1], offset[0]))

    gaps = [min(abs((azimuth(c) - azimuth(h) + 180) % 360 - 180) for h in held_out) for c in cameras]
    assert min(gaps) >= 12.0 and max(gaps) > 30.0
    horizontal = [np.linalg.norm((c.centre - target)[:2]) for c in cameras]
    assert 4.5 <= min(horizontal) and max(horizontal) <= 6.0
    assert all(0.6 <= c.centre[2] <= 2.2 for c in cameras)
    # Every camera looks at the target: it projects onto the image centre.
    assert all(np.allclose(render_pairs(target[None, None], c)[0][0, 0], 0, atol=1e-6) for c in cameras[:5])
    assert random_cameras(0, target, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="min_separation"):
        random_cameras(1, target, np.random.default_rng(0), avoid=held_out, min_separation=45.0)
    with pytest.raises(ValueError, match="num_cameras"):
        random_cameras(-1, target, np.random.default_rng(0))


def test_ray_rotations_turn_rays_onto_the_axis_without_roll():
    directions = np.random.default_rng(0).normal(size=(50, 3))
    directions[:, 2] = np.abs(directions[:, 2]) + 0.1
    rotations = ray_rotations(directions)
    assert np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rotations), 1.0)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    assert np.allclose(np.einsum("nij,nj->ni", rotations, unit), [0, 0, 1], atol=1e-12)
    assert np.allclose(rotations[:, 0, 1], 0)  # the turned camera's x axis stays in the x-z plane
    assert np.allclose(ray_rotations([0, 0, 2.0]), np.eye(3))
    with pytest.raises(ValueError, match="directions"):
        ray_rotations([0.0, 1.0, 0.0])


def test_ray_aligned_pairs_round_trip_and_match_a_pinhole_view(real_data):
    poses = np.load(real_data / "pose/cmu_131_01_h36m17.npy")[::10]
    camera = virtual_cameras(5, poses[:, 0].mean(0), seed=2)[1]
    two_d, three_d, rotations = ray_aligned_pairs(poses, camera)
    _, camera_frame = render_pairs(poses, camera)
    assert two_d.shape == (len(poses), 17, 2) and three_d.dtype == np.float32
    assert np.allclose(ray_frame_to_camera(three_d, rotations), camera_frame, atol=1e-5)
    assert np.allclose(two_d[:, 0], 0, atol=1e-7)
    # The aligned 2D pose is the unit-focal projection of the rotated 3D pose placed at the root's depth.
    depth = np.linalg.norm(world_to_camera(poses[:, 0].astype(np.float64), camera), axis=-1)
    placed = three_d + np.stack([np.zeros_like(depth), np.zeros_like(depth), depth], -1)[:, None]
    assert np.allclose(placed[..., :2] / placed[..., 2:], two_d, atol=1e-5)
    # Torch predictions go back to camera axes too, keeping their dtype.
    back = ray_frame_to_camera(torch.from_numpy(three_d), rotations)
    assert back.dtype == torch.float32 and torch.allclose(back, torch.from_numpy(camera_frame), atol=1e-5)


def test_ray_aligned_keypoints_on_axis_and_errors():
    camera = look_at_camera([0, -5, 1], [0, 0, 1])
    pixels = np.array([[[500.0, 500.0], [600.0, 450.0]]])
    aligned, rotations = ray_aligned_keypoints(pixels, camera)
    assert np.allclose(rotations, np.eye(3)) and np.allclose(aligned[0, 1], [100 / 1145, -50 / 1145])
    with pytest.raises(ValueError, match="pixels"):
        ray_aligned_keypoints(np.zeros((4, 3)), camera)
