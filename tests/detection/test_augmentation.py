"""DataAugmentor / GTDatabaseSampler (geoattn.detection.augmentation)."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from geoattn.data.kitti import load_info_pickle
from geoattn.detection.augmentation import DataAugmentor, GTDatabaseSampler, parse_class_counts
from geoattn.detection.gt_database import create_gt_database
from geoattn.sparse.boxes import boxes_iou_bev, points_in_boxes
from tests.detection._kitti_layout import ground_points, kitti_data_config, points_inside, write_kitti_root

CLASSES = ["Car", "Pedestrian", "Cyclist"]
SIZES = {"Car": (3.9, 1.6, 1.5), "Pedestrian": (0.8, 0.6, 1.7), "Cyclist": (1.8, 0.6, 1.7)}


def _write_database(root, rng, counts=None):
    """A database of random objects: points stored relative to the box centre, as create_gt_database."""
    counts = counts or {"Car": 40, "Pedestrian": 25, "Cyclist": 25}
    (root / "gt_database").mkdir(parents=True)
    infos = {}
    for name, count in counts.items():
        for i in range(count):
            dx, dy, dz = SIZES[name]
            box = torch.tensor([rng.uniform(2, 65), rng.uniform(-35, 35), -0.9, dx, dy, dz, rng.uniform(-3, 3)])
            n = int(rng.integers(0, 40))
            pts = points_inside(box, n, rng)
            pts = torch.cat([pts - box[:3], torch.rand(n, 1)], 1).numpy().astype(np.float32)
            path = f"gt_database/db_{name}_{i}.bin"
            pts.tofile(root / path)
            infos.setdefault(name, []).append({
                "name": name, "path": path, "image_idx": str(i), "gt_idx": i,
                "box3d_lidar": box.numpy().astype(np.float32), "num_points_in_gt": n,
                "difficulty": int(rng.choice([-1, 0, 1, 2])), "bbox": np.zeros(4, np.float32), "score": -1.0})
    with open(root / "kitti_dbinfos_train.pkl", "wb") as handle:
        pickle.dump(infos, handle)
    return infos


def _scene(rng, boxes, names, per_box=20, ground=400):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7)
    parts = [points_inside(boxes[k], per_box, rng) for k in range(len(boxes))] + [ground_points(boxes, ground, rng)]
    xyz = torch.cat(parts)
    points = torch.cat([xyz, torch.rand(xyz.shape[0], 1)], 1)
    return {"points": points, "gt_boxes": boxes, "gt_names": list(names)}


def _gt_cfg(**overrides):
    cfg = kitti_data_config(world=False)["DATA_AUGMENTOR"]["AUG_CONFIG_LIST"][0]
    cfg = dict(cfg)
    cfg.update(overrides)
    return cfg


SCENE_BOXES = [[15.0, 2.0, -0.9, 3.9, 1.6, 1.5, 0.3], [30.0, -8.0, -0.9, 4.0, 1.7, 1.5, -1.0],
               [10.0, -3.0, -0.85, 0.8, 0.6, 1.7, 0.0], [25.0, 6.0, -0.7, 5.0, 2.0, 2.0, -0.4]]
SCENE_NAMES = ["Car", "Car", "Pedestrian", "Van"]


def test_parse_class_counts():
    assert parse_class_counts(["Car:15", "Pedestrian: 10"], "x") == {"Car": 15, "Pedestrian": 10}
    assert parse_class_counts({"Car": 3}, "x") == {"Car": 3}
    for bad in (["Car"], ["Car:a"], ["Car:-1"], "Car:1"):
        with pytest.raises(ValueError, match="SAMPLE_GROUPS"):
            parse_class_counts(bad, "SAMPLE_GROUPS")


def test_prepare_filters_match_a_plain_loop(tmp_path):
    infos = _write_database(tmp_path, np.random.default_rng(0))
    sampler = GTDatabaseSampler.from_config(_gt_cfg(), tmp_path, CLASSES)
    for name in CLASSES:
        expected = [x for x in infos[name] if x["num_points_in_gt"] >= 5 and x["difficulty"] != -1]
        assert len(sampler.database[name]["boxes"]) == len(expected)
        np.testing.assert_array_equal(sampler.database[name]["boxes"], np.stack([x["box3d_lidar"] for x in expected]))


def test_gt_sampling_adds_asked_classes_with_min_points_and_no_collisions(tmp_path):
    _write_database(tmp_path, np.random.default_rng(1))
    sampler = GTDatabaseSampler.from_config(_gt_cfg(), tmp_path, CLASSES)
    total = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        scene = _scene(rng, SCENE_BOXES, SCENE_NAMES)
        out = sampler(scene, np.random.default_rng(100 + seed))
        pasted = out["gt_sampled"]
        boxes, names = out["gt_boxes"], out["gt_names"]
        assert boxes.dtype == torch.float32 and out["points"].dtype == torch.float32
        assert len(names) == boxes.shape[0] == pasted.shape[0]
        if not bool(pasted.any()):
            continue
        total += int(pasted.sum())
        # the Van (not a detector class) leaves the targets once objects are pasted, as OpenPCDet
        assert names[: int((~pasted).sum())] == ["Car", "Car", "Pedestrian"]
        pasted_names = [n for n, p in zip(names, pasted.tolist()) if p]
        assert set(pasted_names) <= set(CLASSES)
        assert pasted_names.count("Car") <= 15 - 2 and pasted_names.count("Pedestrian") <= 10 - 1
        assert pasted_names.count("Cyclist") <= 10
        # no collisions among all final boxes, nor with the removed Van
        everything = torch.cat([boxes, scene["gt_boxes"][3:]])
        iou = boxes_iou_bev(everything.double(), everything.double())
        iou.fill_diagonal_(0)
        assert float(iou.max()) == 0.0
        # each pasted box holds exactly its database points (scene points inside it were removed), >= 5
        inside = points_in_boxes(out["points"], boxes[pasted]).sum(0)
        for k, box in enumerate(boxes[pasted]):
            row = np.flatnonzero((sampler.database[pasted_names[k]]["boxes"] == box.numpy()).all(1))
            assert len(row) == 1
            assert int(inside[k]) == int(sampler.database[pasted_names[k]]["num_points"][row[0]]) >= 5
            assert int(sampler.database[pasted_names[k]]["difficulty"][row[0]]) != -1
        # the scene's own objects keep their points
        kept = points_in_boxes(out["points"], boxes[~pasted]).sum(0)
        assert kept.tolist() == [20, 20, 20]
    assert total > 20


def test_collision_rule_on_a_hand_built_database(tmp_path):
    (tmp_path / "gt_database").mkdir()
    boxes = {"A": [10.5, 0.5, -0.9, 3.9, 1.6, 1.5, 0.0],  # overlaps the scene's car
             "B": [30.0, 10.0, -0.9, 3.9, 1.6, 1.5, 0.0], "C": [31.0, 10.5, -0.9, 3.9, 1.6, 1.5, 0.7],  # overlap
             "D": [20.0, -10.0, -0.9, 3.9, 1.6, 1.5, 0.2]}  # free
    infos = {"Car": []}
    for key, box in boxes.items():
        np.tile(np.float32([0, 0, 0, 0.5]), (8, 1)).tofile(tmp_path / "gt_database" / f"{key}.bin")
        infos["Car"].append({"name": "Car", "path": f"gt_database/{key}.bin", "box3d_lidar": np.float32(box),
                             "num_points_in_gt": 8, "difficulty": 0})
    with open(tmp_path / "db.pkl", "wb") as handle:
        pickle.dump(infos, handle)
    base = {"points": torch.tensor([[10.0, 0.0, -0.9, 0.1], [20.0, -10.0, -0.9, 0.2], [22.5, -10.0, -0.9, 0.3],
                                    [50.0, 0.0, -1.0, 0.4]]),
            "gt_boxes": torch.tensor([[10.0, 0.0, -0.9, 3.9, 1.6, 1.5, 0.0]]), "gt_names": ["Car"]}
    for width, expect_left in (([0.0, 0.0, 0.0], 3), ([2.0, 2.0, 2.0], 2)):
        cfg = _gt_cfg(DB_INFO_PATH=["db.pkl"], SAMPLE_GROUPS=["Car:10"], LIMIT_WHOLE_SCENE=False,
                      REMOVE_EXTRA_WIDTH=width)
        sampler = GTDatabaseSampler.from_config(cfg, tmp_path, CLASSES)
        for seed in range(5):
            out = sampler(base, np.random.default_rng(seed))
            assert out["gt_sampled"].tolist() == [False, True]
            np.testing.assert_allclose(out["gt_boxes"][1].numpy(), boxes["D"])
            # 8 pasted points at D's centre first, then the scene points not inside (enlarged) D
            assert out["points"].shape == (8 + expect_left, 4)
            np.testing.assert_allclose(out["points"][:8, :3].numpy(), np.tile(boxes["D"][:3], (8, 1)), atol=1e-6)
            assert not bool((out["points"][8:, :2] == torch.tensor([20.0, -10.0])).all(1).any())
    assert base["points"].shape == (4, 4)  # input untouched


def test_limit_whole_scene(tmp_path):
    _write_database(tmp_path, np.random.default_rng(2))
    scene = _scene(np.random.default_rng(0), SCENE_BOXES[:2], ["Car", "Car"])
    limited = GTDatabaseSampler.from_config(_gt_cfg(SAMPLE_GROUPS=["Car:2"]), tmp_path, CLASSES)
    assert not bool(limited(scene, np.random.default_rng(0))["gt_sampled"].any())
    free = GTDatabaseSampler.from_config(_gt_cfg(SAMPLE_GROUPS=["Car:2"], LIMIT_WHOLE_SCENE=False), tmp_path, CLASSES)
    counts = [int(free(scene, np.random.default_rng(s))["gt_sampled"].sum()) for s in range(5)]
    assert max(counts) >= 1 and max(counts) <= 2


def test_deterministic_given_the_generator_and_picklable(tmp_path):
    _write_database(tmp_path, np.random.default_rng(3))
    augmentor = DataAugmentor(kitti_data_config()["DATA_AUGMENTOR"], tmp_path, CLASSES)
    scene = _scene(np.random.default_rng(0), SCENE_BOXES, SCENE_NAMES)
    first = augmentor(scene, np.random.default_rng(7))
    again = pickle.loads(pickle.dumps(augmentor))(scene, np.random.default_rng(7))
    other = augmentor(scene, np.random.default_rng(8))
    assert torch.equal(first["points"], again["points"]) and torch.equal(first["gt_boxes"], again["gt_boxes"])
    assert first["gt_names"] == again["gt_names"]
    assert not (first["points"].shape == other["points"].shape and torch.equal(first["points"], other["points"]))


def _world_only(**lists):
    entries = [{"NAME": "random_world_flip", "ALONG_AXIS_LIST": lists.get("axes", ["x", "y"])},
               {"NAME": "random_world_rotation", "WORLD_ROT_ANGLE": lists.get("rot", [-0.78539816, 0.78539816])},
               {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": lists.get("scale", [0.95, 1.05])},
               {"NAME": "random_world_translation", "NOISE_TRANSLATE_STD": lists.get("std", [0.5, 0.5, 0.5])}]
    return {"DISABLE_AUG_LIST": lists.get("disable", []), "AUG_CONFIG_LIST": entries}


def test_world_augmentations_keep_points_in_their_boxes():
    rng = np.random.default_rng(0)
    scene = _scene(rng, SCENE_BOXES, SCENE_NAMES, per_box=50, ground=800)
    before = points_in_boxes(scene["points"], scene["gt_boxes"])
    assert int(before.sum()) == 200
    augmentor = DataAugmentor(_world_only())
    flips = set()
    for seed in range(12):
        out = augmentor(scene, np.random.default_rng(seed))
        assert torch.equal(points_in_boxes(out["points"], out["gt_boxes"]), before)
        assert out["gt_names"] == SCENE_NAMES and torch.equal(out["points"][:, 3], scene["points"][:, 3])
        record = out["augmentation"]
        flips.add(tuple(v for n, v in record.operations if n == "flip"))
        # the record maps raw -> augmented and back
        torch.testing.assert_close(record.invert_points(out["points"]), scene["points"], atol=2e-5, rtol=0)
        back = record.invert_boxes(out["gt_boxes"])
        torch.testing.assert_close(back[:, :6], scene["gt_boxes"][:, :6], atol=2e-5, rtol=0)
        wrapped = torch.remainder(back[:, 6] - scene["gt_boxes"][:, 6] + math.pi, 2 * math.pi) - math.pi
        assert float(wrapped.abs().max()) < 1e-5
    assert len(flips) == 4  # (), (x,), (y,), (x, y) all occur


def test_world_augmentations_hand_values():
    scene = {"points": torch.tensor([[1.0, 2.0, 0.5, 0.3]]),
             "gt_boxes": torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.4]]), "gt_names": ["Car"]}
    angle = 0.3
    rotate = DataAugmentor(_world_only(disable=["random_world_flip", "random_world_scaling",
                                                "random_world_translation"], rot=[angle, angle]))
    out = rotate(scene, np.random.default_rng(0))
    c, s = math.cos(angle), math.sin(angle)
    torch.testing.assert_close(out["points"], torch.tensor([[c - 2 * s, s + 2 * c, 0.5, 0.3]]))
    torch.testing.assert_close(out["gt_boxes"], torch.tensor([[c - 2 * s, s + 2 * c, 0.5, 4.0, 2.0, 1.5, 0.7]]))
    for axis, expect_point, expect_heading in (("x", [1.0, -2.0, 0.5], -0.4), ("y", [-1.0, 2.0, 0.5], math.pi - 0.4)):
        flip = DataAugmentor(_world_only(disable=["random_world_rotation", "random_world_scaling",
                                                  "random_world_translation"], axes=[axis]))
        seen = set()
        for seed in range(10):
            out = flip(scene, np.random.default_rng(seed))
            flipped = bool(out["augmentation"].operations)
            seen.add(flipped)
            if flipped:
                torch.testing.assert_close(out["points"][0, :3], torch.tensor(expect_point))
                torch.testing.assert_close(out["gt_boxes"][0, 6], torch.tensor(expect_heading))
            else:
                torch.testing.assert_close(out["points"], scene["points"])
        assert seen == {True, False}
    scale = DataAugmentor(_world_only(disable=["random_world_flip", "random_world_rotation",
                                               "random_world_translation"], scale=[1.1, 1.2]))
    out = scale(scene, np.random.default_rng(0))
    (name, factor), = out["augmentation"].operations
    assert name == "scale" and 1.1 <= factor <= 1.2
    torch.testing.assert_close(out["gt_boxes"][0, :6], scene["gt_boxes"][0, :6] * factor)
    # OpenPCDet skips a scaling range narrower than 1e-3
    assert not DataAugmentor(_world_only(disable=["random_world_flip", "random_world_rotation",
                                                  "random_world_translation"], scale=[1.2, 1.2]))(
        scene, np.random.default_rng(0))["augmentation"].operations
    shift = DataAugmentor(_world_only(disable=["random_world_flip", "random_world_rotation",
                                               "random_world_scaling"], std=[0.5, 0.0, 2.0]))
    out = shift(scene, np.random.default_rng(0))
    (name, offset), = out["augmentation"].operations
    assert offset[1] == 0.0 and offset[0] != 0.0 and offset[2] != 0.0
    torch.testing.assert_close(out["points"][0, :3], scene["points"][0, :3] + torch.tensor(offset, dtype=torch.float32))


def test_disable_list_and_disable_gt_sampling(tmp_path):
    _write_database(tmp_path, np.random.default_rng(4))
    cfg = kitti_data_config()["DATA_AUGMENTOR"]
    augmentor = DataAugmentor(cfg, tmp_path, CLASSES)
    assert augmentor.names == ["gt_sampling", "random_world_flip", "random_world_rotation", "random_world_scaling",
                               "random_world_translation"]
    skipped = DataAugmentor(dict(cfg, DISABLE_AUG_LIST=["gt_sampling", "random_world_flip"]), tmp_path, CLASSES)
    assert skipped.names == ["random_world_rotation", "random_world_scaling", "random_world_translation"]
    scene = _scene(np.random.default_rng(0), SCENE_BOXES, SCENE_NAMES)
    pasted = [int(augmentor(scene, np.random.default_rng(s))["gt_sampled"].sum()) for s in range(3)]
    assert min(pasted) > 0
    augmentor.disable_gt_sampling()
    for seed in range(3):
        out = augmentor(scene, np.random.default_rng(seed))
        assert "gt_sampled" not in out and out["gt_names"] == SCENE_NAMES
        assert out["points"].shape == scene["points"].shape
    augmentor.enable_gt_sampling()
    assert int(augmentor(scene, np.random.default_rng(0))["gt_sampled"].sum()) == pasted[0]


def test_empty_scene(tmp_path):
    _write_database(tmp_path, np.random.default_rng(5))
    augmentor = DataAugmentor(kitti_data_config()["DATA_AUGMENTOR"], tmp_path, CLASSES)
    empty = {"points": torch.zeros(0, 4), "gt_boxes": torch.zeros(0, 7), "gt_names": []}
    out = augmentor(empty, np.random.default_rng(0))
    assert out["gt_boxes"].shape[1] == 7 and len(out["gt_names"]) == out["gt_boxes"].shape[0] > 0
    iou = boxes_iou_bev(out["gt_boxes"], out["gt_boxes"])
    iou.fill_diagonal_(0)
    assert float(iou.max()) == 0.0
    world = DataAugmentor(_world_only())(empty, np.random.default_rng(0))
    assert world["points"].shape == (0, 4) and world["gt_boxes"].shape == (0, 7)


def test_bad_configs_and_inputs(tmp_path):
    _write_database(tmp_path, np.random.default_rng(6))
    with pytest.raises(ValueError, match=r"AUG_CONFIG_LIST\[0\]\.NAME"):
        DataAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_local_noise"}]})
    with pytest.raises(ValueError, match="WORLD_ROT_ANGLE"):
        DataAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_world_rotation", "WORLD_ROT_ANGLE": [1.0, -1.0]}]})
    with pytest.raises(ValueError, match="ALONG_AXIS_LIST"):
        DataAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["z"]}]})
    with pytest.raises(ValueError, match="NOISE_TRANSLATE_STD"):
        DataAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_world_translation", "NOISE_TRANSLATE_STD": [1, 2]}]})
    with pytest.raises(FileNotFoundError, match="create-gt-database"):
        DataAugmentor({"AUG_CONFIG_LIST": [_gt_cfg(DB_INFO_PATH=["missing.pkl"])]}, tmp_path, CLASSES)
    with pytest.raises(ValueError, match="USE_ROAD_PLANE"):
        DataAugmentor({"AUG_CONFIG_LIST": [_gt_cfg(USE_ROAD_PLANE=True)]}, tmp_path, CLASSES)
    with pytest.raises(ValueError, match="SAMPLE_GROUPS"):
        DataAugmentor({"AUG_CONFIG_LIST": [_gt_cfg(SAMPLE_GROUPS=["Car"])]}, tmp_path, CLASSES)
    with pytest.raises(ValueError, match="NUM_POINT_FEATURES"):
        DataAugmentor({"AUG_CONFIG_LIST": [_gt_cfg(NUM_POINT_FEATURES="4")]}, tmp_path, CLASSES)
    augmentor = DataAugmentor(kitti_data_config()["DATA_AUGMENTOR"], tmp_path, CLASSES)
    scene = _scene(np.random.default_rng(0), SCENE_BOXES, SCENE_NAMES)
    with pytest.raises(TypeError, match="rng"):
        augmentor(scene, 0)
    with pytest.raises(ValueError, match="gt_names"):
        augmentor(dict(scene, gt_names=["Car"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="NUM_POINT_FEATURES=4"):
        augmentor(dict(scene, points=scene["points"][:, :3]), np.random.default_rng(0))


def test_database_written_by_create_gt_database(tmp_path):
    write_kitti_root(tmp_path)
    create_gt_database(tmp_path, progress=False)
    sampler = GTDatabaseSampler.from_config(_gt_cfg(), tmp_path, CLASSES)
    infos = load_info_pickle(tmp_path / "kitti_dbinfos_train.pkl")
    assert len(sampler.database["Car"]["boxes"]) == sum(x["num_points_in_gt"] >= 5 for x in infos["Car"]) == 5
    scene = {"points": torch.zeros(0, 4), "gt_boxes": torch.zeros(0, 7), "gt_names": []}
    out = sampler(scene, np.random.default_rng(0))
    inside = points_in_boxes(out["points"], out["gt_boxes"]).sum(0)
    assert (inside >= 5).all() and out["gt_boxes"].shape[0] >= 3
