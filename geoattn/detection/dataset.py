"""Detection datasets (KITTI, OpenPCDet-processed Waymo) and the batch collate.

Per-frame pipeline (OpenPCDet ``DatasetTemplate.prepare_data``), for a frame with points in the source
feature order and boxes of every annotated class except DontCare:

1. KITTI ``FOV_POINTS_ONLY``: keep the points that project into ``image_2`` (depth > 0, pixel inside);
2. training only: ``DATA_AUGMENTOR`` (:class:`~geoattn.detection.augmentation.DataAugmentor`: GT sampling,
   world flip / rotation / scaling / translation);
3. boxes of classes outside ``class_names`` leave the targets (they stay in ``"annos"``); labels are 0-based
   indices into ``class_names``; headings are wrapped into ``[-pi, pi)``;
4. ``POINT_FEATURE_ENCODING``: the columns ``used_feature_list`` picked out of ``src_feature_list``;
5. ``DATA_PROCESSOR``: ``mask_points_and_boxes_outside_range`` keeps points with
   ``lo <= p < hi`` on x, y and z (half-open, so every kept point has a voxel of the grid; OpenPCDet masks x and
   y here and its voxeliser drops the z outliers, which is the same cloud for the model) and, with
   ``REMOVE_OUTSIDE_BOXES``, boxes whose centre lies in ``[lo, hi]``; ``shuffle_points`` permutes the points
   when ``SHUFFLE_ENABLED[mode]``; voxelisation entries are ignored (the detector voxelises);
6. training with ``FILTER_EMPTY_BOXES_FOR_TRAIN`` (default on): boxes with no point left are dropped.

Seed policy: sample ``index`` of epoch ``e`` draws every random number (augmentation and shuffle) from
``numpy.random.default_rng([seed, e, index])``. The result depends on ``(seed, epoch, index)`` only -- not on
the worker that loads it, the number of workers or the order -- so ``DataLoader(num_workers=k)`` gives the
same batches for every ``k``, and a resumed run repeats an epoch exactly. Call ``dataset.set_epoch(e)``
before creating the epoch's iterator (with ``persistent_workers=True`` the workers keep the epoch they were
started with, so leave it off, the default) and ``dataset.disable_gt_sampling()`` for the last
``NUM_EPOCHS_NO_GT_SAMPLING`` epochs; both reach the workers because a fresh iterator pickles the dataset.
No worker_init_fn is needed; torch's global RNG is not used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from geoattn.data.kitti import (KittiCalibration, KittiLabels, boxes_camera_to_lidar, read_calib, read_image_set,
                                read_label, read_velodyne)
from geoattn.data.waymo import (DEFAULT_PROCESSED_TAG, load_waymo_split_infos, read_waymo_processed_points,
                                waymo_info_annotations)
from geoattn.detection.augmentation import DataAugmentor, config_get
from geoattn.sparse.boxes import limit_angle, points_in_boxes_pairs
from geoattn.sparse.geometry import project_to_image

__all__ = ["DetectionDataset", "KittiDetectionDataset", "WaymoDetectionDataset", "build_dataset",
           "collate_detection", "class_indices"]

_IGNORED_PROCESSORS = ("transform_points_to_voxels", "transform_points_to_voxels_placeholder",
                       "calculate_grid_size", "sample_points")


def class_indices(names: Sequence[str], class_names: Sequence[str]) -> torch.Tensor:
    """Long ``[M]``: the index of each name in ``class_names``, -1 for names not in it (vectorised lookup).

    With ``order = argsort(class_names)``, ``i = searchsorted(class_names[order], name)`` and the index is
    ``order[i]`` when ``class_names[order[i]] == name``.
    """
    classes = np.asarray(list(class_names), dtype=str)
    query = np.asarray(list(names), dtype=str).reshape(-1)
    if query.size == 0:
        return torch.zeros(0, dtype=torch.long)
    order = np.argsort(classes, kind="stable")
    position = np.clip(np.searchsorted(classes[order], query), 0, len(classes) - 1)
    index = order[position]
    return torch.from_numpy(np.where(classes[index] == query, index, -1).astype(np.int64))


def _image_shape(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return int(image.height), int(image.width)


def _empty_labels() -> KittiLabels:
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    return KittiLabels([], zeros(0), torch.zeros(0, dtype=torch.long), zeros(0), zeros(0, 4), zeros(0, 7))


class DetectionDataset(Dataset):
    """Shared per-frame pipeline (see the module docstring). Subclasses implement ``__len__`` and
    :meth:`load_frame` returning ``points [N, len(src_feature_list)]`` float32, ``gt_boxes [M, 7]`` float32,
    ``gt_names`` (M), ``frame_id``, ``calib``, ``image_shape`` and ``annos``.

    ``__getitem__`` returns a dict: ``points`` float32 ``[N, 3 + F]``, ``gt_boxes`` float32 ``[M, 7]``,
    ``gt_labels`` long ``[M]`` (0-based), ``gt_names``, ``frame_id``, ``calib``, ``image_shape``, ``annos``
    (raw labels, untouched), ``augmentation`` (:class:`~geoattn.sparse.geometry.LidarAugmentation` raw ->
    sample frame, or ``None`` in evaluation) and ``index``.
    """

    def __init__(self, data_cfg: Mapping, class_names: Sequence[str], root, split: str, training: bool,
                 seed: int = 0):
        if not isinstance(data_cfg, Mapping):
            raise TypeError(f"data_cfg: expected the DATA_CONFIG mapping, got {type(data_cfg).__name__}")
        if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names or \
                not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"class_names: expected a non-empty list of class names, got {class_names!r}")
        if not isinstance(root, (str, Path)):
            raise TypeError(f"root: expected a str or pathlib.Path, got {type(root).__name__}")
        if not Path(root).is_dir():
            raise FileNotFoundError(f"root: no such folder {root}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.data_cfg = data_cfg
        self.class_names = list(class_names)
        self.root = Path(root)
        self.training = bool(training)
        self.mode = "train" if self.training else "test"
        splits = config_get(data_cfg, "DATA_SPLIT", {}) or {}
        self.split = str(splits.get(split, split)) if isinstance(splits, Mapping) else str(split)
        self.seed = seed
        self.epoch = 0
        point_range = config_get(data_cfg, "POINT_CLOUD_RANGE")
        if not isinstance(point_range, (list, tuple)) or len(point_range) != 6:
            raise ValueError(f"DATA_CONFIG.POINT_CLOUD_RANGE: expected 6 numbers [x0, y0, z0, x1, y1, z1], "
                             f"got {point_range!r}")
        self.point_cloud_range = torch.tensor([float(v) for v in point_range], dtype=torch.float32)
        if not bool((self.point_cloud_range[3:] > self.point_cloud_range[:3]).all()):
            raise ValueError(f"DATA_CONFIG.POINT_CLOUD_RANGE: expected x1 > x0, y1 > y0, z1 > z0, got {point_range}")
        encoding = config_get(data_cfg, "POINT_FEATURE_ENCODING", {}) or {}
        self.src_feature_list = list(encoding.get("src_feature_list", self.default_src_features()))
        used = list(encoding.get("used_feature_list", self.src_feature_list))
        missing = [name for name in used if name not in self.src_feature_list]
        if missing or used[:3] != ["x", "y", "z"]:
            raise ValueError(f"DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list: expected x, y, z first and "
                             f"names from src_feature_list {self.src_feature_list}, got {used}")
        self.used_feature_list = used
        self.used_feature_index = torch.tensor([self.src_feature_list.index(name) for name in used])
        self.mask_range, self.remove_outside_boxes, self.shuffle = True, True, False
        processors = config_get(data_cfg, "DATA_PROCESSOR", None)
        if processors is not None:
            self.mask_range = False
            for number, entry in enumerate(processors):
                name = entry.get("NAME") if isinstance(entry, Mapping) else None
                if name == "mask_points_and_boxes_outside_range":
                    self.mask_range = True
                    self.remove_outside_boxes = bool(config_get(entry, "REMOVE_OUTSIDE_BOXES", True))
                elif name == "shuffle_points":
                    enabled = config_get(entry, "SHUFFLE_ENABLED", {"train": True, "test": False})
                    self.shuffle = (bool(enabled.get(self.mode, False)) if isinstance(enabled, Mapping)
                                    else bool(enabled))
                elif name not in _IGNORED_PROCESSORS:
                    raise ValueError(f"DATA_CONFIG.DATA_PROCESSOR[{number}].NAME: unsupported processor {name!r}")
        self.filter_empty_boxes = bool(config_get(data_cfg, "FILTER_EMPTY_BOXES_FOR_TRAIN", True))
        self.augmentor = None
        if self.training and config_get(data_cfg, "DATA_AUGMENTOR") is not None:
            self.augmentor = DataAugmentor(config_get(data_cfg, "DATA_AUGMENTOR"), self.root, self.class_names)

    # -- configuration hooks ------------------------------------------------------------------------------
    @staticmethod
    def default_src_features() -> list[str]:
        return ["x", "y", "z", "intensity"]

    @property
    def num_point_features(self) -> int:
        """Columns of the returned points (``len(used_feature_list)``)."""
        return len(self.used_feature_list)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random streams (see the module's seed policy)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def disable_gt_sampling(self) -> None:
        """Switch GT sampling off (last epochs); a no-op without an augmentor."""
        if self.augmentor is not None:
            self.augmentor.disable_gt_sampling()

    def load_frame(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    # -- pipeline ------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(self):
            raise IndexError(f"index: expected an int in [0, {len(self)}), got {index!r}")
        index = int(index)
        return self.prepare(self.load_frame(index), self.rng(index), index)

    def prepare(self, frame: dict, rng: np.random.Generator, index: int = -1) -> dict:
        """Steps 2-6 of the module docstring on a loaded ``frame``."""
        sample = {"points": frame["points"], "gt_boxes": frame["gt_boxes"], "gt_names": list(frame["gt_names"])}
        augmentation = None
        if self.training and self.augmentor is not None:
            sample = self.augmentor(sample, rng)
            augmentation = sample.get("augmentation")
        points, boxes = sample["points"], sample["gt_boxes"]
        labels = class_indices(sample["gt_names"], self.class_names)
        keep = labels >= 0
        boxes, labels = boxes[keep].float().clone(), labels[keep]
        boxes[:, 6] = limit_angle(boxes[:, 6])
        points = points[:, self.used_feature_index].float()
        if self.mask_range:
            low, high = self.point_cloud_range[:3], self.point_cloud_range[3:]
            xyz = points[:, :3]
            points = points[((xyz >= low) & (xyz < high)).all(dim=1)]
            if self.remove_outside_boxes:
                centre = boxes[:, :3]
                inside = ((centre >= low) & (centre <= high)).all(dim=1)
                boxes, labels = boxes[inside], labels[inside]
        if self.training and self.filter_empty_boxes and boxes.shape[0] > 0:
            _, box_index = points_in_boxes_pairs(points, boxes)
            occupied = torch.bincount(box_index, minlength=boxes.shape[0]) > 0
            boxes, labels = boxes[occupied], labels[occupied]
        if self.shuffle and points.shape[0] > 1:
            points = points[torch.from_numpy(rng.permutation(points.shape[0]))]
        return {
            "points": points.contiguous(),
            "gt_boxes": boxes.contiguous(),
            "gt_labels": labels,
            "gt_names": np.asarray(self.class_names, dtype=object)[labels.numpy()].tolist(),
            "frame_id": frame["frame_id"],
            "calib": frame.get("calib"),
            "image_shape": frame.get("image_shape"),
            "annos": frame.get("annos"),
            "augmentation": augmentation,
            "index": index,
        }


class KittiDetectionDataset(DetectionDataset):
    """KITTI object detection: ``<root>/{training,testing}/{velodyne,calib,label_2,image_2}`` and
    ``<root>/ImageSets/<split>.txt`` (split ``test`` reads ``testing/``, every other split ``training/``).

    ``annos`` is the raw ``label_2`` file (DontCare, Van, Person_sitting, ... kept; ``None`` without labels);
    the targets are built from its non-DontCare rows, camera boxes converted with
    :func:`~geoattn.data.kitti.boxes_camera_to_lidar`. ``FOV_POINTS_ONLY`` (default on) keeps the points that
    project into ``image_2``: with :math:`(u, v, d)` from ``calib.lidar2img(2)``, ``d > 0``, ``0 <= u < W``,
    ``0 <= v < H`` (:func:`~geoattn.sparse.geometry.project_to_image`).
    """

    def __init__(self, data_cfg: Mapping, class_names: Sequence[str], root, split: str = "train",
                 training: bool = True, seed: int = 0):
        super().__init__(data_cfg, class_names, root, split, training, seed)
        self.fov_points_only = bool(config_get(data_cfg, "FOV_POINTS_ONLY", True))
        self.frame_dir = self.root / ("testing" if self.split == "test" else "training")
        if not self.frame_dir.is_dir():
            raise FileNotFoundError(f"root: no folder {self.frame_dir}")
        self.frame_ids = read_image_set(self.root, self.split)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def load_frame(self, index: int) -> dict:
        frame_id = self.frame_ids[index]
        points = read_velodyne(self.frame_dir / "velodyne" / f"{frame_id}.bin", len(self.src_feature_list))
        calib: KittiCalibration = read_calib(self.frame_dir / "calib" / f"{frame_id}.txt")
        image_path = self.frame_dir / "image_2" / f"{frame_id}.png"
        image_shape = _image_shape(image_path) if image_path.exists() else None
        label_path = self.frame_dir / "label_2" / f"{frame_id}.txt"
        annos = read_label(label_path) if label_path.exists() else None
        objects = (annos if annos is not None else _empty_labels()).without_dontcare()
        boxes = boxes_camera_to_lidar(objects.boxes_camera, calib.lidar2cam).float()
        if self.fov_points_only:
            if image_shape is None:
                raise FileNotFoundError(f"FOV_POINTS_ONLY needs the image size: no such file {image_path}")
            _, _, valid = project_to_image(points[:, :3].double(), calib.lidar2img(2), image_shape)
            points = points[valid]
        return {"points": points, "gt_boxes": boxes, "gt_names": list(objects.names), "frame_id": frame_id,
                "calib": calib, "image_shape": image_shape, "annos": annos}


class WaymoDetectionDataset(DetectionDataset):
    """OpenPCDet's processed Waymo format (:func:`geoattn.data.waymo.load_waymo_split_infos`).

    Points are ``(x, y, z, tanh(intensity), tanh(elongation))`` with NLZ points dropped; boxes of class
    ``'unknown'`` are dropped and, in training with ``FILTER_EMPTY_BOXES_FOR_TRAIN``, so are boxes with
    ``num_points_in_gt == 0`` (OpenPCDet). ``calib``, ``image_shape`` and ``annos`` are ``None``;
    :meth:`evaluation_gt` gives the ground truth in :func:`geoattn.detection.waymo_eval.evaluate_waymo`'s form.
    Config keys: ``PROCESSED_DATA_TAG`` (default ``waymo_processed_data_v0_5_0``), ``SAMPLED_INTERVAL``
    (``{train: k, test: k}``), ``DISABLE_NLZ_FLAG_ON_POINTS`` (keep NLZ points), ``POINTS_TANH_DIM``
    (default ``[3, 4]``: tanh on intensity and elongation).
    """

    def __init__(self, data_cfg: Mapping, class_names: Sequence[str], root, split: str = "train",
                 training: bool = True, seed: int = 0):
        super().__init__(data_cfg, class_names, root, split, training, seed)
        self.processed_data_tag = str(config_get(data_cfg, "PROCESSED_DATA_TAG", DEFAULT_PROCESSED_TAG))
        interval = config_get(data_cfg, "SAMPLED_INTERVAL", {}) or {}
        interval = int(interval.get(self.mode, 1)) if isinstance(interval, Mapping) else int(interval)
        self.drop_nlz = not bool(config_get(data_cfg, "DISABLE_NLZ_FLAG_ON_POINTS", False))
        tanh_dims = config_get(data_cfg, "POINTS_TANH_DIM", [3, 4])
        self.tanh_dims = [3, 4] if tanh_dims is None else [int(d) for d in tanh_dims]
        self.infos = load_waymo_split_infos(self.root, self.split, self.processed_data_tag, interval)

    @staticmethod
    def default_src_features() -> list[str]:
        return ["x", "y", "z", "intensity", "elongation"]

    def __len__(self) -> int:
        return len(self.infos)

    def _points_path(self, info: dict) -> Path:
        cloud = info["point_cloud"]
        segment = self.root / self.processed_data_tag / str(cloud["lidar_sequence"])
        return segment / f"{int(cloud['sample_idx']):04d}.npy"

    def load_frame(self, index: int) -> dict:
        info = self.infos[index]
        points = read_waymo_processed_points(self._points_path(info), drop_nlz=self.drop_nlz,
                                             tanh_dims=self.tanh_dims)
        if points.shape[1] != len(self.src_feature_list):
            points = points[:, : len(self.src_feature_list)]
        annos = waymo_info_annotations(info)
        boxes, names = annos.boxes, annos.names
        if self.training and self.filter_empty_boxes:
            keep = annos.num_points > 0
            boxes = boxes[keep]
            names = np.asarray(names, dtype=object)[keep.numpy()].tolist()
        frame_id = str(info.get("frame_id", f"{info['point_cloud']['lidar_sequence']}_{index:03d}"))
        return {"points": points, "gt_boxes": boxes, "gt_names": names, "frame_id": frame_id,
                "calib": None, "image_shape": None, "annos": None}

    def evaluation_gt(self) -> list[dict]:
        """Per frame ``dict(boxes [M, 7], labels [M] (0-based into class_names), num_points [M], difficulty [M])``
        with the classes of ``class_names`` only, unaugmented, for the Waymo metric."""
        out = []
        for info in self.infos:
            annos = waymo_info_annotations(info)
            labels = class_indices(annos.names, self.class_names)
            keep = labels >= 0
            labels = labels[keep]
            out.append({"boxes": annos.boxes[keep], "labels": labels, "num_points": annos.num_points[keep],
                        "difficulty": annos.difficulty[keep]})
        return out


def build_dataset(data_cfg: Mapping, class_names: Sequence[str], root, split: str, training: bool,
                  seed: int = 0) -> DetectionDataset:
    """The dataset of ``DATA_CONFIG.DATASET`` (``KittiDataset`` or ``WaymoDataset``).

    ``split`` is a key of ``DATA_SPLIT`` (``train`` / ``test``, mapped to its value) or an ImageSets name
    used as is; ``training`` switches augmentation, shuffling and the empty-box filter on.
    """
    if not isinstance(data_cfg, Mapping):
        raise TypeError(f"data_cfg: expected the DATA_CONFIG mapping, got {type(data_cfg).__name__}")
    name = config_get(data_cfg, "DATASET")
    classes = {"KittiDataset": KittiDetectionDataset, "WaymoDataset": WaymoDetectionDataset}
    if name not in classes:
        raise ValueError(f"DATA_CONFIG.DATASET: expected one of {sorted(classes)}, got {name!r}")
    return classes[name](data_cfg, class_names, root, split, training, seed)


def collate_detection(samples: Sequence[dict]) -> dict:
    """Batch per-frame dicts (the contract's batch dict).

    Returns ``points`` float32 ``[sum N_b, C]`` (frames concatenated in order), ``batch`` long ``[sum N_b]``
    (frame index, ascending), ``batch_size`` ``B``, ``gt_boxes`` float32 ``[B, M, 7]`` zero-padded and
    ``gt_labels`` long ``[B, M]`` padded with -1, where ``M = max(1, max_b M_b)``, plus the lists ``frame_id``,
    ``calib``, ``image_shape`` and ``annos``.
    """
    if isinstance(samples, dict) or not isinstance(samples, Sequence):
        raise TypeError(f"samples: expected a list of sample dicts, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples: expected at least one sample, got an empty list")
    for number, sample in enumerate(samples):
        for key in ("points", "gt_boxes", "gt_labels", "frame_id"):
            if not isinstance(sample, Mapping) or key not in sample:
                raise ValueError(f"samples[{number}]: expected a dict with {key!r}")
    columns = {int(sample["points"].shape[1]) for sample in samples}
    if len(columns) != 1:
        raise ValueError(f"samples: points have different numbers of columns {sorted(columns)}")
    batch_size = len(samples)
    counts = torch.tensor([int(sample["points"].shape[0]) for sample in samples], dtype=torch.long)
    points = torch.cat([sample["points"].float() for sample in samples])
    batch = torch.repeat_interleave(torch.arange(batch_size), counts)
    num_boxes = [int(sample["gt_boxes"].shape[0]) for sample in samples]
    width = max(1, max(num_boxes))
    gt_boxes = torch.zeros(batch_size, width, 7, dtype=torch.float32)
    gt_labels = torch.full((batch_size, width), -1, dtype=torch.long)
    for b, sample in enumerate(samples):
        gt_boxes[b, : num_boxes[b]] = sample["gt_boxes"][:, :7].float()
        gt_labels[b, : num_boxes[b]] = sample["gt_labels"].long()
    return {
        "points": points,
        "batch": batch,
        "batch_size": batch_size,
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "frame_id": [str(sample["frame_id"]) for sample in samples],
        "calib": [sample.get("calib") for sample in samples],
        "image_shape": [sample.get("image_shape") for sample in samples],
        "annos": [sample.get("annos") for sample in samples],
    }
