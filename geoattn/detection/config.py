"""Detector configurations: YAML files whose keys read like OpenPCDet's, loaded into plain dicts.

Built in (``geoattn/detection/configs/``): ``waymo_scatterformer`` (the official ScatterFormer Waymo recipe)
and ``kitti_scatterformer`` (the same detector on KITTI's range, smaller for CPU training). A config has four
top-level sections, each read by its owner: ``CLASS_NAMES``, ``DATA_CONFIG`` (datasets, augmentation),
``MODEL`` (``geoattn.models.detection.build_detector`` and the head's target / loss / decoding settings) and
``OPTIMIZATION`` (:func:`geoattn.detection.optim.build_optimizer`, the training loop). :func:`load_config`
checks the structure and the values every part relies on (class names, range, voxel size, point features,
optimisation numbers); each builder validates the rest of its own section.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["CONFIG_DIR", "builtin_configs", "load_config", "validate_config", "point_cloud_range", "voxel_size",
           "num_point_features", "model_signature", "check_same_model"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOP_LEVEL_KEYS = ("CLASS_NAMES", "DATA_CONFIG", "MODEL", "OPTIMIZATION")
DATASETS = ("KittiDataset", "WaymoDataset")


def builtin_configs() -> list[str]:
    """Names of the built-in configs (the YAML files in :data:`CONFIG_DIR`, without suffix)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text in builtin_configs():
        return CONFIG_DIR / f"{text}.yaml"
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or os.sep in text or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        return path
    raise ValueError(f"config: expected one of {builtin_configs()} or a path to a .yaml file, got {text!r}")


def load_config(name_or_path: str | os.PathLike) -> dict:
    """The config dict of a built-in name (``"kitti_scatterformer"``, ``"waymo_scatterformer"``) or a YAML file.

    Read with ``yaml.safe_load`` and checked by :func:`validate_config`. Raises ``FileNotFoundError`` for a
    path that does not exist, ``ValueError`` for an unknown name, unparsable YAML (naming the file) or a bad
    key/value (naming the file, the key path, the expected and the actual value); ``ImportError`` with an
    install hint when PyYAML is missing.
    """
    path = _resolve(name_or_path)
    try:
        import yaml
    except ImportError:
        raise ImportError("reading detector configs needs PyYAML: pip install geoattn[detection] "
                          "(or pip install pyyaml)") from None
    try:
        with open(path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    try:
        validate_config(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return config


def _get(config: Mapping, dotted: str) -> Any:
    node: Any = config
    done = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise ValueError(f"{'.'.join(done)}: expected a mapping, got {type(node).__name__}")
        if part not in node:
            raise ValueError(f"{dotted}: missing")
        node = node[part]
        done.append(part)
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(config: Mapping, key: str, count: int, positive: bool = False) -> list[float]:
    value = _get(config, key)
    if not isinstance(value, list) or len(value) != count or not all(_is_number(v) for v in value) \
            or (positive and not all(v > 0 for v in value)):
        kind = "positive numbers" if positive else "numbers"
        raise ValueError(f"{key}: expected a list of {count} {kind}, got {value!r}")
    return [float(v) for v in value]


def _processor(config: Mapping, name: str) -> Mapping:
    processors = _get(config, "DATA_CONFIG.DATA_PROCESSOR")
    if not isinstance(processors, list) or not all(isinstance(p, Mapping) for p in processors):
        raise ValueError(f"DATA_CONFIG.DATA_PROCESSOR: expected a list of mappings, got {processors!r}")
    for processor in processors:
        if processor.get("NAME") == name:
            return processor
    names = [p.get("NAME") for p in processors]
    raise ValueError(f"DATA_CONFIG.DATA_PROCESSOR: expected an entry with NAME {name}, got names {names}")


def point_cloud_range(config: Mapping) -> list[float]:
    """``DATA_CONFIG.POINT_CLOUD_RANGE`` as 6 floats (x_min, y_min, z_min, x_max, y_max, z_max)."""
    values = _numbers(config, "DATA_CONFIG.POINT_CLOUD_RANGE", 6)
    if not all(values[i] < values[i + 3] for i in range(3)):
        raise ValueError(f"DATA_CONFIG.POINT_CLOUD_RANGE: expected min < max on every axis, got {values}")
    return values


def voxel_size(config: Mapping) -> list[float]:
    """The ``VOXEL_SIZE`` of the ``transform_points_to_voxels_placeholder`` data processor (3 floats)."""
    processor = _processor(config, "transform_points_to_voxels_placeholder")
    values = processor.get("VOXEL_SIZE")
    if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) and v > 0 for v in values):
        raise ValueError("DATA_CONFIG.DATA_PROCESSOR.transform_points_to_voxels_placeholder.VOXEL_SIZE: expected a "
                         f"list of 3 positive numbers, got {values!r}")
    return [float(v) for v in values]


