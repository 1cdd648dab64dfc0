r"""LargeGT precomputation: per-node neighbour sequences, hop features, memory-mapped token cache, collate.

For every target node ``i`` the sampler draws a sequence ``[i, v_1, ..., v_{K-1}]`` from the 1- and
2-hop neighbourhood, and the hop features :math:`X, \hat A X, \hat A^2 X` with
:math:`\hat A = D^{-1/2}(A+I)D^{-1/2}` are precomputed (:mod:`geoattn.sparse.graph`). A mini-batch of
targets becomes ``[B, 3K, F]`` tokens: for each ``v_j`` in order, ``X[v_j]``, ``(ÂX)[v_j]``,
``(Â²X)[v_j]`` (so token 0 is the target's own raw features).

Candidate distribution (how it differs from the official code)
-------------------------------------------------------------
The official sampler forms ``A^2`` and draws ``K-1`` list positions uniformly without replacement
from ``C_i = hop1(i) + support(row i of A^2)``. Forming ``A^2`` is not possible at scale (billions of
entries for ogbn-products), so here the candidate list is

    ``C_i = hop1(i)`` (``deg_i`` entries)  ``+``  every length-2 walk ``w -> u -> i`` (``W_i = sum_u deg_u`` entries),

i.e. 2-hop candidates are counted **with multiplicity**: a 2-hop node ``w`` occupies ``(A^2)_{iw}``
positions instead of one. Positions are drawn uniformly *without replacement* (exactly: draw with
replacement, redraw duplicates; the procedure is symmetric in the positions, hence uniform over
``(K-1)``-subsets) and mapped to nodes on the CSR with a prefix sum of ``deg_u`` over the row and a
sorted merge, so ``A^2`` is never formed. Consequences:

* a 2-hop node reachable by many walks (many common neighbours, i.e. structurally closer) is more
  likely; the official sampler is uniform over the distinct 2-hop set;
* the 2-hop block weighs ``W_i / (deg_i + W_i)`` rather than ``|supp A^2_i| / (deg_i + |supp A^2_i|)``,
  so 1-hop nodes are drawn somewhat less often when 2-hop walks overlap a lot;
* like the official code the 2-hop walks include ``i`` itself and triangle-closed 1-hop nodes, and the
  same node may appear more than once in a sequence (through different positions).

Remaining cases follow the official code: ``|C_i| <= K-1`` repeats ``C_i`` cyclically (deterministic;
positions sorted, so the repeats of a candidate are adjacent); a node without in-neighbours gets ``K-1`` distinct nodes
drawn uniformly from the whole graph.

Randomness comes from one numpy PCG64 stream per block of ``BLOCK_SIZE`` consecutive targets, seeded
by ``(seed, block index)``: a table depends only on the graph, the target list and the seed, never on
the chunk size or the number of threads, so precomputation is reproducible and can be split across
processes. Isolated-node fill is drawn like the other long rows (distinct nodes).

Cache layout (``root/``): ``meta.json``, ``node_ids.i32`` ``[N, K]`` int32, ``tokens.<dtype>``
``[N, 3, F]`` float32/float16 (raw, 1-hop, 2-hop features of each node, contiguous so that a batch is one
row gather), ``rowptr.i64`` and ``col.i32`` (the CSR, kept for resampling). Files are written
chunk by chunk to temporary names and renamed when complete; readers use read-only memory maps.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from geoattn.sparse.graph import CSRGraph, NormalizedAdjacency, csr_from_edge_index

__all__ = [
    "sample_node_sequences",
    "precompute_hop_tokens",
    "precompute_largegt",
    "LargeGTTokens",
    "LargeGTBatch",
    "LargeGTCollate",
]

_FORMAT_VERSION = 1
# Random streams are per block of BLOCK_SIZE consecutive targets, so results do not depend on chunking.
BLOCK_SIZE = 1024
# rows with at most this many times K-1 candidates draw by random keys, the others by rejection
_DENSE_FACTOR = 4


def _check_csr(graph, num_nodes: int | None = None) -> CSRGraph:
    if isinstance(graph, CSRGraph):
        if num_nodes is not None and graph.num_nodes != num_nodes:
            raise ValueError(f"graph: expected {num_nodes} nodes, got a CSRGraph with {graph.num_nodes}")
        return graph
    if isinstance(graph, Tensor):
        return csr_from_edge_index(graph, num_nodes)
    raise TypeError(f"graph: expected a CSRGraph or an edge_index tensor [2, E], got {type(graph).__name__}")


def _block_rng(seed: int, block_index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & (2**63 - 1), block_index])))


def _uniform_below(rng: np.random.Generator, bounds: np.ndarray, shape) -> np.ndarray:
    """Integers uniform in ``[0, bounds)`` (relative bias below 2^-53 from the 53-bit float draw)."""
    return (rng.random(shape) * bounds).astype(np.int64)


def _sample_positions(lengths: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, count]`` sorted positions in ``[0, lengths)``: distinct when ``lengths > count``, cyclic otherwise.

    Distinct rows are exact uniform ``count``-subsets: random keys for short rows; for long rows iid
    draws whose duplicates are redrawn until none is left (the procedure commutes with any relabelling
    of the positions, so every subset is equally likely).
    """
    batch = lengths.shape[0]
    positions = np.empty((batch, count), dtype=np.int64)
    if batch == 0 or count == 0:
        return positions
    cyclic = lengths <= count
    if cyclic.any():
        rows = np.flatnonzero(cyclic)
        positions[rows] = np.sort(np.arange(count)[None, :] % np.maximum(lengths[rows, None], 1), axis=1)
    dense = ~cyclic & (lengths <= _DENSE_FACTOR * count)
    if dense.any():
        rows = np.flatnonzero(dense)
        width = int(lengths[rows].max())
        keys = rng.random((rows.size, width))
        keys[np.arange(width)[None, :] >= lengths[rows, None]] = 2.0
        positions[rows] = np.sort(np.argpartition(keys, count - 1, axis=1)[:, :count], axis=1)
    long_rows = np.flatnonzero(lengths > _DENSE_FACTOR * count)
    if long_rows.size:
        bounds = lengths[long_rows, None]
        draws = np.sort(_uniform_below(rng, bounds, (long_rows.size, count)), axis=1)
        pending = np.arange(long_rows.size)
        while pending.size:
            sub = draws[pending]
            duplicate = sub[:, 1:] == sub[:, :-1]
            keep = duplicate.any(axis=1)
            if not keep.any():
                break
            pending, sub, duplicate = pending[keep], sub[keep], duplicate[keep]
            rows, slots = np.nonzero(duplicate)
            # keep the first of each run of equal values, redraw the others
            sub[rows, slots + 1] = _uniform_below(rng, bounds[pending[rows], 0], rows.shape)
            sub.sort(axis=1)
            draws[pending] = sub
        positions[long_rows] = draws
    return positions


