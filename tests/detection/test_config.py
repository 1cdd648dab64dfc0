"""geoattn.detection.config: the built-in configs' recipe numbers, validation errors, model signatures."""
from __future__ import annotations

import copy

import pytest

yaml = pytest.importorskip("yaml")

from geoattn.detection.config import (builtin_configs, check_same_model, load_config, num_point_features,  # noqa: E402
                                      point_cloud_range, validate_config, voxel_size)


def _aug(config, name):
    return next(a for a in config["DATA_CONFIG"]["DATA_AUGMENTOR"]["AUG_CONFIG_LIST"] if a["NAME"] == name)


def test_builtin_names():
    assert builtin_configs() == ["kitti_scatterformer", "waymo_scatterformer"]


def test_waymo_is_the_official_recipe():
    config = load_config("waymo_scatterformer")
    assert config["CLASS_NAMES"] == ["Vehicle", "Pedestrian", "Cyclist"]
    assert point_cloud_range(config) == [-76.8, -76.8, -2.0, 76.8, 76.8, 4.0]
    assert voxel_size(config) == [0.32, 0.32, 0.1875]
    assert num_point_features(config) == 5
    gt = _aug(config, "gt_sampling")
    assert gt["SAMPLE_GROUPS"] == ["Vehicle:15", "Pedestrian:10", "Cyclist:10"]
    assert gt["PREPARE"]["filter_by_min_points"] == ["Vehicle:5", "Pedestrian:10", "Cyclist:10"]
    assert gt["NUM_POINT_FEATURES"] == 5 and gt["LIMIT_WHOLE_SCENE"] is True
    assert _aug(config, "random_world_flip")["ALONG_AXIS_LIST"] == ["x", "y"]
    assert _aug(config, "random_world_rotation")["WORLD_ROT_ANGLE"] == [-0.78539816, 0.78539816]
    assert _aug(config, "random_world_scaling")["WORLD_SCALE_RANGE"] == [0.95, 1.05]
    assert _aug(config, "random_world_translation")["NOISE_TRANSLATE_STD"] == [0.5, 0.5, 0.5]
    model = config["MODEL"]
    assert model["VFE"]["NUM_FILTERS"] == [64, 64] and model["MAP_TO_BEV"]["NUM_BEV_FEATURES"] == 128
    assert model["BACKBONE_3D"]["CHANNELS"] == 128 and model["BACKBONE_2D"]["NUM_SBB"] == [2, 1, 1]
    head = model["DENSE_HEAD"]
    assert head["TARGET_ASSIGNER_CONFIG"] == {"FEATURE_MAP_STRIDE": 2, "NUM_MAX_OBJS": 500, "GAUSSIAN_OVERLAP": 0.1,
                                              "MIN_RADIUS": 2}
    assert head["POST_PROCESSING"]["NMS_CONFIG"]["NMS_THRESH"] == [0.75, 0.6, 0.55]
    assert head["POST_PROCESSING"]["IOU_RECTIFIER"] == [0.68, 0.71, 0.65]
    assert head["LOSS_CONFIG"]["LOSS_WEIGHTS"]["code_weights"] == [1.0] * 8
    opt = config["OPTIMIZATION"]
    assert (opt["BATCH_SIZE_PER_GPU"], opt["NUM_EPOCHS"], opt["LR"], opt["WEIGHT_DECAY"], opt["MOMS"],
            opt["PCT_START"], opt["DIV_FACTOR"], opt["GRAD_NORM_CLIP"], opt["LOSS_SCALE_FP16"],
            opt["NUM_EPOCHS_NO_GT_SAMPLING"]) == (4, 24, 0.006, 0.05, [0.95, 0.85], 0.1, 100, 10, 32.0, 4)
    assert model["POST_PROCESSING"]["EVAL_METRIC"] == "waymo"


def test_kitti_config():
    config = load_config("kitti_scatterformer")
    assert config["CLASS_NAMES"] == ["Car", "Pedestrian", "Cyclist"]
    assert config["DATA_CONFIG"]["DATASET"] == "KittiDataset" and config["DATA_CONFIG"]["FOV_POINTS_ONLY"] is True
    assert point_cloud_range(config) == [0.0, -40.0, -3.0, 70.4, 40.0, 1.0]
    assert voxel_size(config) == [0.32, 0.32, 0.125]  # 4 m / 0.125 = 32 z cells
    assert num_point_features(config) == 4
    assert _aug(config, "random_world_flip")["ALONG_AXIS_LIST"] == ["x"]
    assert _aug(config, "gt_sampling")["SAMPLE_GROUPS"] == ["Car:15", "Pedestrian:10", "Cyclist:10"]
    backbone = config["MODEL"]["BACKBONE_3D"]
    assert (backbone["CHANNELS"], backbone["BLOCKS"], backbone["STEM_BLOCKS"]) == (64, [2, 2], 1)
    assert (config["MODEL"]["BACKBONE_2D"]["FEATURE_DIM"], config["MODEL"]["BACKBONE_2D"]["NUM_LAYERS"]) == (64, 1)
    assert config["MODEL"]["DENSE_HEAD"]["CLASS_NAMES_EACH_HEAD"] == [["Car", "Pedestrian", "Cyclist"]]
    assert config["MODEL"]["POST_PROCESSING"]["EVAL_METRIC"] == "kitti"
    # every value but the documented departures matches the Waymo recipe
    waymo = load_config("waymo_scatterformer")
    schedule = {"NUM_EPOCHS": 6, "NUM_EPOCHS_NO_GT_SAMPLING": 1}  # the CPU-budget schedule (see the header)
    assert {key: config["OPTIMIZATION"][key] for key in schedule} == schedule
    assert {k: v for k, v in config["OPTIMIZATION"].items() if k not in schedule} == \
        {k: v for k, v in waymo["OPTIMIZATION"].items() if k not in schedule}
    assert config["MODEL"]["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"] == waymo["MODEL"]["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"]