def num_point_features(config: Mapping) -> int:
    """Columns of a point row: ``len(DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list)``."""
    return len(_get(config, "DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list"))


def _positive_int(config: Mapping, key: str, minimum: int = 1) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}: expected an int >= {minimum}, got {value!r}")
    return value


def validate_config(config: Any) -> None:
    """Check the structure every consumer relies on; ``ValueError`` naming the key path, expected and actual.

    Checked: exactly the top-level sections ``CLASS_NAMES`` (non-empty list of distinct str), ``DATA_CONFIG``,
    ``MODEL``, ``OPTIMIZATION`` (mappings); ``DATA_CONFIG.DATASET`` in (KittiDataset, WaymoDataset); the range
    (min < max) and the voxel size, each range extent an integer number of voxels (to 1e-6 of a voxel);
    ``used_feature_list`` starting with x, y, z; ``MODEL.NAME``; ``MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD``
    flattening to ``CLASS_NAMES``; ``OPTIMIZATION``: ``BATCH_SIZE_PER_GPU`` and ``NUM_EPOCHS`` ints >= 1,
    ``OPTIMIZER: adam_onecycle``, ``LR``, ``DIV_FACTOR`` > 0, ``WEIGHT_DECAY`` >= 0, ``PCT_START`` in [0, 1),
    ``MOMS`` two numbers in [0, 1), ``GRAD_NORM_CLIP`` > 0, ``NUM_EPOCHS_NO_GT_SAMPLING`` an int in
    [0, NUM_EPOCHS].
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a mapping with keys {list(TOP_LEVEL_KEYS)}, got {type(config).__name__}")
    missing = [key for key in TOP_LEVEL_KEYS if key not in config]
    unknown = [key for key in config if key not in TOP_LEVEL_KEYS]
    if missing or unknown:
        raise ValueError(f"config: expected top-level keys {list(TOP_LEVEL_KEYS)}, got {list(config)}"
                         + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))
    names = config["CLASS_NAMES"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise ValueError(f"CLASS_NAMES: expected a non-empty list of distinct class names, got {names!r}")
    for key in ("DATA_CONFIG", "MODEL", "OPTIMIZATION"):
        if not isinstance(config[key], Mapping):
            raise ValueError(f"{key}: expected a mapping, got {type(config[key]).__name__}")
    dataset = _get(config, "DATA_CONFIG.DATASET")
    if dataset not in DATASETS:
        raise ValueError(f"DATA_CONFIG.DATASET: expected one of {list(DATASETS)}, got {dataset!r}")
    extent = point_cloud_range(config)
    voxel = voxel_size(config)
    for axis in range(3):
        cells = (extent[axis + 3] - extent[axis]) / voxel[axis]
        if abs(cells - round(cells)) > 1e-6:
            raise ValueError("DATA_CONFIG.DATA_PROCESSOR.transform_points_to_voxels_placeholder."
                             f"VOXEL_SIZE[{axis}]: expected a divisor of the range extent "
                             f"{extent[axis + 3] - extent[axis]:g} m, got {voxel[axis]} ({cells:.4f} cells)")
    features = _get(config, "DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list")
    if not isinstance(features, list) or features[:3] != ["x", "y", "z"] or not all(isinstance(f, str) for f in features):
        raise ValueError("DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list: expected [x, y, z, ...], got "
                         f"{features!r}")
    model_name = _get(config, "MODEL.NAME")
    if not isinstance(model_name, str):
        raise ValueError(f"MODEL.NAME: expected a str, got {model_name!r}")
    heads = _get(config, "MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD")
    flat = [name for head in heads for name in head] if isinstance(heads, list) and \
        all(isinstance(h, list) for h in heads) else None
    if flat is None or sorted(flat) != sorted(names):
        raise ValueError(f"MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD: expected lists covering CLASS_NAMES {names} "
                         f"once each, got {heads!r}")
    _positive_int(config, "OPTIMIZATION.BATCH_SIZE_PER_GPU")
    epochs = _positive_int(config, "OPTIMIZATION.NUM_EPOCHS")
    optimizer = _get(config, "OPTIMIZATION.OPTIMIZER")
    if optimizer != "adam_onecycle":
        raise ValueError(f"OPTIMIZATION.OPTIMIZER: expected 'adam_onecycle', got {optimizer!r}")
    for key, low, closed, high in (("LR", 0.0, False, None), ("DIV_FACTOR", 0.0, False, None),
                                   ("WEIGHT_DECAY", 0.0, True, None), ("PCT_START", 0.0, True, 1.0),
                                   ("GRAD_NORM_CLIP", 0.0, False, None)):
        value = _get(config, f"OPTIMIZATION.{key}")
        ok = _is_number(value) and (value >= low if closed else value > low) and (high is None or value < high)
        if not ok:
            bound = f"{'>=' if closed else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise ValueError(f"OPTIMIZATION.{key}: expected a number {bound}, got {value!r}")
    moms = _get(config, "OPTIMIZATION.MOMS")
    if not isinstance(moms, list) or len(moms) != 2 or not all(_is_number(m) and 0 <= m < 1 for m in moms):
        raise ValueError(f"OPTIMIZATION.MOMS: expected two numbers in [0, 1), got {moms!r}")
    no_gt = _positive_int(config, "OPTIMIZATION.NUM_EPOCHS_NO_GT_SAMPLING", minimum=0)
    if no_gt > epochs:
        raise ValueError(f"OPTIMIZATION.NUM_EPOCHS_NO_GT_SAMPLING: expected at most NUM_EPOCHS ({epochs}), got {no_gt}")


def model_signature(config: Mapping) -> dict:
    """What fixes a trained model's weights and meaning: class names, range, voxel size, point features and
    the whole ``MODEL`` section (a deep copy). Two configs with equal signatures share checkpoints."""
    return {"CLASS_NAMES": list(config["CLASS_NAMES"]), "POINT_CLOUD_RANGE": point_cloud_range(config),
            "VOXEL_SIZE": voxel_size(config),
            "used_feature_list": list(_get(config, "DATA_CONFIG.POINT_FEATURE_ENCODING.used_feature_list")),
            "MODEL": copy.deepcopy(dict(config["MODEL"]))}


def _differences(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                out.append(f"{where}.{key}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}")
            else:
                _differences(a[key], b[key], f"{where}.{key}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            _differences(x, y, f"{where}[{index}]", out)
    elif _is_number(a) and _is_number(b):
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def check_same_model(saved: Mapping, wanted: Mapping, source: str = "checkpoint") -> None:
    """``ValueError`` listing the differing key paths when ``saved`` (a checkpoint's config) and ``wanted``
    describe different models (see :func:`model_signature`); training-only keys may differ."""
    out: list[str] = []
    _differences(model_signature(saved), model_signature(wanted), "config", out)
    if out:
        shown = "; ".join(out[:5]) + (f"; ... {len(out) - 5} more" if len(out) > 5 else "")
        raise ValueError(f"{source}: trained with another model config ({shown})")
