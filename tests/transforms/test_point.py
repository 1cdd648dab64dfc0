from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from geoattn.nn import PPFAttention, PPFAttentionConv, ScatterFormerBlock, cached_window_index, ppf_groups
from geoattn.sparse import WindowIndex, estimate_normals, voxelize
from geoattn.transforms import EstimateNormals, PointPairFeatures, Voxelize, WindowPartition

POINT_RANGE = [0.0, -40.0, -3.0, 70.4, 40.0, 1.0]


def kitti_frames(root):
    """Two real KITTI frames (camera field of view), x, y, z, reflectance."""
    frames = []
    for name in ("test/000002.bin", "val/000134.bin"):
        points = torch.from_numpy(np.fromfile(root / "lidar" / "kitti_fov" / name, dtype=np.float32).reshape(-1, 4))
        frames.append(Data(pos=points[:, :3].contiguous(), x=points[:, 3:].contiguous()))
    return frames


def bunny(root):
    from geoattn.registration.io import read_point_cloud

    return Data(pos=read_point_cloud(root / "registration" / "bunny" / "bun_zipper_res3.ply").double())


def test_normals_and_point_pair_features_are_the_ppf_groups_in_pyg_form(real_data):
    data = PointPairFeatures(k=8)(EstimateNormals(k=10)(bunny(real_data)))
    torch.testing.assert_close(data.normal, estimate_normals(data.pos, 10))
    neighbor_index, ppf = ppf_groups(data.pos, data.normal, 8)
    assert torch.equal(data.edge_index[0], neighbor_index.reshape(-1))
    assert torch.equal(data.edge_index[1], torch.arange(data.num_nodes).repeat_interleave(8))
    torch.testing.assert_close(data.edge_attr, ppf.reshape(-1, 4))
    # the edge form of the layer on these edges is the dense layer on these groups
    dense = PPFAttention(1, 8, heads=2).double()
    conv = PPFAttentionConv(1, 8, heads=2).double()
    conv.load_state_dict(dense.state_dict())
    x = torch.ones(data.num_nodes, 1, dtype=torch.float64)
    torch.testing.assert_close(conv(x, data.pos, data.normal, data.edge_index), dense(x, neighbor_index, ppf),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="data: PointPairFeatures needs data.normal"):
        PointPairFeatures()(Data(pos=data.pos))
    with pytest.raises(ValueError, match="k: expected an int >= 3"):
        EstimateNormals(k=2)
    assert repr(PointPairFeatures(8)) == "PointPairFeatures(k=8, sign_invariant=True)"


def test_voxelize_and_window_partition_on_real_lidar_frames(real_data):
    frame = kitti_frames(real_data)[0]
    voxels = Voxelize([0.4, 0.4, 0.5], POINT_RANGE)(frame.clone())
    reference = voxelize(frame.pos, [0.4, 0.4, 0.5], POINT_RANGE, features=frame.x)
    assert torch.equal(voxels.coords, reference.coords) and torch.equal(voxels.x, reference.features)
    assert voxels.num_nodes == reference.num_voxels and voxels.coords[:, 0].eq(0).all()
    windows = WindowPartition(12)(voxels.clone())
    # rows in window order: the layers' index of the result is the identity, windows are consecutive
    assert torch.equal(cached_window_index(windows.coords, 12).perm, torch.arange(windows.num_nodes))
    assert (windows.window.diff() >= 0).all()
    index = WindowIndex.from_coords(voxels.coords, 12)
    assert torch.equal(windows.x, index.sort(voxels.x)) and torch.equal(windows.pos, index.sort(voxels.pos))
    inside = voxels.point_to_voxel >= 0
    assert torch.equal(windows.coords[windows.point_to_voxel[inside]], voxels.coords[voxels.point_to_voxel[inside]])
    with pytest.raises(ValueError, match="data: WindowPartition needs data.coords"):
        WindowPartition(12)(frame)


def test_batch_of_voxelised_frames_through_a_scatterformer_block(real_data):
    from torch_geometric.loader import DataLoader

    transform = Voxelize([0.8, 0.8, 1.0], POINT_RANGE)
    clouds = [WindowPartition(12)(transform(frame)) for frame in kitti_frames(real_data)]
    block = ScatterFormerBlock(4, heads=1, window_size=12).eval()
    lift = torch.nn.Linear(1, 4)
    for cloud in clouds:
        cloud.x = lift(cloud.x).detach()
    batch = next(iter(DataLoader(clouds, batch_size=2)))
    out = block(batch)  # a Batch with x and coords; its batch vector keeps the frames apart
    torch.testing.assert_close(out, torch.cat([block(cloud.x, cloud.coords) for cloud in clouds]),
                               atol=1e-5, rtol=1e-4)
