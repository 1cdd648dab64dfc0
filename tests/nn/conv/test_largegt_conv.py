from __future__ import annotations

import pytest
import torch

from geoattn.nn import LargeGTLocalAttention
from geoattn.nn.conv import LargeGTConv
from tests.nn.conv._adjacency import adjacency_forms


def token_sets(num_nodes=30, tokens=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    neighbours = torch.randint(0, num_nodes, (num_nodes, tokens - 1), generator=gen)
    edge_index = torch.stack([neighbours.reshape(-1), torch.arange(num_nodes).repeat_interleave(tokens - 1)])
    return neighbours, edge_index


def pair(channels=8):
    dense = LargeGTLocalAttention(channels, heads=2, head_channels=6).double().eval()
    with torch.no_grad():  # away from the near-zero official init, so the test sees every term
        for module in dense.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(std=0.5)
                module.bias.normal_()
    conv = LargeGTConv(channels, heads=2, head_channels=6).double().eval()
    conv.load_state_dict(dense.state_dict())
    return dense, conv


def test_repr_shapes_attention_weights_and_empty_graph():
    conv = LargeGTConv(8, heads=2)
    assert repr(conv) == "LargeGTConv(8, heads=2, head_channels=8)"
    _, edge_index = token_sets()
    out, (returned, alpha) = conv(torch.randn(30, 8), edge_index, return_attention_weights=True)
    assert out.shape == (30, 16) and conv.out_channels == 16
    assert torch.equal(returned, edge_index) and alpha.shape == (120,)
    torch.testing.assert_close(torch.zeros(30).index_add_(0, edge_index[1], alpha), torch.ones(30))
    conv.reset_parameters()
    assert conv(torch.randn(0, 8), torch.zeros(2, 0, dtype=torch.long)).shape == (0, 16)


def test_message_passing_form_equals_dense_form():
    dense, conv = pair()
    neighbours, edge_index = token_sets()
    x = torch.randn(30, 8, dtype=torch.float64)
    tokens = x[torch.cat([torch.arange(30).unsqueeze(1), neighbours], 1)]
    expected, weights = dense(tokens, return_attention=True)
    shuffled = torch.randperm(edge_index.size(1))  # edge order does not matter
    out, (returned, alpha) = conv(x, edge_index[:, shuffled], return_attention_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha[shuffled.argsort()], weights.reshape(-1), atol=1e-6, rtol=0)
    # a node without sampled neighbours is a set of one token
    torch.testing.assert_close(conv(x, edge_index[:, :0]), dense(x.unsqueeze(1)), atol=1e-6, rtol=0)


def test_edge_index_edgeindex_and_sparse_adj_t_agree_and_equivariance():
    _, conv = pair()
    _, edge_index = token_sets()
    edge_index = torch.unique(edge_index, dim=1)  # sparse tensors merge repeated edges
    x = torch.randn(30, 8, dtype=torch.float64)
    expected = conv(x, edge_index)
    for name, adjacency in adjacency_forms(edge_index, 30).items():
        torch.testing.assert_close(conv(x, adjacency), expected, atol=1e-6, rtol=0, msg=name)
    perm = torch.randperm(30)
    relabel = perm.argsort()
    torch.testing.assert_close(conv(x[perm], relabel[edge_index]), expected[perm], atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="x: expected dtype torch.float64"):
        conv(x.float(), edge_index)
    with pytest.raises(ValueError, match=r"edge_index: expected a sparse adj_t of 30 rows"):
        conv(x, adjacency_forms(edge_index, 31)["adj_t coo"])


def test_gradcheck():
    conv = LargeGTConv(4, heads=2, head_channels=3, dropout=0.0).double()
    _, edge_index = token_sets(num_nodes=8, tokens=3)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv(t, edge_index), (x,))


@pytest.mark.xfail(strict=False, reason="order-dependent: after tests/examples in one serial process, PyG Sequential generates a forward that calls child 0 with child 1's arguments; passes alone and with -n 2; under investigation (issue 18)")
def test_pyg_sequential_on_neighbourhood_mini_batches_of_cora(real_data, tmp_path):
    """NeighborLoader-style mini-batches (k_hop_subgraph around seed nodes, with n_id) through DataLoader."""
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import Sequential
    from torch_geometric.utils import k_hop_subgraph

    from geoattn.data.planetoid import load_planetoid

    cora = load_planetoid(real_data / "graphs" / "planetoid", "Cora", tmp_path)
    model = Sequential("x, edge_index", [
        (torch.nn.Linear(cora.num_features, 16), "x -> x"),
        (LargeGTConv(16, heads=2, dropout=0.0), "x, edge_index -> x"),
        (torch.nn.Linear(32, 7), "x -> x"),
    ]).eval()
    full = model(cora.x, cora.edge_index)
    subgraphs = []
    for seeds in torch.arange(40).view(4, 10):
        n_id, edge_index, seed_position, _ = k_hop_subgraph(seeds, 1, cora.edge_index, relabel_nodes=True,
                                                            num_nodes=cora.num_nodes)
        subgraphs.append(Data(x=cora.x[n_id], edge_index=edge_index, n_id=n_id, seed_position=seed_position))
    for batch in DataLoader(subgraphs, batch_size=2):
        out = model(batch.x, batch.edge_index)
        # a seed's whole neighbourhood is in its subgraph, so its output is the full-graph one
        seeds = batch.n_id[batch.seed_position]
        torch.testing.assert_close(out[batch.seed_position], full[seeds], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiles_without_graph_breaks_and_matches_eager():
    conv = LargeGTConv(8, heads=2).eval()
    _, edge_index = token_sets()
    x = torch.randn(30, 8)
    torch._dynamo.reset()
    # the token-pair table has a data-dependent size: dynamo keeps it in the graph with this setting
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True):
        explanation = torch._dynamo.explain(conv)(x, edge_index)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(conv, fullgraph=False)
        torch.testing.assert_close(compiled(x, edge_index), conv(x, edge_index), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_dense_largegt_layers_compile_without_graph_breaks():
    from geoattn.nn import CodebookGlobalAttention

    local = LargeGTLocalAttention(8, heads=2).eval()
    tokens = torch.randn(6, 5, 8)
    codebook = CodebookGlobalAttention(8, num_nodes=50, num_centroids=16, global_channels=8).eval()
    x = torch.randn(6, 8)
    for layer, inputs in ((local, (tokens,)), (codebook, (x,))):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(layer)(*inputs)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        torch.testing.assert_close(torch.compile(layer)(*inputs), layer(*inputs), atol=1e-5, rtol=1e-5)
