from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn import backends
from geoattn.sparse import voxel as voxel_module
from geoattn.sparse.voxel import (
    VoxelTensor,
    grid_shape,
    install_spconv_cpu_shim,
    submanifold_neighbors,
    voxel_keys,
    voxelize,
)

VOXEL = [0.32, 0.32, 0.1875]
RANGE = [-76.8, -76.8, -2.0, 76.8, 76.8, 4.0]


def reference_voxelize(pos, voxel_size, point_range, features=None, batch=None):
    """Obviously-correct voxelisation: a Python dict keyed by integer cells."""
    shape = grid_shape(voxel_size, point_range)
    size = torch.tensor(voxel_size, dtype=pos.dtype)
    lower = torch.tensor(point_range[:3], dtype=pos.dtype)
    cells = torch.floor((pos - lower) / size)
    groups: dict[tuple, list[int]] = {}
    for i in range(pos.shape[0]):
        x, y, z = cells[i].tolist()
        if not (0 <= x < shape[2] and 0 <= y < shape[1] and 0 <= z < shape[0]):
            continue
        b = int(batch[i]) if batch is not None else 0
        groups.setdefault((b, int(z), int(y), int(x)), []).append(i)
    keys = sorted(groups)
    feats = pos if features is None else features
    coords = torch.tensor(keys, dtype=torch.long).reshape(-1, 4)
    means = torch.stack([feats[groups[k]].mean(0) for k in keys]) if keys else feats.new_zeros(0, feats.shape[1])
    centroids = torch.stack([pos[groups[k]].mean(0) for k in keys]) if keys else pos.new_zeros(0, 3)
    point_to_voxel = torch.full((pos.shape[0],), -1, dtype=torch.long)
    for v, k in enumerate(keys):
        point_to_voxel[groups[k]] = v
    counts = torch.tensor([len(groups[k]) for k in keys], dtype=torch.long)
    return coords, point_to_voxel, counts, means, centroids


@pytest.fixture(params=["sort", "spconv"])
def grouping(request, monkeypatch):
    """Run a test through each grouping path (the spconv one only where it applies)."""
    if request.param == "sort":
        monkeypatch.setattr(voxel_module, "_spconv_grouping_applies", lambda *args: False)
    elif backends.spconv() is None:
        pytest.skip("spconv not installed")
    return request.param


def random_cloud(num, seed=0, extent=2.0):
    gen = torch.Generator().manual_seed(seed)
    pos = (torch.rand(num, 3, generator=gen) * 2 - 1) * extent
    feats = torch.randn(num, 5, generator=gen)
    return pos, feats


def check_against_reference(result, pos, voxel_size, point_range, features=None, batch=None):
    coords, p2v, counts, means, centroids = reference_voxelize(pos, voxel_size, point_range, features, batch)
    assert torch.equal(result.coords, coords)
    assert torch.equal(result.point_to_voxel, p2v)
    assert torch.equal(result.counts, counts)
    torch.testing.assert_close(result.features, means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.centroids, centroids, atol=1e-5, rtol=1e-5)


def test_matches_reference(grouping):
    pos, feats = random_cloud(600)
    # a range smaller than the cloud so that some points fall outside
    point_range = [-1.5, -1.0, -1.2, 1.5, 1.0, 1.2]
    result = voxelize(pos, 0.4, point_range, features=feats)
    check_against_reference(result, pos, [0.4] * 3, point_range, feats)
    assert result.spatial_shape == (6, 5, 8)
    assert result.batch_size == 1
    assert (result.point_to_voxel == -1).any()


def test_batched_matches_reference():
    pos, feats = random_cloud(400)
    batch = torch.randint(0, 3, (400,))  # unsorted batch ids are allowed
    result = voxelize(pos, [0.5, 0.4, 0.3], [-2, -2, -2, 2, 2, 2], features=feats, batch=batch)
    check_against_reference(result, pos, [0.5, 0.4, 0.3], [-2, -2, -2, 2, 2, 2], feats, batch)
    assert result.batch_size == 3
    assert voxelize(pos, 0.5, [-2, -2, -2, 2, 2, 2], batch=batch, batch_size=5).batch_size == 5


