r"""Graph primitives on CSR: construction, 1-/2-hop neighbour lists, symmetric-normalised propagation.

Conventions (PyG, ``flow='source_to_target'``): ``edge_index[0]`` holds sources, ``edge_index[1]``
targets. The CSR built here is indexed by **target**: row ``i`` lists the sources ``j`` of the edges
``j -> i`` (the nodes ``i`` aggregates from), so ``A[i, j]`` = number of edges ``j -> i``. For an
undirected graph stored with both directions this is the usual symmetric adjacency.

Propagation uses

.. math::
    \hat A = D_r^{-1/2} (A + I) D_c^{-1/2},\qquad
    (D_r)_{ii} = 1 + \sum_j A_{ij},\quad (D_c)_{jj} = 1 + \sum_i A_{ij},

i.e. row sums on the target side and column sums on the source side (NAGphormer/LargeGT); for
symmetric ``A`` both are the degree plus one and :math:`\hat A` is the GCN operator of Kipf & Welling.
``A + I`` is taken literally: an existing self loop gets weight 2, duplicate edges add up. The self
loops are never materialised; they enter as a diagonal term, which keeps the edge arrays untouched at
100M-edge scale.

Column indices are stored as int32 whenever the node and edge counts allow it: it halves memory
and makes the MKL sparse-dense product about 3x faster on CPU than with int64 indices.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from geoattn import backends
from geoattn.sparse.segment import index_from_offsets, offsets_from_counts

__all__ = [
    "CSRGraph",
    "csr_from_edge_index",
    "csr_to_edge_index",
    "one_hop_neighbors",
    "two_hop_neighbors",
    "two_hop_walk_counts",
    "gcn_norm_weights",
    "NormalizedAdjacency",
    "normalized_propagate",
    "hop_features",
]

_INT32_MAX = 2**31 - 1


class CSRGraph(NamedTuple):
    """Compressed sparse rows of a graph, rows indexed by target node.

    Attributes:
        rowptr: ``[N + 1]`` int64 offsets; the in-neighbours of ``i`` are ``col[rowptr[i]:rowptr[i+1]]``.
        col: ``[E]`` int32 (or int64 for graphs beyond 2^31 nodes/edges) source node of each edge.
        num_nodes: ``N``.
    """

    rowptr: Tensor
    col: Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.col.numel())

    def degree(self) -> Tensor:
        """In-degree ``[N]`` (int64): number of stored edges into each node."""
        return self.rowptr[1:] - self.rowptr[:-1]

    def neighbors(self, node: int) -> Tensor:
        """In-neighbours of one node (a view into ``col``)."""
        if not 0 <= node < self.num_nodes:
            raise ValueError(f"node: expected an id in [0, {self.num_nodes}), got {node}")
        return self.col[int(self.rowptr[node]) : int(self.rowptr[node + 1])]


def _index_dtype(num_nodes: int, num_edges: int) -> torch.dtype:
    return torch.int32 if max(num_nodes, num_edges) <= _INT32_MAX else torch.int64


def csr_from_edge_index(
    edge_index: Tensor, num_nodes: int | None = None, *, index_dtype: torch.dtype | None = None
) -> CSRGraph:
    """Build a target-indexed :class:`CSRGraph` from ``edge_index [2, E]``.

    Edges into the same target keep their input order (stable sort), so the result is deterministic.
    Duplicate edges and self loops are kept as given.

    Args:
        edge_index: ``[2, E]`` integer tensor, row 0 sources, row 1 targets.
        num_nodes: ``N``; defaults to ``edge_index.max() + 1``.
        index_dtype: dtype of ``col``; default int32 when ``N`` and ``E`` fit, else int64.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index: expected a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index: expected an int64 or int32 tensor, got dtype {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E], got {tuple(edge_index.shape)}")
    num_edges = edge_index.size(1)
    if num_nodes is not None and (not isinstance(num_nodes, int) or num_nodes < 0):
        raise ValueError(f"num_nodes: expected a non-negative int, got {num_nodes!r}")
    # The range is read when num_nodes has to be inferred from it anyway (then the check is free), else only
    # with GEOATTN_DEBUG=1 (a pass over the edges and a host synchronisation on accelerators).
    if num_edges and (num_nodes is None or backends.debug_checks()):
        low, high = torch.stack(edge_index.aminmax()).tolist()
        if num_nodes is None:
            num_nodes = high + 1
        if low < 0 or high >= num_nodes:
            raise ValueError(f"edge_index: expected node ids in [0, {num_nodes}), got range [{low}, {high}]")
    elif num_nodes is None:
        num_nodes = 0
    if index_dtype is None:
        index_dtype = _index_dtype(num_nodes, num_edges)
    elif index_dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index_dtype: expected torch.int32 or torch.int64, got {index_dtype}")
    elif index_dtype == torch.int32 and max(num_nodes, num_edges) > _INT32_MAX:
        raise ValueError(f"index_dtype: int32 cannot hold {num_nodes} nodes / {num_edges} edges")

    source, target = edge_index[0], edge_index[1]
    counts = torch.bincount(target, minlength=num_nodes)
    rowptr = offsets_from_counts(counts)
    # Sorting int32 keys is cheaper than int64 and the permutation is all we need.
    keys = target.to(torch.int32) if num_nodes <= _INT32_MAX else target
    perm = torch.argsort(keys, stable=True)
    col = source.to(index_dtype)[perm] if index_dtype != source.dtype else source[perm]
    return CSRGraph(rowptr, col, num_nodes)


