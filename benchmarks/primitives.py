"""Time every geoattn.sparse primitive against the fastest alternative present on this machine.

Inputs: a real KITTI 360-degree frame (point primitives) and a random graph with 1M edges (segment and
graph primitives). For each primitive all candidate baselines that are importable are timed in the same
process (PyG utils, torch-scatter, open3d.ml ops, spconv's PointToVoxel, plain torch); the record keeps
the fastest. Times are medians of ``--repeats`` runs after one warm-up.

    python benchmarks/primitives.py --json
    python benchmarks/primitives.py --frame PATH/000000.bin --repeats 9 --json
"""
from __future__ import annotations

import argparse
import json
import warnings
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geoattn import backends
from geoattn import sparse

DEFAULT_FRAME = Path("lidar") / "kitti_360" / "velodyne" / "000000.bin"


def data_root() -> Path:
    env = os.environ.get("GEOATTN_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Recorder:
    def __init__(self, repeats: int, verbose: bool):
        self.repeats = repeats
        self.verbose = verbose
        self.records: list[dict] = []

    def compare(self, name: str, geoattn_fn, baselines: dict, check=None, informational: dict | None = None) -> None:
        """Time ``geoattn_fn`` and every baseline in ``baselines`` (name -> callable or None); keep the fastest.

        Candidates run round-robin, one call each per round in a rotating order, so load changes on the
        machine hit all of them alike; each gets one untimed warm-up call. ``check(geoattn_out, baseline_out)`` asserts that a
        baseline computes the same thing. ``informational`` callables compute less than geoattn (so they are
        not valid baselines); they are timed in the same rounds and reported under ``not_comparable_ms``.
        """
        extra_fns = {k: v for k, v in (informational or {}).items() if v is not None}
        candidates = {"geoattn": geoattn_fn, **{k: v for k, v in baselines.items() if v is not None}, **extra_fns}
        reference = geoattn_fn()
        for baseline_name, fn in candidates.items():
            out = fn()
            if check is not None and baseline_name in baselines:
                check(reference, out)
        times = {key: [] for key in candidates}
        keys = list(candidates)
        for round_index in range(self.repeats):
            # Rotate the order every round: a candidate that follows a heavily threaded one inherits its
            # still-spinning OpenMP workers, and a fixed order would charge that to the same candidate each time.
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                start = time.perf_counter()
                candidates[key]()
                times[key].append(time.perf_counter() - start)
        medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
        geoattn_ms = medians.pop("geoattn")
        extra = {key: medians.pop(key) for key in extra_fns}
        best = min(medians, key=medians.get)
        record = {
            "name": name,
            "geoattn_ms": round(geoattn_ms, 3),
            "baseline": best,
            "baseline_ms": round(medians[best], 3),
            "ratio": round(geoattn_ms / medians[best], 3),
            "all_baselines_ms": {k: round(v, 3) for k, v in medians.items()},
        }
        if extra:
            record["not_comparable_ms"] = {k: round(v, 3) for k, v in extra.items()}
        self.records.append(record)
        if self.verbose:
            print(f"{name:<28} geoattn {geoattn_ms:9.3f} ms   {best:<28} {medians[best]:9.3f} ms   "
                  f"ratio {record['ratio']:.2f}", file=sys.stderr)


def close(a, b, atol=1e-4):
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


def random_graph(num_nodes: int, num_edges: int, seed: int = 0):
    """Undirected random graph: ``num_edges // 2`` uniform node pairs without self loops, in both directions.

    (Self loops are left out because GCN normalisations disagree on them: PyG replaces an existing loop,
    ``A + I`` adds to it.)
    """
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    pairs = pairs[:, pairs[0] != pairs[1]][:, : num_edges // 2]
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def bench_segment(rec: Recorder, num_nodes: int, num_edges: int, channels: int) -> None:
    from torch_geometric.utils import scatter as pyg_scatter
    from torch_geometric.utils import softmax as pyg_softmax

    edge_index = random_graph(num_nodes, num_edges)
    target = edge_index[1].sort().values
    unsorted = edge_index[1]
    src = torch.randn(num_edges, channels)
    offsets = sparse.offsets_from_index(target, num_nodes)
    ts = backends.torch_scatter()

    rec.compare(
        "offsets_from_index",
        lambda: sparse.offsets_from_index(target, num_nodes),
        {
            "torch.searchsorted": lambda: torch.searchsorted(target, torch.arange(num_nodes + 1)),
            "pyg.index2ptr": _pyg_index2ptr(target, num_nodes),
        },
        check=lambda a, b: torch.testing.assert_close(a, b),
    )
    for reduce, fn in (("sum", sparse.segment_sum), ("mean", sparse.segment_mean), ("max", sparse.segment_max)):
        baselines = {
            f"pyg.scatter({reduce})": lambda r=reduce: pyg_scatter(src, target, 0, num_nodes, r),
            "torch.segment_reduce": (lambda r=reduce: torch.segment_reduce(src, r, offsets=offsets))
            if reduce != "mean" else None,
            "torch.index_add_": (lambda: src.new_zeros(num_nodes, channels).index_add_(0, target, src))
            if reduce == "sum" else None,
            "torch_scatter.segment_csr": (lambda r=reduce: ts.segment_csr(src, offsets, reduce=r)) if ts else None,
        }
        rec.compare(f"segment_{reduce}", lambda f=fn: f(src, offsets), baselines,
                    check=(lambda a, b: close(a, b)) if reduce != "max" else None)
    scores = torch.randn(num_edges, 4)
    rec.compare(
        "segment_softmax",
        lambda: sparse.segment_softmax(scores, offsets),
        {
            "pyg.softmax(ptr)": lambda: pyg_softmax(scores, ptr=offsets, num_nodes=num_nodes),
            "pyg.softmax(index)": lambda: pyg_softmax(scores, target, num_nodes=num_nodes),
        },
        check=close,
    )
    for reduce, fn in (("sum", sparse.scatter_sum), ("max", sparse.scatter_max)):
        baselines = {
            f"pyg.scatter({reduce})": lambda r=reduce: pyg_scatter(src, unsorted, 0, num_nodes, r),
            "torch.index_add_": (lambda: src.new_zeros(num_nodes, channels).index_add_(0, unsorted, src))
            if reduce == "sum" else None,
            "torch.scatter_reduce_": (lambda: src.new_zeros(num_nodes, channels).scatter_reduce_(
                0, unsorted.view(-1, 1).expand_as(src), src, "amax", include_self=False)) if reduce == "max" else None,
            "torch_scatter.scatter": (lambda r=reduce: ts.scatter(src, unsorted, 0, dim_size=num_nodes, reduce=r))
            if ts else None,
        }
        rec.compare(f"scatter_{reduce}", lambda f=fn: f(src, unsorted, num_nodes), baselines, check=close)


# ---------------------------------------------------------------------------------------------
# point primitives on a real KITTI frame
# ---------------------------------------------------------------------------------------------
def _row_splits(n):
    return torch.tensor([0, n], dtype=torch.long)


def bench_neighbors(rec: Recorder, points: torch.Tensor) -> None:
    pos = points[:, :3].contiguous()
    queries = pos[::8].contiguous()
    ops = backends.open3d_ops()
    k, radius, max_neighbors = 16, 0.5, 32

    rec.compare(
        "knn (k=16, N/8 queries)",
        lambda: sparse.knn(pos, queries, k),
        {
            "open3d.knn_search": (lambda: ops.knn_search(pos, queries, k, _row_splits(len(pos)),
                                                         _row_splits(len(queries)), index_dtype=torch.int64,
                                                         return_distances=True)) if ops else None,
            "torch.cdist+topk (blocked)": lambda: _blocked_knn(pos, queries, k),
        },
    )
    rec.compare(
        "radius (r=0.5 m, max 32)",
        lambda: sparse.radius(pos, queries, radius, max_neighbors),
        {
            "open3d.FixedRadiusSearch": _open3d_fixed_radius(pos, queries, radius),
            "open3d.knn_search+mask": (lambda: _open3d_knn_within(ops, pos, queries, max_neighbors, radius))
            if ops else None,
        },
    )
    fps_points = pos[:16384].contiguous()
    # The plain-torch loop is ~10x slower than open3d and only a baseline when open3d is missing: timed in
    # the same rounds, its 1024 small threaded ops leave torch's OpenMP workers spinning into the next call,
    # which inflated whichever candidate followed it by up to 50%.
    fps_baselines = (
        {"open3d.furthest_point_sampling": lambda: ops.furthest_point_sampling(fps_points[None], 1024)}
        if ops else {"torch (loop over samples)": lambda: _plain_fps(fps_points, 1024)}
    )
    rec.compare("fps (16384 -> 1024)", lambda: sparse.fps(fps_points, num_samples=1024), fps_baselines)
    rec.compare(
        "grid_subsample (0.2 m)",
        lambda: sparse.grid_subsample(pos, 0.2),
        {"torch.unique+index_add_": lambda: _plain_grid_subsample(pos, 0.2)},
    )


def _blocked_knn(support, query, k, block=4096):
    out = []
    for start in range(0, query.size(0), block):
        d = torch.cdist(query[start:start + block], support)
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


def _open3d_fixed_radius(pos, queries, radius):
    try:
        from open3d.ml.torch.layers import FixedRadiusSearch
    except ImportError:
        return None
    search = FixedRadiusSearch(return_distances=True)
    return lambda: search(pos, queries, radius)


def _open3d_knn_within(ops, pos, queries, k, radius):
    result = ops.knn_search(pos, queries, k, _row_splits(len(pos)), _row_splits(len(queries)),
                            index_dtype=torch.int64, return_distances=True)
    index = result.neighbors_index.view(-1, k)
    return index.masked_fill(result.neighbors_distance.view(-1, k) > radius * radius, -1)


def _plain_fps(pos, num_samples):
    chosen = torch.empty(num_samples, dtype=torch.long)
    min_dist2 = torch.full((pos.size(0),), float("inf"))
    current = 0
    for step in range(num_samples):
        chosen[step] = current
        min_dist2 = torch.minimum(min_dist2, (pos - pos[current]).pow(2).sum(1))
        current = int(min_dist2.argmax())
    return chosen


def _plain_grid_subsample(pos, voxel_size):
    cells = torch.floor(pos / voxel_size).long()
    _, cluster, counts = torch.unique(cells, dim=0, return_inverse=True, return_counts=True)
    sums = pos.new_zeros(counts.numel(), 3).index_add_(0, cluster, pos)
    return sums / counts[:, None], cluster


WAYMO_VOXEL = (0.32, 0.32, 0.1875)
WAYMO_RANGE = (-76.8, -76.8, -2.0, 76.8, 76.8, 4.0)


def bench_voxel_window(rec: Recorder, points: torch.Tensor) -> None:
    pos = points[:, :3].contiguous()
    spc = backends.spconv()
    ops = backends.open3d_ops()
    # geoattn returns sorted voxel coords, point->voxel ids, counts, mean features and centroids: baselines
    # must produce the same; grouping-only calls (or capped means) are timed as information.
    baselines = {"torch.unique+index_add_": lambda: _plain_voxelize(pos, WAYMO_VOXEL, WAYMO_RANGE)}
    grouping_only = {}
    if spc is not None:
        from spconv.pytorch.utils import PointToVoxel

        generator = PointToVoxel(vsize_xyz=list(WAYMO_VOXEL), coors_range_xyz=list(WAYMO_RANGE),
                                 num_point_features=3, max_num_voxels=pos.size(0), max_num_points_per_voxel=1)
        baselines["spconv ids + torch reductions"] = lambda: _spconv_dynamic_voxelize(generator, pos)
        grouping_only["spconv.PointToVoxel ids only"] = lambda: generator.generate_voxel_with_id(pos,
                                                                                                clear_voxels=False)
        generator_mean = PointToVoxel(vsize_xyz=list(WAYMO_VOXEL), coors_range_xyz=list(WAYMO_RANGE),
                                      num_point_features=3, max_num_voxels=pos.size(0), max_num_points_per_voxel=5)
        grouping_only["spconv.PointToVoxel mean of <= 5 points"] = lambda: generator_mean(pos, empty_mean=True)
    if ops is not None:
        low = torch.tensor(WAYMO_RANGE[:3])
        high = torch.tensor(WAYMO_RANGE[3:])
        size = torch.tensor(WAYMO_VOXEL)
        grouping_only["open3d.voxelize grouping only"] = lambda: ops.voxelize(
            pos, _row_splits(len(pos)), size, low, high, max_points_per_voxel=1 << 20, max_voxels=1 << 30)
    rec.compare("voxelize (Waymo config)", lambda: sparse.voxelize(pos, WAYMO_VOXEL, WAYMO_RANGE), baselines,
                informational=grouping_only)

    coords = sparse.voxelize(pos, WAYMO_VOXEL, WAYMO_RANGE).coords
    shuffled = coords[torch.randperm(coords.size(0))]
    rec.compare(
        "WindowIndex.from_coords (12x12)",
        lambda: sparse.WindowIndex.from_coords(shuffled, 12),
        {"torch.unique+argsort": lambda: _plain_windows(shuffled, 12)},
    )


def _plain_voxelize(pos, voxel_size, point_range):
    low = torch.tensor(point_range[:3])
    high = torch.tensor(point_range[3:])
    inside = ((pos >= low) & (pos < high)).all(1)
    kept = pos[inside]
    cells = torch.floor((kept - low) / torch.tensor(voxel_size)).long()
    _, inverse, counts = torch.unique(cells, dim=0, return_inverse=True, return_counts=True)
    sums = kept.new_zeros(counts.numel(), 3).index_add_(0, inverse, kept)
    return sums / counts[:, None]


def _spconv_dynamic_voxelize(generator, pos):
    _, cells_zyx, _, point_voxel = generator.generate_voxel_with_id(pos, clear_voxels=False)
    cells = cells_zyx.long()
    order = torch.argsort((cells[:, 0] * 100_000 + cells[:, 1]) * 100_000 + cells[:, 2])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    inside = point_voxel >= 0
    voxel = rank[point_voxel[inside]]
    counts = torch.bincount(voxel, minlength=order.numel())
    centroids = pos.new_zeros(order.numel(), 3).index_add_(0, voxel, pos[inside]) / counts[:, None]
    point_to_voxel = torch.full_like(point_voxel, -1).masked_scatter_(inside, voxel)
    return cells[order], point_to_voxel, counts, centroids


def _plain_windows(coords, window):
    key = torch.stack([coords[:, 0], coords[:, 2] // window, coords[:, 3] // window], 1)
    _, window_id, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    perm = torch.argsort(window_id, stable=True)
    return perm, counts


def bench_geometry(rec: Recorder, points: torch.Tensor) -> None:
    pos = points[:, :3].contiguous()
    generator = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(pos.shape, generator=generator), dim=1)
    index = torch.randint(0, pos.size(0), (pos.size(0),), generator=generator)
    # The plain baseline computes the same atan2 angles: an acos formula is cheaper but loses about
    # sqrt(eps) rad near 0 and pi (nearly parallel normals, common on planes).
    rec.compare(
        "point_pair_features",
        lambda: sparse.point_pair_features(pos, normals, pos[index], normals[index]),
        {"torch atan2 formula": lambda: _plain_ppf(pos, normals, pos[index], normals[index])},
        check=lambda a, b: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5),
    )
    cloud = pos[:20000].contiguous()
    rec.compare(
        "estimate_normals (oriented, k=16, 20k pts)",
        lambda: sparse.estimate_normals(cloud, k=16),
        {"open3d normals + knn-centroid sign": _open3d_oriented_normals(cloud, 16),
         "torch knn+eigh+sign": lambda: _plain_normals(cloud, 16)},
        informational={"open3d estimate_normals (unoriented)": _open3d_normals(cloud, 16)},
    )
    rotation = sparse.random_rotation(generator=generator)
    transform = sparse.make_transform(rotation, torch.tensor([1.0, -2.0, 0.5]))
    rec.compare(
        "transform_points",
        lambda: sparse.transform_points(pos, transform),
        {"torch p @ R.T + t": lambda: pos @ transform[:3, :3].T + transform[:3, 3]},
        check=close,
    )
    src = torch.randn(256, 512, 3, generator=generator)
    dst = src @ rotation.T + 0.1
    weights = torch.rand(256, 512, generator=generator)
    # geoattn solves in float64 (metre-scale clouds lose digits in float32); so does the baseline.
    rec.compare(
        "weighted_kabsch (256 x 512, float64 solve)",
        lambda: sparse.weighted_kabsch(src, dst, weights),
        {"torch svd (batched, float64)": lambda: _plain_kabsch(src.double(), dst.double(), weights.double()).float()},
        check=lambda a, b: torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4),
    )
    lidar2img = torch.tensor([[609.7, -721.4, -1.3, -123.0], [172.5, 9.6, -722.5, -101.0],
                              [0.99, 0.007, 0.0082, -0.27], [0.0, 0.0, 0.0, 1.0]])
    rec.compare(
        "project_to_image (1 camera)",
        lambda: sparse.project_to_image(pos, lidar2img, (375, 1242)),
        {"torch homogeneous matmul": lambda: _plain_projection(pos, lidar2img, (375, 1242))},
    )


def _plain_ppf(p_i, n_i, p_j, n_j):
    def angle(a, b):
        return torch.atan2(torch.linalg.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1))

    d = p_j - p_i
    return torch.stack([d.norm(dim=-1), angle(n_i, d), angle(n_j, d), angle(n_i, n_j)], dim=-1)


