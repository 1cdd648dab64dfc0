"""LargeGT precompute: geoattn (vectorised, chunked, memory-mapped) vs a per-node port of the official code.

The graph is a synthetic power-law (configuration-model) graph. The reference follows the official
``data_utils.py``: ``A2 = A @ A`` with scipy, then per node ``random.sample(hop1 + hop2, K - 1)`` (cyclic
fill / random fill), and hop features with scipy products followed by a per-node copy loop. It runs on
``--reference-nodes`` targets: their rows of ``A @ A`` (``A[S] @ A``, the same work the full product does
for those rows), their sampling loop and their copy loop are timed and reported per node; the
vectorised scipy propagation is timed on the whole graph and divided by N.

    python benchmarks/largegt_sampler.py --nodes 200000 --avg-degree 20 --feat 100 --K 50 --json
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time

import numpy as np
import torch

from geoattn.data.largegt import precompute_largegt
from geoattn.sparse.graph import csr_from_edge_index


def power_law_graph(num_nodes: int, avg_degree: float, exponent: float, seed: int) -> torch.Tensor:
    """Symmetric int32 ``edge_index`` of a configuration-model graph with Pareto degrees (mean ``avg_degree``)."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(exponent - 1.0, num_nodes) + 1.0
    weights = np.minimum(weights, weights.mean() * 400)  # products' max degree is ~350x its mean
    degrees = np.maximum(np.round(weights * avg_degree / weights.mean()), 1).astype(np.int64)
    if degrees.sum() % 2:
        degrees[0] += 1
    stubs = np.repeat(np.arange(num_nodes, dtype=np.int32), degrees)
    rng.shuffle(stubs)
    half = stubs.reshape(-1, 2)
    del stubs
    edge_index = np.empty((2, 2 * half.shape[0]), dtype=np.int32)
    edge_index[0, : half.shape[0]], edge_index[1, : half.shape[0]] = half[:, 0], half[:, 1]
    edge_index[0, half.shape[0] :], edge_index[1, half.shape[0] :] = half[:, 1], half[:, 0]
    return torch.from_numpy(edge_index)


def reference_precompute(rowptr: np.ndarray, col: np.ndarray, x: np.ndarray, subset: np.ndarray, k: int):
    """Timings (seconds) of the official-style sampler and hop features: (sampler on subset, hops total, copy on subset)."""
    import scipy.sparse as sp

    num_nodes = rowptr.size - 1
    indptr = rowptr.astype(np.int32) if col.size < 2**31 else rowptr
    adjacency = sp.csr_matrix((np.ones(col.size, dtype=np.float32), col, indptr), shape=(num_nodes, num_nodes))
    start = time.perf_counter()
    two_hop = adjacency[subset] @ adjacency
    sequences = []
    for row, node in enumerate(subset.tolist()):
        hop1 = adjacency.indices[adjacency.indptr[node] : adjacency.indptr[node + 1]].tolist()
        hop2 = two_hop.indices[two_hop.indptr[row] : two_hop.indptr[row + 1]].tolist()
        candidates = hop1 + hop2
        if len(candidates) >= k - 1:
            chosen = random.sample(candidates, k - 1)
        elif candidates:
            chosen = (candidates * (k // len(candidates) + 1))[: k - 1]
        else:
            chosen = random.sample(range(num_nodes), k - 1)
        sequences.append([node] + chosen)
    sampler_s = time.perf_counter() - start

    start = time.perf_counter()
    with_loops = adjacency + sp.eye(num_nodes, dtype=np.float32, format="csr")
    d_r = np.asarray(with_loops.sum(1)).ravel() ** -0.5
    d_c = np.asarray(with_loops.sum(0)).ravel() ** -0.5
    a_hat = sp.diags(d_r) @ with_loops @ sp.diags(d_c)
    hop1 = a_hat @ x
    hop2 = a_hat @ hop1
    hops_s = time.perf_counter() - start
    start = time.perf_counter()
    out = np.empty((subset.size, 3, x.shape[1]), dtype=np.float32)
    for row, node in enumerate(subset.tolist()):  # the official per-node copy into the token tensor
        out[row, 0] = x[node]
        out[row, 1] = hop1[node]
        out[row, 2] = hop2[node]
    copy_s = time.perf_counter() - start
    return sampler_s, hops_s, copy_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--avg-degree", type=float, default=20.0)
    parser.add_argument("--feat", type=int, default=100)
    parser.add_argument("--K", type=int, default=50)
    parser.add_argument("--exponent", type=float, default=2.5, help="power-law exponent of the degrees")
    parser.add_argument("--reference-nodes", type=int, default=2000, help="targets timed for the reference (0: skip)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--out-dir", default=None, help="cache folder (default: a temporary folder, deleted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    random.seed(args.seed)

    start_all = time.perf_counter()
    edge_index = power_law_graph(args.nodes, args.avg_degree, args.exponent, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.nodes, args.feat, generator=generator)
    setup_s = time.perf_counter() - start_all

    with tempfile.TemporaryDirectory(dir=args.out_dir) as root:
        start = time.perf_counter()
        graph = csr_from_edge_index(edge_index, args.nodes)
        del edge_index
        csr_s = time.perf_counter() - start
        timings: dict[str, float] = {}
        start = time.perf_counter()
        cache = precompute_largegt(
            x, graph, root, args.K, seed=args.seed, dtype=getattr(torch, args.dtype),
            chunk_size=args.chunk_size, progress=not args.json, timings=timings,
        )
        precompute_s = time.perf_counter() - start
        geoattn_s = csr_s + precompute_s
        result = {
            "nodes": args.nodes,
            "edges": graph.num_edges,
            "max_degree": int(graph.degree().max()),
            "feat": args.feat,
            "K": args.K,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "geoattn_us_per_node": geoattn_s / args.nodes * 1e6,
            "geoattn_sampler_us_per_node": timings["sampling_s"] / args.nodes * 1e6,
            "geoattn_csr_s": csr_s,
            "geoattn_sampling_s": timings["sampling_s"],
            "geoattn_hop_features_s": timings["hop_features_s"],
            "cache_bytes": int(cache.node_ids.nbytes + cache.tokens.nbytes),
        }
        del cache
        if args.reference_nodes > 0:
            subset = np.sort(np.random.default_rng(args.seed).choice(args.nodes, args.reference_nodes, replace=False))
            sampler_s, hops_s, copy_s = reference_precompute(graph.rowptr.numpy(), graph.col.numpy(), x.numpy(), subset, args.K)
            ref_sampler = sampler_s / subset.size * 1e6
            result["reference_sampler_us_per_node"] = ref_sampler
            result["reference_us_per_node"] = ref_sampler + hops_s / args.nodes * 1e6 + copy_s / subset.size * 1e6
            result["reference_nodes_timed"] = int(subset.size)
            result["speedup_sampler"] = ref_sampler / result["geoattn_sampler_us_per_node"]
            result["speedup_total"] = result["reference_us_per_node"] / result["geoattn_us_per_node"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["total_s"] = time.perf_counter() - start_all
    result["graph_setup_s"] = setup_s
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
