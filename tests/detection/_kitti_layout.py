"""Small KITTI-layout folders for the data-pipeline tests (helper F's tests only).

Frames are written with the geoattn.data.kitti writers: points sampled strictly inside each LiDAR box
(at most 85 % of each half extent from the centre, so membership is robust to float32 rounding), ground
points outside every box (at least 0.2 m away), a simple calibration (LiDAR x forward -> camera z, R0 = I,
P2 = a 700 px pinhole centred in a 1242 x 375 image) and labels with DontCare rows.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from geoattn.data.kitti import (KittiCalibration, KittiLabels, boxes_lidar_to_camera, write_calib, write_label,
                                write_velodyne)
from geoattn.sparse.boxes import points_in_boxes, rotate_points_z

IMAGE_HW = (375, 1242)


def make_calib() -> KittiCalibration:
    projection = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    projection[:, :3, :3] = torch.tensor([[700.0, 0.0, 621.0], [0.0, 700.0, 187.5], [0.0, 0.0, 1.0]],
                                         dtype=torch.float64)
    velo = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
                        dtype=torch.float64)
    return KittiCalibration(P=projection, R0_rect=torch.eye(4, dtype=torch.float64), Tr_velo_to_cam=velo)


def points_inside(box: torch.Tensor, count: int, rng: np.random.Generator, fill: float = 0.85) -> torch.Tensor:
    """``count`` float32 points strictly inside ``box [7]`` (local coordinates within ``fill`` of the half size)."""
    local = (rng.uniform(-fill, fill, size=(count, 3)) * box[3:6].numpy() / 2).astype(np.float64)
    world = rotate_points_z(torch.from_numpy(local), torch.tensor(float(box[6]), dtype=torch.float64))
    return (world + box[:3].double()).float()


def ground_points(boxes: torch.Tensor, count: int, rng: np.random.Generator,
                  x_range=(-20.0, 75.0), y_range=(-35.0, 35.0)) -> torch.Tensor:
    xyz = np.stack([rng.uniform(*x_range, count), rng.uniform(*y_range, count),
                    rng.uniform(-1.9, 1.5, count)], 1)
    xyz = torch.from_numpy(xyz).float()
    if boxes.shape[0]:
        near = points_in_boxes(xyz, boxes.float(), margin=0.2).any(dim=1)
        xyz = xyz[~near]
    return xyz


def write_frame(root: Path, frame_id: str, boxes, names, rng: np.random.Generator, points_per_box=40,
                num_ground: int = 600, occluded=None, bbox_height: float = 60.0, dontcare: int = 2,
                image: bool = True) -> dict:
    """Write one frame under ``root/training``; returns the LiDAR boxes, names and points written."""
    from PIL import Image

    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 7)
    count = boxes.shape[0]
    per_box = [points_per_box] * count if isinstance(points_per_box, int) else list(points_per_box)
    parts = [points_inside(boxes[k], per_box[k], rng) for k in range(count) if per_box[k] > 0]
    parts.append(ground_points(boxes, num_ground, rng))
    xyz = torch.cat(parts)
    points = torch.cat([xyz, torch.from_numpy(rng.uniform(0, 1, (xyz.shape[0], 1))).float()], 1)
    base = root / "training"
    calib = make_calib()
    write_calib(base / "calib" / f"{frame_id}.txt", calib)
    write_velodyne(base / "velodyne" / f"{frame_id}.bin", points)
    if image:
        (base / "image_2").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (IMAGE_HW[1], IMAGE_HW[0])).save(base / "image_2" / f"{frame_id}.png")
    camera = boxes_lidar_to_camera(boxes.double(), calib.lidar2cam)
    occluded = torch.zeros(count, dtype=torch.long) if occluded is None else torch.as_tensor(occluded)
    bbox = torch.tensor([[500.0, 100.0, 560.0, 100.0 + bbox_height - 1]], dtype=torch.float64).repeat(count, 1)
    all_names = list(names) + ["DontCare"] * dontcare
    dc = dontcare
    labels = KittiLabels(
        names=all_names,
        truncated=torch.cat([torch.zeros(count, dtype=torch.float64), -torch.ones(dc, dtype=torch.float64)]),
        occluded=torch.cat([occluded.long(), -torch.ones(dc, dtype=torch.long)]),
        alpha=torch.cat([torch.zeros(count, dtype=torch.float64), torch.full((dc,), -10.0, dtype=torch.float64)]),
        bbox=torch.cat([bbox, torch.tensor([[10.0, 150.0, 40.0, 180.0]], dtype=torch.float64).repeat(dc, 1)]),
        boxes_camera=torch.cat([camera, torch.tensor([[-1000.0, -1000.0, -1000.0, -1.0, -1.0, -1.0, -10.0]],
                                                     dtype=torch.float64).repeat(dc, 1)]),
    )
    write_label(base / "label_2" / f"{frame_id}.txt", labels)
    return {"boxes": boxes, "names": list(names), "points": points}


#: three frames: classes of the detector, a Van and a Person_sitting (kept in annos only), a box outside
#: the KITTI range (x < 0) and one far beyond it (x > 70.4), an empty labelled box (frame 000002)
SCENES = {
    "000000": ([[15.0, 2.0, -0.9, 3.9, 1.6, 1.5, 0.3], [10.0, -3.0, -0.85, 0.8, 0.6, 1.7, 0.0],
                [20.0, -6.0, -0.9, 1.8, 0.6, 1.7, 1.2], [25.0, 6.0, -0.7, 5.0, 2.0, 2.0, -0.4]],
               ["Car", "Pedestrian", "Cyclist", "Van"]),
    "000001": ([[12.0, -1.0, -0.9, 4.2, 1.7, 1.5, -2.5], [30.0, 4.0, -0.9, 3.6, 1.6, 1.4, 2.9],
                [8.0, 3.0, -1.2, 0.6, 0.6, 1.2, 0.5], [-10.0, 0.0, -0.9, 3.9, 1.6, 1.5, 0.0]],
               ["Car", "Car", "Person_sitting", "Car"]),
    "000002": ([[18.0, 0.0, -0.85, 0.7, 0.7, 1.8, 0.1], [40.0, -5.0, -0.9, 4.0, 1.7, 1.5, math.pi / 2],
                [75.0, 0.0, -0.9, 4.0, 1.7, 1.5, 0.0], [22.0, 8.0, -0.9, 1.7, 0.6, 1.7, -1.0]],
               ["Pedestrian", "Car", "Car", "Cyclist"]),
}
POINTS_PER_BOX = {"000000": [40, 30, 25, 50], "000001": [45, 35, 20, 30], "000002": [30, 0, 30, 25]}


def write_kitti_root(root: Path, seed: int = 0, splits=None) -> dict:
    """The three :data:`SCENES` under ``root``; ``ImageSets/train.txt`` lists them all (or ``splits``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = {frame: write_frame(root, frame, boxes, names, rng, POINTS_PER_BOX[frame])
               for frame, (boxes, names) in SCENES.items()}
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    for split, frames in (splits or {"train": list(SCENES)}).items():
        (root / "ImageSets" / f"{split}.txt").write_text("\n".join(frames) + "\n")
    return written


def link_real_kitti(real_training: Path, root: Path, frames) -> Path:
    """A KITTI root in ``root`` whose ``training`` is a symlink to a real read-only folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "training").symlink_to(Path(real_training).resolve(), target_is_directory=True)
    (root / "ImageSets").mkdir(exist_ok=True)
    (root / "ImageSets" / "train.txt").write_text("\n".join(frames) + "\n")
    return root


def kitti_data_config(gt_sampling: bool = True, world: bool = True, **overrides) -> dict:
    """The contract's KITTI ``DATA_CONFIG`` (dicts, as the YAML loader gives them)."""
    augs = []
    if gt_sampling:
        augs.append({"NAME": "gt_sampling", "USE_ROAD_PLANE": False, "DB_INFO_PATH": ["kitti_dbinfos_train.pkl"],
                     "PREPARE": {"filter_by_min_points": ["Car:5", "Pedestrian:5", "Cyclist:5"],
                                 "filter_by_difficulty": [-1]},
                     "SAMPLE_GROUPS": ["Car:15", "Pedestrian:10", "Cyclist:10"], "NUM_POINT_FEATURES": 4,
                     "REMOVE_EXTRA_WIDTH": [0.0, 0.0, 0.0], "LIMIT_WHOLE_SCENE": True})
    if world:
        augs += [{"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x"]},
                 {"NAME": "random_world_rotation", "WORLD_ROT_ANGLE": [-0.78539816, 0.78539816]},
                 {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": [0.95, 1.05]},
                 {"NAME": "random_world_translation", "NOISE_TRANSLATE_STD": [0.5, 0.5, 0.5]}]
    cfg = {
        "DATASET": "KittiDataset",
        "POINT_CLOUD_RANGE": [0, -40, -3, 70.4, 40, 1],
        "DATA_SPLIT": {"train": "train", "test": "val"},
        "FOV_POINTS_ONLY": True,
        "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                                   "used_feature_list": ["x", "y", "z", "intensity"],
                                   "src_feature_list": ["x", "y", "z", "intensity"]},
        "DATA_AUGMENTOR": {"DISABLE_AUG_LIST": ["placeholder"], "AUG_CONFIG_LIST": augs},
        "DATA_PROCESSOR": [{"NAME": "mask_points_and_boxes_outside_range", "REMOVE_OUTSIDE_BOXES": True},
                           {"NAME": "shuffle_points", "SHUFFLE_ENABLED": {"train": True, "test": False}},
                           {"NAME": "transform_points_to_voxels_placeholder", "VOXEL_SIZE": [0.32, 0.32, 0.125]}],
    }
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# OpenPCDet processed Waymo layout
# ---------------------------------------------------------------------------------------------------------
WAYMO_SEGMENT = "segment-1234567890_1000_000_1020_000_with_camera_labels"
WAYMO_NAMES = np.array(["Vehicle", "Pedestrian", "unknown", "Cyclist", "Sign", "Vehicle"])


