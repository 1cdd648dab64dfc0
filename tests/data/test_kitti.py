import math
import pickle

import pytest
import torch

from geoattn.data.kitti import (boxes_camera_to_lidar, boxes_lidar_to_camera, load_info_pickle,
                                load_kitti_frame, load_mmdet3d_frame, read_calib, read_image, read_label, read_velodyne)
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


# ---------------------------------------------------------------------------------------------------------
# writers: write_label / write_calib / write_velodyne / read_image_set
# ---------------------------------------------------------------------------------------------------------
import os  # noqa: E402

import numpy as np  # noqa: E402

from geoattn.data.kitti import (KittiCalibration, KittiLabels, read_image_set, write_calib,  # noqa: E402
                                write_label, write_velodyne)


def _random_labels(count, score=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    names = [("Car", "Pedestrian", "Cyclist", "DontCare", "Person_sitting")[i % 5] for i in range(count)]
    boxes = torch.cat([rand(count, 3) * 40 - 20, rand(count, 3) * 4 + 0.3, rand(count, 1) * 6 - 3], 1)
    return KittiLabels(names, rand(count), torch.randint(-1, 4, (count,), generator=generator),
                       rand(count) * 6 - 3, rand(count, 4) * 1000, boxes,
                       score=rand(count) if score else None)


@pytest.mark.parametrize("score", [False, True])
def test_write_label_round_trip_to_printed_precision(tmp_path, score):
    labels = _random_labels(12, score=score)
    path = write_label(tmp_path / "label_2" / "000001.txt", labels)
    back = read_label(path)
    decimals = 4 if score else 2
    rounded = lambda t, d=decimals: torch.round(t * 10**d) / 10**d  # noqa: E731
    assert back.names == labels.names
    assert torch.allclose(back.truncated, rounded(labels.truncated, 2), atol=1e-12)
    assert torch.equal(back.occluded, labels.occluded)
    assert torch.allclose(back.alpha, rounded(labels.alpha), atol=1e-12)
    assert torch.allclose(back.bbox, rounded(labels.bbox), atol=1e-9)
    assert torch.allclose(back.boxes_camera, rounded(labels.boxes_camera), atol=1e-12)
    if score:
        assert torch.allclose(back.score, rounded(labels.score, 4), atol=1e-12)
        assert all(len(line.split()) == 16 for line in path.read_text().splitlines())
    else:
        assert back.score is None
        assert all(len(line.split()) == 15 for line in path.read_text().splitlines())
    # written again from what was read: the same bytes (a fixed point)
    again = write_label(tmp_path / "again.txt", back)
    assert again.read_bytes() == path.read_bytes()


def test_write_label_real_file_identical(real_data, tmp_path):
    source = real_data / "lidar" / "kitti_360" / "label_2" / "000000.txt"
    labels = read_label(source)
    out = write_label(tmp_path / "x.txt", labels)
    assert read_label(out).names == labels.names
    assert out.read_text().split() == source.read_text().split()


def test_write_label_empty_and_errors(tmp_path):
    empty = _random_labels(0)
    path = write_label(tmp_path / "empty.txt", empty)
    assert path.read_text() == "" and len(read_label(path)) == 0
    labels = _random_labels(3)
    labels.names[1] = "Traffic light"
    with pytest.raises(ValueError, match=r"labels.names\[1\]"):
        write_label(tmp_path / "bad.txt", labels)
    labels = _random_labels(3)
    labels.bbox = labels.bbox[:, :3]
    with pytest.raises(ValueError, match=r"labels.bbox: expected shape \[3, 4\], got \(3, 3\)"):
        write_label(tmp_path / "bad.txt", labels)
    with pytest.raises(TypeError, match="labels: expected KittiLabels"):
        write_label(tmp_path / "bad.txt", {"names": []})
    with pytest.raises(ValueError, match="precision"):
        write_label(tmp_path / "bad.txt", _random_labels(2), precision=-1)
    assert not (tmp_path / "bad.txt").exists()


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_writes_honour_umask_and_leave_no_temporaries(tmp_path, mask):
    old = os.umask(mask)
    try:
        files = [write_label(tmp_path / "l.txt", _random_labels(2)),
                 write_velodyne(tmp_path / "v.bin", np.zeros((3, 4), np.float32)),
                 write_calib(tmp_path / "c.txt", _calib())]
    finally:
        os.umask(old)
    for path in files:
        assert _mode(path) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "l.txt", "v.bin"]


