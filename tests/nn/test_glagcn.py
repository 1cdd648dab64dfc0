import pytest
import torch

from geoattn.nn import (H36M_PARENTS, AdaptiveGraphConv, GraphTemporalUnit, PerJointHead,
                        StridedGraphTemporalBlock, TemporalConv, adjacency_subsets, skeleton_edge_index)


def h36m_adjacency():
    return adjacency_subsets(skeleton_edge_index(H36M_PARENTS), len(H36M_PARENTS))


def test_skeleton_edge_index_matches_parents():
    edge_index = skeleton_edge_index(H36M_PARENTS)
    assert edge_index.shape == (2, 16)
    for parent, child in edge_index.t().tolist():
        assert H36M_PARENTS[child] == parent
    with pytest.raises(ValueError, match="parents"):
        skeleton_edge_index([-1, 0, 5])


def test_adjacency_subsets_partition_semantics():
    adjacency = h36m_adjacency()
    assert adjacency.shape == (3, 17, 17)
    assert torch.equal(adjacency[0], torch.eye(17))
    # Subset 1: every non-root joint receives exactly its parent's feature.
    for child, parent in enumerate(H36M_PARENTS):
        column = adjacency[1][:, child]
        if parent < 0:
            assert column.abs().sum() == 0
        else:
            assert column[parent] == 1 and column.sum() == 1
    # Subset 2: a parent receives the mean of its children (thorax 8 has children 9, 11, 14).
    assert torch.allclose(adjacency[2][[9, 11, 14], 8], torch.full((3,), 1 / 3))
    assert adjacency[2][:, 3].sum() == 0  # a foot has no children
    # Non-empty columns sum to one (column normalisation).
    sums = adjacency.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]))


def test_adjacency_subsets_without_edges_and_bad_input():
    adjacency = adjacency_subsets(torch.zeros(2, 0, dtype=torch.long), 1)
    assert torch.equal(adjacency, torch.tensor([[[1.0]], [[0.0]], [[0.0]]]))
    with pytest.raises(ValueError, match="edge_index"):
        adjacency_subsets(torch.tensor([[0], [3]]), 2)


def reference_adaptive_graph_conv(layer: AdaptiveGraphConv, x: torch.Tensor) -> torch.Tensor:
    """Loop over samples and subsets, written straight from the formula (eval mode)."""
    n, c, t, v = x.shape
    e, k = layer.embed_channels, layer.num_subsets
    outputs = []
    for sample in range(n):
        xs = x[sample]
        total = torch.zeros(layer.out_channels, t, v, dtype=x.dtype)
        for subset in range(k):
            a = layer.adjacency[subset].to(x.dtype) + layer.offset[subset].to(x.dtype)
            theta_w = layer.theta.weight[subset * e:(subset + 1) * e, :, 0, 0]
            theta_b = layer.theta.bias[subset * e:(subset + 1) * e]
            phi_w = layer.phi.weight[subset * e:(subset + 1) * e, :, 0, 0]
            phi_b = layer.phi.bias[subset * e:(subset + 1) * e]
            theta = torch.einsum("ec,ctv->etv", theta_w, xs) + theta_b[:, None, None]
            phi = torch.einsum("ec,ctv->etv", phi_w, xs) + phi_b[:, None, None]
            logits = torch.zeros(v, v, dtype=x.dtype)
            for i in range(v):
                for j in range(v):
                    logits[i, j] = (theta[:, :, i] * phi[:, :, j]).sum() / (e * t)
            attention = torch.exp(logits) / torch.exp(logits).sum(0, keepdim=True)
            aggregated = torch.einsum("ctv,vw->ctw", xs, a + attention)
            total = total + torch.einsum("oc,ctw->otw", layer.weight[subset], aggregated)
        outputs.append(total)
    y = layer.bn(torch.stack(outputs))
    y = y + (x if layer.down is None else layer.down(x))
    return torch.relu(y)


@pytest.mark.parametrize("in_channels,out_channels", [(8, 8), (3, 8)])
def test_adaptive_graph_conv_matches_reference(in_channels, out_channels):
    layer = AdaptiveGraphConv(in_channels, out_channels, h36m_adjacency()).double()
    with torch.no_grad():  # move BN away from its near-identity init so the graph path matters
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.running_mean.normal_()
        layer.offset.normal_(0, 0.1)
    layer.eval()
    x = torch.randn(2, in_channels, 5, 17, dtype=torch.float64)
    assert torch.allclose(layer(x), reference_adaptive_graph_conv(layer, x), atol=1e-10)


def test_adaptive_graph_conv_starts_near_identity():
    layer = AdaptiveGraphConv(8, 8, h36m_adjacency()).eval()
    x = torch.randn(3, 8, 4, 17)
    assert torch.allclose(layer(x), torch.relu(x), atol=1e-4)


def test_adaptive_graph_conv_attention_columns_sum_to_one():
    layer = AdaptiveGraphConv(4, 8, h36m_adjacency(), learn_offset=False)
    x = torch.randn(2, 4, 3, 17)
    attention = layer.effective_adjacency(x) - layer.adjacency
    assert torch.allclose(attention.sum(-2), torch.ones(2, 3, 17), atol=1e-6)


def test_adaptive_graph_conv_gradcheck():
    layer = AdaptiveGraphConv(3, 4, h36m_adjacency()[:, :4, :4]).double().eval()
    with torch.no_grad():
        layer.bn.weight.fill_(1.0)
    x = torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