def write_waymo_processed_root(root: Path, frames: int = 2, seed: int = 0, tag: str = "waymo_processed_data_v0_5_0",
                               image_set: bool = True, split_pickle: bool = False) -> dict:
    """``frames`` frames of one segment in OpenPCDet's processed format; returns the raw arrays written."""
    import pickle

    root = Path(root)
    rng = np.random.default_rng(seed)
    folder = root / tag / WAYMO_SEGMENT
    folder.mkdir(parents=True, exist_ok=True)
    boxes = np.array([[10, 2, 0.5, 4.5, 2.0, 1.6, 0.3, 1.0, 0.0], [6, -3, 0.4, 0.8, 0.7, 1.8, 0.0, 0.0, 0.5],
                      [15, 8, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [20, -6, 0.5, 1.8, 0.7, 1.7, 1.0, 0.2, 0.0],
                      [25, 10, 2.5, 0.5, 0.2, 0.8, 0.0, 0.0, 0.0], [-30, 0, 0.6, 4.2, 1.9, 1.5, 2.0, 0.0, 0.0]],
                     dtype=np.float32)
    infos, raw = [], []
    for index in range(frames):
        count = 500
        points = np.zeros((count, 6), np.float32)
        points[:, 0] = rng.uniform(-60, 60, count)
        points[:, 1] = rng.uniform(-60, 60, count)
        points[:, 2] = rng.uniform(-1, 3, count)
        points[:, 3] = rng.uniform(0, 20, count)
        points[:, 4] = rng.uniform(0, 2, count)
        points[:, 5] = np.where(rng.uniform(size=count) < 0.2, 1.0, -1.0)
        inside = [points_inside(torch.from_numpy(b[:7].copy()), 10, rng).numpy() for b in boxes[:2]]
        extra = np.concatenate(inside)
        extra = np.concatenate([extra, np.full((len(extra), 2), 0.5, np.float32),
                                -np.ones((len(extra), 1), np.float32)], 1)
        points = np.concatenate([points, extra]).astype(np.float32)
        np.save(folder / f"{index:04d}.npy", points)
        raw.append(points)
        infos.append({
            "point_cloud": {"num_features": 5, "lidar_sequence": WAYMO_SEGMENT, "sample_idx": index},
            "frame_id": f"{WAYMO_SEGMENT}_{index:03d}",
            "metadata": {"context_name": "1234567890_1000_000_1020_000", "timestamp_micros": 1000 + index},
            "image": {"image_shape_0": (1280, 1920)},
            "pose": np.eye(4),
            "annos": {"name": WAYMO_NAMES.copy(), "difficulty": np.array([1, 2, 0, 1, 1, 1]),
                      "dimensions": boxes[:, 3:6].copy(), "location": boxes[:, :3].copy(),
                      "heading_angles": boxes[:, 6].copy(), "num_points_in_gt": np.array([10, 10, 0, 0, 3, 50]),
                      "gt_boxes_lidar": boxes.copy()},
        })
    with open(folder / f"{WAYMO_SEGMENT}.pkl", "wb") as handle:
        pickle.dump(infos, handle)
    if image_set:
        (root / "ImageSets").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "train.txt").write_text(f"{WAYMO_SEGMENT}.tfrecord\n")
    if split_pickle:
        with open(root / f"{tag}_infos_train.pkl", "wb") as handle:
            pickle.dump(infos, handle)
    return {"points": raw, "infos": infos, "boxes": boxes}
