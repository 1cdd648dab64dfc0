import math
import pickle

import pytest
import torch

from geoattn.data.kitti import (boxes_camera_to_lidar, boxes_lidar_to_camera, load_info_pickle,
                                load_kitti_frame, load_mmdet3d_frame, read_calib, read_label, read_velodyne)
from geoattn.sparse.boxes import points_in_boxes


@pytest.fixture(scope="module")
def frame8(real_data):
    return load_mmdet3d_frame(real_data / "fusion" / "000008.pkl")


def test_mmdet3d_frame_contents(frame8):
    assert frame8.points.shape == (17238, 4) and frame8.points.dtype == torch.float32
    assert frame8.image.shape == (375, 1242, 3) and frame8.image_hw == (375, 1242)
    assert frame8.labels == ["Car"] * 6  # the 4 DontCare rows are dropped
    assert frame8.boxes.shape == (6, 7)
    cam2img = frame8.extra["cam2img"]["CAM2"]
    assert torch.allclose(frame8.lidar2img["CAM2"], cam2img @ frame8.lidar2cam, atol=1e-9)


def test_points_in_labelled_boxes_match_num_lidar_pts(frame8):
    counts = points_in_boxes(frame8.points[:, :3].double(), frame8.boxes).sum(0)
    assert torch.equal(counts, frame8.num_lidar_pts)


def test_box_conversion_round_trip(frame8):
    back = boxes_lidar_to_camera(frame8.boxes, frame8.lidar2cam)
    assert torch.allclose(back, frame8.boxes_camera, atol=1e-9)
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(20, 7, generator=generator, dtype=torch.float64) * 4
    boxes[:, 6] = (boxes[:, 6] / 4 - 0.5) * 2 * math.pi
    again = boxes_camera_to_lidar(boxes_lidar_to_camera(boxes, frame8.lidar2cam), frame8.lidar2cam)
    assert torch.allclose(again, boxes, atol=1e-9)


def test_heading_convention():
    # KITTI ry = 0 points along camera +x = LiDAR -y, so the LiDAR heading is -pi/2.
    lidar2cam = torch.tensor([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    camera_box = torch.tensor([[1.0, 2.0, 10.0, 4.0, 1.5, 1.8, 0.0]], dtype=torch.float64)
    lidar_box = boxes_camera_to_lidar(camera_box, lidar2cam)
    expected = torch.tensor([[10.0, -1.0, -2.0 + 0.75, 4.0, 1.8, 1.5, -math.pi / 2]], dtype=torch.float64)
    assert torch.allclose(lidar_box, expected)


def test_raw_kitti_layout(real_data):
    frame = load_kitti_frame(real_data / "lidar" / "kitti_360", 0, split="", load_image=False)
    assert frame.points.shape == (115384, 4)
    assert frame.image_hw == (370, 1224)
    assert frame.labels == ["Pedestrian"]
    calib = frame.extra["calib"]
    assert torch.allclose(calib.lidar2img(2), calib.P[2] @ calib.R0_rect @ calib.Tr_velo_to_cam)
    # the pedestrian box holds LiDAR points
    assert points_in_boxes(frame.points[:, :3].double(), frame.boxes).sum() > 50


def test_read_label_and_calib(tmp_path):
    label = tmp_path / "label.txt"
    label.write_text("Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
                     "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n")
    labels = read_label(label)
    assert labels.names == ["Car", "DontCare"]
    assert torch.allclose(labels.boxes_camera[0], torch.tensor([-0.65, 1.71, 46.70, 3.64, 1.65, 1.67, -1.59],
                                                               dtype=torch.float64))
    assert len(labels.without_dontcare()) == 1
    bad = tmp_path / "bad.txt"
    bad.write_text("Car 0 0\n")
    with pytest.raises(ValueError, match="15 or 16 columns"):
        read_label(bad)
    calib = tmp_path / "calib.txt"
    calib.write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(ValueError, match="lacks calibration"):
        read_calib(calib)


def test_read_velodyne_errors(tmp_path):
    path = tmp_path / "x.bin"
    torch.arange(6, dtype=torch.float32).numpy().tofile(path)
    assert read_velodyne(path, 3).shape == (2, 3)
    with pytest.raises(ValueError, match="num_features=4"):
        read_velodyne(path, 4)
    with pytest.raises(FileNotFoundError):
        read_velodyne(tmp_path / "missing.bin")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_info_pickle_is_restricted(tmp_path, real_data):
    info = load_info_pickle(real_data / "fusion" / "000008.pkl")
    assert info["metainfo"]["DATASET"] == "KITTI"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"data_list": [_Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_info_pickle(evil)
    with pytest.raises(ValueError, match="data_list"):
        load_mmdet3d_frame(real_data / "fusion" / "kitti_000000" / "000000.pkl")


def test_raw_layout_and_info_pickle_agree_on_the_same_frame(real_data):
    """KITTI training frame 000000 exists both as raw files and in mmdetection3d's test info pickle."""
    raw = load_kitti_frame(real_data / "lidar" / "kitti_360", 0, split="", load_image=False)
    info = load_mmdet3d_frame(real_data / "lidar" / "snippets" / "kitti" / "kitti_infos_train.pkl")
    assert info.labels == raw.labels == ["Pedestrian"]
    assert info.image_hw == raw.image_hw == (370, 1224)
    assert torch.allclose(info.lidar2img["CAM2"], raw.lidar2img["CAM2"], rtol=1e-4, atol=1e-2)
    assert torch.allclose(info.boxes, raw.boxes, atol=0.02)  # the pickle stores float32 calibration
    assert info.points.shape == (800, 4)  # mmdetection3d keeps an 800-point subsample


def test_non_kitti_info_pickle_is_refused(real_data):
    with pytest.raises(ValueError, match="'waymo' info pickle"):
        load_mmdet3d_frame(real_data / "lidar" / "snippets" / "waymo" / "kitti_format" / "waymo_infos_train.pkl",
                           camera="CAM_FRONT")