def _calib():
    generator = torch.Generator().manual_seed(3)
    projections = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    projections[:, :3, :4] = torch.randn(4, 3, 4, generator=generator, dtype=torch.float64) * 500
    rect = torch.eye(4, dtype=torch.float64)
    rect[:3, :3] = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    velo = torch.eye(4, dtype=torch.float64)
    velo[:3, :4] = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    return KittiCalibration(projections, rect, velo, velo.clone() * 0.5 + torch.eye(4, dtype=torch.float64) * 0.5)


def test_write_calib_exact_round_trip(tmp_path):
    calib = _calib()  # arbitrary float64 values: need the exact (repr) fall-back
    back = read_calib(write_calib(tmp_path / "c.txt", calib))
    for name in ("P", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"):
        assert torch.equal(getattr(back, name), getattr(calib, name)), name
    calib.Tr_imu_to_velo = None
    back = read_calib(write_calib(tmp_path / "c.txt", calib))
    assert back.Tr_imu_to_velo is None and torch.equal(back.lidar2img(2), calib.lidar2img(2))


def test_write_calib_real_file(real_data, tmp_path):
    source = real_data / "lidar" / "kitti_360" / "calib" / "000000.txt"
    out = write_calib(tmp_path / "c.txt", read_calib(source))
    assert out.read_text().split() == source.read_text().split()  # KITTI's own %.12e style


def test_write_calib_errors(tmp_path):
    calib = _calib()
    calib.R0_rect = calib.R0_rect[:3]
    with pytest.raises(ValueError, match=r"calib.R0_rect: expected shape \[4, 4\]"):
        write_calib(tmp_path / "c.txt", calib)
    with pytest.raises(TypeError, match="calib: expected KittiCalibration"):
        write_calib(tmp_path / "c.txt", None)


def test_write_velodyne_round_trip_and_errors(tmp_path):
    points = torch.randn(1000, 4, dtype=torch.float32)
    assert torch.equal(read_velodyne(write_velodyne(tmp_path / "a.bin", points)), points)
    assert torch.equal(read_velodyne(write_velodyne(tmp_path / "b.bin", points.numpy())), points)
    assert read_velodyne(write_velodyne(tmp_path / "e.bin", torch.zeros(0, 4))).shape == (0, 4)
    six = torch.randn(5, 6)
    assert torch.equal(read_velodyne(write_velodyne(tmp_path / "s.bin", six, num_features=6), 6), six)
    with pytest.raises(ValueError, match=r"points: expected shape \[N, 4\], got \(5, 3\)"):
        write_velodyne(tmp_path / "x.bin", torch.zeros(5, 3))
    with pytest.raises(TypeError, match="floating dtype"):
        write_velodyne(tmp_path / "x.bin", torch.zeros(5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        write_velodyne(tmp_path / "x.bin", torch.full((2, 4), float("nan")))
    assert not (tmp_path / "x.bin").exists()


def test_read_image_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/train.txt"):
        read_image_set(tmp_path, "train")
    folder = tmp_path / "ImageSets"
    folder.mkdir()
    (folder / "train.txt").write_text("000003\n000001\n\n000010\n")
    assert read_image_set(tmp_path, "train") == ["000003", "000001", "000010"]
    (folder / "val.txt").write_text("")
    assert read_image_set(str(tmp_path), "val") == []
    (folder / "bad.txt").write_text("000001\n000002 000003\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected one frame id"):
        read_image_set(tmp_path, "bad")
    (folder / "dup.txt").write_text("000001\n000001\n")
    with pytest.raises(ValueError, match=r"dup.txt:2: frame id '000001' is listed twice"):
        read_image_set(tmp_path, "dup")
    with pytest.raises(ValueError, match="split"):
        read_image_set(tmp_path, "../x")


CALIB = ("P0: 7 0 6 0 0 7 1 0 0 0 1 0\nP1: 7 0 6 -3 0 7 1 0 0 0 1 0\nP2: 7 0 6 4 0 7 1 0 0 0 1 0\n"
         "P3: 7 0 6 -3 0 7 1 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n")


@pytest.mark.parametrize("text, message", [
    (CALIB.replace("P2: 7 0 6 4", "P2: 7 0 six 4"), r"calib.txt:3: P2 value 3: expected a finite number, got 'six'"),
    (CALIB.replace("R0_rect: 1 0 0 0 1 0 0 0 1", "R0_rect: 1 0 0"), r"calib.txt:5: R0_rect: expected 9 values"),
    (CALIB + "garbage line\n", r"calib.txt:7: expected 'KEY: values'"),
])
def test_read_calib_names_the_line(tmp_path, text, message):
    (tmp_path / "calib.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_calib(tmp_path / "calib.txt")
    (tmp_path / "calib.txt").write_text(CALIB + "calib_time: 09-Jan-2012 13:57:47\n")
    assert read_calib(tmp_path / "calib.txt").P.shape == (4, 4, 4)


def test_read_label_names_the_line_and_column(tmp_path):
    good = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
    (tmp_path / "label.txt").write_text(good + good.replace("46.70", "4x.70"))
    with pytest.raises(ValueError, match=r"label.txt:2: column 14: expected a finite number, got '4x.70'"):
        read_label(tmp_path / "label.txt")
    (tmp_path / "label.txt").write_bytes(b"\xff\xfe binary")
    with pytest.raises(ValueError, match="label.txt: not a text file"):
        read_label(tmp_path / "label.txt")


def test_truncated_png_names_the_file(tmp_path, real_data):
    data = (real_data / "lidar" / "kitti_360" / "image_2" / "000000.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.png: not a readable image"):
        read_image(tmp_path / "cut.png")


def test_load_kitti_frame_without_image_does_not_open_it(real_data, tmp_path):
    import shutil

    root = tmp_path / "kitti"
    shutil.copytree(real_data / "lidar" / "kitti_360", root)
    data = (root / "image_2" / "000000.png").read_bytes()
    (root / "image_2" / "000000.png").write_bytes(data[:4096])  # decoding would fail, the header is intact
    frame = load_kitti_frame(root, 0, split="", load_image=False)
    assert frame.image is None and frame.image_hw == (370, 1224)
    shutil.rmtree(root / "image_2")
    assert load_kitti_frame(root, 0, split="", load_image=False).image_hw == (0, 0)


def _edited_info(real_data, tmp_path, edit):
    info = load_info_pickle(real_data / "fusion" / "000008.pkl")
    edit(info["data_list"][0])
    path = tmp_path / "000008.pkl"
    path.write_bytes(pickle.dumps(info))
    for name in ("000008.bin", "000008.png"):
        (tmp_path / name).symlink_to(real_data / "fusion" / name)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda entry: entry.pop("lidar_points"), r"data_list\[0\].lidar_points: missing key"),
    (lambda entry: entry["instances"][0].__setitem__("bbox_3d", [1.0, 2.0, 3.0]),
     r"data_list\[0\].instances\[0\].bbox_3d: expected shape \[7\], got \[3\]"),
    (lambda entry: entry["instances"][1].pop("bbox_3d"), r"data_list\[0\].instances\[1\].bbox_3d: missing key"),
    (lambda entry: entry["images"]["CAM2"].__setitem__("lidar2img", "eye"),
     r"data_list\[0\].images.CAM2.lidar2img: expected numbers"),
])
def test_info_pickle_content_errors_name_the_key(real_data, tmp_path, edit, message):
    path = _edited_info(real_data, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_mmdet3d_frame(path)
    assert str(path) in str(info.value)