def _as_csr(graph, num_nodes: int | None = None) -> CSRGraph:
    if isinstance(graph, CSRGraph):
        if num_nodes is not None and num_nodes != graph.num_nodes:
            raise ValueError(f"graph: expected {num_nodes} nodes, got a CSRGraph with {graph.num_nodes}")
        return graph
    if isinstance(graph, Tensor):
        return csr_from_edge_index(graph, num_nodes)
    raise TypeError(f"graph: expected a CSRGraph or an edge_index tensor [2, E], got {type(graph).__name__}")


def csr_to_edge_index(graph: CSRGraph) -> Tensor:
    """``edge_index [2, E]`` (int64, sorted by target) of a :class:`CSRGraph`."""
    target = index_from_offsets(graph.rowptr)
    return torch.stack([graph.col.long(), target])


def _check_nodes(nodes: Tensor | None, num_nodes: int, device) -> Tensor:
    if nodes is None:
        return torch.arange(num_nodes, device=device)
    if not isinstance(nodes, Tensor) or nodes.dtype not in (torch.int64, torch.int32) or nodes.dim() != 1:
        raise TypeError(f"nodes: expected a 1-D integer tensor, got {nodes!r:.80}")
    if nodes.numel() and backends.debug_checks():
        low, high = torch.stack(nodes.aminmax()).tolist()
        if low < 0 or high >= num_nodes:
            raise ValueError(f"nodes: expected ids in [0, {num_nodes}), got range [{low}, {high}]")
    return nodes.long()


