"""LA backbones: shapes, plain-backbone equivalence, isolated nodes / no edges, argument errors."""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GCNConv

from geoattn.models import LAGAT, LAGCN, LAGCNII, LASAGE, LocalAugmentationWrapper

NUM_NODES, NUM_FEATURES, NUM_CLASSES = 9, 6, 3


def _graph():
    x = torch.rand(NUM_NODES, NUM_FEATURES)
    # nodes 7 and 8 are isolated
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 6], [1, 0, 2, 1, 4, 3, 6, 5]])
    return x, edge_index


def _models(num_generated):
    return [
        LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated),
        LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated, num_layers=3, batch_norm=True,
              input_dropout=0.0),
        LASAGE(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated, num_layers=3, batch_norm=True),
        LAGAT(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated, heads=2),
        LAGAT(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated, heads=2, num_layers=3),
        LAGCNII(NUM_FEATURES, 4, NUM_CLASSES, num_generated=num_generated, num_layers=3),
    ]


@pytest.mark.parametrize("num_generated", [0, 1, 2])
def test_shapes_isolated_nodes_and_no_edges(num_generated):
    x, edge_index = _graph()
    generated = [torch.rand_like(x) for _ in range(num_generated)] if num_generated else None
    no_edges = torch.empty(2, 0, dtype=torch.long)
    for model in _models(num_generated):
        for mode in (True, False):
            model.train(mode)
            for edges in (edge_index, no_edges):
                out = model(x, edges, generated)
                assert out.shape == (NUM_NODES, NUM_CLASSES), repr(model)
                assert torch.isfinite(out).all(), repr(model)
        if num_generated:
            model.eval()
            stacked = model(x, edge_index, torch.stack(generated))
            torch.testing.assert_close(stacked, model(x, edge_index, generated))
        out = model(x, edge_index, generated)
        out.sum().backward()
        model.reset_parameters()


def test_gradients_reach_every_branch():
    x, edge_index = _graph()
    for model in _models(1):
        model(x, edge_index, [torch.rand_like(x)]).pow(2).sum().backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, f"{model!r}: {name}"


def test_lagcn_matches_reference_first_layer_concatenation():
    """Eval mode: H = relu(P X W0) || relu(P Xhat W1), out = P H W2 (P: GCN normalisation with self loops)."""
    x, edge_index = _graph()
    x_hat = torch.rand_like(x)
    model = LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1).eval()
    first, second = model.first.branches[0].conv, model.first.branches[1].conv
    reference_first = torch.cat([F.relu(first(x, edge_index)), F.relu(second(x_hat, edge_index))], dim=-1)
    reference = model.out_conv(reference_first, edge_index)
    torch.testing.assert_close(model(x, edge_index, [x_hat]), reference)
    # and the branches are GCNConv computing P X W with P = D^-1/2 (A + I) D^-1/2
    dense = torch.zeros(NUM_NODES, NUM_NODES)
    dense[edge_index[1], edge_index[0]] = 1
    dense += torch.eye(NUM_NODES)
    degree = dense.sum(1)
    propagation = dense / degree.sqrt()[:, None] / degree.sqrt()[None, :]
    torch.testing.assert_close(first(x, edge_index), propagation @ (x @ first.lin.weight.t()) + first.bias)


def test_plain_backbones_when_no_generated_inputs():
    x, edge_index = _graph()
    gcn = LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=0).eval()
    reference = gcn.out_conv(F.relu(gcn.first.branches[0].conv(x, edge_index)), edge_index)
    torch.testing.assert_close(gcn(x, edge_index), reference)
    gat = LAGAT(NUM_FEATURES, 8, NUM_CLASSES, num_generated=0, heads=8)
    assert isinstance(gat.first.branches[0].conv, GATConv) and gat.out_conv.in_channels == 64
    assert repr(gat) == "LAGAT(6, 8, 3, heads=8, num_generated=0, num_layers=2)"
    assert repr(LAGCN(6, 8, 3)) == "LAGCN(6, 8, 3, num_generated=1, num_layers=2)"
    assert isinstance(LAGCN(6, 8, 3).first.branches[1].conv, GCNConv)
    # LA-GAT with 4 heads per branch and one generated input has GAT's 8 x 8 hidden width
    assert LAGAT(NUM_FEATURES, 8, NUM_CLASSES, heads=4).out_conv.in_channels == 64


