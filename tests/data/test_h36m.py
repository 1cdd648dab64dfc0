import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.data.h36m import (H36M_32_TO_17, Camera, ChunkedWindows, camera_to_world, centre_on_root,
                               flip_pose, group_by_action, image_coordinates, load_mmpose_cameras,
                               load_positions_2d, load_positions_3d, normalize_screen_coordinates,
                               project_to_pixels, root_relative, uncentre_from_root, world_to_camera)
from geoattn.nn.glagcn import H36M_JOINTS_LEFT, H36M_JOINTS_RIGHT, H36M_PARENTS


def write_pickled_npz(path, **entries):
    np.savez_compressed(path, **{k: np.array(v, dtype=object) for k, v in entries.items()})


def test_readers_on_synthetic_npz_in_the_videopose3d_format(tmp_path):
    rng = np.random.default_rng(0)
    positions_3d = {"S1": {"Walking 1": rng.normal(size=(6, 32, 3)).astype(np.float32)},
                    "S9": {"Directions": rng.normal(size=(4, 32, 3)).astype(np.float32)}}
    write_pickled_npz(tmp_path / "data_3d_h36m.npz", positions_3d=positions_3d)
    loaded = load_positions_3d(tmp_path / "data_3d_h36m.npz")
    assert loaded["S1"]["Walking 1"].shape == (6, 17, 3)
    assert np.array_equal(loaded["S1"]["Walking 1"], positions_3d["S1"]["Walking 1"][:, list(H36M_32_TO_17)])
    assert load_positions_3d(tmp_path / "data_3d_h36m.npz", joints_17=False)["S9"]["Directions"].shape == (4, 32, 3)
    assert group_by_action(loaded) == {"Walking": [("S1", "Walking 1")], "Directions": [("S9", "Directions")]}

    views = [rng.normal(size=(6, 17, 3)).astype(np.float32) for _ in range(4)]  # with a confidence column
    metadata = {"layout_name": "h36m", "num_joints": 17,
                "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    write_pickled_npz(tmp_path / "data_2d_h36m_cpn.npz", positions_2d={"S1": {"Walking 1": views}},
                      metadata=metadata)
    positions_2d, meta = load_positions_2d(tmp_path / "data_2d_h36m_cpn.npz")
    assert len(positions_2d["S1"]["Walking 1"]) == 4
    assert np.array_equal(positions_2d["S1"]["Walking 1"][2], views[2][..., :2])
    assert meta["keypoints_symmetry"] == metadata["keypoints_symmetry"]


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="datasets/h36m.md"):
        load_positions_3d(tmp_path / "missing.npz")
    write_pickled_npz(tmp_path / "wrong.npz", something={"a": 1})
    with pytest.raises(ValueError, match="positions_3d"):
        load_positions_3d(tmp_path / "wrong.npz")
    write_pickled_npz(tmp_path / "bad.npz", positions_3d={"S1": {"A": np.zeros((3, 5, 3))}})
    with pytest.raises(ValueError, match="S1/A"):
        load_positions_3d(tmp_path / "bad.npz")


class _Hostile:
    def __reduce__(self):
        return (exec, ("import sys; sys.modules['geoattn'].PWNED = True",))


def test_pickled_files_cannot_run_code(tmp_path):
    import geoattn

    write_pickled_npz(tmp_path / "evil.npz", positions_3d={"S1": {"A": _Hostile()}})
    with pytest.raises(ValueError, match=r"evil.npz \('positions_3d'\): not a readable pickle .*builtins.exec"):
        load_positions_3d(tmp_path / "evil.npz")
    (tmp_path / "cameras.pkl").write_bytes(pickle.dumps({("S1", "54138969"): _Hostile()}))
    with pytest.raises(ValueError, match=r"cameras.pkl: not a readable camera pickle"):
        load_mmpose_cameras(tmp_path / "cameras.pkl")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz: not a readable .npz archive"):
        load_positions_3d(tmp_path / "text.npz")
    assert not hasattr(geoattn, "PWNED")


