"""GT database creation (geoattn.detection.gt_database) on a written KITTI folder and on real frames."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from geoattn.data.kitti import boxes_camera_to_lidar, load_info_pickle, read_calib, read_label, read_velodyne
from geoattn.detection.gt_database import create_gt_database, kitti_difficulty
from tests.detection._kitti_layout import SCENES, link_real_kitti, write_kitti_root

INFO_KEYS = {"name", "path", "image_idx", "gt_idx", "box3d_lidar", "num_points_in_gt", "difficulty", "bbox", "score"}


def _reference_objects(root, frame_id):
    """Plain loop reference: per non-DontCare object, its points (relative to the centre) by a direct test."""
    base = root / "training"
    labels = read_label(base / "label_2" / f"{frame_id}.txt").without_dontcare()
    boxes = boxes_camera_to_lidar(labels.boxes_camera, read_calib(base / "calib" / f"{frame_id}.txt").lidar2cam).float()
    points = read_velodyne(base / "velodyne" / f"{frame_id}.bin").numpy()
    out = []
    for i, name in enumerate(labels.names):
        x, y, z, dx, dy, dz, h = boxes[i].tolist()
        rows = []
        for p in points:
            px, py = float(p[0]) - x, float(p[1]) - y
            lx = px * np.cos(-h) - py * np.sin(-h)
            ly = px * np.sin(-h) + py * np.cos(-h)
            if abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(float(p[2]) - z) <= dz / 2:
                rows.append([p[0] - x, p[1] - y, p[2] - z, p[3]])
        out.append((name, boxes[i], np.asarray(rows, dtype=np.float32).reshape(-1, 4)))
    return out


def test_database_files_and_infos_match_a_plain_loop(tmp_path):
    write_kitti_root(tmp_path)
    result = create_gt_database(tmp_path, progress=False)
    infos = load_info_pickle(tmp_path / "kitti_dbinfos_train.pkl")  # the restricted unpickler reads it
    assert result["db_info_path"] == tmp_path / "kitti_dbinfos_train.pkl"
    expected_names = [n for frame in SCENES.values() for n in frame[1]]
    assert sorted(infos) == sorted(set(expected_names))
    assert {k: len(v) for k, v in infos.items()} == {n: expected_names.count(n) for n in set(expected_names)}
    assert result["counts"] == {k: len(v) for k, v in infos.items()}
    for frame_id in SCENES:
        for i, (name, box, ref_points) in enumerate(_reference_objects(tmp_path, frame_id)):
            info = next(x for x in infos[name] if x["image_idx"] == frame_id and x["gt_idx"] == i)
            assert set(info) == INFO_KEYS
            assert info["path"] == f"gt_database/{frame_id}_{name}_{i}.bin"
            assert isinstance(info["num_points_in_gt"], int) and info["num_points_in_gt"] == len(ref_points)
            assert info["box3d_lidar"].dtype == np.float32 and info["box3d_lidar"].shape == (7,)
            np.testing.assert_allclose(info["box3d_lidar"], box.numpy(), atol=1e-5)
            assert info["bbox"].dtype == np.float32 and info["bbox"].shape == (4,)
            assert info["score"] == -1.0 and info["difficulty"] == 0
            stored = np.fromfile(tmp_path / info["path"], dtype=np.float32).reshape(-1, 4)
            order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
            np.testing.assert_allclose(order(stored), order(ref_points), atol=1e-5)
    # the written scene puts a known number of points in each box (one labelled box is empty)
    assert infos["Pedestrian"][0]["num_points_in_gt"] == 30
    assert sorted(x["num_points_in_gt"] for x in infos["Car"]) == [0, 30, 30, 35, 40, 45]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".gt_database")]


def test_class_filter_and_out_dir(tmp_path):
    write_kitti_root(tmp_path / "kitti")
    out = tmp_path / "elsewhere"
    result = create_gt_database(tmp_path / "kitti", class_names=["Pedestrian", "Cyclist"], out_dir=out, progress=False)
    infos = load_info_pickle(out / "kitti_dbinfos_train.pkl")
    assert sorted(infos) == ["Cyclist", "Pedestrian"]
    assert sorted(os.listdir(out / "gt_database")) == sorted(x["path"].split("/")[1] for v in infos.values() for x in v)
    assert result["database_dir"] == out / "gt_database"
    assert not (tmp_path / "kitti" / "gt_database").exists()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    write_kitti_root(tmp_path)
    create_gt_database(tmp_path, class_names=["Car"], progress=False)
    before = sorted(os.listdir(tmp_path / "gt_database"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_gt_database(tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path / "gt_database")) == before  # untouched
    create_gt_database(tmp_path, class_names=["Pedestrian"], overwrite=True, progress=False)
    assert all("_Pedestrian_" in name for name in os.listdir(tmp_path / "gt_database"))
    assert sorted(load_info_pickle(tmp_path / "kitti_dbinfos_train.pkl")) == ["Pedestrian"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_failed_run_leaves_nothing(tmp_path):
    write_kitti_root(tmp_path)
    (tmp_path / "training" / "calib" / "000001.txt").write_text("P0: 1 2 3\n")  # broken calibration
    with pytest.raises(ValueError):
        create_gt_database(tmp_path, progress=False)
    assert not (tmp_path / "gt_database").exists() and not (tmp_path / "kitti_dbinfos_train.pkl").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_progress_bar_and_errors(tmp_path, capsys):
    write_kitti_root(tmp_path)
    create_gt_database(tmp_path, progress=True)
    assert "gt database" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="training"):
        create_gt_database(tmp_path / "nothing", progress=False)
    with pytest.raises(ValueError, match="class_names"):
        create_gt_database(tmp_path, class_names="Car", overwrite=True, progress=False)
    with pytest.raises(FileNotFoundError, match="val"):
        create_gt_database(tmp_path, split="val", out_dir=tmp_path / "other", progress=False)
    with pytest.raises(TypeError, match="root"):
        create_gt_database(3)


def test_kitti_difficulty_hand_cases():
    # heights 40 / 25 / 24 px (+1 convention), truncation and occlusion limits of each level
    bbox = torch.tensor([[0, 0, 10, 39], [0, 0, 10, 39], [0, 0, 10, 24], [0, 0, 10, 24], [0, 0, 10, 23],
                         [0, 0, 10, 39], [0, 0, 10, 39]], dtype=torch.float64)
    truncated = torch.tensor([0.15, 0.16, 0.3, 0.5, 0.0, 0.0, 0.51], dtype=torch.float64)
    occluded = torch.tensor([0, 0, 1, 2, 0, 3, 0])
    assert kitti_difficulty(bbox, truncated, occluded).tolist() == [0, 1, 1, 2, -1, -1, -1]
    assert kitti_difficulty(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="bbox"):
        kitti_difficulty(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3))


def test_real_kitti_frames(real_data, tmp_path):
    root = link_real_kitti(real_data / "lidar" / "kitti_360", tmp_path / "kitti", ["000000", "000001"])
    create_gt_database(root, progress=False)
    infos = load_info_pickle(root / "kitti_dbinfos_train.pkl")
    # mmdetection3d's info for the same frame 000000 stores num_lidar_pts = 377 for its one pedestrian
    mmdet = load_info_pickle(real_data / "lidar" / "snippets" / "kitti" / "kitti_infos_train.pkl")
    expected = mmdet["data_list"][0]["instances"][0]["num_lidar_pts"]
    pedestrian = [x for x in infos["Pedestrian"] if x["image_idx"] == "000000"]
    assert len(pedestrian) == 1 and pedestrian[0]["num_points_in_gt"] == expected == 377
    for entries in infos.values():
        for info in entries:
            stored = np.fromfile(root / info["path"], dtype=np.float32).reshape(-1, 4)
            assert stored.shape[0] == info["num_points_in_gt"]
            half = info["box3d_lidar"][3:6] / 2
            if len(stored):  # relative to the centre: within the half diagonal
                assert np.linalg.norm(stored[:, :3], axis=1).max() <= np.linalg.norm(half) + 1e-4
    assert not list((real_data / "lidar" / "kitti_360").glob("*.pkl"))  # nothing written into the fixtures
