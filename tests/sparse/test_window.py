from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.sparse.voxel import voxelize
from geoattn.sparse.window import WindowIndex


def random_coords(num, batch=2, shape=(8, 30, 30), seed=0):
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(batch * shape[0] * shape[1] * shape[2], generator=gen)[:num]
    z_size, y_size, x_size = shape
    coords = torch.stack([
        cells // (z_size * y_size * x_size),
        cells // (y_size * x_size) % z_size,
        cells // x_size % y_size,
        cells % x_size,
    ], dim=1)
    return coords


def reference_windows(coords, window_shape, shift=(0, 0, 0)):
    """Python dict of window key -> list of voxel indices (input order)."""
    groups = {}
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        wz = 0 if window_shape[0] is None else (z + shift[0]) // window_shape[0]
        key = (b, wz, (y + shift[1]) // window_shape[1], (x + shift[2]) // window_shape[2])
        groups.setdefault(key, []).append(i)
    return groups


@pytest.mark.parametrize("window_shape,shift", [(12, None), ((5, 7), (2, 3)), ((3, 4, 5), (1, 2, 3)),
                                                 ((None, 6, 6), None)])
def test_matches_reference(window_shape, shift):
    coords = random_coords(500)
    index = WindowIndex.from_coords(coords, window_shape, shift)
    shape = index.window_shape
    groups = reference_windows(coords, shape, index.shift)
    keys = sorted(groups)
    assert index.num_windows == len(keys)
    assert index.window_coords.tolist() == [list(k) for k in keys]
    assert index.counts.tolist() == [len(groups[k]) for k in keys]
    for w, k in enumerate(keys):
        rows = index.perm[index.offsets[w]:index.offsets[w + 1]].tolist()
        assert rows == groups[k]  # stable: in-window order follows the input
        assert (index.window_of_voxel[groups[k]] == w).all()
    assert index.max_count == max(len(v) for v in groups.values())


def test_full_height_bev_columns():
    coords = torch.tensor([[0, 0, 0, 0], [0, 15, 11, 11], [0, 3, 12, 0], [1, 0, 0, 0]])
    index = WindowIndex.from_coords(coords, 12)
    assert index.window_shape == (None, 12, 12)
    assert index.counts.tolist() == [2, 1, 1]
    assert index.window_coords.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]


def test_sort_unsort_round_trip():
    coords = random_coords(300)
    index = WindowIndex.from_coords(coords, 6)
    x = torch.randn(300, 5)
    sorted_x = index.sort(x)
    assert torch.equal(index.unsort(sorted_x), x)
    assert torch.equal(index.sorted_coords, coords[index.perm])
    assert bool((index.window_of_row[1:] >= index.window_of_row[:-1]).all())
    with pytest.raises(ValueError, match="x"):
        index.sort(torch.randn(299, 5))


