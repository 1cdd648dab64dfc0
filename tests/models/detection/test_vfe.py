from __future__ import annotations

import math

import pytest
import torch

from geoattn.models.detection.vfe import DynamicVoxelVFE, PFNLayerV2

RANGE = (0.0, -2.0, -1.0, 4.0, 2.0, 1.0)
VOXEL = (0.5, 0.5, 0.25)  # grid (Z, Y, X) = (8, 8, 8)


def random_cloud(n, columns, gen, batch_size=1, outside=10):
    lo, hi = torch.tensor(RANGE[:3]), torch.tensor(RANGE[3:])
    xyz = lo + (hi - lo) * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    # a few out-of-range points on every side
    far = lo - 1 + (hi - lo + 2) * torch.rand(outside, 3, generator=gen, dtype=torch.float64)
    far[:, 0] = torch.where(far[:, 0] < 2, lo[0] - 0.5, hi[0] + 0.5)
    xyz = torch.cat([xyz, far])
    feats = torch.rand(len(xyz), columns - 3, generator=gen, dtype=torch.float64)
    points = torch.cat([xyz, feats], 1)
    batch = torch.randint(0, batch_size, (len(points),), generator=gen)
    return points, batch


def reference_vfe(vfe: DynamicVoxelVFE, points, batch, batch_size):
    """Plain loops: group points by voxel in a dict, build each point's features, PFN per point (eval BN), max."""
    size, lower, grid = vfe.voxel_size, vfe.point_range[:3], vfe.grid[::-1]  # grid as (X, Y, Z)
    groups: dict[tuple, list[int]] = {}
    cells = {}
    for i in range(points.shape[0]):
        cell = [math.floor((float(points[i, a]) - lower[a]) / size[a]) for a in range(3)]
        if all(0 <= cell[a] < grid[a] for a in range(3)):
            key = (int(batch[i]), cell[2], cell[1], cell[0])
            groups.setdefault(key, []).append(i)
            cells[i] = cell
    keys = sorted(groups)
    out = []
    for key in keys:
        rows = groups[key]
        mean = sum(points[i, :3] for i in rows) / len(rows)
        feats = []
        for i in rows:
            centre = torch.tensor([lower[a] + (cells[i][a] + 0.5) * size[a] for a in range(3)], dtype=points.dtype)
            raw = points[i] if vfe.use_absolute_xyz else points[i, 3:]
            f = [raw, points[i, :3] - mean, points[i, :3] - centre]
            if vfe.with_distance:
                f.append(points[i, :3].norm().reshape(1))
            feats.append(torch.cat(f))
        x = torch.stack(feats)
        for layer in vfe.pfn_layers:
            h = layer.relu(layer.norm(layer.linear(x)))
            h_max = h.max(0).values
            x = h_max if layer.last_layer else torch.cat([h, h_max.expand_as(h)], 1)
        out.append(x)
    coords = torch.tensor(keys, dtype=torch.long).reshape(-1, 4)
    return torch.stack(out) if out else torch.zeros(0, vfe.num_output_features, dtype=points.dtype), coords


def randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("columns, expected_inputs, absolute, distance", [
    (5, 11, True, False),   # Waymo: x, y, z, intensity, elongation + 3 + 3
    (4, 10, True, False),   # KITTI: x, y, z, reflectance + 3 + 3
    (4, 8, False, True),    # without absolute xyz (1 + 3 + 3) and with the distance (+ 1)
])
def test_vfe_matches_a_per_voxel_loop(columns, expected_inputs, absolute, distance):
    gen = torch.Generator().manual_seed(columns)
    vfe = DynamicVoxelVFE(columns, VOXEL, RANGE, num_filters=(16, 12), use_absolute_xyz=absolute,
                          with_distance=distance).double()
    assert vfe.num_input_features == expected_inputs
    assert vfe.pfn_layers[0].linear.in_features == expected_inputs
    randomise_bn(vfe, gen)
    vfe.eval()
    points, batch = random_cloud(300, columns, gen, batch_size=2)
    out = vfe(points, batch, 2)
    ref, ref_coords = reference_vfe(vfe, points, batch, 2)
    assert out.spatial_shape == (8, 8, 8) and out.batch_size == 2
    assert torch.equal(out.coords, ref_coords)
    assert out.features.shape == (len(ref_coords), 12)
    torch.testing.assert_close(out.features, ref, atol=1e-10, rtol=1e-10)


