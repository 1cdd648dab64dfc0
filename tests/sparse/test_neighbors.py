"""Tests for geoattn.sparse.neighbors against brute-force Python references, on every backend."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn import backends
from geoattn.sparse.neighbors import fps, grid_subsample, knn, neighbor_backend, radius

BACKENDS = ["torch"] + (["open3d"] if backends.open3d_ops() is not None else [])


# ---------------------------------------------------------------------------------------------
# slow, obviously correct references
# ---------------------------------------------------------------------------------------------
def _dist2(a, b, dtype):
    """Squared distance summed x, y, z in order in ``dtype`` (IEEE, same rounding as the library)."""
    total = dtype(0)
    for axis in range(len(a)):
        diff = dtype(a[axis]) - dtype(b[axis])
        total = dtype(total + dtype(diff * diff)) if axis else dtype(diff * diff)
    return total


def _np_dtype(tensor):
    return np.float32 if tensor.dtype == torch.float32 else np.float64


def knn_reference(support, query, k, support_batch=None, query_batch=None):
    dtype = _np_dtype(support)
    s, q = support.numpy(), query.numpy()
    sb = np.zeros(len(s), int) if support_batch is None else support_batch.numpy()
    qb = np.zeros(len(q), int) if query_batch is None else query_batch.numpy()
    index = np.full((len(q), k), -1, dtype=np.int64)
    dist2 = np.full((len(q), k), np.inf, dtype=dtype)
    for i in range(len(q)):
        candidates = sorted((_dist2(q[i], s[j], dtype), j) for j in range(len(s)) if sb[j] == qb[i])
        for slot, (d, j) in enumerate(candidates[:k]):
            index[i, slot], dist2[i, slot] = j, d
    return torch.from_numpy(index), torch.from_numpy(dist2)


def radius_reference(support, query, r, max_neighbors, support_batch=None, query_batch=None):
    index, dist2 = knn_reference(support, query, max_neighbors, support_batch, query_batch)
    inside = dist2 <= torch.tensor(_np_dtype(support)(r * r))  # nearest first: the first max_neighbors
    return index.masked_fill(~inside, -1), inside.sum(1)


def fps_reference(pos, num_samples, batch=None):
    dtype = _np_dtype(pos)
    p = pos.numpy()
    b = np.zeros(len(p), int) if batch is None else batch.numpy()
    out = []
    for element in sorted(set(b.tolist())):
        members = np.nonzero(b == element)[0]
        size = num_samples(len(members))
        best = [np.inf] * len(members)
        current = 0
        for _ in range(size):
            out.append(int(members[current]))
            for slot, j in enumerate(members):
                best[slot] = min(best[slot], _dist2(p[j], p[members[current]], dtype))
            current = int(np.argmax(best))  # first maximum
    return torch.tensor(out, dtype=torch.long)


def assert_valid_fps(pos, index, num_samples, batch=None):
    """Any tie-break allowed: each pick (after the element's first point) is at the largest distance so far."""
    dtype = _np_dtype(pos)
    p = pos.numpy()
    b = np.zeros(len(p), int) if batch is None else batch.numpy()
    picks = index.tolist()
    for element in sorted(set(b.tolist())):
        members = np.nonzero(b == element)[0]
        size = num_samples(len(members))
        chosen, picks = picks[:size], picks[size:]
        assert chosen[0] == members[0] and len(set(chosen)) == size
        best = {int(j): np.inf for j in members}
        for previous, current in zip(chosen, chosen[1:]):
            for j in members:
                best[int(j)] = min(best[int(j)], _dist2(p[j], p[previous], dtype))
            assert best[current] == max(best.values())
    assert not picks


def grid_reference(pos, voxel_size, batch=None):
    b = [0] * len(pos) if batch is None else batch.tolist()
    cells = {}
    for i, point in enumerate(pos.double().tolist()):
        key = (b[i],) + tuple(math.floor(c / voxel_size) for c in point)
        cells.setdefault(key, []).append(i)
    keys = sorted(cells)
    cluster = torch.empty(len(pos), dtype=torch.long)
    centroids = []
    for cell, key in enumerate(keys):
        cluster[cells[key]] = cell
        centroids.append(pos[cells[key]].double().mean(0))
    pos_sub = torch.stack(centroids).to(pos.dtype) if centroids else pos.new_empty(0, pos.size(1))
    return pos_sub, torch.tensor([k[0] for k in keys], dtype=torch.long), cluster


def grid_points(size=4, dtype=torch.float32, generator=None):
    """Integer lattice in random order: a worst case for distance ties."""
    axis = torch.arange(size, dtype=dtype)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return points[torch.randperm(len(points), generator=generator)]


def kitti_frame(real_data):
    path = real_data / "lidar" / "kitti_360" / "velodyne" / "000000.bin"
    if not path.exists():
        pytest.skip(f"KITTI frame missing: {path}")
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3].copy())