def _open3d_normals(points, k):
    try:
        import open3d as o3d
    except ImportError:
        return None
    array = points.double().numpy()

    def run():
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(array))
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=k))
        return torch.from_numpy(np.asarray(cloud.normals))

    return run


def _open3d_oriented_normals(points, k):
    """The fastest way to geoattn's output with open3d: its normals, signed by the same neighbourhood rule."""
    unoriented = _open3d_normals(points, k)
    if unoriented is None:
        return None

    def run():
        normals = unoriented()
        index, _ = sparse.knn(points, points, k)
        away = (points.double() - points.double()[index].mean(1))
        return torch.where(((normals * away).sum(1) < 0)[:, None], -normals, normals)

    return run


def _plain_normals(points, k):
    index, _ = sparse.knn(points, points, k)
    neighbourhood = points[index].double()
    centroid = neighbourhood.mean(1)
    centred = neighbourhood - centroid[:, None]
    normals = torch.linalg.eigh(centred.transpose(1, 2) @ centred).eigenvectors[..., 0]
    away = points.double() - centroid
    return torch.where(((normals * away).sum(1) < 0)[:, None], -normals, normals)


def _plain_kabsch(src, dst, weights):
    w = weights / weights.sum(-1, keepdim=True)
    src_mean = (w[..., None] * src).sum(-2, keepdim=True)
    dst_mean = (w[..., None] * dst).sum(-2, keepdim=True)
    h = (w[..., None] * (src - src_mean)).transpose(-1, -2) @ (dst - dst_mean)
    u, _, vh = torch.linalg.svd(h)
    sign = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    rotation = vh.transpose(-1, -2) @ fix @ u.transpose(-1, -2)
    translation = dst_mean.squeeze(-2) - (rotation @ src_mean.transpose(-1, -2)).squeeze(-1)
    out = torch.eye(4, dtype=src.dtype).repeat(src.shape[0], 1, 1)
    out[:, :3, :3] = rotation
    out[:, :3, 3] = translation
    return out


