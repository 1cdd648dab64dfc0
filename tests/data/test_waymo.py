"""Waymo readers (geoattn.data.waymo): OpenPCDet processed files written here, mmdet3d snippets from ../shared."""
from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch

from geoattn.data.waymo import (load_waymo_kitti_frame, load_waymo_kitti_infos, load_waymo_segment_infos,
                                load_waymo_split_infos, read_waymo_kitti_velodyne, read_waymo_processed_points,
                                waymo_info_annotations)
from tests.detection._kitti_layout import WAYMO_SEGMENT, write_waymo_processed_root

TAG = "waymo_processed_data_v0_5_0"


def test_processed_points_tanh_and_nlz(tmp_path):
    raw = np.array([[1, 2, 3, 0.0, 0.0, -1], [4, 5, 6, 2.0, 0.5, 1], [7, 8, 9, 10.0, -1.0, -1],
                    [0, 0, 0, 0.1, 3.0, 0]], dtype=np.float32)
    np.save(tmp_path / "0000.npy", raw)
    points = read_waymo_processed_points(tmp_path / "0000.npy")
    assert points.dtype == torch.float32 and points.shape == (2, 5)
    expected = np.array([[1, 2, 3, np.tanh(0.0), np.tanh(0.0)], [7, 8, 9, np.tanh(10.0), np.tanh(-1.0)]], np.float32)
    np.testing.assert_allclose(points.numpy(), expected, rtol=1e-6)
    everything = read_waymo_processed_points(tmp_path / "0000.npy", drop_nlz=False, tanh_dims=())
    np.testing.assert_array_equal(everything.numpy(), raw[:, :5])
    intensity_only = read_waymo_processed_points(tmp_path / "0000.npy", tanh_dims=[3])
    np.testing.assert_allclose(intensity_only[:, 3].numpy(), np.tanh([0.0, 10.0]), rtol=1e-6)
    np.testing.assert_array_equal(intensity_only[:, 4].numpy(), [0.0, -1.0])
    with pytest.raises(ValueError, match="tanh_dims"):
        read_waymo_processed_points(tmp_path / "0000.npy", tanh_dims=[2])
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    assert read_waymo_processed_points(tmp_path / "empty.npy").shape == (0, 5)
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        read_waymo_processed_points(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="path"):
        read_waymo_processed_points(tmp_path / "missing.npy")


def test_segment_and_split_infos(tmp_path):
    written = write_waymo_processed_root(tmp_path / "a", frames=3)
    infos = load_waymo_segment_infos(tmp_path / "a" / TAG / WAYMO_SEGMENT / f"{WAYMO_SEGMENT}.pkl")
    assert len(infos) == 3 and infos[2]["point_cloud"]["sample_idx"] == 2
    by_image_set = load_waymo_split_infos(tmp_path / "a", "train")
    assert [i["frame_id"] for i in by_image_set] == [i["frame_id"] for i in written["infos"]]
    assert [i["frame_id"] for i in load_waymo_split_infos(tmp_path / "a", "train", sampled_interval=2)] == \
        [written["infos"][0]["frame_id"], written["infos"][2]["frame_id"]]
    write_waymo_processed_root(tmp_path / "b", frames=2, image_set=False, split_pickle=True)
    assert len(load_waymo_split_infos(tmp_path / "b", "train")) == 2
    with pytest.raises(FileNotFoundError, match="ImageSets"):
        load_waymo_split_infos(tmp_path / "b", "val")
    with pytest.raises(ValueError, match="sampled_interval"):
        load_waymo_split_infos(tmp_path / "a", "train", sampled_interval=0)