def test_gcnii_parameter_groups_cover_all_parameters():
    model = LAGCNII(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1, num_layers=2)
    groups = model.parameter_groups(0.01, 5e-4)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    torch.optim.Adam(groups, lr=0.01)


def test_wrapper_styles():
    x, edge_index = _graph()
    x_hat = torch.rand_like(x)
    backbone = GCNConv(NUM_FEATURES, NUM_CLASSES)
    average = LocalAugmentationWrapper(backbone, "average")
    torch.testing.assert_close(average(x, edge_index, x_hat), backbone((x + x_hat) / 2, edge_index))
    wide = GCNConv(2 * NUM_FEATURES, NUM_CLASSES)
    concat = LocalAugmentationWrapper(wide, "concat")
    torch.testing.assert_close(concat(x, edge_index, x_hat), wide(torch.cat([x, x_hat], -1), edge_index))
    assert concat(x, edge_index, x_hat[None]).shape == (NUM_NODES, NUM_CLASSES)
    assert "style='concat'" in repr(concat)
    with pytest.raises(ValueError, match="style"):
        LocalAugmentationWrapper(backbone, "sum")


def test_bad_arguments():
    x, edge_index = _graph()
    model = LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1)
    with pytest.raises(ValueError, match=r"x_generated: expected 1 generated feature matrices \[N, F\], got None"):
        model(x, edge_index)
    with pytest.raises(ValueError, match="expected 1 generated feature matrices, got 2"):
        model(x, edge_index, [x, x])
    with pytest.raises(ValueError, match=r"x_generated\[0\]: expected shape \(9, 6\)"):
        model(x, edge_index, [x[:3]])
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[N, C\] with C=6, got shape \(9, 5\)"):
        model(x[:, :5], edge_index, [x])
    with pytest.raises(ValueError, match="edge_index"):
        model(x, edge_index[0], [x])
    with pytest.raises(ValueError, match="num_generated=0"):
        LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=0)(x, edge_index, [x])
    with pytest.raises(ValueError, match="num_layers"):
        LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_layers=1)
    with pytest.raises(ValueError, match="dropout"):
        LASAGE(NUM_FEATURES, 4, NUM_CLASSES, dropout=1.0)
    with pytest.raises(ValueError, match="heads"):
        LAGAT(NUM_FEATURES, 4, NUM_CLASSES, heads=0)
    with pytest.raises(ValueError, match="num_generated"):
        LAGCNII(NUM_FEATURES, 4, NUM_CLASSES, num_generated=-1)


def test_input_dropout_dense_and_sparse():
    from geoattn.models.lagnn import input_dropout

    x = torch.rand(300, 40) + 0.5
    assert input_dropout(x, 0.5, training=False) is x and input_dropout(x, 0.0, training=True) is x
    dropped = input_dropout(x, 0.5, training=True)
    kept = dropped != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(dropped[kept], 2 * x[kept])
    # dense path: 16 random bits per entry (8 for multiples of 1/256); drop rate p to within 2^-17,
    # expectation exact
    ones = torch.ones(400, 500)
    for p in (0.1, 0.25, 0.5, 0.6):
        dropped = input_dropout(ones, p, training=True)
        kept_fraction = (dropped != 0).float().mean()
        assert abs(float(kept_fraction) - (1 - p)) < 5e-3
        assert torch.allclose(dropped[dropped != 0], torch.full((), 65536 / (65536 - round(p * 65536))))
    assert not torch.equal(input_dropout(ones, 0.5, True), input_dropout(ones, 0.5, True))
    assert (input_dropout(ones, 1.0, training=True) == 0).all()
    for p in (0.5, 0.6):  # numel not a multiple of the entries per random word (8 or 4)
        odd = input_dropout(torch.ones(3, 5, dtype=torch.float64), p, training=True)
        assert odd.shape == (3, 5) and odd.dtype == torch.float64
    with pytest.raises(ValueError, match="p: expected a dropout probability"):
        input_dropout(ones, 1.5, training=True)
    sparse = (torch.rand(50, 30) < 0.2).float().to_sparse()
    dropped_sparse = input_dropout(sparse, 0.25, training=True)
    assert dropped_sparse.is_sparse
    dense_result, original = dropped_sparse.to_dense(), sparse.to_dense()
    survivors = dense_result != 0
    assert (original[survivors] != 0).all()
    torch.testing.assert_close(dense_result[survivors], original[survivors] / 0.75)