def _plain_projection(points, lidar2img, image_hw):
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], 1) @ lidar2img.T
    depth = homogeneous[:, 2]
    uv = homogeneous[:, :2] / depth.clamp_min(1e-5)[:, None]
    valid = (depth > 1e-5) & (uv[:, 0] >= 0) & (uv[:, 0] < image_hw[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < image_hw[0])
    return uv, depth, valid


# ---------------------------------------------------------------------------------------------
# graph primitives on a random graph
# ---------------------------------------------------------------------------------------------
def bench_graph(rec: Recorder, num_nodes: int, num_edges: int, channels: int) -> None:
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import scatter as pyg_scatter
    from torch_geometric.utils import sort_edge_index

    edge_index = random_graph(num_nodes, num_edges, seed=1)
    x = torch.randn(num_nodes, channels)
    rec.compare(
        "csr_from_edge_index",
        lambda: sparse.csr_from_edge_index(edge_index, num_nodes),
        {
            "pyg.sort_edge_index+index2ptr": lambda: _pyg_csr(sort_edge_index, edge_index, num_nodes),
            "torch.sparse_coo.to_sparse_csr": lambda: torch.sparse_coo_tensor(
                edge_index.flip(0), torch.ones(num_edges), (num_nodes, num_nodes)).coalesce().to_sparse_csr(),
        },
    )
    adjacency = sparse.NormalizedAdjacency(edge_index, num_nodes)
    norm_index, norm_weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    pyg_csr = torch.sparse_coo_tensor(norm_index.flip(0), norm_weight, (num_nodes, num_nodes)).to_sparse_csr()
    rec.compare(
        "normalized_propagate (built)",
        lambda: sparse.normalized_propagate(x, adjacency),
        {
            "torch.sparse.mm(pyg gcn_norm csr)": lambda: torch.sparse.mm(pyg_csr, x),
            "pyg gather+scatter": lambda: pyg_scatter(x[norm_index[0]] * norm_weight[:, None], norm_index[1], 0,
                                                      num_nodes, "sum"),
        },
        check=close,
    )
    rec.compare(
        "normalized_propagate (from edge_index)",
        lambda: sparse.normalized_propagate(x, edge_index),
        {
            "pyg gcn_norm+sparse.mm": lambda: torch.sparse.mm(_gcn_csr(gcn_norm, edge_index, num_nodes), x),
            "pyg GCNConv-style propagate": lambda: _pyg_propagate(gcn_norm, pyg_scatter, x, edge_index, num_nodes),
        },
        check=close,
    )


def _pyg_csr(sort_edge_index, edge_index, num_nodes):
    from torch_geometric.utils.sparse import index2ptr

    ordered = sort_edge_index(edge_index, num_nodes=num_nodes, sort_by_row=False)
    return index2ptr(ordered[1], num_nodes), ordered[0]


def _gcn_csr(gcn_norm, edge_index, num_nodes):
    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return torch.sparse_coo_tensor(index.flip(0), weight, (num_nodes, num_nodes)).to_sparse_csr()


def _pyg_propagate(gcn_norm, pyg_scatter, x, edge_index, num_nodes):
    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return pyg_scatter(x[index[0]] * weight[:, None], index[1], 0, num_nodes, "sum")


def _pyg_index2ptr(index, size):
    try:
        from torch_geometric.utils.sparse import index2ptr
    except ImportError:
        return None
    return lambda: index2ptr(index, size)


def load_frame(path: Path) -> torch.Tensor:
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    return torch.from_numpy(points)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame", type=Path, default=None, help="KITTI velodyne .bin (default: the shared fixture)")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the records as one JSON list on stdout")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch's beta notices for sparse CSR baselines
    rec = Recorder(args.repeats, verbose=not args.json)
    bench_segment(rec, args.nodes, args.edges, args.channels)
    frame_path = args.frame or data_root() / DEFAULT_FRAME
    if frame_path.is_file():
        points = load_frame(frame_path)
        for bench in POINT_BENCHES:
            bench(rec, points)
    else:
        print(f"note: frame {frame_path} not found; point primitives skipped (pass --frame)", file=sys.stderr)
    for bench in GRAPH_BENCHES:
        bench(rec, args.nodes, args.edges, args.channels)
    if args.json:
        print(json.dumps(rec.records))
    worst = max(r["ratio"] for r in rec.records)
    print(f"worst ratio geoattn/baseline: {worst:.2f}", file=sys.stderr)
    return 0


POINT_BENCHES = [bench_neighbors, bench_voxel_window, bench_geometry]
GRAPH_BENCHES = [bench_graph]

if __name__ == "__main__":
    sys.exit(main())