def test_official_widths_and_layer_structure():
    vfe = DynamicVoxelVFE(5, (0.32, 0.32, 0.1875), (-76.8, -76.8, -2, 76.8, 76.8, 4))
    assert vfe.num_input_features == 11 and vfe.num_output_features == 64
    first, last = vfe.pfn_layers
    assert (first.linear.in_features, first.linear.out_features, first.last_layer) == (11, 32, False)
    assert (last.linear.in_features, last.linear.out_features, last.last_layer) == (64, 64, True)
    for layer in vfe.pfn_layers:
        assert layer.linear.bias is None  # use_norm: Linear without bias + BN
        assert layer.norm.eps == 1e-3 and layer.norm.momentum == 0.01
    assert vfe.grid == (32, 480, 480)
    assert DynamicVoxelVFE(4, VOXEL, RANGE).num_input_features == 10


def test_training_mode_batch_norm_uses_only_in_range_points():
    from geoattn.sparse.voxel import voxelize

    gen = torch.Generator().manual_seed(3)
    vfe = DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=(8, 8)).double().train()
    points, batch = random_cloud(200, 4, gen, outside=40)
    out = vfe(points, batch, 1)
    assert bool(torch.isfinite(out.features).all())
    vox = voxelize(points[:, :3], VOXEL, RANGE, batch=batch, batch_size=1)
    inside = vox.point_to_voxel >= 0
    assert int((~inside).sum()) == 40
    features = vfe.point_features(points[inside], vox.point_to_voxel[inside], vox.coords, vox.centroids)
    batch_mean = vfe.pfn_layers[0].linear(features).mean(0)
    norm = vfe.pfn_layers[0].norm
    # running mean = (1 - momentum) * 0 + momentum * batch mean of the in-range points
    torch.testing.assert_close(norm.running_mean, 0.01 * batch_mean.detach(), atol=1e-12, rtol=1e-9)
    outside_raw = torch.cat([points[~inside], torch.zeros(40, 6, dtype=torch.float64)], 1)
    with_outside = vfe.pfn_layers[0].linear(torch.cat([features, outside_raw])).mean(0).detach()
    assert not torch.allclose(norm.running_mean, 0.01 * with_outside)


def test_permutation_invariance():
    gen = torch.Generator().manual_seed(1)
    vfe = DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=(16, 16)).double().train()
    points, batch = random_cloud(400, 4, gen, batch_size=3)
    order = torch.randperm(len(points), generator=gen)
    a = vfe(points, batch, 3)
    b = vfe(points[order], batch[order], 3)
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(a.features, b.features, atol=1e-10, rtol=1e-10)


def test_empty_batch_element_and_no_points():
    gen = torch.Generator().manual_seed(2)
    vfe = DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=(8, 8)).eval()
    points, _ = random_cloud(100, 4, gen)
    points = points.float()
    batch = torch.full((len(points),), 2)  # elements 0 and 1 have no points
    out = vfe(points, batch, 3)
    assert out.batch_size == 3 and bool((out.coords[:, 0] == 2).all())
    empty = vfe(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)
    assert empty.features.shape == (0, 8) and empty.coords.shape == (0, 4) and empty.batch_size == 2
    # every point outside the range
    outside = vfe(torch.full((5, 4), 100.0), torch.zeros(5, dtype=torch.long), 1)
    assert outside.num_voxels == 0


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    vfe = DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=(4, 3)).double()
    randomise_bn(vfe, gen)
    vfe.eval()
    points, batch = random_cloud(12, 4, gen, outside=2)
    # keep points away from cell borders so that the finite differences never move a point to another voxel
    size = torch.tensor(VOXEL, dtype=torch.float64)
    lower = torch.tensor(RANGE[:3], dtype=torch.float64)
    inside = ((points[:, :3] >= lower) & (points[:, :3] < torch.tensor(RANGE[3:], dtype=torch.float64))).all(1)
    cell = torch.floor((points[:, :3] - lower) / size)
    frac = torch.rand(len(points), 3, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    points[inside, :3] = lower + (cell[inside] + frac[inside]) * size
    points.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: vfe(p, batch, 1).features, (points,))
    weights = [p for p in vfe.parameters()]
    assert torch.autograd.gradcheck(lambda *w: torch.func.functional_call(
        vfe, dict(zip([n for n, _ in vfe.named_parameters()], w)), (points.detach(), batch, 1)).features, weights)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_point_features"):
        DynamicVoxelVFE(2, VOXEL, RANGE)
    with pytest.raises(ValueError, match="num_filters"):
        DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=())
    with pytest.raises(ValueError, match="out_channels"):
        DynamicVoxelVFE(4, VOXEL, RANGE, num_filters=(7, 8))
    with pytest.raises(ValueError, match="voxel_size"):
        DynamicVoxelVFE(4, (0.5, 0.5), RANGE)
    vfe = DynamicVoxelVFE(4, VOXEL, RANGE)
    with pytest.raises(ValueError, match="points"):
        vfe(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="points"):
        vfe(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="in_channels"):
        PFNLayerV2(0, 4)
