from __future__ import annotations

import numpy as np
import pytest
import torch

from geoattn import backends
from geoattn.sparse.voxel import VoxelTensor, voxelize

pytestmark = pytest.mark.skipif(backends.spconv() is None, reason="spconv not installed (stem of the backbone)")

SMALL_RANGE = (-6.4, -6.4, -2.0, 6.4, 6.4, 4.0)


def small_backbone(**overrides):
    from geoattn.models.scatterformer import ScatterFormerBackbone

    config = dict(in_channels=8, channels=16, heads=2, window_size=6, blocks=(1, 1),
                  stem_blocks=1, pillar_heads=2, point_range=SMALL_RANGE)
    config.update(overrides)
    return ScatterFormerBackbone(**config)


def small_vfe(model, num_point_features=4):
    """The official voxel feature encoder in front of the backbone (it moved out of the backbone)."""
    from geoattn.models.detection.vfe import DynamicVoxelVFE

    return DynamicVoxelVFE(num_point_features, model.voxel_size, model.point_range,
                           num_filters=(8, model.in_channels))


def run(vfe, model, points, batch=None, batch_size=None):
    return model(vfe(points, batch, batch_size))


def load_frame(real_data, name="000001.bin"):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / name
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))


def test_small_backbone_forward_backward_on_real_frame(real_data):
    points = load_frame(real_data)
    model = small_backbone()
    vfe = small_vfe(model)
    out = run(vfe, model, points)  # points outside the small range are dropped by the VFE's voxelize
    assert out.bev.shape == (1, 16, 20, 20)
    # voxel grid 32 z cells, spconv grid 33 (official grid_size[::-1] + [1, 0, 0]); the stem leaves 16 layers
    assert model.grid == (32, 40, 40) and model.sparse_shape == (33, 40, 40)
    assert out.stage1.features.shape[1] == 16 and out.stage1.spatial_shape == (16, 40, 40)
    assert out.stage2.spatial_shape == (8, 20, 20)
    assert out.pillars.num_voxels > 10
    # the BEV map is zero exactly off the pillars
    occupied = torch.zeros(20, 20, dtype=torch.bool)
    occupied[out.pillars.coords[:, 2], out.pillars.coords[:, 3]] = True
    assert bool((out.bev[0].abs().sum(0) > 0)[occupied].all())
    assert bool((out.bev[0].abs().sum(0) == 0)[~occupied].all())
    out.bev.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert "grid=(32, 40, 40)" in repr(model)


def test_batch_elements_are_independent():
    gen = torch.Generator().manual_seed(0)
    clouds = [torch.cat([(torch.rand(600, 3, generator=gen) * 2 - 1) * torch.tensor([6.0, 6.0, 1.5]) +
                         torch.tensor([0.0, 0.0, 0.5]), torch.rand(600, 1, generator=gen)], dim=1) for _ in range(2)]
    model = small_backbone().eval()
    vfe = small_vfe(model).eval()
    with torch.no_grad():
        joint = run(vfe, model, torch.cat(clouds), torch.repeat_interleave(torch.arange(2), 600), 2)
        alone = [run(vfe, model, cloud).bev[0] for cloud in clouds]
    assert joint.bev.shape[0] == 2
    for b in range(2):
        torch.testing.assert_close(joint.bev[b], alone[b], atol=1e-4, rtol=1e-4)


def test_bad_arguments():
    model = small_backbone()
    with pytest.raises(TypeError, match="voxels"):
        model(torch.zeros(3, 4))
    voxels = voxelize(torch.zeros(1, 3), 0.5, SMALL_RANGE)
    with pytest.raises(ValueError, match="feature channels"):
        model(voxels.to_tensor())
    with pytest.raises(ValueError, match="spatial_shape"):
        model(VoxelTensor(torch.zeros(1, 8), torch.zeros(1, 4, dtype=torch.long), (4, 4, 4), 1))
    with pytest.raises(ValueError, match="blocks"):
        small_backbone(blocks=(1, 1, 1))