def _write(tmp_path, config, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_load_from_path_and_errors(tmp_path):
    base = load_config("kitti_scatterformer")
    assert load_config(_write(tmp_path, base)) == base
    assert load_config(str(_write(tmp_path, base))) == base
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="kitti_scatterformer"):
        load_config("kitti_scaterformer")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    broken = copy.deepcopy(base)
    broken["OPTIMIZATION"]["LR"] = "fast"
    with pytest.raises(ValueError, match=r"c.yaml: OPTIMIZATION.LR: expected a number > 0, got 'fast'"):
        load_config(_write(tmp_path, broken))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("MODEL"), r"missing \['MODEL'\]"),
    (lambda c: c.update(EXTRA=1), r"unknown \['EXTRA'\]"),
    (lambda c: c.update(CLASS_NAMES=["Car", "Car"]), "CLASS_NAMES: expected a non-empty list of distinct"),
    (lambda c: c["DATA_CONFIG"].update(DATASET="NuScenes"), "DATA_CONFIG.DATASET: expected one of"),
    (lambda c: c["DATA_CONFIG"].update(POINT_CLOUD_RANGE=[0, 0, 0, 1, 1]), "POINT_CLOUD_RANGE: expected a list of 6"),
    (lambda c: c["DATA_CONFIG"].update(POINT_CLOUD_RANGE=[5, -40, -3, 0, 40, 1]), "min < max"),
    (lambda c: c["DATA_CONFIG"]["DATA_PROCESSOR"][2].update(VOXEL_SIZE=[0.32, 0.32, 0.1875]),
     r"VOXEL_SIZE\[2\]: expected a divisor of the range extent 4 m, got 0.1875"),
    (lambda c: c["DATA_CONFIG"]["DATA_PROCESSOR"].pop(2), "expected an entry with NAME transform_points_to_voxels"),
    (lambda c: c["DATA_CONFIG"]["POINT_FEATURE_ENCODING"].update(used_feature_list=["intensity"]), r"\[x, y, z, \.\.\.\]"),
    (lambda c: c["MODEL"]["DENSE_HEAD"].update(CLASS_NAMES_EACH_HEAD=[["Car"]]), "CLASS_NAMES_EACH_HEAD"),
    (lambda c: c["OPTIMIZATION"].update(OPTIMIZER="sgd"), "OPTIMIZATION.OPTIMIZER: expected 'adam_onecycle'"),
    (lambda c: c["OPTIMIZATION"].update(NUM_EPOCHS=0), "OPTIMIZATION.NUM_EPOCHS: expected an int >= 1, got 0"),
    (lambda c: c["OPTIMIZATION"].update(PCT_START=1.0), "OPTIMIZATION.PCT_START: expected a number >= 0 and < 1"),
    (lambda c: c["OPTIMIZATION"].update(MOMS=[0.95]), "OPTIMIZATION.MOMS"),
    (lambda c: c["OPTIMIZATION"].update(NUM_EPOCHS_NO_GT_SAMPLING=30), "at most NUM_EPOCHS"),
    (lambda c: c["OPTIMIZATION"].pop("GRAD_NORM_CLIP"), "OPTIMIZATION.GRAD_NORM_CLIP: missing"),
])
def test_validation_messages(mutate, message):
    config = load_config("kitti_scatterformer")
    mutate(config)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_model_signature():
    kitti, waymo = load_config("kitti_scatterformer"), load_config("waymo_scatterformer")
    check_same_model(kitti, copy.deepcopy(kitti))
    retrained = copy.deepcopy(kitti)
    retrained["OPTIMIZATION"]["NUM_EPOCHS"] = 3  # training settings may differ
    check_same_model(kitti, retrained)
    with pytest.raises(ValueError, match="ckpt.pt: trained with another model config.*CLASS_NAMES"):
        check_same_model(waymo, kitti, source="ckpt.pt")
    wider = copy.deepcopy(kitti)
    wider["MODEL"]["BACKBONE_3D"]["CHANNELS"] = 128
    with pytest.raises(ValueError, match=r"config.MODEL.BACKBONE_3D.CHANNELS: 64 vs 128"):
        check_same_model(kitti, wider)