def test_paths_agree_on_boundaries(monkeypatch):
    # points exactly on the lower bound are inside, on the upper bound outside, NaN outside
    pos = torch.tensor([[76.8, 0, 0], [-76.8, 0, 0], [0, 0, 4.0], [0, 0, -2.0], [0.96, 0, 0],
                        [76.79999, 0, 0], [float("nan"), 0, 0], [1e30, 0, 0]])
    results = []
    for applies in (True, False):
        if applies and backends.spconv() is None:
            continue
        monkeypatch.setattr(voxel_module, "_spconv_grouping_applies", lambda *a, _v=applies: _v and True)
        results.append(voxelize(pos, VOXEL, RANGE))
    expected = torch.tensor([-1, 1, -1, 0, 2, 3, -1, -1])
    for result in results:
        assert torch.equal(result.point_to_voxel, expected)
        assert result.coords.tolist() == [[0, 0, 240, 240], [0, 10, 240, 0], [0, 10, 240, 243], [0, 10, 240, 479]]


def test_mean_feature_gradients():
    pos, feats = random_cloud(40, extent=1.0)
    pos = pos.double().requires_grad_()
    feats = feats.double().requires_grad_()

    def function(p, f):
        result = voxelize(p, 0.5, [-1, -1, -1, 1, 1, 1], features=f)
        return result.features, result.centroids

    assert torch.autograd.gradcheck(function, (pos, feats))


def test_mean_feature_gradients_float32_path(grouping):
    pos, feats = random_cloud(200)
    feats.requires_grad_()
    result = voxelize(pos, 0.5, [-1, -1, -1, 1, 1, 1], features=feats)
    weights = torch.randn_like(result.features)
    (result.features * weights).sum().backward()
    # d mean / d f_i = w_voxel / count for points inside, 0 outside
    inside = result.point_to_voxel >= 0
    expected = torch.zeros_like(feats)
    voxel = result.point_to_voxel[inside]
    expected[inside] = weights[voxel] / result.counts[voxel].unsqueeze(1).float()
    torch.testing.assert_close(feats.grad, expected)


def test_empty_input(grouping):
    result = voxelize(torch.zeros(0, 3), 0.5, [-1, -1, -1, 1, 1, 1], features=torch.zeros(0, 4))
    assert result.coords.shape == (0, 4)
    assert result.features.shape == (0, 4)
    assert result.centroids.shape == (0, 3)
    assert result.point_to_voxel.shape == (0,)
    assert result.counts.shape == (0,)


def test_one_point(grouping):
    pos = torch.tensor([[0.1, -0.2, 0.3]])
    result = voxelize(pos, 0.5, [-1, -1, -1, 1, 1, 1], features=torch.tensor([[7.0]]))
    assert result.coords.tolist() == [[0, 2, 1, 2]]
    assert result.point_to_voxel.tolist() == [0]
    assert result.features.tolist() == [[7.0]]
    torch.testing.assert_close(result.centroids, pos)


def test_all_points_out_of_range(grouping):
    pos = torch.full((10, 3), 5.0)
    result = voxelize(pos, 0.5, [-1, -1, -1, 1, 1, 1], features=torch.ones(10, 2))
    assert result.num_voxels == 0
    assert (result.point_to_voxel == -1).all()
    assert result.features.shape == (0, 2)


def test_half_precision_input():
    pos, feats = random_cloud(100)
    result = voxelize(pos.half(), 0.5, [-1, -1, -1, 1, 1, 1], features=feats.half())
    assert result.features.dtype == torch.float16
    assert result.num_voxels > 0