@pytest.mark.slow
def test_waymo_config_forward_backward_on_real_frame(real_data):
    from geoattn.models.scatterformer import ScatterFormerBackbone

    from geoattn.models.detection.vfe import DynamicVoxelVFE

    points = load_frame(real_data)
    model = ScatterFormerBackbone()  # Waymo defaults: C = 128, 4 heads, window 12, grid 32 x 480 x 480
    vfe = DynamicVoxelVFE(4, model.voxel_size, model.point_range)  # the official VFE, 64 channels
    out = run(vfe, model, points)
    assert model.sparse_shape == (33, 480, 480) and out.stage1.spatial_shape == (16, 480, 480)
    assert out.stage2.spatial_shape == (8, 240, 240)
    assert out.bev.shape == (1, 128, 240, 240)
    assert out.stage1.num_voxels > 10_000
    out.bev.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_z_grid_has_the_official_extra_layer_and_the_stem_keeps_the_top_voxel_layer():
    from geoattn.models.scatterformer import WAYMO_POINT_RANGE, WAYMO_VOXEL_SIZE, ScatterFormerBackbone

    # Waymo: 32 voxel layers, 33 cells in the sparse grid, 16 after the (3, 1, 1) / stride-2 stem, 8 after stage 2
    waymo = ScatterFormerBackbone(in_channels=8, channels=16, heads=2, window_size=6, blocks=(1, 1), stem_blocks=0,
                                  pillar_heads=2, voxel_size=WAYMO_VOXEL_SIZE, point_range=WAYMO_POINT_RANGE)
    assert waymo.grid == (32, 480, 480) and waymo.sparse_shape == (33, 480, 480)
    assert waymo.stem_height == 16 and waymo.pillar_height == 8
    # a voxel in the top layer (z = 31) survives the stem (it was dropped with a 32-cell grid) and lands in the
    # stem's top output layer 15 (input layers 29, 30, 31)
    model = small_backbone(stem_blocks=0).eval()
    coords = torch.tensor([[0, 31, 5, 5], [0, 0, 20, 20]])
    voxels = VoxelTensor(torch.ones(2, 8), coords, model.grid, 1)
    with torch.no_grad():
        out = model(voxels)
    assert out.stage1.spatial_shape == (16, 40, 40)
    # (3, 1, 1) stride 2, no padding: output layer o reads input layers 2o, 2o + 1, 2o + 2
    assert sorted(out.stage1.coords[:, 1].tolist()) == [0, 15]


@pytest.mark.parametrize("case", ["no points", "all out of range"])
def test_empty_scene_gives_empty_outputs_of_the_right_shapes(case):
    model = small_backbone()
    vfe = small_vfe(model)
    points = torch.zeros(0, 4) if case == "no points" else torch.full((5, 4), 1e3)
    out = run(vfe, model, points)
    assert out.bev.shape == (1, 16, 20, 20) and not out.bev.any()
    assert out.stage1.features.shape == (0, 16) and out.stage1.spatial_shape == (16, 40, 40)
    assert out.stage2.features.shape == (0, 16) and out.stage2.spatial_shape == (8, 20, 20)
    assert out.pillars.num_voxels == 0
    out.bev.sum().backward()  # connected: a training step on an empty scene does not fail


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int64])
def test_dtypes_spconv_lacks_are_refused_naming_the_argument(dtype):
    from geoattn.sparse.voxel import VoxelTensor

    model = small_backbone()
    voxels = VoxelTensor(torch.zeros(2, model.in_channels, dtype=dtype), torch.tensor([[0, 1, 2, 3], [0, 2, 2, 3]]),
                         model.grid, 1)
    with pytest.raises(TypeError, match=r"voxels: expected float32 or float64 .*" + str(dtype).split(".")[1]):
        model(voxels)
