import numpy as np
import pytest

from geoattn.pose.cameras import look_at_camera, render_pairs, virtual_cameras


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
