"""Training-time augmentation of LiDAR detection samples (OpenPCDet ``DATA_AUGMENTOR``).

A *sample* is a dict with at least

* ``"points"``: float32 ``[N, C]`` (x, y, z, then features in the dataset's source order),
* ``"gt_boxes"``: float32 ``[M, 7]`` ``(x, y, z, dx, dy, dz, heading)`` LiDAR boxes (centre),
* ``"gt_names"``: ``M`` class names (all annotated classes except DontCare; classes outside the
  detector's ``class_names`` take part in collision checks and are removed afterwards by the dataset).

:class:`DataAugmentor` applies ``AUG_CONFIG_LIST`` in order, skipping the names in ``DISABLE_AUG_LIST``:

* ``gt_sampling`` (:class:`GTDatabaseSampler`): paste objects from the GT database;
* ``random_world_flip`` / ``random_world_rotation`` / ``random_world_scaling`` /
  ``random_world_translation``: global similarity maps recorded with
  :class:`geoattn.sparse.geometry.LidarAugmentation` (consecutive world ops are composed and applied once,
  in float64); the record is stored as ``sample["augmentation"]`` (raw sensor frame -> augmented frame), so
  ``lidar2img @ sample["augmentation"].inverse_matrix()`` projects augmented points into the raw image.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample is reproducible from the
generator's seed (the datasets seed one generator per sample from ``(seed, epoch, index)``).
Headings are not wrapped here; the dataset wraps them into ``[-pi, pi)`` afterwards.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.kitti import load_info_pickle
from geoattn.sparse.boxes import boxes_iou_bev, check_boxes, points_in_boxes_pairs
from geoattn.sparse.geometry import LidarAugmentation

__all__ = ["GTDatabaseSampler", "DataAugmentor", "parse_class_counts", "WORLD_AUGMENTATIONS"]

WORLD_AUGMENTATIONS = ("random_world_flip", "random_world_rotation", "random_world_scaling",
                       "random_world_translation")


def config_get(cfg: Mapping, key: str, default=None):
    """Config lookup that accepts OpenPCDet's upper-case keys and lower-case ones."""
    if key in cfg:
        return cfg[key]
    if key.lower() in cfg:
        return cfg[key.lower()]
    return default


def parse_class_counts(entries, where: str) -> dict[str, int]:
    """``['Car:15', 'Pedestrian:10']`` (OpenPCDet) or ``{'Car': 15}`` -> ``{'Car': 15, 'Pedestrian': 10}``."""
    if isinstance(entries, Mapping):
        items = list(entries.items())
    elif isinstance(entries, (list, tuple)):
        items = []
        for entry in entries:
            if not isinstance(entry, str) or entry.count(":") != 1:
                raise ValueError(f"{where}: expected entries 'Class:count', got {entry!r}")
            name, count = entry.split(":")
            items.append((name.strip(), count.strip()))
    else:
        raise ValueError(f"{where}: expected a list of 'Class:count' strings, got {entries!r}")
    out: dict[str, int] = {}
    for name, count in items:
        try:
            value = int(count)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer count for {name!r}, got {count!r}") from None
        if value < 0:
            raise ValueError(f"{where}: expected a non-negative count for {name!r}, got {value}")
        out[str(name)] = value
    return out


def _check_sample(sample) -> None:
    if not isinstance(sample, dict):
        raise TypeError(f"sample: expected a dict, got {type(sample).__name__}")
    for key in ("points", "gt_boxes", "gt_names"):
        if key not in sample:
            raise ValueError(f"sample: missing key {key!r} (has {sorted(sample)})")
    points = sample["points"]
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] < 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"sample['points']: expected a tensor [N, >=3], got {shape}")
    check_boxes(sample["gt_boxes"], "sample['gt_boxes']")
    if len(sample["gt_names"]) != sample["gt_boxes"].shape[0]:
        raise ValueError(f"sample['gt_names']: expected {sample['gt_boxes'].shape[0]} names (one per box), "
                         f"got {len(sample['gt_names'])}")


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")