def _sample_chunk(
    rowptr: np.ndarray, col: np.ndarray, degree: np.ndarray, num_nodes: int,
    nodes: np.ndarray, first_block: int, sequence_length: int, seed: int,
) -> np.ndarray:
    """Sequences ``[B, K]`` (int64) for ``nodes`` (entries ``first_block * BLOCK_SIZE`` onwards of the list)."""
    count = sequence_length - 1
    batch = nodes.size
    ids = np.empty((batch, sequence_length), dtype=np.int64)
    ids[:, 0] = nodes
    if count == 0 or batch == 0:
        return ids
    node_deg = degree[nodes]
    row_start = rowptr[nodes]
    contiguous = batch == 1 or (nodes[-1] - nodes[0] == batch - 1 and bool((np.diff(nodes) == 1).all()))
    if contiguous:  # the chunk's edges are one slice of the CSR: no gather
        middle = col[row_start[0] : row_start[0] + int(node_deg.sum())]
    else:
        row_offsets = np.concatenate([[0], np.cumsum(node_deg)])
        edge_ids = np.arange(int(row_offsets[-1])) - np.repeat(row_offsets[:-1] - row_start, node_deg)
        middle = col[edge_ids]
    # walk list of the chunk: for each edge u -> i, deg(u) walks w -> u -> i
    walk_weight = degree[middle]
    walk_cumsum = np.cumsum(walk_weight)
    row_end_edge = np.cumsum(node_deg)
    padded = np.concatenate([[0], walk_cumsum])
    walk_base = padded[row_end_edge - node_deg]
    walk_count = padded[row_end_edge] - walk_base
    isolated = node_deg == 0
    # isolated targets draw from the whole graph: their positions are node ids
    lengths = np.where(isolated, num_nodes, node_deg + walk_count)

    positions = np.empty((batch, count), dtype=np.int64)
    for block_start in range(0, batch, BLOCK_SIZE):
        block_end = min(block_start + BLOCK_SIZE, batch)
        rng = _block_rng(seed, first_block + block_start // BLOCK_SIZE)
        positions[block_start:block_end] = _sample_positions(lengths[block_start:block_end], count, rng)

    deg_col = node_deg[:, None]
    one_hop = positions < deg_col
    # 1-hop entries: col[rowptr[i] + p]
    one_hop_ids = col[np.minimum(row_start[:, None] + positions, max(col.size - 1, 0))] if col.size else positions
    # 2-walk entries: walk q = p - deg_i of row i is global walk g = walk_base_i + q of the chunk;
    # its edge e is the first with walk_cumsum[e] > g, the walk goes through u = middle[e]
    # clamped into the row's walk range so that the flattened queries stay sorted
    global_position = np.clip(
        walk_base[:, None] + positions - deg_col, walk_base[:, None], walk_base[:, None] + np.maximum(walk_count - 1, 0)[:, None]
    )
    if walk_cumsum.size:
        # queries are sorted (rows in order, positions sorted per row): locate them by merging, i.e.
        # counting the queries below each prefix sum (fewer searches than one per query)
        flat = global_position.ravel()
        below = np.searchsorted(flat, walk_cumsum, side="left")
        per_edge = np.diff(below, prepend=0)
        edge = np.repeat(np.arange(walk_cumsum.size), per_edge)
        if edge.size < flat.size:  # queries past the last prefix sum (rows without walks)
            edge = np.concatenate([edge, np.full(flat.size - edge.size, walk_cumsum.size - 1)])
        edge = edge.reshape(global_position.shape)
        via = middle[edge]
        offset = global_position - (walk_cumsum[edge] - walk_weight[edge])
        walk_ids = col[np.minimum(rowptr[via] + offset, col.size - 1)]
    else:
        walk_ids = positions
    result = np.where(one_hop, one_hop_ids, walk_ids)
    result[isolated] = positions[isolated]
    ids[:, 1:] = result
    return ids


def sample_node_sequences(
    graph: CSRGraph | Tensor,
    sequence_length: int,
    *,
    seed: int = 0,
    nodes: Tensor | None = None,
    num_nodes: int | None = None,
    chunk_size: int = 4096,
    out: np.ndarray | None = None,
    num_threads: int | None = None,
    progress: bool = False,
) -> Tensor | None:
    """Sample ``[i, v_1, ..., v_{K-1}]`` for each target (``K = sequence_length``); see the module docstring.

    Args:
        graph: a target-indexed :class:`~geoattn.sparse.graph.CSRGraph` or an ``edge_index [2, E]``.
        sequence_length: ``K >= 1`` (the official ``sample_node_len``, target included).
        seed: the sampling seed. Random streams belong to blocks of ``BLOCK_SIZE`` consecutive entries
            of ``nodes``, so the result depends on (graph, nodes, seed) but not on ``chunk_size`` (rounded
            up to a multiple of ``BLOCK_SIZE``) or ``num_threads``.
        nodes: target ids (default all nodes, in order).
        num_nodes: ``N`` when ``graph`` is an ``edge_index`` (default ``edge_index.max() + 1``).
        chunk_size: targets processed at once; small chunks keep the working set in cache.
        out: optional ``[len(nodes), K]`` integer array (e.g. an int32 ``np.memmap``) filled chunk by
            chunk; then ``None`` is returned.
        num_threads: chunks processed concurrently (numpy releases the GIL); default ``torch.get_num_threads()``.
        progress: show a tqdm bar.

    Returns:
        ``[M, K]`` int64 node ids (when ``out`` is ``None``).
    """
    graph = _check_csr(graph, num_nodes)
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"sequence_length: expected an int >= 1, got {sequence_length!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    num_nodes = graph.num_nodes
    if nodes is None:
        nodes_np = np.arange(num_nodes, dtype=np.int64)
    elif not isinstance(nodes, Tensor) or nodes.dim() != 1 or nodes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"nodes: expected a 1-D integer tensor, got {nodes!r:.80}")
    else:
        if nodes.numel() and (int(nodes.min()) < 0 or int(nodes.max()) >= num_nodes):
            raise ValueError(
                f"nodes: expected ids in [0, {num_nodes}), got range [{int(nodes.min())}, {int(nodes.max())}]"
            )
        nodes_np = nodes.cpu().long().numpy()
    total = nodes_np.size
    if out is not None and tuple(out.shape) != (total, sequence_length):
        raise ValueError(f"out: expected shape ({total}, {sequence_length}), got {tuple(out.shape)}")
    chunk_size = -(-chunk_size // BLOCK_SIZE) * BLOCK_SIZE
    rowptr = graph.rowptr.cpu().numpy()
    col = graph.col.cpu().numpy()
    degree = np.diff(rowptr)
    result = None if out is not None else np.empty((total, sequence_length), dtype=np.int64)
    target = out if out is not None else result

    def run(start: int) -> int:
        chunk = nodes_np[start : start + chunk_size]
        ids = _sample_chunk(rowptr, col, degree, num_nodes, chunk, start // BLOCK_SIZE, sequence_length, seed)
        target[start : start + chunk.size] = ids
        return chunk.size

    starts = list(range(0, total, chunk_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sampling sequences", unit="node", unit_scale=True)
    threads = num_threads or torch.get_num_threads()
    if threads > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for done in pool.map(run, starts):
                if bar is not None:
                    bar.update(done)
    else:
        for start in starts:
            done = run(start)
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.close()
    return None if out is not None else torch.from_numpy(result)


def _storage_dtype(dtype) -> tuple[np.dtype, str]:
    name = {torch.float32: "float32", torch.float16: "float16", "float32": "float32", "float16": "float16"}.get(dtype)
    if name is None:
        raise ValueError(f"dtype: expected torch.float32 or torch.float16, got {dtype!r}")
    return np.dtype(name), name


def _feature_chunks(num_rows: int, chunk_size: int, progress: bool, desc: str):
    starts = range(0, num_rows, chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk")
    return ((start, min(start + chunk_size, num_rows)) for start in starts)


def _scratch_map(path: Path, rows: int, columns: int) -> tuple[np.memmap, Tensor]:
    """A writable float32 ``[rows, columns]`` memory map at ``path`` and a tensor view of it (no copy)."""
    array = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, columns))
    return array, torch.from_numpy(array)


def precompute_hop_tokens(
    x: Tensor,
    graph: CSRGraph | Tensor,
    path: str | os.PathLike,
    *,
    dtype=torch.float32,
    chunk_size: int = 262144,
    progress: bool = False,
) -> np.memmap:
    r"""Write ``[N, 3, F]`` hop tokens :math:`(X, \hat A X, \hat A^2 X)` to ``path`` (raw little-endian array).

    Streamed in ``chunk_size``-row chunks through memory maps, so no ``[N, F]`` array is ever held in RAM
    besides the one backing ``x``, which may itself be a memory map (``torch.from_numpy(np.memmap(...))``;
    its pages are read on demand and can be evicted by the OS):

    1. if ``x`` is not float32, it is converted chunk by chunk into a float32 scratch map;
    2. :math:`\hat A X` is computed chunk by chunk (rows ``start:end`` of the sparse product read the
       rows of ``X`` they need) into a float32 scratch map ``path + '.hop1.tmp'``;
    3. :math:`\hat A^2 X` rows are computed the same way from that map, and each chunk of
       ``[X, \hat A X, \hat A^2 X]`` rows is appended to ``path + '.tmp'``, renamed to ``path`` when complete.

    Resident memory beyond the graph and its edge weights is ``O(chunk_size * F)`` plus evictable page
    cache; disk needs the output plus one ``N x F`` float32 scratch file (two when ``x`` is not float32),
    deleted at the end. The result equals the in-memory :func:`~geoattn.sparse.graph.hop_features`.
    Returns a read-only memory map of the result.
    """
    np_dtype, _ = _storage_dtype(dtype)
    graph = _check_csr(graph, x.size(0) if isinstance(x, Tensor) and x.dim() == 2 else None)
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != graph.num_nodes:
        raise ValueError(f"x: expected a 2-D tensor [N, F] with N={graph.num_nodes}, got {getattr(x, 'shape', x)!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    num_nodes, num_features = x.shape
    adjacency = NormalizedAdjacency(graph, num_nodes, torch.float32)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    x32_path, hop1_path = path.with_name(path.name + ".x32.tmp"), path.with_name(path.name + ".hop1.tmp")
    scratch = []
    try:
        x32 = x if x.dtype == torch.float32 and x.is_contiguous() else None
        if x32 is None:  # the sparse product needs contiguous float32 rows: convert chunk-wise, never whole
            array, x32 = _scratch_map(x32_path, num_nodes, num_features)
            scratch.append(array)
            for start, end in _feature_chunks(num_nodes, chunk_size, progress, "features to float32"):
                x32[start:end] = x[start:end]
        array, hop1 = _scratch_map(hop1_path, num_nodes, num_features)
        scratch.append(array)
        for start, end in _feature_chunks(num_nodes, chunk_size, progress, "hop 1 features"):
            hop1[start:end] = adjacency(x32, start, end)
        with open(tmp, "wb") as handle:
            for start, end in _feature_chunks(num_nodes, chunk_size, progress, "hop 2 features"):
                block = torch.stack([x32[start:end], hop1[start:end], adjacency(hop1, start, end)], dim=1)
                block.numpy().astype(np_dtype, copy=False).tofile(handle)
        del x32, hop1, array
        os.replace(tmp, path)
    finally:
        scratch.clear()
        for leftover in (x32_path, hop1_path, tmp):
            leftover.unlink(missing_ok=True)
    return np.memmap(path, dtype=np_dtype, mode="r", shape=(num_nodes, 3, num_features))


def precompute_largegt(
    x: Tensor,
    graph: CSRGraph | Tensor,
    root: str | os.PathLike,
    sequence_length: int,
    *,
    seed: int = 0,
    dtype=torch.float32,
    chunk_size: int = 4096,
    feature_chunk_size: int = 262144,
    num_threads: int | None = None,
    progress: bool = True,
    timings: dict | None = None,
) -> "LargeGTTokens":
    """Build the whole LargeGT cache in ``root`` (created if needed) and open it; see the module docstring.

    Args:
        x: node features ``[N, F]``; may be backed by a memory map (``torch.from_numpy(np.memmap(...))``):
            the hop features are streamed chunk-wise through memory maps (:func:`precompute_hop_tokens`)
            and the id table is written chunk-wise into its map, so neither is ever held in RAM whole.
        graph: a target-indexed CSR (reused, not copied) or an ``edge_index``.
        sequence_length: ``K`` (target included); tokens per target are ``3K``.
        seed: sampling seed (recorded in ``meta.json``).
        dtype: storage of the hop tokens, ``torch.float32`` or ``torch.float16`` (half the disk and I/O).
        chunk_size: targets per sampling chunk; feature_chunk_size: rows per hop-feature chunk.
        timings: optional dict that receives ``sampling_s`` and ``hop_features_s``.
    """
    import time

    graph = _check_csr(graph, x.size(0) if isinstance(x, Tensor) and x.dim() == 2 else None)
    if graph.col.dtype != torch.int32:
        raise ValueError("graph: graphs beyond 2^31 nodes/edges are not supported by the cache format")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != graph.num_nodes:
        raise ValueError(f"x: expected a 2-D tensor [N, F] with N={graph.num_nodes}, got {getattr(x, 'shape', x)!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    num_nodes, num_features = int(x.shape[0]), int(x.shape[1])
    _, dtype_name = _storage_dtype(dtype)
    (root / "meta.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    _write_array(root / "rowptr.i64", graph.rowptr.numpy())
    _write_array(root / "col.i32", graph.col.numpy())
    start = time.perf_counter()
    ids_tmp = root / "node_ids.i32.tmp"
    ids = np.memmap(ids_tmp, dtype=np.int32, mode="w+", shape=(num_nodes, sequence_length))
    sample_node_sequences(graph, sequence_length, seed=seed, chunk_size=chunk_size, out=ids,
                          num_threads=num_threads, progress=progress)
    ids.flush()
    del ids
    os.replace(ids_tmp, root / "node_ids.i32")
    sampling_s = time.perf_counter() - start
    start = time.perf_counter()
    precompute_hop_tokens(x, graph, root / f"tokens.{dtype_name}", dtype=dtype, chunk_size=feature_chunk_size,
                          progress=progress)
    if timings is not None:
        timings["sampling_s"] = sampling_s
        timings["hop_features_s"] = time.perf_counter() - start
    meta = {
        "format_version": _FORMAT_VERSION,
        "num_nodes": num_nodes,
        "num_edges": graph.num_edges,
        "num_features": num_features,
        "sequence_length": sequence_length,
        "seed": seed,
        "dtype": dtype_name,
        "hops": ["x", "A_hat x", "A_hat^2 x"],
        "sampler": "hop1 + 2-walks with multiplicity, uniform without replacement (geoattn.data.largegt)",
    }
    _write_text(root / "meta.json", json.dumps(meta, indent=2))
    return LargeGTTokens.open(root)


def _write_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    array.tofile(tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class LargeGTTokens:
    """Read-only handle on a LargeGT cache: ``node_ids [N, K]``, ``tokens [N, 3, F]`` and the CSR."""

    root: Path
    meta: dict
    node_ids: np.memmap
    tokens: np.memmap
    graph: CSRGraph

    @classmethod
    def open(cls, root: str | os.PathLike) -> "LargeGTTokens":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"root: no LargeGT cache (meta.json) in {root}; run precompute_largegt first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"root: cache format {meta.get('format_version')} != {_FORMAT_VERSION}; recompute it")
        n, k, f = meta["num_nodes"], meta["sequence_length"], meta["num_features"]
        node_ids = np.memmap(root / "node_ids.i32", dtype=np.int32, mode="r", shape=(n, k))
        tokens = np.memmap(root / f"tokens.{meta['dtype']}", dtype=np.dtype(meta["dtype"]), mode="r", shape=(n, 3, f))
        rowptr = torch.from_numpy(np.fromfile(root / "rowptr.i64", dtype=np.int64))
        col = torch.from_numpy(np.fromfile(root / "col.i32", dtype=np.int32))
        return cls(root, meta, node_ids, tokens, CSRGraph(rowptr, col, n))

    @property
    def num_nodes(self) -> int:
        return self.meta["num_nodes"]

    @property
    def sequence_length(self) -> int:
        return self.meta["sequence_length"]

    @property
    def num_features(self) -> int:
        return self.meta["num_features"]

    def sequences(self, nodes: Tensor, seed: int | None = None) -> Tensor:
        """``[B, K]`` int64 sequences: the stored table, or fresh draws for ``seed`` (no disk write)."""
        if seed is None:
            return torch.from_numpy(self.node_ids[nodes.numpy()].astype(np.int64))
        return sample_node_sequences(self.graph, self.sequence_length, seed=seed, nodes=nodes)

    def gather(self, sequences: Tensor) -> Tensor:
        """``[B, 3K, F]`` float32 tokens for ``sequences [B, K]`` (raw, 1-hop, 2-hop of each node in order)."""
        batch, length = sequences.shape
        rows = self.tokens[sequences.reshape(-1).numpy()]
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).view(batch, 3 * length, -1)


class LargeGTBatch(NamedTuple):
    """One mini-batch: target ids ``[B]``, tokens ``[B, 3K, F]``, labels ``[B]`` (or None), PE ``[B, P]`` (or None)."""

    nodes: Tensor
    tokens: Tensor
    y: Tensor | None
    pos_enc: Tensor | None


class LargeGTCollate:
    """``collate_fn`` for a DataLoader over target node ids: ids -> :class:`LargeGTBatch`.

    With ``resample=True`` each batch draws fresh sequences (seed derived from ``seed`` and the epoch set
    by :meth:`set_epoch`; the streams follow the batch's node list, so with a seeded DataLoader shuffle
    runs are reproducible) instead of the precomputed static table used by the official code.
    """

    def __init__(self, cache: LargeGTTokens, y: Tensor | None = None, pos_enc: Tensor | None = None,
                 *, resample: bool = False, seed: int = 0):
        if y is not None and y.size(0) != cache.num_nodes:
            raise ValueError(f"y: expected {cache.num_nodes} rows, got {y.size(0)}")
        if pos_enc is not None and pos_enc.size(0) != cache.num_nodes:
            raise ValueError(f"pos_enc: expected {cache.num_nodes} rows, got {pos_enc.size(0)}")
        self.cache, self.y, self.pos_enc = cache, y, pos_enc
        self.resample, self.seed, self.epoch = resample, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, nodes) -> LargeGTBatch:
        nodes = torch.as_tensor(nodes, dtype=torch.long).reshape(-1)
        seed = self.seed * 1_000_003 + self.epoch if self.resample else None
        tokens = self.cache.gather(self.cache.sequences(nodes, seed))
        y = self.y[nodes] if self.y is not None else None
        pos_enc = self.pos_enc[nodes] if self.pos_enc is not None else None
        return LargeGTBatch(nodes, tokens, y, pos_enc)