@settings(max_examples=25, deadline=None)
@given(num=st.integers(1, 80), seed=st.integers(0, 2**16), size=st.floats(0.2, 1.0))
def test_permutation_invariance(num, seed, size):
    pos, feats = random_cloud(num, seed=seed, extent=1.5)
    point_range = [-1, -1, -1, 1, 1, 1]
    base = voxelize(pos, size, point_range, features=feats)
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed + 1))
    permuted = voxelize(pos[perm], size, point_range, features=feats[perm])
    assert torch.equal(base.coords, permuted.coords)
    assert torch.equal(base.counts, permuted.counts)
    assert torch.equal(base.point_to_voxel[perm], permuted.point_to_voxel)
    torch.testing.assert_close(base.features, permuted.features, atol=1e-5, rtol=1e-5)
    # every in-range point is counted exactly once
    assert int(base.counts.sum()) == int((base.point_to_voxel >= 0).sum())


def test_voxel_keys_order():
    coords = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0], [0, 0, 5, 5]])
    keys = voxel_keys(coords, (2, 6, 6))
    assert keys.tolist() == [((0 * 2 + 1) * 6 + 2) * 6 + 3, ((1 * 2 + 0) * 6 + 0) * 6 + 0, (0 * 6 + 5) * 6 + 5]


def test_grid_shape_and_errors():
    assert grid_shape(VOXEL, RANGE) == (32, 480, 480)
    with pytest.raises(ValueError, match="voxel_size"):
        grid_shape([0.1, 0.0, 0.1], RANGE)
    with pytest.raises(ValueError, match="point_range"):
        grid_shape(0.1, [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="point_range"):
        grid_shape(0.1, [0, 0, 0, 1, -1, 1])
    with pytest.raises(ValueError, match="pos"):
        voxelize(torch.zeros(4, 2), 0.1, RANGE)
    with pytest.raises(TypeError, match="pos"):
        voxelize(torch.zeros(4, 3, dtype=torch.long), 0.1, RANGE)
    with pytest.raises(ValueError, match="features"):
        voxelize(torch.zeros(4, 3), 0.1, RANGE, features=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="batch: expected non-negative batch ids, got minimum -1"):
        voxelize(torch.zeros(4, 3), 0.1, RANGE, batch=torch.tensor([0, 0, -1, 0]))


def test_voxelize_batch_range_against_batch_size_is_a_debug_check(monkeypatch):
    """With ``batch_size`` given the ids are not read (a host synchronisation), unless GEOATTN_DEBUG=1."""
    batch = torch.tensor([0, 0, 3, 0])
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"batch: expected ids in \[0, 2\) \(batch_size\), got maximum 3"):
        voxelize(torch.zeros(4, 3), 0.1, RANGE, batch=batch, batch_size=2)
    with pytest.raises(ValueError, match="batch: expected non-negative batch ids, got minimum -3"):
        voxelize(torch.zeros(4, 3), 0.1, RANGE, batch=-batch, batch_size=2)


def test_voxel_tensor_dense_and_errors():
    coords = torch.tensor([[0, 0, 1, 2], [1, 1, 0, 0]])
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    tensor = VoxelTensor(feats, coords, (2, 2, 3), 2)
    dense = tensor.dense()
    assert dense.shape == (2, 2, 2, 2, 3)
    assert dense[0, :, 0, 1, 2].tolist() == [1.0, 2.0]
    assert dense[1, :, 1, 0, 0].tolist() == [3.0, 4.0]
    assert dense.sum().item() == 10.0
    assert "num_voxels=2" in repr(tensor)
    with pytest.raises(ValueError, match="coords"):
        VoxelTensor(feats, coords[:, :3], (2, 2, 3), 2)
    with pytest.raises(TypeError, match="coords"):
        VoxelTensor(feats, coords.float(), (2, 2, 3), 2)
    with pytest.raises(ValueError, match="spatial_shape"):
        VoxelTensor(feats, coords, (2, 3), 2)


