"""KITTI ground-truth database for GT sampling (OpenPCDet ``create_groundtruth_database``).

``create_gt_database(ROOT)`` reads ``ROOT/ImageSets/<split>.txt`` and, for every frame of
``ROOT/training``, every labelled object (DontCare excluded; optionally only ``class_names``):

* ``<out>/gt_database/<frame>_<class>_<i>.bin``: float32 ``(n, 4)`` -- the frame's points (the whole
  velodyne cloud, not FOV-cropped, as OpenPCDet) inside the LiDAR box ``i``, with the box centre subtracted
  from x, y, z (``i`` indexes the frame's non-DontCare objects in label-file order);
* ``<out>/kitti_dbinfos_<split>.pkl``: ``{class: [info, ...]}`` with, per object, ``name`` (str), ``path``
  (``'gt_database/<file>'``, relative to ``<out>``), ``image_idx`` (frame id str), ``gt_idx`` (int),
  ``box3d_lidar`` (float32 ``(7,)``), ``num_points_in_gt`` (int), ``difficulty`` (int), ``bbox`` (float32
  ``(4,)``, the 2-D box) and ``score`` (float, -1.0 for ground truth). Only plain containers, Python scalars
  and numpy arrays, so :func:`geoattn.data.kitti.load_info_pickle` reads it.

KITTI difficulty (OpenPCDet ``get_kitti_obj_level``), with the 2-D box height :math:`h = y_2 - y_1 + 1` pixels,
truncation :math:`t` and occlusion :math:`o`: 0 (easy) when :math:`h \\ge 40, t \\le 0.15, o \\le 0`, else 1
(moderate) when :math:`h \\ge 25, t \\le 0.3, o \\le 1`, else 2 (hard) when :math:`h \\ge 25, t \\le 0.5, o \\le 2`,
else -1.

Writes are atomic: the database is written into a temporary folder that is renamed into place, and the
pickle is written to a temporary file then ``os.replace``-d, so an interrupted run leaves either nothing or the
complete previous database. An existing database is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.kitti import boxes_camera_to_lidar, read_calib, read_image_set, read_label, read_velodyne
from geoattn.io import atomic_write_bytes
from geoattn.sparse.boxes import points_in_boxes_pairs

__all__ = ["create_gt_database", "kitti_difficulty"]


def kitti_difficulty(bbox: Tensor, truncated: Tensor, occluded: Tensor) -> Tensor:
    """KITTI difficulty per object (see the module docstring): long ``[K]`` in {0, 1, 2, -1}.

    Args:
        bbox: ``[K, 4]`` 2-D boxes ``(x1, y1, x2, y2)`` in pixels.
        truncated: ``[K]`` in [0, 1]; occluded: ``[K]`` in {0, 1, 2, 3}.
    """
    if not isinstance(bbox, Tensor) or bbox.dim() != 2 or bbox.shape[1] != 4:
        raise ValueError(f"bbox: expected a tensor [K, 4], got {getattr(bbox, 'shape', type(bbox).__name__)}")
    if truncated.shape != bbox.shape[:1] or occluded.shape != bbox.shape[:1]:
        raise ValueError(f"truncated, occluded: expected shape [{bbox.shape[0]}], got {tuple(truncated.shape)} "
                         f"and {tuple(occluded.shape)}")
    height = bbox[:, 3].double() - bbox[:, 1].double() + 1
    trunc, occ = truncated.double(), occluded.double()
    easy = (height >= 40) & (trunc <= 0.15) & (occ <= 0)
    moderate = (height >= 25) & (trunc <= 0.3) & (occ <= 1)
    hard = (height >= 25) & (trunc <= 0.5) & (occ <= 2)
    level = torch.full(bbox.shape[:1], -1, dtype=torch.long)
    level = torch.where(hard, torch.full_like(level, 2), level)
    level = torch.where(moderate, torch.ones_like(level), level)
    return torch.where(easy, torch.zeros_like(level), level)


def create_gt_database(root, split: str = "train", class_names: Sequence[str] | None = None, out_dir=None,
                       progress: bool = True, overwrite: bool = False, num_point_features: int = 4) -> dict:
    """Write the GT database of ``<root>/ImageSets/<split>.txt`` (see the module docstring).

    Args:
        root: KITTI root with ``training/{velodyne,calib,label_2}`` and ``ImageSets``.
        split: image-set name.
        class_names: classes to store (default: every class except DontCare).
        out_dir: where ``gt_database/`` and the pickle go (default ``root``).
        progress: show a tqdm bar.
        overwrite: replace an existing database instead of raising ``FileExistsError``.
        num_point_features: columns of the velodyne files.

    Returns:
        ``{"db_info_path": Path, "database_dir": Path, "counts": {class: objects}}``.
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root: expected a str or pathlib.Path, got {type(root).__name__}")
    root = Path(root)
    frame_dir = root / "training"
    if not frame_dir.is_dir():
        raise FileNotFoundError(f"root: no folder {frame_dir} (expected a KITTI root with training/ and ImageSets/)")
    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)):
        raise ValueError(f"class_names: expected a list of class names or None, got {class_names!r}")
    out_dir = Path(out_dir) if out_dir is not None else root
    database_dir = out_dir / "gt_database"
    info_path = out_dir / f"kitti_dbinfos_{split}.pkl"
    existing = [str(p) for p in (database_dir, info_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"overwrite: a GT database already exists ({', '.join(existing)}); "
                              "pass overwrite=True to replace it")
    frame_ids = read_image_set(root, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".gt_database."))
    wanted = None if class_names is None else set(class_names)
    infos: dict[str, list[dict]] = {}
    try:
        from tqdm import tqdm

        for frame_id in tqdm(frame_ids, desc="gt database", unit="frame", disable=not progress):
            label_path = frame_dir / "label_2" / f"{frame_id}.txt"
            if not label_path.exists():
                continue
            labels = read_label(label_path).without_dontcare()
            if len(labels) == 0:
                continue
            calib = read_calib(frame_dir / "calib" / f"{frame_id}.txt")
            points = read_velodyne(frame_dir / "velodyne" / f"{frame_id}.bin", num_point_features)
            boxes = boxes_camera_to_lidar(labels.boxes_camera, calib.lidar2cam).float()
            difficulty = kitti_difficulty(labels.bbox, labels.truncated, labels.occluded)
            scores = labels.score if labels.score is not None else torch.full((len(labels),), -1.0, dtype=torch.float64)
            point_index, box_index = points_in_boxes_pairs(points, boxes)  # sorted by box, then point
            counts = torch.bincount(box_index, minlength=boxes.shape[0])
            members = torch.split(point_index, counts.tolist())
            for i, name in enumerate(labels.names):  # one file per object
                if wanted is not None and name not in wanted:
                    continue
                object_points = points[members[i]].clone()
                object_points[:, :3] -= boxes[i, :3]
                filename = f"{frame_id}_{name}_{i}.bin"
                object_points.numpy().astype(np.float32).tofile(staging / filename)
                infos.setdefault(name, []).append({
                    "name": name,
                    "path": f"gt_database/{filename}",
                    "image_idx": str(frame_id),
                    "gt_idx": i,
                    "box3d_lidar": boxes[i].numpy().astype(np.float32),
                    "num_points_in_gt": int(object_points.shape[0]),
                    "difficulty": int(difficulty[i]),
                    "bbox": labels.bbox[i].numpy().astype(np.float32),
                    "score": float(scores[i]),
                })
        previous = None
        if database_dir.exists():
            previous = Path(tempfile.mkdtemp(dir=out_dir, prefix=".gt_database.old."))
            os.rmdir(previous)
            os.replace(database_dir, previous)
        os.replace(staging, database_dir)
        atomic_write_bytes(info_path, pickle.dumps(infos, protocol=4))
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"db_info_path": info_path, "database_dir": database_dir,
            "counts": {name: len(entries) for name, entries in infos.items()}}