class GTDatabaseSampler:
    r"""Paste ground-truth objects from a GT database into a scene (OpenPCDet ``DataBaseSampler``).

    Database (``create_gt_database``): a pickle ``{class: [info, ...]}`` with per object ``path`` (a float32
    ``.bin`` of its points relative to the box centre, relative to the pickle's folder), ``box3d_lidar``,
    ``num_points_in_gt`` and ``difficulty``.

    Preparation (once): infos with ``num_points_in_gt < min_points[class]`` and infos whose ``difficulty`` is in
    ``filter_by_difficulty`` are removed.

    Per sample, for each class ``c`` of ``sample_groups`` in order:

    1. ``n_c = count_c - (number of c boxes in the scene)`` when ``limit_whole_scene`` else ``count_c``; skip
       when ``n_c <= 0``;
    2. draw ``min(n_c, |db_c|)`` distinct database objects with the generator;
    3. keep candidate ``i`` only when :math:`\max_j \mathrm{IoU_{BEV}}(i, e_j) + \max_{k \ne i}
       \mathrm{IoU_{BEV}}(i, k) = 0` over the existing boxes ``e`` (scene boxes plus those accepted for earlier
       classes) and the other candidates ``k`` (so two colliding candidates are both dropped, as OpenPCDet);

    then the accepted objects' points (moved to their box centres) are prepended to the scene, scene points
    inside the accepted boxes enlarged by ``remove_extra_width`` ``(dx, dy, dz)`` are removed, and -- as
    OpenPCDet -- scene boxes whose class is not in ``class_names`` are dropped from the targets once objects
    were pasted. ``sample["gt_sampled"]`` (bool ``[M]``) marks the pasted boxes.

    OpenPCDet walks a per-process shuffled list of each class; here each call draws afresh from the given
    generator, so a sample depends only on its own seed (identical for any number of loader workers).
    """

    def __init__(self, db_infos: Mapping[str, Sequence[Mapping]], database_root, sample_groups: Mapping[str, int],
                 num_point_features: int, min_points: Mapping[str, int] | None = None,
                 filter_by_difficulty: Sequence[int] = (), remove_extra_width: Sequence[float] = (0.0, 0.0, 0.0),
                 limit_whole_scene: bool = True, class_names: Sequence[str] | None = None):
        if not isinstance(db_infos, Mapping):
            raise TypeError(f"db_infos: expected a dict {{class: [info, ...]}}, got {type(db_infos).__name__}")
        if not isinstance(num_point_features, int) or num_point_features < 3:
            raise ValueError(f"num_point_features: expected an int >= 3, got {num_point_features!r}")
        width = [float(v) for v in remove_extra_width]
        if len(width) != 3:
            raise ValueError(f"remove_extra_width: expected 3 numbers (dx, dy, dz), got {list(remove_extra_width)}")
        self.database_root = Path(database_root)
        self.sample_groups = {str(k): int(v) for k, v in sample_groups.items()}
        self.num_point_features = num_point_features
        self.remove_extra_width = tuple(width)
        self.limit_whole_scene = bool(limit_whole_scene)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        min_points = dict(min_points or {})
        bad_difficulty = {int(d) for d in filter_by_difficulty}
        self.database: dict[str, dict[str, np.ndarray]] = {}
        for name in self.sample_groups:
            infos = list(db_infos.get(name, []))
            boxes = np.asarray([np.asarray(info["box3d_lidar"], dtype=np.float32).reshape(-1)[:7] for info in infos],
                               dtype=np.float32).reshape(-1, 7)
            num_points = np.asarray([int(info["num_points_in_gt"]) for info in infos], dtype=np.int64)
            difficulty = np.asarray([int(info.get("difficulty", 0)) for info in infos], dtype=np.int64)
            paths = np.asarray([str(info["path"]) for info in infos], dtype=object)
            keep = (num_points >= int(min_points.get(name, 0))) & ~np.isin(difficulty, sorted(bad_difficulty))
            self.database[name] = {"boxes": boxes[keep], "num_points": num_points[keep],
                                   "difficulty": difficulty[keep], "paths": paths[keep]}

    @classmethod
    def from_config(cls, cfg: Mapping, root, class_names: Sequence[str] | None = None,
                    where: str = "DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[gt_sampling]") -> "GTDatabaseSampler":
        """Build from an OpenPCDet ``gt_sampling`` entry; ``DB_INFO_PATH`` entries are relative to ``root``."""
        if config_get(cfg, "USE_ROAD_PLANE", False):
            raise ValueError(f"{where}.USE_ROAD_PLANE: road-plane sampling is not supported (no planes/ reader); "
                             "set it to False")
        paths = config_get(cfg, "DB_INFO_PATH")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise ValueError(f"{where}.DB_INFO_PATH: expected a list of database info pickles, got {paths!r}")
        db_infos: dict[str, list] = {}
        database_root = None
        for path in paths:
            path = Path(path)
            full = path if path.is_absolute() else Path(root) / path
            if not full.exists():
                raise FileNotFoundError(f"{where}.DB_INFO_PATH: no such file {full} (create it with "
                                        "`geoattn create-gt-database ROOT`)")
            infos = load_info_pickle(full)
            if not isinstance(infos, dict):
                raise ValueError(f"{where}.DB_INFO_PATH: {full} is not a {{class: [info, ...]}} pickle")
            for name, entries in infos.items():
                db_infos.setdefault(str(name), []).extend(entries)
            database_root = database_root or full.parent
        prepare = config_get(cfg, "PREPARE", {}) or {}
        min_points = parse_class_counts(config_get(prepare, "filter_by_min_points", []),
                                        f"{where}.PREPARE.filter_by_min_points")
        difficulty = config_get(prepare, "filter_by_difficulty", []) or []
        groups = parse_class_counts(config_get(cfg, "SAMPLE_GROUPS", []), f"{where}.SAMPLE_GROUPS")
        features = config_get(cfg, "NUM_POINT_FEATURES")
        if not isinstance(features, int) or features < 3:
            raise ValueError(f"{where}.NUM_POINT_FEATURES: expected an int >= 3, got {features!r}")
        return cls(db_infos, database_root, groups, features, min_points=min_points,
                   filter_by_difficulty=difficulty, remove_extra_width=config_get(cfg, "REMOVE_EXTRA_WIDTH", (0.0, 0.0, 0.0)),
                   limit_whole_scene=config_get(cfg, "LIMIT_WHOLE_SCENE", True), class_names=class_names)

    def _load_points(self, path: str) -> np.ndarray:
        full = self.database_root / path
        raw = np.fromfile(full, dtype=np.float32)
        if raw.size % self.num_point_features:
            raise ValueError(f"database: {full} holds {raw.size} float32 values, not a multiple of "
                             f"NUM_POINT_FEATURES={self.num_point_features}")
        return raw.reshape(-1, self.num_point_features)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Paste database objects into ``sample`` (a new dict; the input is not modified)."""
        _check_sample(sample)
        _check_rng(rng)
        points, gt_boxes = sample["points"], sample["gt_boxes"]
        names = np.asarray(list(sample["gt_names"]), dtype=object)
        if points.shape[1] != self.num_point_features:
            raise ValueError(f"sample['points']: has {points.shape[1]} columns but the GT database points have "
                             f"NUM_POINT_FEATURES={self.num_point_features}")
        existing = gt_boxes.float()
        picked_boxes, picked_names, picked_paths = [], [], []
        for name, target in self.sample_groups.items():
            count = target - int((names == name).sum()) if self.limit_whole_scene else target
            db = self.database[name]
            if count <= 0 or len(db["boxes"]) == 0:
                continue
            index = rng.choice(len(db["boxes"]), size=min(count, len(db["boxes"])), replace=False)
            candidates = torch.from_numpy(db["boxes"][index])
            iou_self = boxes_iou_bev(candidates, candidates)
            iou_self.fill_diagonal_(0.0)
            overlap = iou_self.max(dim=1).values
            if existing.shape[0] > 0:
                overlap = overlap + boxes_iou_bev(candidates, existing).max(dim=1).values
            valid = (overlap == 0).numpy()
            if not valid.any():
                continue
            picked_boxes.append(candidates[valid])
            picked_names.extend([name] * int(valid.sum()))
            picked_paths.extend(db["paths"][index[valid]].tolist())
            existing = torch.cat([existing, candidates[valid]])
        out = dict(sample)
        if not picked_boxes:
            out["gt_sampled"] = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
            return out
        sampled = torch.cat(picked_boxes).to(gt_boxes.dtype)
        # database points are stored relative to the box centre
        object_points = [self._load_points(path) for path in picked_paths]
        counts = torch.tensor([len(p) for p in object_points], dtype=torch.long)
        pasted = torch.from_numpy(np.concatenate(object_points, 0) if object_points else
                                  np.zeros((0, self.num_point_features), np.float32)).to(points.dtype)
        pasted[:, :3] += torch.repeat_interleave(sampled[:, :3].to(points.dtype), counts, dim=0)
        enlarged = sampled.clone()
        enlarged[:, 3:6] += sampled.new_tensor(self.remove_extra_width)
        inside, _ = points_in_boxes_pairs(points, enlarged)
        keep_points = torch.ones(points.shape[0], dtype=torch.bool)
        keep_points[inside] = False
        keep_boxes = np.ones(len(names), dtype=bool) if self.class_names is None else np.isin(
            names.astype(str), self.class_names)
        keep_t = torch.from_numpy(keep_boxes)
        out["points"] = torch.cat([pasted, points[keep_points]])
        out["gt_boxes"] = torch.cat([gt_boxes[keep_t], sampled])
        out["gt_names"] = [str(n) for n in names[keep_boxes]] + picked_names
        out["gt_sampled"] = torch.cat([torch.zeros(int(keep_boxes.sum()), dtype=torch.bool),
                                       torch.ones(sampled.shape[0], dtype=torch.bool)])
        for key, value in sample.items():  # per-box side arrays follow the boxes (pasted rows get -1)
            if key.startswith("gt_") and key not in ("gt_boxes", "gt_names", "gt_sampled") and \
                    isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == len(names):
                filler = torch.full((sampled.shape[0],) + tuple(value.shape[1:]), -1, dtype=value.dtype)
                out[key] = torch.cat([value[keep_t], filler])
        return out

    def __repr__(self) -> str:
        sizes = {name: len(db["boxes"]) for name, db in self.database.items()}
        return f"GTDatabaseSampler(groups={self.sample_groups}, database={sizes})"


def _range_pair(value, where: str, symmetric: bool) -> tuple[float, float]:
    if isinstance(value, (int, float)) and symmetric:
        value = (-abs(float(value)), abs(float(value)))
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: expected [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{where}: expected finite low <= high, got {value!r}")
    return low, high


class DataAugmentor:
    """``DATA_AUGMENTOR`` of an OpenPCDet config: ``AUG_CONFIG_LIST`` in order minus ``DISABLE_AUG_LIST``.

    World augmentations (OpenPCDet ``augmentor_utils``), drawn from the generator:

    * ``random_world_flip`` ``ALONG_AXIS_LIST``: for each axis, with probability 1/2, ``x``: :math:`y \\to -y`,
      :math:`h \\to -h`; ``y``: :math:`x \\to -x`, :math:`h \\to \\pi - h`;
    * ``random_world_rotation`` ``WORLD_ROT_ANGLE [lo, hi]`` (or ``a`` for ``[-a, a]``): rotate about +z by
      :math:`\\theta \\sim U(lo, hi)`, :math:`h \\to h + \\theta`;
    * ``random_world_scaling`` ``WORLD_SCALE_RANGE [lo, hi]``: :math:`p \\to s p`, sizes :math:`\\times s`,
      :math:`s \\sim U(lo, hi)` (skipped when ``hi - lo < 1e-3``, as OpenPCDet);
    * ``random_world_translation`` ``NOISE_TRANSLATE_STD`` (one or three stds): :math:`p \\to p + t`,
      :math:`t_i \\sim N(0, \\sigma_i)`.

    :meth:`disable_gt_sampling` switches ``gt_sampling`` off (the last ``NUM_EPOCHS_NO_GT_SAMPLING`` epochs).
    The object holds only plain data and is picklable (DataLoader workers).
    """

    def __init__(self, augmentor_cfg: Mapping | None, root=None, class_names: Sequence[str] | None = None,
                 where: str = "DATA_CONFIG.DATA_AUGMENTOR"):
        augmentor_cfg = augmentor_cfg or {}
        if not isinstance(augmentor_cfg, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(augmentor_cfg).__name__}")
        disabled = config_get(augmentor_cfg, "DISABLE_AUG_LIST", []) or []
        if isinstance(disabled, str):
            disabled = [disabled]
        entries = config_get(augmentor_cfg, "AUG_CONFIG_LIST", []) or []
        if not isinstance(entries, (list, tuple)):
            raise ValueError(f"{where}.AUG_CONFIG_LIST: expected a list, got {type(entries).__name__}")
        self.class_names = None if class_names is None else list(class_names)
        self.operations: list[tuple[str, object]] = []
        self.gt_sampling_enabled = True
        for number, entry in enumerate(entries):
            here = f"{where}.AUG_CONFIG_LIST[{number}]"
            if not isinstance(entry, Mapping) or "NAME" not in entry:
                raise ValueError(f"{here}: expected a mapping with NAME, got {entry!r}")
            name = entry["NAME"]
            if name in disabled:
                continue
            if name == "gt_sampling":
                if root is None:
                    raise ValueError(f"{here}: gt_sampling needs the dataset root (root=None)")
                self.operations.append((name, GTDatabaseSampler.from_config(entry, root, class_names, where=here)))
            elif name == "random_world_flip":
                axes = list(config_get(entry, "ALONG_AXIS_LIST", ["x"]))
                if any(axis not in ("x", "y") for axis in axes):
                    raise ValueError(f"{here}.ALONG_AXIS_LIST: expected axes among 'x', 'y', got {axes!r}")
                self.operations.append((name, axes))
            elif name == "random_world_rotation":
                self.operations.append((name, _range_pair(config_get(entry, "WORLD_ROT_ANGLE"), f"{here}.WORLD_ROT_ANGLE",
                                                          symmetric=True)))
            elif name == "random_world_scaling":
                self.operations.append((name, _range_pair(config_get(entry, "WORLD_SCALE_RANGE"),
                                                          f"{here}.WORLD_SCALE_RANGE", symmetric=False)))
            elif name == "random_world_translation":
                std = config_get(entry, "NOISE_TRANSLATE_STD", [0.0, 0.0, 0.0])
                std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
                if len(std) != 3 or any(not math.isfinite(v) or v < 0 for v in std):
                    raise ValueError(f"{here}.NOISE_TRANSLATE_STD: expected one or three non-negative stds, "
                                     f"got {config_get(entry, 'NOISE_TRANSLATE_STD')!r}")
                self.operations.append((name, std))
            else:
                raise ValueError(f"{here}.NAME: unsupported augmentation {name!r} (supported: gt_sampling, "
                                 f"{', '.join(WORLD_AUGMENTATIONS)})")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.operations]

    @property
    def gt_sampler(self) -> GTDatabaseSampler | None:
        for name, op in self.operations:
            if name == "gt_sampling":
                return op
        return None

    def disable_gt_sampling(self) -> None:
        """Skip ``gt_sampling`` from now on (OpenPCDet ``NUM_EPOCHS_NO_GT_SAMPLING``)."""
        self.gt_sampling_enabled = False

    def enable_gt_sampling(self) -> None:
        self.gt_sampling_enabled = True

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Augment ``sample`` (returns a new dict; adds ``"augmentation"``, a :class:`LidarAugmentation`)."""
        _check_sample(sample)
        _check_rng(rng)
        out = dict(sample)
        record = LidarAugmentation()
        pending = LidarAugmentation()

        def flush(current: dict) -> dict:
            if len(pending) == 0:
                return current
            current = dict(current)
            current["points"] = pending.apply_points(current["points"])
            current["gt_boxes"] = pending.apply_boxes(current["gt_boxes"])
            pending.operations.clear()
            return current

        for name, op in self.operations:
            if name == "gt_sampling":
                if self.gt_sampling_enabled:
                    out = op(flush(out), rng)
                continue
            if name == "random_world_flip":
                steps = [("flip", axis) for axis in op if rng.random() < 0.5]
            elif name == "random_world_rotation":
                steps = [("rotate", float(rng.uniform(op[0], op[1])))]
            elif name == "random_world_scaling":
                steps = [] if op[1] - op[0] < 1e-3 else [("scale", float(rng.uniform(op[0], op[1])))]
            else:
                steps = [("translate", tuple(float(rng.normal(0.0, s)) if s > 0 else 0.0 for s in op))]
            for step, value in steps:
                getattr(pending, step)(value)
                getattr(record, step)(value)
        out = flush(out)
        out["augmentation"] = record
        return out

    def __repr__(self) -> str:
        return f"DataAugmentor({self.names}, gt_sampling_enabled={self.gt_sampling_enabled})"