@pytest.mark.skipif(backends.spconv() is None, reason="spconv not installed")
def test_spconv_round_trip_and_cpu_backward():
    install_spconv_cpu_shim()
    spconv = backends.spconv()
    pos, feats = random_cloud(300)
    result = voxelize(pos, 0.25, [-2, -2, -2, 2, 2, 2], features=feats)
    tensor = result.to_tensor()
    sparse = tensor.to_spconv()
    assert sparse.indices.dtype == torch.int32
    back = VoxelTensor.from_spconv(sparse)
    assert torch.equal(back.coords, result.coords)
    assert back.spatial_shape == result.spatial_shape
    # a submanifold convolution's backward runs on CPU thanks to the shim
    conv = spconv.SubMConv3d(5, 4, 3, bias=False, indice_key="t")
    leaf = tensor.features.detach().requires_grad_()
    out = conv(tensor.replace_features(leaf).to_spconv())
    out.features.square().sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    with pytest.raises(TypeError, match="tensor"):
        VoxelTensor.from_spconv(object())


def test_real_kitti_frame(real_data, grouping):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / "000000.bin"
    points = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))
    result = voxelize(points[:, :3], VOXEL, RANGE, features=points)
    assert result.spatial_shape == (32, 480, 480)
    inside = result.point_to_voxel >= 0
    # a 360-degree HDL-64 frame: almost all points lie in the Waymo range; thousands of voxels
    assert inside.float().mean() > 0.95
    assert 5_000 < result.num_voxels < inside.sum()
    assert int(result.counts.sum()) == int(inside.sum())
    # keys strictly increasing: sorted and unique
    keys = voxel_keys(result.coords, result.spatial_shape)
    assert bool((keys[1:] > keys[:-1]).all())
    # each voxel's centroid lies inside its voxel
    lower = torch.tensor(RANGE[:3]) + result.coords[:, [3, 2, 1]].float() * torch.tensor(VOXEL)
    assert bool(((result.centroids >= lower - 1e-4) & (result.centroids <= lower + torch.tensor(VOXEL) + 1e-4)).all())
    # the mean intensity equals a direct per-voxel computation for a few voxels
    for v in (0, result.num_voxels // 2, result.num_voxels - 1):
        members = (result.point_to_voxel == v).nonzero().squeeze(1)
        torch.testing.assert_close(result.features[v], points[members].mean(0))


def test_submanifold_neighbors_brute_force():
    cells = torch.randint(0, 6, (80, 4))
    cells[:, 0] %= 2
    coords = torch.unique(cells, dim=0)[:60]  # unique sites, two batch elements
    table = submanifold_neighbors(coords, (3, 1, 5))
    lookup = {tuple(c): i for i, c in enumerate(coords.tolist())}
    offsets = [(dz, dy, dx) for dz in range(-1, 2) for dy in range(0, 1) for dx in range(-2, 3)]
    for k, (dz, dy, dx) in enumerate(offsets):
        for i, (b, z, y, x) in enumerate(coords.tolist()):
            assert int(table[k, i]) == lookup.get((b, z + dz, y + dy, x + dx), -1)
    # odd kernels give a symmetric table
    num_kernel = table.shape[0]
    for k in range(num_kernel):
        active = table[k] >= 0
        assert torch.equal(table[num_kernel - 1 - k][table[k][active]], torch.arange(coords.shape[0])[active])
    with pytest.raises(ValueError, match="kernel_size"):
        submanifold_neighbors(coords, (2, 3, 3))
    assert submanifold_neighbors(coords[:0], (3, 3, 3)).shape == (27, 0)


def test_range_not_a_multiple_of_the_voxel_size(grouping):
    # 2.0 / 0.8 = 2.5 cells: the grid rounds to 2 and the partial cell is outside on every path
    pos, feats = random_cloud(200, extent=1.0)
    result = voxelize(pos, 0.8, [-1, -1, -1, 1, 1, 1], features=feats)
    assert result.spatial_shape == (2, 2, 2)
    check_against_reference(result, pos, [0.8] * 3, [-1, -1, -1, 1, 1, 1], feats)
    assert bool((result.coords[:, 1:] < 2).all())
