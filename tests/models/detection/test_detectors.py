from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from geoattn import backends

pytestmark = pytest.mark.skipif(backends.spconv() is None, reason="spconv not installed (ScatterFormer stem)")

KITTI = dict(names=["Car", "Pedestrian", "Cyclist"], range=[0, -40, -3, 70.4, 40, 1], voxel=[0.32, 0.32, 0.125],
             features=4)
WAYMO = dict(names=["Vehicle", "Pedestrian", "Cyclist"], range=[-76.8, -76.8, -2, 76.8, 76.8, 4],
             voxel=[0.32, 0.32, 0.1875], features=5)
TINY_RANGE = [0, -3.2, -2, 6.4, 3.2, 2]  # grid (Z, Y, X) = (32, 20, 20) at the KITTI voxel size


def model_cfg(names, channels=8, feature_dim=8, shared=8, num_layers=1):
    """The official MODEL section (OpenPCDet keys), narrowed for fast tests."""
    return {
        "NAME": "CenterPoint",
        "VFE": {"NAME": "DynamicVoxelVFE", "WITH_DISTANCE": False, "USE_ABSLOTE_XYZ": True, "USE_NORM": True,
                "NUM_FILTERS": [8, 8]},
        "BACKBONE_3D": {"NAME": "ScatterFormer", "CHANNELS": channels, "HEADS": 2, "WINDOW_SIZE": 6, "BLOCKS": [1, 1],
                        "STEM_BLOCKS": 1, "FFN_RATIO": 2, "PILLAR_HEADS": 2},
        "MAP_TO_BEV": {"NAME": "PillarPooling", "NUM_BEV_FEATURES": channels},
        "BACKBONE_2D": {"NAME": "CascadeDEDBackbone", "NUM_LAYERS": num_layers, "NUM_SBB": [2, 1, 1],
                        "DOWN_STRIDES": [1, 2, 2], "FEATURE_DIM": feature_dim},
        "DENSE_HEAD": {
            "NAME": "CenterHead", "CLASS_AGNOSTIC": False, "CLASS_NAMES_EACH_HEAD": [list(names)],
            "SHARED_CONV_CHANNEL": shared, "USE_BIAS_BEFORE_NORM": False, "NUM_HM_CONV": 2, "BN_EPS": 0.001,
            "BN_MOM": 0.01,
            "SEPARATE_HEAD_CFG": {
                "HEAD_ORDER": ["center", "center_z", "dim", "rot", "iou"],
                "HEAD_DICT": {"center": {"out_channels": 2, "num_conv": 2}, "center_z": {"out_channels": 1, "num_conv": 2},
                              "dim": {"out_channels": 3, "num_conv": 2}, "rot": {"out_channels": 2, "num_conv": 2},
                              "iou": {"out_channels": 1, "num_conv": 2}}},
            "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 2, "NUM_MAX_OBJS": 500, "GAUSSIAN_OVERLAP": 0.1,
                                       "MIN_RADIUS": 2},
            "IOU_REG_LOSS": True,
            "LOSS_CONFIG": {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 2.0, "code_weights": [1.0] * 8}}},
        "POST_PROCESSING": {"EVAL_METRIC": "kitti"},
    }


def build(cfg=None, dataset=KITTI, point_range=None):
    from geoattn.models.detection import build_detector

    cfg = model_cfg(dataset["names"]) if cfg is None else cfg
    return build_detector(cfg, dataset["names"], point_range or dataset["range"], dataset["voxel"],
                          dataset["features"])


def cloud(n, point_range, columns, batch_size, gen):
    lo, hi = torch.tensor(point_range[:3], dtype=torch.float32), torch.tensor(point_range[3:], dtype=torch.float32)
    xyz = lo + (hi - lo) * torch.rand(n, 3, generator=gen)
    points = torch.cat([xyz, torch.rand(n, columns - 3, generator=gen)], 1)
    batch = torch.sort(torch.randint(0, batch_size, (n,), generator=gen)).values
    return points, batch