def test_adaptive_graph_conv_permutation_equivariance():
    adjacency = h36m_adjacency()
    permutation = torch.randperm(17)
    layer = AdaptiveGraphConv(6, 6, adjacency).eval()
    permuted = AdaptiveGraphConv(6, 6, adjacency[:, permutation][:, :, permutation]).eval()
    permuted.load_state_dict({**layer.state_dict(), "adjacency": permuted.adjacency,
                              "offset": layer.offset[:, permutation][:, :, permutation]})
    x = torch.randn(2, 6, 3, 17)
    assert torch.allclose(layer(x)[..., permutation], permuted(x[..., permutation]), atol=1e-5)


def test_adaptive_graph_conv_options_and_errors():
    layer = AdaptiveGraphConv(4, 8, h36m_adjacency(), learn_offset=False, attention=False)
    assert layer.offset is None and layer.theta is None
    assert layer(torch.randn(1, 4, 2, 17)).shape == (1, 8, 2, 17)
    assert "AdaptiveGraphConv(4, 8" in repr(layer)
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor \[N, C, T, V\] with C=4, V=17"):
        layer(torch.randn(1, 5, 2, 17))
    with pytest.raises(TypeError, match="x"):
        layer([1, 2])
    with pytest.raises(ValueError, match="adjacency"):
        AdaptiveGraphConv(4, 8, torch.zeros(3, 4, 5))


def test_adaptive_graph_conv_single_joint_no_edges():
    adjacency = adjacency_subsets(torch.zeros(2, 0, dtype=torch.long), 1)
    layer = AdaptiveGraphConv(2, 4, adjacency)
    out = layer(torch.randn(1, 2, 3, 1))
    assert out.shape == (1, 4, 3, 1) and torch.isfinite(out).all()


def test_temporal_conv_shapes_and_errors():
    conv = TemporalConv(4, 6, kernel_size=9, stride=3)
    assert conv(torch.randn(2, 4, 27, 5)).shape == (2, 6, 9, 5)
    assert TemporalConv(4, 4, 9, 1)(torch.randn(1, 4, 7, 2)).shape == (1, 4, 7, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        TemporalConv(4, 4, kernel_size=4)
    with pytest.raises(ValueError, match="stride"):
        TemporalConv(4, 4, stride=0)


def test_graph_temporal_unit_residual_kinds():
    adjacency = h36m_adjacency()
    assert isinstance(GraphTemporalUnit(8, 8, adjacency).residual, torch.nn.Identity)
    assert isinstance(GraphTemporalUnit(2, 8, adjacency).residual, TemporalConv)
    assert isinstance(GraphTemporalUnit(8, 8, adjacency, stride=3).residual, TemporalConv)
    assert GraphTemporalUnit(8, 8, adjacency, stride=3, residual=False).residual is None
    out = GraphTemporalUnit(2, 8, adjacency, stride=3)(torch.randn(2, 2, 9, 17))
    assert out.shape == (2, 8, 3, 17) and (out >= 0).all()


def test_strided_block_shrinks_time_and_keeps_centre_skip():
    block = StridedGraphTemporalBlock(8, h36m_adjacency(), filter_width=3).eval()
    x = torch.randn(2, 8, 9, 17)
    assert block(x).shape == (2, 8, 3, 17)
    with torch.no_grad():  # silence the main path: the output is the strided skip (frames 1, 4, 7)
        block.strided_unit.tcn.bn.weight.zero_()
        block.strided_unit.tcn.bn.bias.zero_()
    assert torch.allclose(block(x), x[:, :, 1::3])
    with pytest.raises(ValueError, match="divisible by filter_width=3"):
        block(torch.randn(1, 8, 8, 17))


@pytest.mark.parametrize("shared", [True, False])
def test_per_joint_head_is_joint_local(shared):
    head = PerJointHead(8, 3, num_joints=17, shared=shared)
    x = torch.randn(2, 8, 3, 17)
    out = head(x)
    assert out.shape == (2, 17, 3)
    x2 = x.clone()
    x2[..., 5] += 1.0
    changed = (head(x2) - out).abs().sum((0, 2)) > 0
    assert changed.tolist() == [j == 5 for j in range(17)]
    pooled = x.mean(2)
    joint = 7
    weight = head.weight[0 if shared else joint]
    bias = head.bias[0 if shared else joint]
    assert torch.allclose(out[:, joint], pooled[..., joint] @ weight + bias, atol=1e-6)


def test_per_joint_head_errors():
    with pytest.raises(ValueError, match="num_joints"):
        PerJointHead(8, shared=False)
    with pytest.raises(ValueError, match="C=8"):
        PerJointHead(8)(torch.randn(1, 4, 1, 17))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_glagcn_layers_run_in_every_dtype(dtype):
    adjacency = h36m_adjacency()
    unit = GraphTemporalUnit(3, 8, adjacency, kernel_size=3).eval()
    head = PerJointHead(8, 3)
    with torch.no_grad():  # a non-trivial batch norm scale, so the graph convolution shows in the output
        unit.gcn.bn.weight.fill_(1.0)
    x = torch.randn(2, 3, 5, 17)
    expected = head(unit(x))
    unit, head = unit.to(dtype), head.to(dtype)
    out = head(unit(x.to(dtype)))
    assert out.dtype == dtype
    tolerance = 1e-1 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    unit.train()
    head(unit(x.to(dtype))).float().sum().backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in unit.parameters() if p.grad is not None)


def test_glagcn_layers_refuse_other_dtypes():
    conv = AdaptiveGraphConv(3, 8, h36m_adjacency())
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.float64"):
        conv(torch.randn(2, 3, 5, 17, dtype=torch.float64))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.int64"):
        PerJointHead(3)(torch.ones(2, 3, 5, 17, dtype=torch.long))
