"""Waymo Open Dataset readers for the two processed layouts detection code uses.

* **OpenPCDet processed format** (``waymo_processed_data_v0_5_0``)::

      <root>/<tag>/<segment>/%04d.npy          float32 (N, 6): x, y, z, intensity, elongation, NLZ flag
      <root>/<tag>/<segment>/<segment>.pkl     list of per-frame info dicts
      <root>/<tag>_infos_<split>.pkl           (optional) the per-split concatenation of those lists
      <root>/ImageSets/<split>.txt             segment names (``segment-..._with_camera_labels.tfrecord``)

  Points are in the vehicle frame (both returns of the five LiDARs). As OpenPCDet's ``get_lidar``
  (``waymo_dataset.py``), points inside a no-label zone are dropped (the NLZ flag is ``-1`` outside any
  NLZ) and ``tanh`` is applied to intensity and elongation, giving float32 ``[N, 5]``
  ``(x, y, z, tanh(intensity), tanh(elongation))``. A frame info holds ``point_cloud{num_features,
  lidar_sequence, sample_idx}``, ``frame_id``, ``metadata``, ``image``, ``pose`` and
  ``annos{name, difficulty, dimensions, location, heading_angles, num_points_in_gt, speed_global?,
  gt_boxes_lidar (M, 7 or 9)}``; boxes are ``(x, y, z, dx, dy, dz, heading[, vx, vy])`` with the centre,
  the library convention.

* **mmdetection3d Waymo-in-KITTI layout**::

      <root>/training/velodyne/<frame>.bin     float32 (N, 6): x, y, z, intensity, elongation, timestamp
      <root>/waymo_infos_<split>.pkl           {'metainfo': {'dataset': 'waymo', ...}, 'data_list': [...]}

  ``instances[*].bbox_3d`` are LiDAR boxes ``(x, y, z_bottom, l, w, h, yaw)`` (mmdet3d ``LiDARInstance3DBoxes``,
  origin at the bottom centre, yaw from +x counter-clockwise); :func:`load_waymo_kitti_frame` returns them
  with the centre, ``z = z_bottom + h / 2``. Intensity and elongation are raw here (no tanh).

All pickles are read with :func:`geoattn.data.kitti.load_info_pickle`, which builds only plain containers
and numpy arrays, so no foreign code runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.kitti import load_info_pickle, read_velodyne

__all__ = [
    "WAYMO_CLASSES",
    "WAYMO_KITTI_CLASSES",
    "DEFAULT_PROCESSED_TAG",
    "read_waymo_processed_points",
    "load_waymo_segment_infos",
    "load_waymo_split_infos",
    "waymo_info_annotations",
    "WaymoAnnotations",
    "read_waymo_kitti_velodyne",
    "load_waymo_kitti_infos",
    "load_waymo_kitti_frame",
    "WaymoKittiFrame",
]

#: OpenPCDet's Waymo class names (``annos['name']``; ``'unknown'`` rows are dropped by the readers).
WAYMO_CLASSES = ("Vehicle", "Pedestrian", "Cyclist", "Sign")
#: mmdetection3d's Waymo-in-KITTI label order (``bbox_label_3d`` indexes it).
WAYMO_KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")
DEFAULT_PROCESSED_TAG = "waymo_processed_data_v0_5_0"


def _path(path, name: str, must_exist: bool = True) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name}: expected a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if must_exist and not path.exists():
        raise FileNotFoundError(f"{name}: no such file or folder: {path}")
    return path


# ---------------------------------------------------------------------------------------------------------
# OpenPCDet processed format
# ---------------------------------------------------------------------------------------------------------

def read_waymo_processed_points(path, drop_nlz: bool = True, tanh_dims: Sequence[int] = (3, 4)) -> Tensor:
    r"""One OpenPCDet processed Waymo frame ``<segment>/%04d.npy``.

    The file is float32 ``(N, 6)`` ``(x, y, z, i, e, nlz)``. With ``drop_nlz`` only the rows with
    ``nlz == -1`` (outside every no-label zone) are kept (OpenPCDet unless ``DISABLE_NLZ_FLAG_ON_POINTS``);
    the columns ``tanh_dims`` (OpenPCDet ``POINTS_TANH_DIM``; default both features, as the ScatterFormer
    recipe) become :math:`\tanh` of themselves, e.g. :math:`(\tanh i, \tanh e)`.

    Returns:
        float32 ``[N', 5]`` ``(x, y, z, intensity', elongation')``.
    """
    path = _path(path, "path")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[1] != 6:
        raise ValueError(f"path: {path}: expected an (N, 6) array (x, y, z, intensity, elongation, NLZ flag), "
                         f"got shape {array.shape}")
    array = np.asarray(array, dtype=np.float32)
    points = array[:, :5]
    if drop_nlz:
        points = points[array[:, 5] == -1]
    points = np.array(points, dtype=np.float32, copy=True)
    dims = [int(d) for d in tanh_dims]
    if any(not 3 <= d < 5 for d in dims):
        raise ValueError(f"tanh_dims: expected feature columns among 3 (intensity) and 4 (elongation), got {dims}")
    if dims:
        points[:, dims] = np.tanh(points[:, dims])
    return torch.from_numpy(points)


def _check_infos(infos, path: Path) -> list[dict]:
    if not isinstance(infos, list) or not all(isinstance(info, dict) for info in infos):
        raise ValueError(f"path: {path}: expected a list of per-frame info dicts (OpenPCDet Waymo infos), "
                         f"got {type(infos).__name__}")
    for number, info in enumerate(infos):
        cloud = info.get("point_cloud")
        if not isinstance(cloud, dict) or "lidar_sequence" not in cloud or "sample_idx" not in cloud:
            raise ValueError(f"path: {path}: info {number} lacks point_cloud.lidar_sequence / sample_idx")
    return infos


def load_waymo_segment_infos(path) -> list[dict]:
    """The per-segment infos ``<segment>/<segment>.pkl`` (a list of frame dicts), via the restricted unpickler."""
    path = _path(path, "path")
    return _check_infos(load_info_pickle(path), path)


def _segment_name(line: str) -> str:
    name = line.strip()
    return name[: -len(".tfrecord")] if name.endswith(".tfrecord") else name


def load_waymo_split_infos(root, split: str, processed_data_tag: str = DEFAULT_PROCESSED_TAG,
                           sampled_interval: int = 1) -> list[dict]:
    """All frame infos of a split of the OpenPCDet processed format.

    ``<root>/ImageSets/<split>.txt`` lists segments; each ``<root>/<tag>/<segment>/<segment>.pkl`` is read
    (segments without a pickle are skipped, as OpenPCDet does). Without an ImageSets file the per-split
    pickle ``<root>/<tag>_infos_<split>.pkl`` is read instead. Every ``sampled_interval``-th frame is kept.
    """
    root = _path(root, "root")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split: expected a non-empty split name, got {split!r}")
    if not isinstance(sampled_interval, int) or sampled_interval < 1:
        raise ValueError(f"sampled_interval: expected a positive int, got {sampled_interval!r}")
    image_set = root / "ImageSets" / f"{split}.txt"
    infos: list[dict] = []
    if image_set.exists():
        for line in image_set.read_text().splitlines():
            if not line.strip():
                continue
            segment = _segment_name(line)
            candidates = [segment, segment.replace("_with_camera_labels", "")]
            for name in candidates:
                pickle_path = root / processed_data_tag / name / f"{name}.pkl"
                if pickle_path.exists():
                    infos.extend(load_waymo_segment_infos(pickle_path))
                    break
    else:
        split_pickle = root / f"{processed_data_tag}_infos_{split}.pkl"
        if not split_pickle.exists():
            raise FileNotFoundError(f"split: neither {image_set} nor {split_pickle} exists")
        infos = _check_infos(load_info_pickle(split_pickle), split_pickle)
    return infos[::sampled_interval]


@dataclass
class WaymoAnnotations:
    """Ground truth of one processed Waymo frame ('unknown' rows dropped).

    Attributes:
        boxes: float32 ``[M, 7]`` ``(x, y, z, dx, dy, dz, heading)`` (centre, vehicle frame).
        names: ``M`` class names (``Vehicle``, ``Pedestrian``, ``Cyclist``, ``Sign``).
        num_points: long ``[M]`` LiDAR points inside each box (``num_points_in_gt``).
        difficulty: long ``[M]`` (1 = LEVEL_1, 2 = LEVEL_2; 0 is read as LEVEL_1 by the metric).
        speed: float32 ``[M, 2]`` when the boxes carry velocity (9 columns), else ``None``.
    """

    boxes: Tensor
    names: list[str]
    num_points: Tensor
    difficulty: Tensor
    speed: Tensor | None = None

    def __len__(self) -> int:
        return len(self.names)


def waymo_info_annotations(info: dict) -> WaymoAnnotations:
    """The ``annos`` of an OpenPCDet Waymo frame info as tensors (empty when the info has none)."""
    if not isinstance(info, dict):
        raise TypeError(f"info: expected a dict, got {type(info).__name__}")
    annos = info.get("annos")
    if annos is None:
        return WaymoAnnotations(torch.zeros(0, 7), [], torch.zeros(0, dtype=torch.long),
                                torch.zeros(0, dtype=torch.long))
    names = [str(name) for name in np.asarray(annos["name"]).reshape(-1)]
    boxes = np.asarray(annos["gt_boxes_lidar"], dtype=np.float32).reshape(len(names), -1)
    if boxes.shape[1] not in (7, 9):
        raise ValueError(f"info: annos.gt_boxes_lidar: expected (M, 7) or (M, 9), got {boxes.shape}")
    count = len(names)
    num_points = np.asarray(annos.get("num_points_in_gt", np.zeros(count)), dtype=np.int64).reshape(-1)
    difficulty = np.asarray(annos.get("difficulty", np.zeros(count)), dtype=np.int64).reshape(-1)
    if num_points.shape[0] != count or difficulty.shape[0] != count:
        raise ValueError(f"info: annos: {count} names but {num_points.shape[0]} num_points_in_gt and "
                         f"{difficulty.shape[0]} difficulty values")
    keep = np.array([name != "unknown" for name in names], dtype=bool)
    boxes_t = torch.from_numpy(boxes[keep].copy())
    return WaymoAnnotations(
        boxes=boxes_t[:, :7].contiguous(),
        names=[name for name, k in zip(names, keep) if k],
        num_points=torch.from_numpy(num_points[keep].copy()),
        difficulty=torch.from_numpy(difficulty[keep].copy()),
        speed=boxes_t[:, 7:9].contiguous() if boxes.shape[1] == 9 else None,
    )


# ---------------------------------------------------------------------------------------------------------
# mmdetection3d Waymo-in-KITTI layout
# ---------------------------------------------------------------------------------------------------------

def read_waymo_kitti_velodyne(path) -> Tensor:
    """An mmdetection3d Waymo-in-KITTI ``velodyne/<frame>.bin``: float32 ``[N, 6]``
    ``(x, y, z, intensity, elongation, timestamp)`` (raw values, no tanh)."""
    return read_velodyne(path, num_features=6)


def load_waymo_kitti_infos(path) -> dict:
    """An mmdetection3d v1.x ``waymo_infos_<split>.pkl`` (``{'metainfo', 'data_list'}``), checked to be Waymo."""
    path = _path(path, "path")
    info = load_info_pickle(path)
    if not isinstance(info, dict) or not isinstance(info.get("data_list"), list):
        raise ValueError(f"path: {path} is not an mmdetection3d v1.x info pickle (expected a dict with 'data_list')")
    dataset = str(info.get("metainfo", {}).get("dataset", "waymo"))
    if dataset.lower() != "waymo":
        raise ValueError(f"path: {path} is a {dataset!r} info pickle, expected a 'waymo' one")
    return info


@dataclass
class WaymoKittiFrame:
    """One mmdetection3d Waymo-in-KITTI frame.

    Attributes:
        points: float32 ``[N, 6]`` ``(x, y, z, intensity, elongation, timestamp)``.
        boxes: float32 ``[M, 7]`` LiDAR boxes with the centre (library convention).
        names: ``M`` class names (``Car``, ``Pedestrian``, ``Cyclist``).
        num_lidar_pts: long ``[M]`` (``-1`` where the info lacks it).
        sample_idx, context_name, timestamp: identifiers from the info.
        ego2global: float64 ``[4, 4]`` or ``None``.
        lidar2img, lidar2cam, cam2img: float64 per camera (``{'CAM_FRONT': [3|4, 4]}``).
        image_hw: ``{camera: (H, W)}``.
    """

    points: Tensor
    boxes: Tensor
    names: list[str]
    num_lidar_pts: Tensor
    sample_idx: int | str
    context_name: str = ""
    timestamp: int | None = None
    ego2global: Tensor | None = None
    lidar2img: dict[str, Tensor] = field(default_factory=dict)
    lidar2cam: dict[str, Tensor] = field(default_factory=dict)
    cam2img: dict[str, Tensor] = field(default_factory=dict)
    image_hw: dict[str, tuple[int, int]] = field(default_factory=dict)


def _find(root: Path, relative: str, subdirs: tuple[str, ...]) -> Path:
    for sub in ("",) + subdirs:
        candidate = root / sub / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative!r} not found under {root} (tried {', '.join(('.',) + subdirs)})")


def load_waymo_kitti_frame(info_path, index: int = 0, root=None,
                           class_names: tuple[str, ...] | None = None) -> WaymoKittiFrame:
    """Frame ``index`` of an mmdetection3d Waymo info pickle, points read from ``velodyne``.

    ``lidar_points.lidar_path`` is looked up under ``root`` (default: the pickle's folder), then under
    ``training/velodyne``, ``testing/velodyne`` and ``velodyne``. Instances with ``bbox_label_3d < 0`` are
    dropped; the boxes move from the bottom-centre origin to the centre: ``z += h / 2``.
    """
    info_path = _path(info_path, "info_path")
    root = _path(root, "root") if root is not None else info_path.parent
    info = load_waymo_kitti_infos(info_path)
    frames = info["data_list"]
    if not isinstance(index, int) or not -len(frames) <= index < len(frames):
        raise IndexError(f"index: {index!r} out of range for {len(frames)} frames")
    entry = frames[index]
    metainfo = info.get("metainfo", {})
    if class_names is None:
        categories = metainfo.get("categories")
        if isinstance(categories, dict):
            by_index = {int(v): str(k) for k, v in categories.items()}
            class_names = tuple(by_index.get(i, str(i)) for i in range(max(by_index) + 1)) if by_index else ()
        else:
            class_names = tuple(metainfo.get("classes", WAYMO_KITTI_CLASSES))
    lidar = entry["lidar_points"]
    num_features = int(lidar.get("num_pts_feats", 6))
    points = read_velodyne(_find(root, lidar["lidar_path"], ("training/velodyne", "testing/velodyne", "velodyne")),
                           num_features)
    instances = [inst for inst in entry.get("instances", []) if int(inst.get("bbox_label_3d", -1)) >= 0]
    raw = np.asarray([inst["bbox_3d"] for inst in instances], dtype=np.float64).reshape(-1, 7)
    boxes = raw.copy()
    boxes[:, 2] += raw[:, 5] / 2
    labels = [int(inst["bbox_label_3d"]) for inst in instances]
    names = [class_names[label] if label < len(class_names) else str(label) for label in labels]
    num_pts = torch.tensor([int(inst.get("num_lidar_pts", -1)) for inst in instances], dtype=torch.long)
    images = entry.get("images", {})
    as64 = lambda value: torch.tensor(np.asarray(value, dtype=np.float64))  # noqa: E731
    ego = entry.get("ego2global")
    return WaymoKittiFrame(
        points=points,
        boxes=torch.from_numpy(boxes.astype(np.float32)),
        names=names,
        num_lidar_pts=num_pts,
        sample_idx=entry.get("sample_idx", index),
        context_name=str(entry.get("context_name", "")),
        timestamp=int(entry["timestamp"]) if "timestamp" in entry else None,
        ego2global=as64(ego) if ego is not None else None,
        lidar2img={n: as64(c["lidar2img"]) for n, c in images.items() if isinstance(c, dict) and "lidar2img" in c},
        lidar2cam={n: as64(c["lidar2cam"]) for n, c in images.items() if isinstance(c, dict) and "lidar2cam" in c},
        cam2img={n: as64(c["cam2img"]) for n, c in images.items() if isinstance(c, dict) and "cam2img" in c},
        image_hw={n: (int(c["height"]), int(c["width"])) for n, c in images.items()
                  if isinstance(c, dict) and "height" in c and "width" in c},
    )