def test_sparse_features_give_the_same_output():
    x, edge_index = _graph()
    x = (x > 0.6).float()
    for model in (LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1),
                  LAGAT(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1, heads=2)):
        model.eval()
        x_hat = torch.rand_like(x)
        torch.testing.assert_close(model(x.to_sparse(), edge_index, [x_hat]), model(x, edge_index, [x_hat]))
        model.train()
        model(x.to_sparse(), edge_index, [x_hat]).sum().backward()


def test_lagat_elu_alpha():
    x, edge_index = _graph()
    model = LAGAT(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1, heads=2, elu_alpha=0.2).eval()
    x_hat = torch.rand_like(x)
    branches = model.first.branches
    hidden = torch.cat([F.elu(branches[0].conv(x, edge_index), alpha=0.2),
                        F.elu(branches[1].conv(x_hat, edge_index), alpha=0.2)], dim=-1)
    torch.testing.assert_close(model(x, edge_index, [x_hat]), model.out_conv(hidden, edge_index))
    with pytest.raises(ValueError, match="elu_alpha"):
        LAGAT(NUM_FEATURES, 4, NUM_CLASSES, elu_alpha=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_input_dropout_bitmask_path_equals_multiplication(dtype):
    """Without autograd the dense mask is applied as a bitwise AND; it must give exactly the entries the
    boolean-multiplication path (taken when x requires grad) gives for the same random bits."""
    from geoattn.models.lagnn import input_dropout

    x = (torch.rand(37, 29, dtype=torch.float64) + 0.1).to(dtype)
    for p in (0.25, 0.5, 0.6):  # 8 and 16 random bits per entry
        torch.manual_seed(3)
        masked = input_dropout(x, p, training=True)
        torch.manual_seed(3)
        multiplied = input_dropout(x.clone().requires_grad_(), p, training=True)
        assert masked.dtype == dtype and not masked.requires_grad
        assert torch.equal(masked, multiplied.detach())
    transposed = x.t()  # non-contiguous input
    torch.manual_seed(4)
    masked = input_dropout(transposed, 0.5, training=True)
    torch.manual_seed(4)
    assert torch.equal(masked, input_dropout(transposed.clone().requires_grad_(), 0.5, training=True).detach())


def test_input_dropout_csr_drops_the_same_entries_as_coo():
    from geoattn.models.lagnn import input_dropout

    dense = (torch.rand(40, 25) < 0.3).float() * torch.rand(40, 25)
    torch.manual_seed(5)
    from_coo = input_dropout(dense.to_sparse(), 0.6, training=True)
    torch.manual_seed(5)
    from_csr = input_dropout(dense.to_sparse_csr(), 0.6, training=True)
    assert from_csr.layout == torch.sparse_csr
    assert torch.equal(from_csr.to_dense(), from_coo.to_dense())
    assert input_dropout(dense.to_sparse_csr(), 0.6, training=False).layout == torch.sparse_csr


def test_input_linear_bfloat16_and_csr_inputs():
    from torch_geometric.nn.dense.linear import Linear

    from geoattn.models.lagnn import InputLinear

    torch.manual_seed(0)
    linear = Linear(30, 6, bias=True, weight_initializer="glorot", bias_initializer="zeros")
    linear.__class__ = InputLinear
    x = (torch.rand(50, 30) < 0.2).float() * torch.rand(50, 30)
    reference = linear(x)
    reference.pow(2).sum().backward()
    reference_grad, linear.weight.grad = linear.weight.grad.clone(), None
    # CSR: same product and weight gradient up to float32 rounding
    out = linear(x.to_sparse_csr())
    torch.testing.assert_close(out, reference)
    out.pow(2).sum().backward()
    torch.testing.assert_close(linear.weight.grad, reference_grad)
    linear.weight.grad = None
    # bfloat16 input with float32 weights: float32 output, bfloat16-accurate product and gradient
    out = linear(x.bfloat16())
    assert out.dtype == torch.float32
    exact = torch.nn.functional.linear(x.bfloat16().float(), linear.weight, linear.bias)
    torch.testing.assert_close(out, exact, rtol=2e-2, atol=2e-2)
    out.pow(2).sum().backward()
    assert linear.weight.grad.dtype == torch.float32
    torch.testing.assert_close(linear.weight.grad, reference_grad, rtol=3e-2, atol=3e-2)
    # an input that needs a gradient takes Linear's own (float32) path
    needs_grad = x.bfloat16().requires_grad_()
    linear(needs_grad).sum().backward()
    assert needs_grad.grad is not None and needs_grad.grad.dtype == torch.bfloat16


def test_la_first_layers_take_bfloat16_generated_and_csr_inputs():
    from geoattn.models.lagnn import InputLinear

    x, edge_index = _graph()
    x = (x > 0.5).float()
    for build in (lambda: LAGCN(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1),
                  lambda: LAGAT(NUM_FEATURES, 4, NUM_CLASSES, num_generated=1, heads=2)):
        torch.manual_seed(2)
        model = build()
        assert all(isinstance(branch.conv.lin, InputLinear) for branch in model.first.branches)
        # state_dict keys and initial values are those of the plain PyG convs (nothing extra drawn)
        assert any(key.endswith("first.branches.0.conv.lin.weight") for key in model.state_dict())
        torch.manual_seed(2)
        again = build()
        for (key, value), other in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(value, other), key
        model.eval()
        x_hat = torch.rand_like(x)
        reference = model(x, edge_index, [x_hat.bfloat16().float()])
        out = model(x.to_sparse_csr(), edge_index, [x_hat.bfloat16()])
        torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)
        model.train()
        model(x.to_sparse_csr(), edge_index, [x_hat.bfloat16()]).sum().backward()
        assert all(parameter.grad is not None for parameter in model.parameters())