def test_restricted_unpickler_refuses_foreign_classes(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump([{"point_cloud": {"lidar_sequence": "s", "sample_idx": 0}, "x": collections.Counter("ab")}], handle)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_waymo_segment_infos(path)
    with open(path, "wb") as handle:
        pickle.dump({"not": "a list"}, handle)
    with pytest.raises(ValueError, match="list of per-frame info"):
        load_waymo_segment_infos(path)


def test_info_annotations(tmp_path):
    written = write_waymo_processed_root(tmp_path)
    annos = waymo_info_annotations(written["infos"][0])
    assert annos.names == ["Vehicle", "Pedestrian", "Cyclist", "Sign", "Vehicle"]  # 'unknown' dropped
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(annos.boxes.numpy(), written["boxes"][keep, :7])
    np.testing.assert_array_equal(annos.speed.numpy(), written["boxes"][keep, 7:9])
    assert annos.num_points.tolist() == [10, 10, 0, 3, 50] and annos.difficulty.tolist() == [1, 2, 1, 1, 1]
    assert annos.boxes.dtype == torch.float32 and len(annos) == 5
    empty = waymo_info_annotations({"point_cloud": {}})
    assert empty.boxes.shape == (0, 7) and empty.names == []
    bad = dict(written["infos"][0], annos=dict(written["infos"][0]["annos"],
                                               gt_boxes_lidar=np.zeros((6, 8), np.float32)))
    with pytest.raises(ValueError, match="gt_boxes_lidar"):
        waymo_info_annotations(bad)


def test_mmdet3d_waymo_snippets(real_data):
    root = real_data / "lidar" / "snippets" / "waymo" / "kitti_format"
    info_path = root / "waymo_infos_train.pkl"
    raw = np.fromfile(root / "training" / "velodyne" / "0000000.bin", dtype=np.float32).reshape(-1, 6)
    points = read_waymo_kitti_velodyne(root / "training" / "velodyne" / "0000000.bin")
    assert points.shape == (800, 6) and points.dtype == torch.float32
    np.testing.assert_array_equal(points.numpy(), raw)
    assert float(points[:, 5].min()) > 1e15  # the timestamp column (microseconds)
    frame = load_waymo_kitti_frame(info_path, 0)
    np.testing.assert_array_equal(frame.points.numpy(), raw)
    info = load_waymo_kitti_infos(info_path)["data_list"][0]
    bottom = np.asarray(info["instances"][0]["bbox_3d"], dtype=np.float64)
    assert frame.names == ["Car"] and frame.num_lidar_pts.tolist() == [309]
    expected = bottom.copy()
    expected[2] += bottom[5] / 2  # bottom centre -> centre
    np.testing.assert_allclose(frame.boxes[0].numpy(), expected, rtol=1e-6)
    # the camera-frame copy of the same box agrees: heading = -ry - pi/2 and the same size
    cam = info["cam_instances"]["CAM_FRONT"][0]["bbox_3d"]
    assert abs((-cam[6] - np.pi / 2) - float(frame.boxes[0, 6])) < 0.01
    np.testing.assert_allclose(sorted(frame.boxes[0, 3:6].tolist()), sorted(cam[3:6]), rtol=1e-5)
    # LiDAR -> camera of the centre lands near the camera box centre (camera y down: bottom - h/2)
    centre_cam = frame.lidar2cam["CAM_FRONT"].numpy() @ np.append(frame.boxes[0, :3].double().numpy(), 1.0)
    np.testing.assert_allclose(centre_cam[:3], [cam[0], cam[1] - cam[4] / 2, cam[2]], atol=0.05)
    assert frame.image_hw == {"CAM_FRONT": (1280, 1920)} and frame.timestamp == 1550083467346370
    assert frame.context_name == "10017090168044687777_6380_000_6400_000"
    assert frame.ego2global.shape == (4, 4) and frame.lidar2img["CAM_FRONT"].shape == (3, 4)
    with pytest.raises(IndexError, match="index"):
        load_waymo_kitti_frame(info_path, 1)
    with pytest.raises(ValueError, match="'kitti'"):
        load_waymo_kitti_infos(real_data / "lidar" / "snippets" / "kitti" / "kitti_infos_train.pkl")