EXPECTED = {"heatmap": 3, "center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1}


@pytest.mark.parametrize("dataset, grid, feature_map", [(KITTI, (32, 250, 220), (125, 110)),
                                                        (WAYMO, (32, 480, 480), (240, 240))])
def test_map_shapes_of_both_configs(dataset, grid, feature_map):
    model = build(dataset=dataset).eval()
    assert model.grid == grid and model.feature_map_size == feature_map
    assert model.backbone.sparse_shape == (33,) + grid[1:] and model.backbone.stem_height == 16
    assert model.feature_map_stride == 2 and model.class_names == dataset["names"]
    assert model.voxel_size == tuple(dataset["voxel"]) and model.point_range == tuple(dataset["range"])
    assert model.vfe.num_input_features == dataset["features"] + 6  # 10 KITTI, 11 Waymo
    gen = torch.Generator().manual_seed(0)
    points, batch = cloud(300, dataset["range"], dataset["features"], 2, gen)
    with torch.no_grad():
        out = model(points, batch, 2)
    assert list(out) == list(EXPECTED)
    for key, channels in EXPECTED.items():
        assert out[key].shape == (2, channels) + feature_map, key
        assert out[key].dtype == torch.float32


def test_tiny_forward_backward_and_empty_batch_element():
    model = build(point_range=TINY_RANGE).train()
    gen = torch.Generator().manual_seed(1)
    points, _ = cloud(400, TINY_RANGE, 4, 1, gen)
    far = torch.tensor([[50.0, 0.0, 0.0, 0.5], [-1.0, 0.0, 0.0, 0.5]])  # outside the range: dropped
    points = torch.cat([points, far])
    batch = torch.zeros(len(points), dtype=torch.long)
    batch[200:] = 2  # element 1 has no points
    out = model(points, batch, 3)
    assert out["heatmap"].shape == (3, 3, 10, 10)
    loss = sum(v.square().mean() for v in out.values())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # in eval mode element 1 is what the 2-D part makes of an all-zero BEV map, the same as a batch with no
    # point in range at all (that path builds the zero map directly); element 0 is as if alone
    model.eval()
    with torch.no_grad():
        out = model(points, batch, 3)
        alone = model(points[batch == 0], torch.zeros(200, dtype=torch.long), 1)
        empty = model(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)
    assert empty["heatmap"].shape == (2, 3, 10, 10)
    for key in EXPECTED:
        torch.testing.assert_close(out[key][1], empty[key][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[key][0], alone[key][0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out["heatmap"][0], out["heatmap"][1])


def test_dtypes():
    model = build(point_range=TINY_RANGE).eval()
    gen = torch.Generator().manual_seed(2)
    points, batch = cloud(200, TINY_RANGE, 4, 1, gen)
    with pytest.raises(TypeError, match="bfloat16"):
        model(points.bfloat16(), batch, 1)
    with pytest.raises(TypeError, match="bfloat16"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(points, batch, 1)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        out32 = model(points, batch, 1)
        out64 = model64(points.double(), batch, 1)
    assert out64["heatmap"].dtype == torch.float64
    torch.testing.assert_close(out64["heatmap"].float(), out32["heatmap"], atol=1e-3, rtol=1e-3)


def test_build_detector_errors_name_the_key_path():
    names = KITTI["names"]

    def fails(edit, match):
        cfg = model_cfg(names)
        edit(cfg)
        with pytest.raises(ValueError, match=match):
            build(cfg)

    fails(lambda c: c.update(NAME="PointPillar"), r"MODEL.NAME: expected 'CenterPoint', got 'PointPillar'")
    fails(lambda c: c["DENSE_HEAD"].update(NUM_HM_CONV="x"), r"MODEL.DENSE_HEAD.NUM_HM_CONV: expected a positive int, got 'x'")
    fails(lambda c: c["VFE"].pop("NUM_FILTERS"), r"MODEL.VFE.NUM_FILTERS: expected .*got nothing \(missing key\)")
    fails(lambda c: c["VFE"].update(NUM_FILTER=[64]), r"MODEL.VFE: expected only the keys .* unknown \['NUM_FILTER'\]")
    fails(lambda c: c["VFE"].update(NUM_FILTERS=[7, 8]), r"MODEL.VFE.NUM_FILTERS: expected even widths")
    fails(lambda c: c["VFE"].update(USE_NORM="yes"), r"MODEL.VFE.USE_NORM: expected a bool, got 'yes'")
    fails(lambda c: c["BACKBONE_3D"].update(HEADS=3), r"MODEL.BACKBONE_3D.HEADS: expected a divisor of CHANNELS=8, got 3")
    fails(lambda c: c["BACKBONE_3D"].update(BLOCKS=[1, 1, 1]), r"MODEL.BACKBONE_3D.BLOCKS: expected two stage depths")
    fails(lambda c: c["MAP_TO_BEV"].update(NUM_BEV_FEATURES=16), r"MODEL.MAP_TO_BEV.NUM_BEV_FEATURES: expected 8")
    fails(lambda c: c["BACKBONE_2D"].update(NUM_SBB=[2, 1]), r"MODEL.BACKBONE_2D.NUM_SBB: expected 3 entries")
    fails(lambda c: c["BACKBONE_2D"].update(NAME="BaseBEVBackbone"), r"MODEL.BACKBONE_2D.NAME: expected 'CascadeDEDBackbone'")
    fails(lambda c: c["DENSE_HEAD"].update(CLASS_NAMES_EACH_HEAD=[["Car"], ["Pedestrian", "Cyclist"]]),
          r"MODEL.DENSE_HEAD.CLASS_NAMES_EACH_HEAD: expected one task")
    fails(lambda c: c["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"].update(FEATURE_MAP_STRIDE=4),
          r"MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE: expected 2 .* got 4")
    fails(lambda c: c["DENSE_HEAD"]["SEPARATE_HEAD_CFG"].update(HEAD_ORDER=["center"]),
          r"MODEL.DENSE_HEAD.SEPARATE_HEAD_CFG.HEAD_ORDER: expected each of the HEAD_DICT names")
    fails(lambda c: c["DENSE_HEAD"]["SEPARATE_HEAD_CFG"]["HEAD_DICT"]["dim"].update(out_channels=-1),
          r"MODEL.DENSE_HEAD.SEPARATE_HEAD_CFG.HEAD_DICT.dim.out_channels: expected a positive int, got -1")
    fails(lambda c: c.pop("DENSE_HEAD"), r"MODEL.DENSE_HEAD: expected a mapping, got nothing")
    with pytest.raises(ValueError, match="num_point_features"):
        from geoattn.models.detection import build_detector
        build_detector(model_cfg(names), names, KITTI["range"], KITTI["voxel"], 2)
    with pytest.raises(ValueError, match="class_names"):
        build_detector(model_cfg(names), [], KITTI["range"], KITTI["voxel"], 4)


def test_build_detector_reads_the_official_config_values():
    names = KITTI["names"]
    cfg = model_cfg(names, channels=16, feature_dim=12, shared=6, num_layers=2)
    model = build(cfg)
    assert model.backbone.channels == 16 and len(model.bev_backbone.layers) == 2
    assert model.bev_backbone.num_bev_features == 12 and model.dense_head.in_channels == 12
    assert model.dense_head.shared_conv[0].out_channels == 6
    assert model.dense_head.shared_conv[1].eps == 1e-3 and model.dense_head.shared_conv[1].momentum == 0.01
    # official .get defaults when the optional keys are absent
    for key in ("BN_EPS", "BN_MOM", "USE_BIAS_BEFORE_NORM", "CLASS_AGNOSTIC"):
        cfg["DENSE_HEAD"].pop(key)
    bn = build(cfg).dense_head.shared_conv[1]
    assert bn.eps == 1e-5 and bn.momentum == 0.1


def test_shipped_configs_build_when_present():
    config = pytest.importorskip("geoattn.detection.config")
    from geoattn.models.detection import build_detector

    for name, grid in (("kitti_scatterformer", (32, 250, 220)), ("waymo_scatterformer", (32, 480, 480))):
        try:
            cfg = config.load_config(name)
        except (FileNotFoundError, ValueError) as error:  # pragma: no cover - config files not there yet
            pytest.skip(f"{name}: {error}")
        data = cfg["DATA_CONFIG"]
        voxel = next(p["VOXEL_SIZE"] for p in data["DATA_PROCESSOR"] if "VOXEL_SIZE" in p)
        features = len(data["POINT_FEATURE_ENCODING"]["used_feature_list"])
        model = build_detector(cfg["MODEL"], cfg["CLASS_NAMES"], data["POINT_CLOUD_RANGE"], voxel, features)
        assert model.grid == grid and model.backbone.sparse_shape[0] == 33


def test_real_frame_forward_backward(real_data):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / "000000.bin"
    points = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))
    model = build(point_range=[0, -12.8, -3, 25.6, 12.8, 1]).train()
    out = model(points, torch.zeros(len(points), dtype=torch.long), 1)
    assert out["heatmap"].shape == (1, 3, 40, 40)
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