def test_csr_transpose_reuses_the_pattern_and_follows_changes():
    from geoattn.models.lagnn import _CSRTransposer

    transpose = _CSRTransposer()
    first = (torch.rand(7, 5) < 0.4).float() * torch.rand(7, 5)
    second = (torch.rand(7, 5) < 0.4).float() * torch.rand(7, 5)
    empty = torch.zeros(7, 5)
    for dense in (first, first * 3, second, first, empty, first):  # same pattern, new values, new patterns
        result = transpose(dense.to_sparse_csr())
        assert result.layout == torch.sparse_csr and result.shape == (5, 7)
        assert torch.equal(result.to_dense(), dense.t())


def test_models_take_the_sparse_adjacency_gcnconv_takes():
    """adj_t (torch.sparse, rows = targets) gives the same logits as edge_index for every LA backbone."""
    x, edge_index = _graph()
    generated = [torch.rand_like(x)]
    values = torch.ones(edge_index.size(1))
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), values, (NUM_NODES, NUM_NODES)).coalesce()
    for model in [LAGCN(NUM_FEATURES, 4, NUM_CLASSES), LAGCN(NUM_FEATURES, 4, NUM_CLASSES, cached=True),
                  LASAGE(NUM_FEATURES, 4, NUM_CLASSES), LAGCNII(NUM_FEATURES, 4, NUM_CLASSES, num_layers=2)]:
        model.eval()
        expected = model(x, edge_index, generated)
        for adjacency in (adj_t, adj_t.to_sparse_csr()):
            torch.testing.assert_close(model(x, adjacency, generated), expected, msg=repr(model))
    with pytest.raises(ValueError, match=r"edge_index: expected a sparse adjacency .* N=9 .*\(9, 8\)"):
        LAGCN(NUM_FEATURES, 4, NUM_CLASSES)(x, adj_t.to_dense()[:, :8].to_sparse(), generated)


def test_integer_features_are_refused_naming_x():
    x, edge_index = _graph()
    model = LAGCN(NUM_FEATURES, 4, NUM_CLASSES)
    with pytest.raises(TypeError, match=r"x: expected floating-point features .*torch.int64"):
        model(x.long(), edge_index, [x])
    with pytest.raises(TypeError, match=r"edge_index: expected an integer .*torch.float32"):
        model(x, edge_index.float(), [x])