def test_camera_quaternion_and_world_camera_round_trip():
    identity = Camera.from_quaternion([1, 0, 0, 0], [0, 0, -5000], [1000, 1000], [500, 500], 1000, 1000)
    assert np.allclose(identity.rotation, np.eye(3)) and np.allclose(identity.centre, [0, 0, -5])
    angle = 0.7
    camera = Camera.from_quaternion([np.cos(angle / 2), 0, 0, np.sin(angle / 2)], [100, 200, 300],
                                    [1000, 1000], [500, 500], 1000, 1000)
    assert np.allclose(camera.rotation @ camera.rotation.T, np.eye(3))
    assert np.isclose(np.linalg.det(camera.rotation), 1.0)
    points = np.random.default_rng(0).normal(size=(5, 17, 3))
    assert np.allclose(camera_to_world(world_to_camera(points, camera), camera), points)
    # The camera centre maps to the camera origin.
    assert np.allclose(world_to_camera(camera.centre, camera), 0)


def test_projection_reproduces_real_h36m_keypoints(real_data):
    frames = np.load(real_data / "pose/mmpose_h36m/test_h36m_body3d.npz")
    cameras = load_mmpose_cameras(real_data / "pose/mmpose_h36m/cameras.pkl")
    for name, joints_3d, joints_2d in zip(frames["imgname"], frames["S"], frames["part"]):
        subject, camera_id = name.split("/")[0], name.split("/")[1].split(".")[1]
        camera = cameras[(subject, camera_id)]
        # The Human3.6M distortion model brings the error from a few pixels down to a tenth of one.
        pixels = project_to_pixels(joints_3d[:, :3], camera)
        assert np.abs(pixels - joints_2d[:, :2]).max() < 0.1
        assert np.abs(project_to_pixels(joints_3d[:, :3], camera, distort=False) - joints_2d[:, :2]).max() < 3.0
        torch_pixels = project_to_pixels(torch.from_numpy(joints_3d[:, :3]), camera)
        assert np.allclose(torch_pixels.numpy(), pixels)


def test_screen_normalisation_round_trip():
    pixels = np.array([[0.0, 0.0], [1000.0, 1002.0], [500.0, 501.0]])
    normalised = normalize_screen_coordinates(pixels, 1000, 1002)
    assert np.allclose(normalised[:, 0], [-1, 1, 0])
    assert np.allclose(image_coordinates(normalised, 1000, 1002), pixels)
    as_torch = normalize_screen_coordinates(torch.from_numpy(pixels), 1000, 1002)
    assert np.allclose(as_torch.numpy(), normalised)
    with pytest.raises(ValueError, match="pixels"):
        normalize_screen_coordinates(np.zeros((3, 3)), 10, 10)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.sampled_from([2, 3]), st.integers(0, 1000))
def test_flip_is_an_involution(frames, dims, seed):
    poses = np.random.default_rng(seed).normal(size=(frames, 17, dims))
    once = flip_pose(poses)
    assert np.array_equal(flip_pose(once), poses)
    assert np.array_equal(once[:, 0, 0], -poses[:, 0, 0])
    assert np.array_equal(once[:, 4, 1:], poses[:, 1, 1:])  # left hip <- right hip
    assert torch.equal(flip_pose(torch.from_numpy(poses)), torch.from_numpy(once))


def test_flip_swaps_bone_lengths_on_real_pose(real_data):
    pose = np.load(real_data / "pose/mmpose_h36m/test_h36m_body3d.npz")["S"][0, :, :3]
    flipped = flip_pose(pose)

    def bone(p, joint):
        return np.linalg.norm(p[joint] - p[H36M_PARENTS[joint]])

    for left, right in zip(H36M_JOINTS_LEFT, H36M_JOINTS_RIGHT):
        assert np.isclose(bone(flipped, left), bone(pose, right))
    with pytest.raises(ValueError, match="joints_left"):
        flip_pose(pose, [1, 2], [3])


def test_centre_on_root_is_invertible_and_commutes_with_flip():
    poses = np.random.default_rng(1).normal(size=(4, 17, 2))
    centred = centre_on_root(poses)
    assert np.allclose(centred[:, 0], poses[:, 0])
    assert np.allclose(centred[:, 3], poses[:, 3] - poses[:, 0])
    assert np.allclose(uncentre_from_root(centred), poses)
    assert np.allclose(centre_on_root(flip_pose(poses)), flip_pose(centred))
    assert torch.allclose(centre_on_root(torch.from_numpy(poses)), torch.from_numpy(centred))


def test_root_relative():
    poses = np.random.default_rng(0).normal(size=(3, 17, 3))
    rel = root_relative(poses)
    assert np.allclose(rel[:, 0], 0) and np.allclose(rel[:, 5] - rel[:, 3], poses[:, 5] - poses[:, 3])


