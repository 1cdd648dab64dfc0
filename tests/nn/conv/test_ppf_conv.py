from __future__ import annotations

import numpy as np
import pytest
import torch

from geoattn.nn import PPFAttention, ppf_groups
from geoattn.nn.conv import PPFAttentionConv, knn_edge_index
from geoattn.sparse import estimate_normals
from tests.nn.conv._adjacency import adjacency_forms


def cloud(num=60, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(num, 3, generator=gen, dtype=dtype)
    return pos, estimate_normals(pos, 8), torch.randn(num, 8, generator=gen, dtype=dtype)


def pair(k=8):
    dense = PPFAttention(8, 16, heads=4).double()
    conv = PPFAttentionConv(8, 16, heads=4, k=k).double()
    conv.load_state_dict(dense.state_dict())
    return dense, conv


def test_repr_shapes_and_reset():
    conv = PPFAttentionConv(8, 32, heads=2)
    assert repr(conv) == "PPFAttentionConv(8, 32, hidden=32, heads=2)"
    pos, normal, x = cloud(dtype=torch.float32)
    assert conv(x, pos, normal).shape == (60, 32)
    conv.reset_parameters()
    empty = conv(x[:0], pos[:0], normal[:0], torch.zeros(2, 0, dtype=torch.long))
    assert empty.shape == (0, 32)


def test_message_passing_form_equals_dense_form():
    pos, normal, x = cloud()
    dense, conv = pair()
    neighbor_index, ppf = ppf_groups(pos, normal, 8)
    expected = dense(x, neighbor_index, ppf)
    # kNN built by the layer, and the same groups given as edge_index (self loops are kept exactly once)
    torch.testing.assert_close(conv(x, pos, normal), expected, atol=1e-6, rtol=0)
    edge_index = knn_edge_index(pos, 8)
    torch.testing.assert_close(conv(x, pos, normal, edge_index), expected, atol=1e-6, rtol=0)
    loops = torch.arange(60).repeat(2, 1)
    torch.testing.assert_close(conv(x, pos, normal, torch.cat([edge_index, loops], 1)), expected, atol=1e-6, rtol=0)


def test_edge_index_edgeindex_and_sparse_adj_t_agree():
    pos, normal, x = cloud()
    _, conv = pair()
    edge_index = knn_edge_index(pos, 8)
    expected = conv(x, pos, normal, edge_index)
    for name, adjacency in adjacency_forms(edge_index, 60).items():
        torch.testing.assert_close(conv(x, pos, normal, adjacency), expected, atol=1e-6, rtol=0, msg=name)
    with pytest.raises(ValueError, match=r"edge_index: expected shape \[2, E\]"):
        conv(x, pos, normal, edge_index.t())
    with pytest.raises(ValueError, match=r"normal: expected shape \(60, 3\)"):
        conv(x, pos, normal[:10], edge_index)
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float64"):
        conv(x.float(), pos, normal, edge_index)


def test_permutation_equivariance_and_rotation_invariance():
    pos, normal, x = cloud()
    _, conv = pair()
    out = conv(x, pos, normal)
    perm = torch.randperm(60)
    torch.testing.assert_close(conv(x[perm], pos[perm], normal[perm]), out[perm], atol=1e-6, rtol=0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    torch.testing.assert_close(conv(x, pos @ q.T + 1.0, normal @ q.T), out, atol=1e-6, rtol=0)


def test_gradcheck():
    pos, normal, x = cloud(num=12)
    conv = PPFAttentionConv(8, 4, hidden_channels=8, heads=2, k=4).double()
    edge_index = knn_edge_index(pos, 4)
    assert torch.autograd.gradcheck(lambda t: conv(t, pos, normal, edge_index), (x.requires_grad_(),))


def registration_fragments(root, count=4, points=300):
    """Pieces of the shared 3DMatch-style demo fragments (src / ref), each a small PyG graph."""
    from torch_geometric.data import Data

    graphs = []
    for name in ("src", "ref"):
        full = torch.from_numpy(np.load(root / "registration" / "geotransformer_demo" / f"{name}.npy")).float()
        for part in range(count // 2):
            pos = full[part * points:(part + 1) * points]
            graphs.append(Data(x=torch.ones(points, 1), pos=pos, normal=estimate_normals(pos, 10)))
    return graphs


@pytest.mark.xfail(strict=False, reason="order-dependent: after tests/examples in one serial process, PyG Sequential generates a forward that calls child 0 with child 1's arguments; passes alone and with -n 2; under investigation (issue 18)")
def test_pyg_sequential_on_a_dataloader_batch_of_real_fragments(real_data):
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import Sequential

    graphs = registration_fragments(real_data)
    model = Sequential("x, pos, normal, batch", [
        (lambda pos, batch: knn_edge_index(pos, 8, batch), "pos, batch -> edge_index"),
        (PPFAttentionConv(1, 16, heads=4), "x, pos, normal, edge_index -> x"),
        (torch.nn.ReLU(), "x -> x"),
        (PPFAttentionConv(16, 16, heads=4), "x, pos, normal, edge_index -> x"),
    ])
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    out = model(batch.x, batch.pos, batch.normal, batch.batch)
    single = [model(g.x, g.pos, g.normal, torch.zeros(g.num_nodes, dtype=torch.long)) for g in graphs]
    torch.testing.assert_close(out, torch.cat(single), atol=1e-5, rtol=1e-4)  # no edge crosses two graphs
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_compiles_without_graph_breaks_and_matches_eager():
    pos, normal, x = cloud(dtype=torch.float32)
    conv = PPFAttentionConv(8, 16, heads=4)
    edge_index = knn_edge_index(pos, 8)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(conv)(x, pos, normal, edge_index)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(conv, fullgraph=False)
    torch.testing.assert_close(compiled(x, pos, normal, edge_index), conv(x, pos, normal, edge_index),
                               atol=1e-5, rtol=1e-5)
