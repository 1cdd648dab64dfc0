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

    def compare(self, name: str, geoattn_fn, baselines: dict, check=None) -> None:
        """Time ``geoattn_fn`` and every baseline in ``baselines`` (name -> callable or None); keep the fastest.

        Candidates run round-robin, one call each per round, so load changes on the machine hit all of them
        alike; each gets one untimed warm-up call. ``check(geoattn_out, baseline_out)`` asserts that a
        baseline computes the same thing.
        """
        candidates = {"geoattn": geoattn_fn, **{k: v for k, v in baselines.items() if v is not None}}
        reference = geoattn_fn()
        for baseline_name, fn in candidates.items():
            out = fn()
            if check is not None and baseline_name != "geoattn":
                check(reference, out)
        times = {key: [] for key in candidates}
        for _ in range(self.repeats):
            for key, fn in candidates.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
        geoattn_ms = medians.pop("geoattn")
        best = min(medians, key=medians.get)
        record = {
            "name": name,
            "geoattn_ms": round(geoattn_ms, 3),
            "baseline": best,
            "baseline_ms": round(medians[best], 3),
            "ratio": round(geoattn_ms / medians[best], 3),
            "all_baselines_ms": {k: round(v, 3) for k, v in medians.items()},
        }
        self.records.append(record)
        if self.verbose:
            print(f"{name:<28} geoattn {geoattn_ms:9.3f} ms   {best:<28} {medians[best]:9.3f} ms   "
                  f"ratio {record['ratio']:.2f}", file=sys.stderr)


def close(a, b, atol=1e-4):
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


def random_graph(num_nodes: int, num_edges: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    return edge_index


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


POINT_BENCHES: list = []
GRAPH_BENCHES: list = []

if __name__ == "__main__":
    sys.exit(main())