def _gather_rows(rowptr: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Offsets ``[M + 1]`` and the concatenated edge ids of the rows ``nodes``."""
    starts = rowptr[nodes]
    counts = rowptr[nodes + 1] - starts
    offsets = offsets_from_counts(counts)
    total = int(offsets[-1])
    # edge id = start of its row + position inside the row
    edge_ids = torch.arange(total, device=rowptr.device) - torch.repeat_interleave(
        offsets[:-1] - starts, counts, output_size=total
    )
    return offsets, edge_ids


def one_hop_neighbors(graph: CSRGraph | Tensor, nodes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """In-neighbour lists of ``nodes`` (default: all nodes) in CSR form.

    Returns:
        ``(offsets [M + 1] int64, neighbors [sum of degrees] int64)``; the neighbours of ``nodes[m]``
        are ``neighbors[offsets[m]:offsets[m + 1]]`` in stored edge order (duplicates kept).
    """
    graph = _as_csr(graph)
    nodes = _check_nodes(nodes, graph.num_nodes, graph.rowptr.device)
    offsets, edge_ids = _gather_rows(graph.rowptr, nodes)
    return offsets, graph.col[edge_ids].long()


def two_hop_walk_counts(graph: CSRGraph | Tensor) -> Tensor:
    """Number of length-2 walks ``j -> u -> i`` ending at each node: ``(A deg)_i`` ``[N]`` int64.

    This is the row sum of ``A^2`` (walks counted with multiplicity), computed without forming ``A^2``.
    """
    graph = _as_csr(graph)
    degree = graph.degree()
    target = index_from_offsets(graph.rowptr)
    return torch.zeros_like(degree).index_add_(0, target, degree[graph.col.long()])


def two_hop_neighbors(
    graph: CSRGraph | Tensor, nodes: Tensor | None = None, *, max_walks_per_chunk: int = 1 << 24
) -> tuple[Tensor, Tensor]:
    """Exact 2-hop lists: the distinct ``w`` with a walk ``w -> u -> i`` (the support of row ``i`` of ``A^2``).

    As in LargeGT, the list contains ``i`` itself whenever ``i`` has a neighbour, and 1-hop neighbours
    closed by a triangle. ``A^2`` is never formed: walks are expanded for a chunk of target nodes at a
    time (at most ``max_walks_per_chunk`` walks, except for a single node with more) and de-duplicated.
    The cost is the number of 2-walks, so on power-law graphs use it for subsets of nodes.

    Returns:
        ``(offsets [M + 1] int64, neighbors int64)``, each list sorted ascending.
    """
    graph = _as_csr(graph)
    if max_walks_per_chunk < 1:
        raise ValueError(f"max_walks_per_chunk: expected a positive int, got {max_walks_per_chunk}")
    nodes = _check_nodes(nodes, graph.num_nodes, graph.rowptr.device)
    n = graph.num_nodes
    degree = graph.degree()
    # walks per requested node, to cut the node list into chunks of bounded work
    walks = two_hop_walk_counts(graph)[nodes] if nodes.numel() else nodes.new_zeros(0)
    cumulative = torch.cumsum(walks, 0)
    counts_out, lists_out = [], []
    start = 0
    while start < nodes.numel():
        base = int(cumulative[start - 1]) if start else 0
        stop = int(torch.searchsorted(cumulative, base + max_walks_per_chunk, right=True))
        stop = max(stop, start + 1)
        chunk = nodes[start:stop]
        offsets1, edges1 = _gather_rows(graph.rowptr, chunk)
        middle = graph.col[edges1].long()
        offsets2, edges2 = _gather_rows(graph.rowptr, middle)
        ends = graph.col[edges2].long()
        owner = torch.repeat_interleave(
            torch.arange(chunk.numel(), device=nodes.device), offsets1[1:] - offsets1[:-1]
        )
        owner = torch.repeat_interleave(owner, degree[middle], output_size=ends.numel())
        keys = torch.unique(owner * n + ends)
        counts_out.append(torch.bincount(keys // max(n, 1), minlength=chunk.numel()))
        lists_out.append(keys % max(n, 1))
        start = stop
    if not counts_out:
        return torch.zeros(1, dtype=torch.long, device=nodes.device), nodes.new_zeros(0)
    return offsets_from_counts(torch.cat(counts_out)), torch.cat(lists_out)


def gcn_norm_weights(graph: CSRGraph, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    r"""Weights of :math:`\hat A = D_r^{-1/2}(A+I)D_c^{-1/2}`: ``(edge_weight [E], self_weight [N])``.

    ``edge_weight[e]`` multiplies the stored edge ``e`` (row ``i``, column ``j``) and ``self_weight[i]``
    the added identity entry ``(i, i)``.
    """
    degree_in = graph.degree().to(dtype) + 1
    degree_out = torch.bincount(graph.col, minlength=graph.num_nodes).to(dtype) + 1
    inv_sqrt_in, inv_sqrt_out = degree_in.rsqrt(), degree_out.rsqrt()
    target = index_from_offsets(graph.rowptr)
    edge_weight = inv_sqrt_in[target] * inv_sqrt_out[graph.col.long()]
    return edge_weight, inv_sqrt_in * inv_sqrt_out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half/bfloat16 inputs accumulate in float32 (the CPU sparse kernels have no half path anyway)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class NormalizedAdjacency:
    r"""The operator :math:`\hat A = D_r^{-1/2}(A+I)D_c^{-1/2}` of a graph, ready for repeated products.

    Built once (weights and a ``torch.sparse_csr_tensor`` with int32 indices when possible), then
    ``adjacency(x)`` gives :math:`\hat A x` for ``x [N, F]`` and ``adjacency(x, start, end)`` only rows
    ``start:end`` of it (for chunked, memory-mapped precomputation). Autograd flows to ``x``.
    """

    def __init__(self, graph: CSRGraph | Tensor, num_nodes: int | None = None, dtype: torch.dtype = torch.float32):
        graph = _as_csr(graph, num_nodes)
        self.graph = graph
        self.dtype = _compute_dtype(dtype)
        self.edge_weight, self.self_weight = gcn_norm_weights(graph, self.dtype)
        self._rowptr = graph.rowptr.to(graph.col.dtype)

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def __repr__(self) -> str:
        return f"NormalizedAdjacency(num_nodes={self.num_nodes}, num_edges={self.graph.num_edges})"

    def _rows_matrix(self, start: int, end: int) -> Tensor:
        lo, hi = int(self.graph.rowptr[start]), int(self.graph.rowptr[end])
        rowptr = self._rowptr[start : end + 1]
        if lo:
            rowptr = rowptr - lo
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(
                rowptr,
                self.graph.col[lo:hi],
                self.edge_weight[lo:hi],
                (end - start, self.num_nodes),
                check_invariants=False,
            )

    def __call__(self, x: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """Rows ``start:end`` of :math:`\\hat A x` for ``x [N, F]``; output ``[end - start, F]``, dtype of ``x``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.size(0) != self.num_nodes:
            raise ValueError(f"x: expected a 2-D tensor [N, F] with N={self.num_nodes}, got shape {tuple(x.shape)}")
        end = self.num_nodes if end is None else end
        if not 0 <= start <= end <= self.num_nodes:
            raise ValueError(f"start, end: expected 0 <= start <= end <= {self.num_nodes}, got {start}, {end}")
        device = x.device
        if self.edge_weight.device != device:
            self.edge_weight, self.self_weight = self.edge_weight.to(device), self.self_weight.to(device)
            self._rowptr = self._rowptr.to(device)
            self.graph = CSRGraph(self.graph.rowptr.to(device), self.graph.col.to(device), self.num_nodes)
        values = x if x.dtype == self.dtype else x.to(self.dtype)
        out = torch.sparse.mm(self._rows_matrix(start, end), values)
        out = out.addcmul_(self.self_weight[start:end, None], values[start:end])  # in place: no N x F temporaries
        return out if out.dtype == x.dtype else out.to(x.dtype)


def _adjacency_for(x: Tensor, graph) -> NormalizedAdjacency:
    if isinstance(graph, NormalizedAdjacency):
        return graph
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [N, F], got {getattr(x, 'shape', type(x).__name__)}")
    return NormalizedAdjacency(graph, x.size(0), x.dtype)


def normalized_propagate(x: Tensor, graph: CSRGraph | Tensor | NormalizedAdjacency, num_hops: int = 1) -> Tensor:
    r""":math:`\hat A^{k} x` for ``x [N, F]`` with ``k = num_hops``; ``graph`` is a CSRGraph, an
    ``edge_index`` or a prebuilt :class:`NormalizedAdjacency` (reuse it for repeated calls)."""
    if not isinstance(num_hops, int) or num_hops < 0:
        raise ValueError(f"num_hops: expected a non-negative int, got {num_hops!r}")
    adjacency = _adjacency_for(x, graph)
    for _ in range(num_hops):
        x = adjacency(x)
    return x


def hop_features(x: Tensor, graph: CSRGraph | Tensor | NormalizedAdjacency, num_hops: int = 2) -> Tensor:
    r"""Stacked hop features ``[N, num_hops + 1, F]``: :math:`x, \hat A x, \dots, \hat A^{k} x` (NAGphormer
    "hop2token"). For graphs whose features do not fit twice in memory use the chunked precompute in
    :mod:`geoattn.data.largegt`."""
    if not isinstance(num_hops, int) or num_hops < 0:
        raise ValueError(f"num_hops: expected a non-negative int, got {num_hops!r}")
    adjacency = _adjacency_for(x, graph)
    hops = [x]
    for _ in range(num_hops):
        hops.append(adjacency(hops[-1]))
    return torch.stack(hops, dim=1)