@pytest.mark.parametrize("chunk_size", [1, 3, 32])
def test_chunk_table(chunk_size):
    coords = random_coords(400, shape=(4, 40, 40))
    index = WindowIndex.from_coords(coords, 10)
    chunks = index.chunks(chunk_size)
    assert chunks is index.chunks(chunk_size)  # cached
    expected = []
    for w in range(index.num_windows):
        start, end = int(index.offsets[w]), int(index.offsets[w + 1])
        for s in range(start, end, chunk_size):
            expected.append((w, s, min(chunk_size, end - s)))
    assert list(zip(chunks.window.tolist(), chunks.start.tolist(), chunks.length.tolist())) == expected
    for row in range(index.num_voxels):
        chunk = int(chunks.row_chunk[row])
        assert int(chunks.start[chunk]) + int(chunks.row_position[row]) == row
    assert int(chunks.offsets[-1]) == len(expected)
    assert chunks.max_chunks == max(-(-int(c) // chunk_size) for c in index.counts)
    pad_chunk, pad_position = chunks.padding
    expected_padding = [(c, p) for c, (_, _, n) in enumerate(expected) for p in range(n, chunk_size)]
    assert list(zip(pad_chunk.tolist(), pad_position.tolist())) == expected_padding


def test_length_buckets_cover_every_row_once():
    coords = random_coords(800, shape=(4, 60, 60))
    index = WindowIndex.from_coords(coords, 12)
    buckets = index.length_buckets(min_length=4)
    seen = torch.zeros(index.num_voxels, dtype=torch.long)
    windows = []
    x = torch.arange(index.num_voxels, dtype=torch.float32).unsqueeze(1) + 1
    for bucket in buckets:
        assert bucket.length >= 4 and bucket.length & (bucket.length - 1) == 0
        counts = index.counts[bucket.windows]
        assert bool((counts <= bucket.length).all())
        assert bucket.length == 4 or bool((counts > bucket.length // 2).all())
        seen.index_add_(0, bucket.rows[bucket.valid], torch.ones(int(bucket.valid.sum()), dtype=torch.long))
        padded = index.pad_bucket(x, bucket)
        assert padded.shape == (len(bucket.windows), bucket.length, 1)
        assert bool((padded[~bucket.valid] == 0).all())
        assert torch.equal(padded[bucket.valid].squeeze(1), x[bucket.rows[bucket.valid]].squeeze(1))
        windows += bucket.windows.tolist()
    assert bool((seen == 1).all())
    assert sorted(windows) == list(range(index.num_windows))


def test_empty_input():
    index = WindowIndex.from_coords(torch.zeros(0, 4, dtype=torch.long), 12)
    assert index.num_windows == 0 and index.num_voxels == 0 and index.max_count == 0
    assert index.offsets.tolist() == [0]
    assert index.chunks(32).num_chunks == 0
    assert index.length_buckets() == []
    assert index.sort(torch.zeros(0, 3)).shape == (0, 3)


def test_bad_arguments():
    coords = random_coords(10)
    with pytest.raises(ValueError, match="coords"):
        WindowIndex.from_coords(coords[:, :3], 12)
    with pytest.raises(TypeError, match="coords"):
        WindowIndex.from_coords(coords.float(), 12)
    with pytest.raises(ValueError, match="window_shape"):
        WindowIndex.from_coords(coords, (0, 12))
    with pytest.raises(ValueError, match="window_shape"):
        WindowIndex.from_coords(coords, (1, 2, 3, 4))
    with pytest.raises(ValueError, match="shift"):
        WindowIndex.from_coords(coords, 12, shift=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="coords"):
        WindowIndex.from_coords(coords - 100, 12)
    with pytest.raises(ValueError, match="chunk_size"):
        WindowIndex.from_coords(coords, 12).chunks(0)


@settings(max_examples=30, deadline=None)
@given(num=st.integers(0, 120), seed=st.integers(0, 2**16), wy=st.integers(1, 9), wx=st.integers(1, 9))
def test_offsets_and_permutation_properties(num, seed, wy, wx):
    coords = random_coords(num, shape=(3, 20, 20), seed=seed)
    index = WindowIndex.from_coords(coords, (wy, wx))
    # perm is a permutation and inverse its inverse
    assert sorted(index.perm.tolist()) == list(range(num))
    assert torch.equal(index.perm[index.inverse], torch.arange(num))
    # offsets are the exclusive cumsum of positive counts
    assert index.offsets[0] == 0 and int(index.offsets[-1]) == num
    assert torch.equal(index.offsets[1:] - index.offsets[:-1], index.counts)
    assert bool((index.counts > 0).all())
    # the partition does not depend on the voxel order: permuted input, same windows and members
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed + 1))
    other = WindowIndex.from_coords(coords[perm], (wy, wx))
    assert torch.equal(index.window_coords, other.window_coords)
    assert torch.equal(index.counts, other.counts)
    assert torch.equal(index.window_of_voxel[perm], other.window_of_voxel)


def test_real_kitti_windows(real_data):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / "000001.bin"
    points = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4))
    voxels = voxelize(points[:, :3], [0.32, 0.32, 0.1875], [-76.8, -76.8, -2, 76.8, 76.8, 4])
    index = WindowIndex.from_coords(voxels.coords, 12)
    assert index.num_windows > 100
    assert 100 < index.max_count <= 12 * 12 * 32
    assert int(index.counts.sum()) == voxels.num_voxels
    # every window spans at most 12 x 12 cells in BEV
    wy = voxels.coords[:, 2] // 12
    wx = voxels.coords[:, 3] // 12
    assert torch.equal(index.window_coords[index.window_of_voxel][:, 2], wy)
    assert torch.equal(index.window_coords[index.window_of_voxel][:, 3], wx)
