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

    config = dict(in_channels=4, channels=16, stem_channels=8, heads=2, window_size=6, blocks=(1, 1),
                  stem_blocks=1, pillar_heads=2, point_range=SMALL_RANGE)
    config.update(overrides)
    return ScatterFormerBackbone(**config)


def load_frame(real_data, name="000001.bin"):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / name
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))


def test_small_backbone_forward_backward_on_real_frame(real_data):
    points = load_frame(real_data)
    model = small_backbone()
    out = model.forward_points(points)  # points outside the small range are dropped by voxelize
    assert out.bev.shape == (1, 16, 20, 20)
    assert out.stage1.features.shape[1] == 16 and out.stage1.spatial_shape == (15, 40, 40)
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
    with torch.no_grad():
        joint = model.forward_points(torch.cat(clouds), batch=torch.repeat_interleave(torch.arange(2), 600))
        alone = [model.forward_points(cloud).bev[0] for cloud in clouds]
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
        model(VoxelTensor(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long), (4, 4, 4), 1))
    with pytest.raises(ValueError, match="points"):
        model.forward_points(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="blocks"):
        small_backbone(blocks=(1, 1, 1))


@pytest.mark.slow
def test_waymo_config_forward_backward_on_real_frame(real_data):
    from geoattn.models.scatterformer import ScatterFormerBackbone

    points = load_frame(real_data)
    model = ScatterFormerBackbone()  # Waymo defaults: C = 128, 4 heads, window 12, grid 32 x 480 x 480
    out = model.forward_points(points)
    assert out.bev.shape == (1, 128, 240, 240)
    assert out.stage1.num_voxels > 10_000
    out.bev.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