# ---------------------------------------------------------------------------------------------
# knn
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cloud", ["random", "lattice"])
@pytest.mark.parametrize("k", [1, 7, 70])
def test_knn_matches_reference(backend, dtype, cloud, k):
    support = torch.randn(60, 3, dtype=dtype) if cloud == "random" else grid_points(4, dtype)[:60]
    query = torch.randn(25, 3, dtype=dtype) if cloud == "random" else grid_points(3, dtype)[:25] + 0.5 * (k == 7)
    index, dist2 = knn(support, query, k, backend=backend)
    ref_index, ref_dist2 = knn_reference(support, query, k)
    assert index.dtype == torch.long and dist2.dtype == dtype
    assert index.shape == dist2.shape == (25, k)
    assert torch.equal(index, ref_index)
    assert torch.equal(dist2, ref_dist2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_batched_with_small_and_empty_elements(backend):
    support = grid_points(4)
    query = grid_points(3) * 1.1
    # element 0: 3 support points (k > size), element 1 has queries but no support, element 3 none of either
    support_batch = torch.tensor([0] * 3 + [2] * 40 + [4] * 21)
    query_batch = torch.tensor([0] * 5 + [1] * 4 + [2] * 10 + [4] * 8)
    index, dist2 = knn(support, query, 5, support_batch, query_batch, backend=backend)
    ref_index, ref_dist2 = knn_reference(support, query, 5, support_batch, query_batch)
    assert torch.equal(index, ref_index) and torch.equal(dist2, ref_dist2)
    assert (index[:5, 3:] == -1).all() and torch.isinf(dist2[5:9]).all()


def test_backends_agree_on_lattice_ties():
    if len(BACKENDS) < 2:
        pytest.skip("open3d.ml.torch not importable: only one backend")
    support = grid_points(6)
    query = grid_points(5) + 0.5
    for k in (1, 4, 8, 9, 30):
        a = knn(support, query, k, backend="open3d")
        b = knn(support, query, k, backend="torch")
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_open3d_boundary_ties_both_strategies(monkeypatch):
    """Rows whose k-th place is tied are redone exactly: by brute force (few rows) or a radius search."""
    if len(BACKENDS) < 2:
        pytest.skip("open3d.ml.torch not importable: only one backend")
    import geoattn.sparse.neighbors as neighbors

    # a float32 lattice away from the origin, in two batch elements: ties with rounded coordinates
    support = grid_points(6) * 0.1 + 40.0
    query = grid_points(4) * 0.1 + 40.05
    support_batch = torch.repeat_interleave(torch.arange(2), torch.tensor([100, 116]))
    query_batch = torch.repeat_interleave(torch.arange(2), torch.tensor([30, 34]))
    expected = knn(support, query, 9, support_batch, query_batch, backend="torch")
    for budget in (neighbors._BLOCK_ELEMENTS, 4):  # 4: forces the kd-tree radius-search strategy
        monkeypatch.setattr(neighbors, "_BLOCK_ELEMENTS", budget)
        got = knn(support, query, 9, support_batch, query_batch, backend="open3d")
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        got = radius(support, query, 0.15, 9, support_batch, query_batch, backend="open3d")
        want = radius(support, query, 0.15, 9, support_batch, query_batch, backend="torch")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_empty_and_single_point(backend):
    empty = torch.empty(0, 3)
    index, dist2 = knn(empty, torch.rand(4, 3), 3, backend=backend)
    assert index.shape == (4, 3) and (index == -1).all() and torch.isinf(dist2).all()
    index, dist2 = knn(torch.rand(4, 3), empty, 3, backend=backend)
    assert index.shape == (0, 3) and dist2.shape == (0, 3)
    point = torch.tensor([[1.0, 2.0, 3.0]])
    index, dist2 = knn(point, point, 2, backend=backend)
    assert index.tolist() == [[0, -1]] and dist2[0, 0] == 0 and math.isinf(dist2[0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_non_contiguous(backend):
    base = torch.randn(3, 80, dtype=torch.float64)
    support = base.t()[::2]  # transposed and strided
    query = base.t()[1::3]
    assert not support.is_contiguous()
    index, dist2 = knn(support, query, 4, backend=backend)
    ref_index, ref_dist2 = knn_reference(support.contiguous(), query.contiguous(), 4)
    assert torch.equal(index, ref_index) and torch.equal(dist2, ref_dist2)


def test_knn_blocks_small_budget(monkeypatch):
    """The query-block loop of the torch backend gives the same answer with tiny blocks."""
    import geoattn.sparse.neighbors as neighbors

    support, query = grid_points(4), grid_points(3) + 0.5
    expected = knn(support, query, 6, backend="torch")
    monkeypatch.setattr(neighbors, "_BLOCK_ELEMENTS", 7)
    got = knn(support, query, 6, backend="torch")
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_support=st.integers(1, 40),
    num_query=st.integers(0, 15),
    k=st.integers(1, 12),
    backend=st.sampled_from(BACKENDS),
)
def test_knn_permutation_invariance(seed, num_support, num_query, k, backend):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(num_support, 3, generator=generator)
    query = torch.randn(num_query, 3, generator=generator)
    perm = torch.randperm(num_support, generator=generator)
    index, dist2 = knn(support, query, k, backend=backend)
    index_p, dist2_p = knn(support[perm], query, k, backend=backend)
    assert torch.equal(dist2, dist2_p)  # the distance multiset never depends on the order
    mapped = torch.where(index_p >= 0, perm[index_p.clamp(min=0)], index_p)
    assert torch.equal(mapped.sort(1).values, index.sort(1).values)


def test_knn_gradients():
    support = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    query = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def dist2_of(s, q):
        return knn(s, q, 4)[1]

    assert torch.autograd.gradcheck(dist2_of, (support, query))
    index, dist2 = knn(support, query, 4)
    expected = ((query[:, None] - support[index]) ** 2).sum(-1)
    assert torch.allclose(dist2, expected)


def test_knn_kitti_backends_agree(real_data):
    if len(BACKENDS) < 2:
        pytest.skip("open3d.ml.torch not importable: only one backend")
    points = kitti_frame(real_data)
    query = points[::301]
    a = knn(points, query, 16, backend="open3d")
    b = knn(points, query, 16, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1][:, 0] == 0).all()  # every query is in the support
    # duplicated points create exact ties, also at the k-th place
    duplicated = torch.cat([points[:8000], points[:8000:3]])
    a = knn(duplicated, duplicated[::5], 5, backend="open3d")
    b = knn(duplicated, duplicated[::5], 5, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a batch of two copies of the frame: each query sees only its own copy
    two = torch.cat([points[:3000], points[:3000] + 0.25])
    batch = torch.repeat_interleave(torch.arange(2), 3000)
    index, _ = knn(two, two[::50], 8, batch, batch[::50])
    assert torch.equal(index // 3000, batch[::50, None].expand(-1, 8))


def test_scalar_arguments_accept_numpy_and_tensors():
    support, query = torch.rand(30, 3), torch.rand(5, 3)
    assert torch.equal(knn(support, query, np.int64(3))[0], knn(support, query, torch.tensor(3))[0])
    assert torch.equal(radius(support, query, np.float32(0.5), 4)[0], radius(support, query, 0.5, 4)[0])
    assert torch.equal(fps(support, ratio=np.float64(0.5)), fps(support, ratio=0.5))
    with pytest.raises(TypeError, match="k: expected a positive int, got 2.5"):
        knn(support, query, 2.5)


def test_neighbor_backend_forced(monkeypatch):
    monkeypatch.setenv("GEOATTN_BACKEND", "naive")
    assert neighbor_backend(torch.rand(3, 3)) == "torch"
    monkeypatch.delenv("GEOATTN_BACKEND")
    expected = "open3d" if backends.open3d_ops() is not None else "torch"
    assert neighbor_backend(torch.rand(3, 3)) == expected
    assert neighbor_backend(torch.rand(3, 3).half()) == "torch"


# ---------------------------------------------------------------------------------------------
# radius
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cloud", ["random", "lattice"])
def test_radius_matches_reference(backend, cloud):
    support = torch.rand(70, 3) * 2 if cloud == "random" else grid_points(4)
    query = torch.rand(20, 3) * 2 if cloud == "random" else grid_points(3)[:20]
    for r, max_neighbors in ((0.6, 5), (1.0, 6), (1.0, 1), (10.0, 100)):  # r = 1 hits lattice points exactly
        index, count = radius(support, query, r, max_neighbors, backend=backend)
        ref_index, ref_count = radius_reference(support, query, r, max_neighbors)
        assert index.shape == (20, max_neighbors) and count.dtype == torch.long
        assert torch.equal(index, ref_index) and torch.equal(count, ref_count)


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_batched(backend):
    support, query = grid_points(4), grid_points(3)
    support_batch = torch.tensor([0] * 30 + [1] * 34)
    query_batch = torch.tensor([0] * 12 + [1] * 15)
    index, count = radius(support, query, 1.5, 4, support_batch, query_batch, backend=backend)
    ref_index, ref_count = radius_reference(support, query, 1.5, 4, support_batch, query_batch)
    assert torch.equal(index, ref_index) and torch.equal(count, ref_count)
    index, count = radius(torch.empty(0, 3), query, 1.0, 3, backend=backend)
    assert (count == 0).all() and (index == -1).all()


# ---------------------------------------------------------------------------------------------
# fps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cloud", ["random", "lattice"])
def test_fps_matches_reference(backend, cloud):
    pos = torch.randn(90, 3) if cloud == "random" else grid_points(4)
    index = fps(pos, 20, backend=backend)
    assert index.dtype == torch.long and index[0] == 0
    if backend == "open3d" and cloud == "lattice":
        # open3d's multithreaded argmax picks any of several exactly tied points, differently from run to run
        assert_valid_fps(pos, index, lambda n: min(n, 20))
    else:
        assert torch.equal(index, fps_reference(pos, lambda n: min(n, 20)))


def test_fps_validity_checker_rejects_a_wrong_pick():
    pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [2, 0, 0]])
    assert_valid_fps(pos, torch.tensor([0, 2, 1]), lambda n: 3)
    with pytest.raises(AssertionError):
        assert_valid_fps(pos, torch.tensor([0, 3, 1]), lambda n: 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_batched_ratio_and_clamp(backend):
    pos = grid_points(4)
    batch = torch.tensor([0] * 2 + [1] * 40 + [3] * 22)
    # lattice ties: open3d may break them either way (see test_fps_matches_reference)
    check = assert_valid_fps if backend == "open3d" else (
        lambda p, got, size, b: torch.testing.assert_close(got, fps_reference(p, size, b), rtol=0, atol=0))
    got = fps(pos, ratio=0.25, batch=batch, backend=backend)
    check(pos, got, lambda n: math.ceil(0.25 * n), batch)
    got = fps(pos, 5, batch=batch, backend=backend)  # element 0 has only 2 points: all of them
    check(pos, got, lambda n: min(n, 5), batch)
    assert got[:2].tolist() == [0, 1]
    assert fps(pos[:1], 3, backend=backend).tolist() == [0]
    assert fps(torch.empty(0, 3), 3, backend=backend).numel() == 0


def test_fps_ratio_rounding_and_inputs():
    pos = torch.randn(30, 3)
    assert fps(pos, ratio=0.1).numel() == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert fps(pos, ratio=0.01).numel() == 1  # at least one sample per non-empty element
    strided = torch.randn(3, 60).t()[::2]
    batch = torch.repeat_interleave(torch.arange(2, dtype=torch.int32), 15)
    for backend in BACKENDS:
        got = fps(strided, 4, batch=batch, backend=backend)
        assert torch.equal(got, fps_reference(strided.contiguous(), lambda n: 4, batch.long()))


def test_fps_float64_uses_torch():
    pos = torch.randn(50, 3, dtype=torch.float64)
    assert torch.equal(fps(pos, 12), fps_reference(pos, lambda n: 12))


def test_fps_kitti_backends_agree(real_data):
    if len(BACKENDS) < 2:
        pytest.skip("open3d.ml.torch not importable: only one backend")
    points = kitti_frame(real_data)[::4]
    assert torch.equal(fps(points, 256, backend="open3d"), fps(points, 256, backend="torch"))


# ---------------------------------------------------------------------------------------------
# grid_subsample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_subsample_matches_reference(dtype):
    pos = (torch.randn(200, 3) * 3).to(dtype)
    batch = torch.sort(torch.randint(0, 3, (200,))).values
    for b in (None, batch):
        pos_sub, batch_sub, cluster = grid_subsample(pos, 0.7, b)
        ref_pos, ref_batch, ref_cluster = grid_reference(pos, 0.7, b)
        assert torch.equal(cluster, ref_cluster) and torch.equal(batch_sub, ref_batch)
        assert torch.allclose(pos_sub, ref_pos, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num=st.integers(1, 60), voxel=st.floats(0.05, 2.0))
def test_grid_subsample_property(seed, num, voxel):
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(num, 3, generator=generator, dtype=torch.float64) * 2
    batch = torch.sort(torch.randint(0, 3, (num,), generator=generator)).values.int()
    pos_sub, batch_sub, cluster = grid_subsample(pos, torch.tensor(voxel), batch)
    ref_pos, ref_batch, ref_cluster = grid_reference(pos, voxel, batch)
    assert torch.equal(cluster, ref_cluster) and torch.equal(batch_sub, ref_batch)
    assert torch.allclose(pos_sub, ref_pos)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    r=st.floats(0.1, 2.0),
    max_neighbors=st.integers(1, 10),
    backend=st.sampled_from(BACKENDS),
)
def test_radius_property(seed, r, max_neighbors, backend):
    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(40, 3, generator=generator, dtype=torch.float64) * 2
    query = torch.rand(9, 3, generator=generator, dtype=torch.float64) * 2
    index, count = radius(support, query, r, max_neighbors, backend=backend)
    ref_index, ref_count = radius_reference(support, query, r, max_neighbors)
    assert torch.equal(index, ref_index) and torch.equal(count, ref_count)


def test_grid_subsample_per_axis_gradient_and_empty():
    pos = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    pos_sub, _, cluster = grid_subsample(pos, [0.5, 1.0, 2.0])
    cells = torch.floor(pos.detach() / torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    for c in range(pos_sub.size(0)):  # one cell per cluster id
        assert torch.unique(cells[cluster == c], dim=0).size(0) == 1
    weights = torch.randn_like(pos_sub)
    (pos_sub * weights).sum().backward()
    counts = torch.bincount(cluster).to(pos.dtype)
    assert torch.allclose(pos.grad, weights[cluster] / counts[cluster, None])  # d mean / d member = 1 / count
    pos_sub, batch_sub, cluster = grid_subsample(torch.empty(0, 3), 0.1)
    assert pos_sub.shape == (0, 3) and batch_sub.numel() == 0 and cluster.numel() == 0


def test_grid_subsample_kitti(real_data):
    points = kitti_frame(real_data)
    pos_sub, batch_sub, cluster = grid_subsample(points, 0.3)
    assert (batch_sub == 0).all() and cluster.max() == pos_sub.size(0) - 1
    # every centroid lies inside its cell
    cell_of_centroid = torch.floor(pos_sub.double() / 0.3)
    cell_of_point = torch.floor(points.double() / 0.3)
    assert torch.equal(cell_of_centroid[cluster], cell_of_point) or torch.allclose(
        pos_sub[cluster], points, atol=0.3 * math.sqrt(3)
    )


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    pos = torch.rand(5, 3)
    with pytest.raises(ValueError, match=r"support: expected a 2-D tensor \[N, 3\], got shape \(5, 2\)"):
        knn(pos[:, :2], pos, 2)
    with pytest.raises(TypeError, match="query: expected dtype torch.float32"):
        knn(pos, pos.double(), 2)
    with pytest.raises(TypeError, match="support: expected a floating-point tensor"):
        knn(pos.long(), pos, 2)
    with pytest.raises(ValueError, match="k: expected a positive int, got 0"):
        knn(pos, pos, 0)
    with pytest.raises(ValueError, match="support_batch, query_batch: expected both or neither"):
        knn(pos, pos, 2, support_batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"query_batch: expected shape \(5,\), got \(4,\)"):
        knn(pos, pos, 2, torch.zeros(5, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="sorted"):
        knn(pos, pos, 2, torch.tensor([1, 0, 0, 0, 0]), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="backend: expected one of"):
        knn(pos, pos, 2, backend="faiss")
    with pytest.raises(ValueError, match="r: expected a positive finite radius, got -1"):
        radius(pos, pos, -1.0, 3)
    with pytest.raises(ValueError, match="max_neighbors: expected a positive int"):
        radius(pos, pos, 1.0, 0)
    with pytest.raises(ValueError, match="num_samples, ratio: expected exactly one"):
        fps(pos)
    with pytest.raises(ValueError, match=r"ratio: expected a number in \(0, 1\], got 1.5"):
        fps(pos, ratio=1.5)
    with pytest.raises(ValueError, match="voxel_size: expected a positive finite float"):
        grid_subsample(pos, 0.0)
    with pytest.raises(ValueError, match="batch: expected sorted"):
        grid_subsample(pos, 0.1, torch.tensor([1, 0, 0, 0, 0]))


def test_knn_dist2_with_gradients_equals_plain():
    support = torch.randn(300, 3) * 30
    query = torch.randn(40, 3) * 30
    plain = knn(support, query, 6)[1]
    tracked = knn(support.requires_grad_(), query, 6)[1]
    assert tracked.requires_grad and torch.equal(plain, tracked.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    support = torch.cat([grid_points(5), torch.randn(100, 3)])
    query = torch.cat([grid_points(3) + 0.5, torch.randn(20, 3)])
    support_batch = torch.repeat_interleave(torch.arange(2), torch.tensor([125, 100]))
    query_batch = torch.repeat_interleave(torch.arange(2), torch.tensor([27, 20]))
    cuda = torch.device("cuda")
    cpu_out = knn(support, query, 9, support_batch, query_batch)
    gpu_out = knn(support.to(cuda), query.to(cuda), 9, support_batch.to(cuda), query_batch.to(cuda))
    assert torch.equal(cpu_out[0], gpu_out[0].cpu()) and torch.equal(cpu_out[1], gpu_out[1].cpu())
    cpu_out = radius(support, query, 1.2, 7, support_batch, query_batch)
    gpu_out = radius(support.to(cuda), query.to(cuda), 1.2, 7, support_batch.to(cuda), query_batch.to(cuda))
    assert torch.equal(cpu_out[0], gpu_out[0].cpu()) and torch.equal(cpu_out[1], gpu_out[1].cpu())
    assert torch.equal(fps(support, ratio=0.2, batch=support_batch),
                       fps(support.to(cuda), ratio=0.2, batch=support_batch.to(cuda)).cpu())
    cpu_grid = grid_subsample(support, 0.7, support_batch)
    gpu_grid = grid_subsample(support.to(cuda), 0.7, support_batch.to(cuda))
    assert torch.equal(cpu_grid[2], gpu_grid[2].cpu()) and torch.equal(cpu_grid[1], gpu_grid[1].cpu())
    assert torch.allclose(cpu_grid[0], gpu_grid[0].cpu(), atol=1e-6)


@pytest.mark.slow
def test_full_kitti_frame_backends_agree(real_data):
    """Whole 360-degree frame: knn of every point and FPS to 4096 agree between backends (minutes on CPU)."""
    if len(BACKENDS) < 2:
        pytest.skip("open3d.ml.torch not importable: only one backend")
    points = kitti_frame(real_data)
    a = knn(points, points, 16, backend="open3d")
    b = knn(points, points, 16, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(fps(points, 4096, backend="open3d"), fps(points, 4096, backend="torch"))
