"""Detection datasets and collate (geoattn.detection.dataset)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geoattn.data.kitti import KittiCalibration, KittiLabels, read_calib, read_velodyne
from geoattn.detection.dataset import (KittiDetectionDataset, WaymoDetectionDataset, build_dataset, class_indices,
                                       collate_detection)
from geoattn.detection.gt_database import create_gt_database
from geoattn.sparse.boxes import boxes_iou_bev, points_in_boxes
from tests.detection._kitti_layout import (IMAGE_HW, SCENES, kitti_data_config, link_real_kitti,
                                           write_kitti_root, write_waymo_processed_root)

CLASSES = ["Car", "Pedestrian", "Cyclist"]
BATCH_KEYS = {"points", "batch", "batch_size", "gt_boxes", "gt_labels", "frame_id", "calib", "image_shape", "annos"}
RANGE = np.array([0, -40, -3, 70.4, 40, 1], dtype=np.float32)


def _no_aug(**overrides):
    cfg = kitti_data_config(gt_sampling=False, world=False, **overrides)
    return cfg


def _fov_reference(points: np.ndarray, calib: KittiCalibration, hw) -> np.ndarray:
    """Direct projection with P2 @ R0_rect @ Tr_velo_to_cam (float64), one point at a time."""
    matrix = (calib.P[2] @ calib.R0_rect @ calib.Tr_velo_to_cam).numpy()
    keep = []
    for p in points.astype(np.float64):
        u, v, w = (matrix @ np.array([p[0], p[1], p[2], 1.0]))[:3]
        keep.append(w > 1e-5 and 0 <= u / w < hw[1] and 0 <= v / w < hw[0])
    return np.asarray(keep, dtype=bool)


def _in_range(points: np.ndarray) -> np.ndarray:
    return ((points[:, :3] >= RANGE[:3]) & (points[:, :3] < RANGE[3:])).all(1)


@pytest.fixture()
def kitti_root(tmp_path):
    write_kitti_root(tmp_path / "kitti")
    return tmp_path / "kitti"


def test_collated_batch_shapes_dtypes_and_padding(kitti_root):
    dataset = build_dataset(_no_aug(), CLASSES, kitti_root, "train", training=False)
    assert isinstance(dataset, KittiDetectionDataset) and len(dataset) == 3 and dataset.num_point_features == 4
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_detection)))
    assert set(batch) == BATCH_KEYS
    assert batch["points"].dtype == torch.float32 and batch["points"].shape[1] == 4
    assert batch["batch"].dtype == torch.long and batch["batch"].shape == batch["points"].shape[:1]
    assert bool((batch["batch"][1:] >= batch["batch"][:-1]).all()) and batch["batch_size"] == 3
    samples = [dataset[i] for i in range(3)]
    assert torch.equal(batch["points"], torch.cat([s["points"] for s in samples]))
    assert torch.bincount(batch["batch"]).tolist() == [len(s["points"]) for s in samples]
    counts = [len(s["gt_labels"]) for s in samples]
    assert counts == [3, 2, 3]  # frame 1: Person_sitting and the car behind (x < 0) are not targets
    assert batch["gt_boxes"].shape == (3, 3, 7) and batch["gt_boxes"].dtype == torch.float32
    assert batch["gt_labels"].shape == (3, 3) and batch["gt_labels"].dtype == torch.long
    assert batch["gt_labels"][1].tolist() == [0, 0, -1] and batch["gt_boxes"][1, 2].abs().sum() == 0
    assert batch["frame_id"] == ["000000", "000001", "000002"]
    assert all(isinstance(c, KittiCalibration) for c in batch["calib"])
    assert batch["image_shape"] == [IMAGE_HW] * 3
    annos = batch["annos"]
    assert all(isinstance(a, KittiLabels) for a in annos)
    assert annos[0].names == ["Car", "Pedestrian", "Cyclist", "Van", "DontCare", "DontCare"]
    assert annos[1].names == ["Car", "Car", "Person_sitting", "Car", "DontCare", "DontCare"]
    # one sample alone and samples without boxes still give [B, >= 1] targets
    empty = dict(samples[0], gt_boxes=torch.zeros(0, 7), gt_labels=torch.zeros(0, dtype=torch.long))
    alone = collate_detection([empty])
    assert alone["gt_boxes"].shape == (1, 1, 7) and alone["gt_labels"].tolist() == [[-1]]


def test_label_mapping_and_boxes(kitti_root):
    dataset = build_dataset(_no_aug(), CLASSES, kitti_root, "train", training=False)
    sample = dataset[0]
    assert sample["gt_names"] == ["Car", "Pedestrian", "Cyclist"] and sample["gt_labels"].tolist() == [0, 1, 2]
    expected = torch.tensor(SCENES["000000"][0][:3])
    torch.testing.assert_close(sample["gt_boxes"], expected, atol=6e-3, rtol=0)  # labels are written to 0.01
    # other class lists map to other indices; Van becomes a target when asked for
    sample = build_dataset(_no_aug(), ["Van", "Car"], kitti_root, "train", training=False)[0]
    assert sample["gt_names"] == ["Car", "Van"] and sample["gt_labels"].tolist() == [1, 0]
    # headings are wrapped into [-pi, pi)
    heading = dataset[1]["gt_boxes"][:, 6]
    assert bool(((heading >= -math.pi) & (heading < math.pi)).all())


def test_class_indices_match_a_plain_loop():
    classes = ["Pedestrian", "Car", "Cyclist"]
    names = ["Car", "Van", "Cyclist", "DontCare", "Pedestrian", "Car", "Zebra", "Aardvark"]
    expected = [classes.index(n) if n in classes else -1 for n in names]
    assert class_indices(names, classes).tolist() == expected
    assert class_indices([], classes).shape == (0,) and class_indices(["Car"], ["Car"]).tolist() == [0]


def test_fov_filter_and_range_mask_match_a_direct_computation(kitti_root):
    base = kitti_root / "training"
    no_mask = _no_aug(DATA_PROCESSOR=[])
    fov = build_dataset(no_mask, CLASSES, kitti_root, "train", training=False)
    full = build_dataset(dict(no_mask, FOV_POINTS_ONLY=False), CLASSES, kitti_root, "train", training=False)
    masked = build_dataset(_no_aug(), CLASSES, kitti_root, "train", training=False)
    for index, frame in enumerate(SCENES):
        raw = read_velodyne(base / "velodyne" / f"{frame}.bin").numpy()
        keep = _fov_reference(raw, read_calib(base / "calib" / f"{frame}.txt"), IMAGE_HW)
        assert 0 < keep.sum() < len(raw)
        np.testing.assert_array_equal(fov[index]["points"].numpy(), raw[keep])  # order kept in evaluation
        np.testing.assert_array_equal(full[index]["points"].numpy(), raw)
        expected = raw[keep & _in_range(raw)]
        assert len(expected) < keep.sum()
        np.testing.assert_array_equal(masked[index]["points"].numpy(), expected)
    # boxes with the centre outside the range leave the targets: x = -10 (frame 1) and x = 75 (frame 2)
    assert len(fov[1]["gt_labels"]) == 3 and len(masked[1]["gt_labels"]) == 2
    assert 75.0 in fov[2]["gt_boxes"][:, 0].round().tolist()
    assert 75.0 not in masked[2]["gt_boxes"][:, 0].round().tolist()


def test_training_shuffles_and_drops_empty_boxes(kitti_root):
    cfg = _no_aug()
    evaluation = build_dataset(cfg, CLASSES, kitti_root, "train", training=False)
    training = build_dataset(cfg, CLASSES, kitti_root, "train", training=True)
    assert training.augmentor is not None and training.augmentor.names == []
    for index in range(3):
        a, b = evaluation[index]["points"], training[index]["points"]
        assert not torch.equal(a, b)
        order = lambda t: t[np.lexsort(t.numpy().T[::-1])]  # noqa: E731
        assert torch.equal(order(a), order(b))
    # frame 2's car at (40, -5) has no point: dropped for training only
    assert evaluation[2]["gt_names"] == ["Pedestrian", "Car", "Cyclist"]
    assert training[2]["gt_names"] == ["Pedestrian", "Cyclist"]
    keep_empty = build_dataset(dict(cfg, FILTER_EMPTY_BOXES_FOR_TRAIN=False), CLASSES, kitti_root, "train", True)
    assert keep_empty[2]["gt_names"] == ["Pedestrian", "Car", "Cyclist"]


def test_training_pipeline_with_gt_sampling(kitti_root):
    create_gt_database(kitti_root, progress=False)
    dataset = build_dataset(kitti_data_config(), CLASSES, kitti_root, "train", training=True, seed=3)
    pasted = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            points, boxes, labels = sample["points"], sample["gt_boxes"], sample["gt_labels"]
            assert points.dtype == torch.float32 and boxes.dtype == torch.float32 and labels.dtype == torch.long
            assert bool(((labels >= 0) & (labels < 3)).all()) and len(sample["gt_names"]) == len(labels)
            assert _in_range(points.numpy()).all()
            assert bool(((boxes[:, 6] >= -math.pi) & (boxes[:, 6] < math.pi)).all())
            assert bool((points_in_boxes(points, boxes).sum(0) > 0).all())  # no empty target box
            iou = boxes_iou_bev(boxes.double(), boxes.double())
            iou.fill_diagonal_(0)
            assert iou.numel() == 0 or float(iou.max()) < 1e-6
            assert sample["augmentation"] is not None and sample["annos"] is not None
            pasted += len(labels) - sum(n in CLASSES for n in SCENES[sample["frame_id"]][1])
    assert pasted > 0
    dataset.disable_gt_sampling()
    for index in range(len(dataset)):
        names = SCENES[dataset.frame_ids[index]][1]
        assert len(dataset[index]["gt_labels"]) <= sum(n in CLASSES for n in names)


def _batches(dataset, workers):
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_detection)
    return list(loader)


def test_dataloader_workers_give_the_same_batches(kitti_root):
    create_gt_database(kitti_root, progress=False)
    dataset = build_dataset(kitti_data_config(), CLASSES, kitti_root, "train", training=True, seed=11)
    dataset.set_epoch(2)
    single = _batches(dataset, 0)
    multi = _batches(dataset, 2)
    assert len(single) == len(multi) == 2
    for a, b in zip(single, multi):
        for key in ("points", "batch", "gt_boxes", "gt_labels"):
            assert torch.equal(a[key], b[key]), key
        assert a["frame_id"] == b["frame_id"]
    again = _batches(dataset, 0)
    assert all(torch.equal(a["points"], b["points"]) for a, b in zip(single, again))
    dataset.set_epoch(3)
    other = _batches(dataset, 0)
    assert not all(a["points"].shape == b["points"].shape and torch.equal(a["points"], b["points"])
                   for a, b in zip(single, other))


def test_errors(kitti_root):
    with pytest.raises(ValueError, match="DATA_CONFIG.DATASET"):
        build_dataset(dict(_no_aug(), DATASET="NuScenesDataset"), CLASSES, kitti_root, "train", False)
    with pytest.raises(ValueError, match="POINT_CLOUD_RANGE"):
        build_dataset(dict(_no_aug(), POINT_CLOUD_RANGE=[0, 0, 0, 1, 1]), CLASSES, kitti_root, "train", False)
    with pytest.raises(ValueError, match="used_feature_list"):
        build_dataset(dict(_no_aug(), POINT_FEATURE_ENCODING={"used_feature_list": ["x", "y", "z", "elongation"],
                                                              "src_feature_list": ["x", "y", "z", "intensity"]}),
                      CLASSES, kitti_root, "train", False)
    with pytest.raises(ValueError, match=r"DATA_PROCESSOR\[0\]"):
        build_dataset(dict(_no_aug(), DATA_PROCESSOR=[{"NAME": "sample_voxels"}]), CLASSES, kitti_root, "train", False)
    with pytest.raises(ValueError, match="class_names"):
        build_dataset(_no_aug(), "Car", kitti_root, "train", False)
    with pytest.raises(FileNotFoundError, match="val"):
        build_dataset(_no_aug(), CLASSES, kitti_root, "test", False)  # DATA_SPLIT test -> val: no ImageSets/val.txt
    with pytest.raises(FileNotFoundError, match="create-gt-database"):
        build_dataset(kitti_data_config(), CLASSES, kitti_root, "train", True)
    dataset = build_dataset(_no_aug(), CLASSES, kitti_root, "train", False)
    with pytest.raises(IndexError, match="index"):
        dataset[3]
    with pytest.raises(ValueError, match="samples"):
        collate_detection([])
    with pytest.raises(ValueError, match="columns"):
        collate_detection([dataset[0], dict(dataset[1], points=dataset[1]["points"][:, :3])])
    with pytest.raises(ValueError, match="epoch"):
        dataset.set_epoch(-1)
    with pytest.raises(ValueError, match="seed"):
        build_dataset(_no_aug(), CLASSES, kitti_root, "train", False, seed=-1)


def test_waymo_processed_dataset(tmp_path):
    written = write_waymo_processed_root(tmp_path)
    cfg = {"DATASET": "WaymoDataset", "POINT_CLOUD_RANGE": [-75.2, -75.2, -2, 75.2, 75.2, 4],
           "DATA_SPLIT": {"train": "train", "test": "val"},
           "POINT_FEATURE_ENCODING": {"used_feature_list": ["x", "y", "z", "intensity", "elongation"],
                                      "src_feature_list": ["x", "y", "z", "intensity", "elongation"]},
           "DATA_PROCESSOR": [{"NAME": "mask_points_and_boxes_outside_range", "REMOVE_OUTSIDE_BOXES": True},
                              {"NAME": "shuffle_points", "SHUFFLE_ENABLED": {"train": True, "test": False}}]}
    classes = ["Vehicle", "Pedestrian", "Cyclist"]
    evaluation = build_dataset(cfg, classes, tmp_path, "train", training=False)
    assert isinstance(evaluation, WaymoDetectionDataset) and len(evaluation) == 2
    sample = evaluation[1]
    raw = written["points"][1]
    expected = raw[raw[:, 5] == -1][:, :5].copy()
    expected[:, 3:5] = np.tanh(expected[:, 3:5])
    expected = expected[((expected[:, :3] >= [-75.2, -75.2, -2]) & (expected[:, :3] < [75.2, 75.2, 4])).all(1)]
    np.testing.assert_allclose(sample["points"].numpy(), expected, rtol=1e-6)
    assert sample["gt_names"] == ["Vehicle", "Pedestrian", "Cyclist", "Vehicle"]  # unknown and Sign dropped
    assert sample["gt_labels"].tolist() == [0, 1, 2, 0] and sample["gt_boxes"].shape == (4, 7)
    assert sample["frame_id"].endswith("_001") and sample["calib"] is None and sample["annos"] is None
    batch = collate_detection([evaluation[0], sample])
    assert batch["points"].shape[1] == 5 and batch["gt_boxes"].shape == (2, 4, 7)
    training = build_dataset(dict(cfg, DATA_AUGMENTOR={"AUG_CONFIG_LIST": [
        {"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x", "y"]}]}), classes, tmp_path, "train", True)
    # num_points_in_gt == 0 (the cyclist) is dropped for training, and boxes left without points too
    assert training[0]["gt_names"] == ["Vehicle", "Pedestrian"]
    # the official config's switches: keep NLZ points, tanh on the listed columns only
    kept = build_dataset(dict(cfg, DISABLE_NLZ_FLAG_ON_POINTS=True, POINTS_TANH_DIM=[3], DATA_PROCESSOR=[]),
                         classes, tmp_path, "train", training=False)[1]["points"].numpy()
    np.testing.assert_allclose(kept[:, 3], np.tanh(raw[:, 3]), rtol=1e-6)
    np.testing.assert_array_equal(kept[:, [0, 1, 2, 4]], raw[:, [0, 1, 2, 4]])
    gt = evaluation.evaluation_gt()
    assert len(gt) == 2 and gt[0]["labels"].tolist() == [0, 1, 2, 0]
    assert gt[0]["num_points"].tolist() == [10, 10, 0, 50] and gt[0]["difficulty"].tolist() == [1, 2, 1, 1]


def test_real_kitti_frames(real_data, tmp_path):
    real = real_data / "lidar" / "kitti_360"
    root = link_real_kitti(real, tmp_path / "kitti", ["000000", "000001"])
    dataset = build_dataset(_no_aug(), CLASSES, root, "train", training=False)
    for index, frame in enumerate(["000000", "000001"]):
        sample = dataset[index]
        raw = read_velodyne(real / "velodyne" / f"{frame}.bin").numpy()
        calib = read_calib(real / "calib" / f"{frame}.txt")
        from PIL import Image

        with Image.open(real / "image_2" / f"{frame}.png") as image:
            hw = (image.height, image.width)
        assert sample["image_shape"] == hw
        inside = ((raw[:, :3] >= RANGE[:3]) & (raw[:, :3] < RANGE[3:])).all(1)
        subset = raw[inside][:: 7]  # the plain-loop reference on a subset, the vectorised count on all
        keep = _fov_reference(subset, calib, hw)
        got = {tuple(r) for r in sample["points"].numpy().tolist()}
        assert all((tuple(p) in got) == k for p, k in zip(subset.tolist(), keep))
        assert 10_000 < len(sample["points"]) < len(raw) // 3  # the camera sees about a quarter of the sweep
    assert dataset[0]["gt_names"] == ["Pedestrian"] and dataset[0]["gt_labels"].tolist() == [1]
    assert dataset[1]["annos"].names.count("DontCare") == 4 and "Truck" in dataset[1]["annos"].names
    assert "Truck" not in dataset[1]["gt_names"]
    # the pedestrian of frame 000000 holds 377 points of the full sweep (mmdetection3d's num_lidar_pts)
    box = dataset[0]["gt_boxes"]
    assert int(points_in_boxes(read_velodyne(real / "velodyne" / "000000.bin"), box).sum()) == 377
    # training with augmentation on the real frames (database written into the tmp root, never the fixtures)
    create_gt_database(root, progress=False)
    training = build_dataset(kitti_data_config(), CLASSES, root, "train", training=True)
    batch = collate_detection([training[0], training[1]])
    assert batch["gt_boxes"].shape[0] == 2 and bool((batch["gt_labels"] >= -1).all())
    assert not list(real.glob("*.pkl")) and not (real / "gt_database").exists()