def test_chunked_windows_edge_padding_and_flip():
    frames = np.arange(5, dtype=np.float32)
    poses_2d = [np.broadcast_to(frames[:, None, None], (5, 17, 2)).copy(),
                np.full((2, 17, 2), 10.0, dtype=np.float32)]
    poses_3d = [np.random.default_rng(0).normal(size=(5, 17, 3)), np.zeros((2, 17, 3))]
    windows = ChunkedWindows(poses_2d, poses_3d, receptive_field=5, flip=True)
    assert windows.num_frames == 7 and len(windows) == 14
    inputs, targets = windows.get(np.array([0, 4, 5]))
    assert inputs.shape == (3, 5, 17, 2) and targets.shape == (3, 1, 17, 3)
    assert inputs[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]  # edge padding at the start
    assert inputs[1, :, 0, 0].tolist() == [2, 3, 4, 4, 4]  # and at the end, never crossing sequences
    assert inputs[2, :, 0, 0].tolist() == [10] * 5
    assert torch.allclose(targets[0, 0], torch.from_numpy(poses_3d[0][0]).float())
    flipped_inputs, flipped_targets = windows.get(np.array([7 + 1]))
    plain_inputs, plain_targets = windows.get(np.array([1]))
    assert torch.equal(flipped_inputs, flip_pose(plain_inputs))
    assert torch.equal(flipped_targets, flip_pose(plain_targets))
    seen = sorted(i for batch, _ in windows.batches(4, shuffle=True, generator=np.random.default_rng(0))
                  for i in range(len(batch)))
    assert len(seen) == 14


def test_chunked_windows_errors_and_inference_mode():
    with pytest.raises(ValueError, match="receptive_field"):
        ChunkedWindows([np.zeros((3, 17, 2))], None, receptive_field=4)
    with pytest.raises(ValueError, match=r"poses_3d\[0\]"):
        ChunkedWindows([np.zeros((3, 17, 2))], [np.zeros((4, 17, 3))], receptive_field=3)
    with pytest.raises(ValueError, match=r"poses_2d\[0\]"):
        ChunkedWindows([np.zeros((0, 17, 2))], None, receptive_field=3)
    inputs, targets = ChunkedWindows([np.zeros((3, 17, 2))], None, receptive_field=3).get(np.arange(3))
    assert inputs.shape == (3, 3, 17, 2) and targets is None
    with pytest.raises(ValueError, match="frame_stride"):
        ChunkedWindows([np.zeros((3, 17, 2))], None, receptive_field=3, frame_stride=0)


def test_chunked_windows_frame_stride():
    poses_2d = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 17, 2)).copy()
    poses_3d = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 17, 3)).copy()
    windows = ChunkedWindows([poses_2d], [poses_3d], receptive_field=3, frame_stride=3)
    inputs, targets = windows.get(np.arange(windows.num_frames))
    assert windows.num_frames == 3
    assert inputs[:, :, 0, 0].tolist() == [[0, 0, 1], [2, 3, 4], [5, 6, 6]]
    assert targets[:, 0, 0, 0].tolist() == [0, 3, 6]
    # The second view of the clip starts one frame later (staggered centres).
    staggered = ChunkedWindows([poses_2d, poses_2d], [poses_3d, poses_3d], receptive_field=3, frame_stride=3)
    _, targets = staggered.get(np.arange(staggered.num_frames))
    assert targets[:, 0, 0, 0].tolist() == [0, 3, 6, 1, 4]


def test_mmpose_cameras_loader(real_data, tmp_path):
    cameras = load_mmpose_cameras(real_data / "pose/mmpose_h36m/cameras.pkl")
    assert len(cameras) == 44
    camera = cameras[("S1", "54138969")]
    assert camera.width == 1000 and camera.height == 1002
    assert np.allclose(camera.rotation @ camera.rotation.T, np.eye(3), atol=1e-6)
    entry = {"R": np.eye(3), "T": np.zeros((3, 1)), "f": np.ones((2, 1)), "c": np.zeros((2, 1)), "w": 4, "h": 2}
    with open(tmp_path / "cams.pkl", "wb") as handle:
        pickle.dump({("S1", "1"): entry}, handle)
    assert np.allclose(load_mmpose_cameras(tmp_path / "cams.pkl")[("S1", "1")].radial, 0)
