"""geoattn.sparse.graph against dense-matrix references on small graphs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.sparse.graph import (
    CSRGraph,
    NormalizedAdjacency,
    csr_from_edge_index,
    csr_to_edge_index,
    gcn_norm_weights,
    hop_features,
    normalized_propagate,
    one_hop_neighbors,
    two_hop_neighbors,
    two_hop_walk_counts,
)


def dense_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """A[i, j] = number of edges j -> i (target-indexed rows), by an explicit loop."""
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    for source, target in edge_index.t().tolist():
        adjacency[target, source] += 1
    return adjacency


def dense_a_hat(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    a = dense_adjacency(edge_index, num_nodes) + torch.eye(num_nodes, dtype=torch.float64)
    d_r = a.sum(1).pow(-0.5)
    d_c = a.sum(0).pow(-0.5)
    return d_r[:, None] * a * d_c[None, :]


def random_graph(num_nodes: int, num_edges: int, symmetric: bool = True, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    if symmetric:
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return edge_index


def test_csr_matches_dense_and_round_trips():
    edge_index = random_graph(12, 30, symmetric=False)
    csr = csr_from_edge_index(edge_index, 14)  # two isolated trailing nodes
    assert csr.num_nodes == 14 and csr.num_edges == 30
    assert csr.col.dtype == torch.int32 and csr.rowptr.dtype == torch.int64
    dense = torch.zeros(14, 14, dtype=torch.float64)
    for i in range(14):
        for j in csr.neighbors(i).tolist():
            dense[i, j] += 1
    assert torch.equal(dense, dense_adjacency(edge_index, 14))
    assert torch.equal(csr.degree(), dense.sum(1).long())
    back = csr_to_edge_index(csr)
    assert torch.equal(dense_adjacency(back, 14), dense)
    # stable: edges into the same target keep their input order
    for i in range(14):
        expected = edge_index[0][edge_index[1] == i]
        assert torch.equal(csr.neighbors(i).long(), expected)


def test_csr_int64_option_and_int32_input():
    edge_index = random_graph(5, 6).int()
    csr = csr_from_edge_index(edge_index, index_dtype=torch.int64)
    assert csr.col.dtype == torch.int64
    assert torch.equal(csr_to_edge_index(csr), csr_to_edge_index(csr_from_edge_index(edge_index.long())))


def test_empty_graphs():
    empty = torch.zeros(2, 0, dtype=torch.long)
    csr = csr_from_edge_index(empty, 0)
    assert csr.num_nodes == 0 and csr.rowptr.tolist() == [0]
    assert hop_features(torch.zeros(0, 3), csr).shape == (0, 3, 3)
    offsets, nbrs = two_hop_neighbors(csr)
    assert offsets.tolist() == [0] and nbrs.numel() == 0
    # nodes without edges: A_hat = I
    csr = csr_from_edge_index(empty, 4)
    x = torch.randn(4, 2)
    assert torch.allclose(normalized_propagate(x, csr, 3), x)
    offsets, nbrs = one_hop_neighbors(csr)
    assert offsets.tolist() == [0, 0, 0, 0, 0] and nbrs.numel() == 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_propagation_matches_dense(symmetric):
    edge_index = random_graph(20, 40, symmetric=symmetric, seed=1)
    edge_index = torch.cat([edge_index, torch.tensor([[3, 3], [3, 3]])], dim=1)  # self loop + duplicate
    num_nodes = 23  # isolated nodes 20..22
    x = torch.randn(num_nodes, 5, dtype=torch.float64)
    a_hat = dense_a_hat(edge_index, num_nodes)
    assert torch.allclose(normalized_propagate(x, edge_index, 1), a_hat @ x)
    assert torch.allclose(normalized_propagate(x, edge_index, 2), a_hat @ a_hat @ x)
    hops = hop_features(x, csr_from_edge_index(edge_index, num_nodes), 2)
    assert hops.shape == (num_nodes, 3, 5)
    assert torch.allclose(hops[:, 0], x) and torch.allclose(hops[:, 2], a_hat @ a_hat @ x)
    csr = csr_from_edge_index(edge_index, num_nodes)
    edge_weight, self_weight = gcn_norm_weights(csr, torch.float64)
    assembled = torch.diag(self_weight)
    for target in range(num_nodes):
        for e in range(int(csr.rowptr[target]), int(csr.rowptr[target + 1])):
            assembled[target, int(csr.col[e])] += edge_weight[e]
    assert torch.allclose(assembled, a_hat)


def test_chunked_rows_equal_full_product():
    edge_index = random_graph(50, 200, seed=2)
    adjacency = NormalizedAdjacency(edge_index, 50)
    x = torch.randn(50, 4)
    full = adjacency(x)
    chunks = torch.cat([adjacency(x, s, min(s + 7, 50)) for s in range(0, 50, 7)])
    assert torch.allclose(full, chunks, atol=1e-6)
    assert adjacency(x, 10, 10).shape == (0, 4)
    assert "num_nodes=50" in repr(adjacency)


def test_half_input_accumulates_in_float32():
    edge_index = random_graph(30, 80, seed=3)
    x = torch.randn(30, 8)
    out = normalized_propagate(x.half(), edge_index, 2)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), normalized_propagate(x, edge_index, 2), atol=1e-2)


def test_gradcheck():
    edge_index = random_graph(8, 12, seed=4)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    adjacency = NormalizedAdjacency(edge_index, 8, torch.float64)
    assert torch.autograd.gradcheck(lambda t: normalized_propagate(t, adjacency, 2), (x,))


def reference_two_hop(edge_index, num_nodes):
    a = dense_adjacency(edge_index, num_nodes)
    a2 = a @ a
    return [torch.nonzero(a2[i]).flatten().tolist() for i in range(num_nodes)], a2.sum(1).long()


@settings(max_examples=15, deadline=None)
@given(
    num_nodes=st.integers(1, 15),
    num_edges=st.integers(0, 30),
    seed=st.integers(0, 1000),
    chunk=st.integers(1, 40),
)
def test_neighbor_lists_match_dense(num_nodes, num_edges, seed, chunk):
    edge_index = random_graph(num_nodes, num_edges, symmetric=seed % 2 == 0, seed=seed)
    csr = csr_from_edge_index(edge_index, num_nodes)
    expected_two_hop, walks = reference_two_hop(edge_index, num_nodes)
    offsets, nbrs = two_hop_neighbors(csr, max_walks_per_chunk=chunk)
    assert [nbrs[offsets[i] : offsets[i + 1]].tolist() for i in range(num_nodes)] == expected_two_hop
    assert torch.equal(two_hop_walk_counts(csr), walks)
    subset = torch.arange(num_nodes).flip(0)[: max(1, num_nodes // 2)]
    offsets, nbrs = one_hop_neighbors(csr, subset)
    for m, node in enumerate(subset.tolist()):
        assert nbrs[offsets[m] : offsets[m + 1]].tolist() == csr.neighbors(node).tolist()
    offsets, nbrs = two_hop_neighbors(csr, subset)
    for m, node in enumerate(subset.tolist()):
        assert nbrs[offsets[m] : offsets[m + 1]].tolist() == expected_two_hop[node]


def test_two_hop_contains_self_and_triangles():
    # path 0 - 1 - 2 plus triangle 2 - 3 - 4
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 2]]).t()
    edge_index = torch.cat([edges, edges.flip(0)], dim=1)
    offsets, nbrs = two_hop_neighbors(edge_index)
    lists = [nbrs[offsets[i] : offsets[i + 1]].tolist() for i in range(5)]
    assert lists[0] == [0, 2]
    assert lists[2] == [0, 2, 3, 4]  # 3 and 4 are also 1-hop, closed by the triangle


def test_bad_arguments():
    with pytest.raises(TypeError, match="edge_index"):
        csr_from_edge_index(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"edge_index: expected shape \[2, E\]"):
        csr_from_edge_index(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"edge_index: expected node ids in \[0, 2\), got range \[-1, 1\]"):
        csr_from_edge_index(torch.tensor([[0, -1], [1, 0]]))
    with pytest.raises(ValueError, match="num_nodes"):
        csr_from_edge_index(torch.tensor([[0], [1]]), -1)
    with pytest.raises(TypeError, match="index_dtype"):
        csr_from_edge_index(torch.tensor([[0], [1]]), index_dtype=torch.float32)
    csr = csr_from_edge_index(torch.tensor([[0], [1]]), 3)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[N, F\] with N=3"):
        NormalizedAdjacency(csr)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="num_hops"):
        normalized_propagate(torch.zeros(3, 2), csr, -1)
    with pytest.raises(ValueError, match="node"):
        csr.neighbors(5)
    with pytest.raises(ValueError, match="start, end"):
        NormalizedAdjacency(csr)(torch.zeros(3, 2), 2, 1)
    with pytest.raises(TypeError, match="graph"):
        normalized_propagate(torch.zeros(3, 2), [[0], [1]])
    with pytest.raises(ValueError, match="graph: expected 4 nodes"):
        NormalizedAdjacency(csr, 4)
    assert isinstance(csr, CSRGraph)


def test_range_checks_against_a_given_size_need_debug(monkeypatch):
    """Node ids checked against a given ``num_nodes`` cost a pass and a host synchronisation: GEOATTN_DEBUG=1."""
    csr = csr_from_edge_index(torch.tensor([[0], [1]]), 3)
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"edge_index: expected node ids in \[0, 2\), got range \[0, 2\]"):
        csr_from_edge_index(torch.tensor([[0, 1], [1, 2]]), 2)
    with pytest.raises(ValueError, match=r"nodes: expected ids in \[0, 3\), got range \[3, 3\]"):
        one_hop_neighbors(csr, torch.tensor([3]))
