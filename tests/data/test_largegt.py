"""LargeGT sampler, memory-mapped cache and collate (geoattn.data.largegt)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geoattn.data.largegt import (
    BLOCK_SIZE,
    LargeGTCollate,
    LargeGTTokens,
    _sample_positions,
    precompute_hop_tokens,
    precompute_largegt,
    sample_node_sequences,
)
from geoattn.sparse.graph import csr_from_edge_index, hop_features, one_hop_neighbors, two_hop_neighbors


def random_graph(num_nodes, num_edges, seed=0, isolated=0):
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes - isolated, (2, num_edges), generator=generator)
    return torch.cat([edge_index, edge_index.flip(0)], dim=1)


def allowed_sets(csr):
    o1, n1 = one_hop_neighbors(csr)
    o2, n2 = two_hop_neighbors(csr)
    return [set(n1[o1[i] : o1[i + 1]].tolist()) | set(n2[o2[i] : o2[i + 1]].tolist()) for i in range(csr.num_nodes)]


@pytest.mark.parametrize("sequence_length", [1, 2, 6, 40])
def test_sequences_stay_in_two_hop_neighbourhood(sequence_length):
    csr = csr_from_edge_index(random_graph(300, 500, isolated=5), 300)
    ids = sample_node_sequences(csr, sequence_length, seed=3)
    assert ids.shape == (300, sequence_length) and ids.dtype == torch.int64
    assert torch.equal(ids[:, 0], torch.arange(300))
    for node, allowed in enumerate(allowed_sets(csr)):
        if allowed:
            assert set(ids[node, 1:].tolist()) <= allowed
        elif sequence_length > 1:  # isolated: distinct nodes from the whole graph
            assert len(set(ids[node, 1:].tolist())) == sequence_length - 1


def test_reproducible_and_independent_of_chunking_and_threads():
    csr = csr_from_edge_index(random_graph(3 * BLOCK_SIZE + 17, 6000, seed=1))
    reference = sample_node_sequences(csr, 12, seed=7, chunk_size=BLOCK_SIZE, num_threads=1)
    assert torch.equal(reference, sample_node_sequences(csr, 12, seed=7, chunk_size=5000, num_threads=2))
    assert torch.equal(reference, sample_node_sequences(csr, 12, seed=7))
    assert not torch.equal(reference, sample_node_sequences(csr, 12, seed=8))
    out = np.zeros((csr.num_nodes, 12), dtype=np.int32)
    assert sample_node_sequences(csr, 12, seed=7, out=out) is None
    assert np.array_equal(out, reference.numpy())


def test_positions_are_uniform_subsets():
    rng = np.random.default_rng(0)
    count, trials = 3, 20000
    for length in (7, 40):  # random-keys path and rejection path
        positions = _sample_positions(np.full(trials, length), count, rng)
        assert (np.diff(positions, axis=1) > 0).all()  # sorted and distinct
        inclusion = np.bincount(positions.ravel(), minlength=length) / trials
        assert np.allclose(inclusion, count / length, atol=0.02)
        # pairs: every pair equally likely, count(count-1) / (length(length-1))
        pair = ((positions == 0).any(1) & (positions == 1).any(1)).mean()
        far = ((positions == 0).any(1) & (positions == length - 1).any(1)).mean()
        expected = count * (count - 1) / (length * (length - 1))
        assert abs(pair - expected) < 0.012 and abs(far - expected) < 0.012
    cyclic = _sample_positions(np.array([2, 3]), 5, rng)
    assert cyclic.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 2]]


def test_two_hop_draws_follow_walk_multiplicity():
    # documented distribution: node w appears with probability (K-1)/L_i * (1[w in hop1] + (A^2)_iw)
    edges = torch.tensor([[0, 1], [0, 2], [1, 3], [2, 3], [1, 4], [3, 5], [5, 6], [4, 6]]).t()
    edge_index = torch.cat([edges, edges.flip(0)], dim=1)
    csr = csr_from_edge_index(edge_index)
    adjacency = torch.zeros(7, 7, dtype=torch.float64)
    adjacency[edge_index[1], edge_index[0]] = 1
    walks = adjacency @ adjacency
    k, seeds = 4, 1500
    counts = torch.zeros(7, 7, dtype=torch.float64)
    for seed in range(seeds):
        ids = sample_node_sequences(csr, k, seed=seed)
        for node in range(7):
            counts[node] += torch.bincount(ids[node, 1:], minlength=7).double()
    for node in range(7):
        multiplicity = adjacency[node] + walks[node]
        length = multiplicity.sum()
        expected = (k - 1) / length * multiplicity if length > k - 1 else None
        if expected is not None:
            assert torch.allclose(counts[node] / seeds, expected, atol=0.05), node


def test_cache_gather_matches_dense_hops(tmp_path):
    edge_index = random_graph(120, 300, seed=2, isolated=3)
    x = torch.randn(120, 5)
    cache = precompute_largegt(x, edge_index, tmp_path / "cache", 6, seed=1, chunk_size=BLOCK_SIZE,
                               feature_chunk_size=17, progress=False)
    reopened = LargeGTTokens.open(tmp_path / "cache")
    assert reopened.meta["sequence_length"] == 6 and reopened.num_features == 5
    hops = hop_features(x, edge_index, 2)
    assert np.allclose(np.asarray(reopened.tokens), hops.numpy(), atol=1e-5)
    sequences = sample_node_sequences(edge_index, 6, seed=1, num_nodes=120)
    nodes = torch.tensor([5, 0, 119])
    assert torch.equal(reopened.sequences(nodes), sequences[nodes])
    tokens = reopened.gather(reopened.sequences(nodes))
    assert tokens.shape == (3, 18, 5) and tokens.dtype == torch.float32
    # token 3j + h is hop h of the j-th node of the sequence
    for b in range(3):
        for j, node in enumerate(sequences[nodes[b]].tolist()):
            for h in range(3):
                assert torch.allclose(tokens[b, 3 * j + h], hops[node, h], atol=1e-5)
    y = torch.arange(120)
    collate = LargeGTCollate(reopened, y=y, pos_enc=torch.randn(120, 4))
    batch = collate([5, 0, 119])
    assert torch.equal(batch.tokens, tokens) and batch.y.tolist() == [5, 0, 119] and batch.pos_enc.shape == (3, 4)
    resampling = LargeGTCollate(reopened, resample=True, seed=1)
    first = resampling([5, 0, 119]).tokens
    assert torch.equal(first, resampling([5, 0, 119]).tokens)  # same epoch, same draws
    resampling.set_epoch(1)
    assert not torch.equal(first, resampling([5, 0, 119]).tokens)
    assert cache.node_ids.dtype == np.int32


def test_float16_tokens(tmp_path):
    edge_index = random_graph(50, 100)
    x = torch.randn(50, 4)
    tokens = precompute_hop_tokens(x, edge_index, tmp_path / "t.f16", dtype=torch.float16, chunk_size=7)
    assert tokens.dtype == np.float16 and tokens.shape == (50, 3, 4)
    assert np.allclose(tokens.astype(np.float32), hop_features(x, edge_index).numpy(), atol=1e-2)
    assert not (tmp_path / "t.f16.tmp").exists()


@pytest.mark.parametrize("source_dtype", [np.float32, np.float16])
def test_streamed_hop_tokens_from_memory_map_equal_in_memory_result(tmp_path, source_dtype):
    # x backed by a memory map (as for ogbn-papers100M), streamed in chunks of 7 rows with scratch maps
    edge_index = random_graph(90, 260, seed=4, isolated=2)
    values = np.random.default_rng(0).standard_normal((90, 6)).astype(source_dtype)
    mapped = np.memmap(tmp_path / "x.bin", dtype=source_dtype, mode="w+", shape=(90, 6))
    mapped[:] = values
    mapped.flush()
    x = torch.from_numpy(np.memmap(tmp_path / "x.bin", dtype=source_dtype, mode="r+", shape=(90, 6)))
    tokens = precompute_hop_tokens(x, edge_index, tmp_path / "tokens.f32", chunk_size=7)
    in_memory = hop_features(torch.from_numpy(values).float(), edge_index, 2).numpy()
    assert np.allclose(tokens, in_memory, rtol=1e-6, atol=1e-7)
    assert np.array_equal(tokens[:, 0], values.astype(np.float32))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokens.f32", "x.bin"]  # no scratch left
    with pytest.raises(ValueError, match="chunk_size"):
        precompute_hop_tokens(x, edge_index, tmp_path / "t2", chunk_size=0)


def test_bad_arguments(tmp_path):
    edge_index = random_graph(10, 20)
    with pytest.raises(ValueError, match="sequence_length"):
        sample_node_sequences(edge_index, 0)
    with pytest.raises(ValueError, match="nodes"):
        sample_node_sequences(edge_index, 3, nodes=torch.tensor([10]))
    with pytest.raises(ValueError, match="out"):
        sample_node_sequences(edge_index, 3, out=np.zeros((10, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="graph"):
        sample_node_sequences([[0, 1]], 3)
    with pytest.raises(ValueError, match="dtype"):
        precompute_hop_tokens(torch.zeros(10, 2), edge_index, tmp_path / "x", dtype=torch.int8)
    with pytest.raises(ValueError, match="expected 9 nodes"):
        precompute_largegt(torch.zeros(9, 2), csr_from_edge_index(edge_index, 10), tmp_path / "c", 3)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        LargeGTTokens.open(tmp_path)
