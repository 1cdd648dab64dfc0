"""RoITr layers: references, invariance, gradients, degenerate inputs, argument errors."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.nn.roitr import (
    GeometricStructureEmbedding,
    LearnableLogOptimalTransport,
    PositionalCrossAttentionBlock,
    PPFAttention,
    PointInstanceNorm,
    PPFAttentionBlock,
    RotationInvariantTransformer,
    RPESelfAttentionBlock,
    knn_interpolate,
    ppf_groups,
)
from geoattn.sparse.geometry import estimate_normals, make_transform, random_rotation, transform_points


def _cloud(n: int, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([2.0, 1.5, 1.0], dtype=dtype)
    return pos, estimate_normals(pos, k=8)


def _rigid(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rotation = random_rotation(generator=g, dtype=dtype)
    return make_transform(rotation, torch.randn(3, generator=g, dtype=dtype) * 3)


def _reference_ppf_attention(layer: PPFAttention, x, neighbor_index, ppf, query_index):
    """Loop over centres and heads with the un-fused maths of the docstring."""
    h = layer.in_proj(x)
    heads, dim = layer.heads, layer.hidden_channels // layer.heads
    rows = []
    for m in range(neighbor_index.size(0)):
        centre = h[m if query_index is None else query_index[m]]
        members = [j for j in neighbor_index[m].tolist() if j >= 0]
        keep = [c for c, j in enumerate(neighbor_index[m].tolist()) if j >= 0]
        embed = layer.ppf_embed(ppf[m, keep])
        k = layer.key(h[members]) + layer.key_position(embed)
        v = layer.value(h[members]) + layer.value_position(embed)
        q = layer.query(centre)
        out = []
        for head in range(heads):
            sl = slice(head * dim, (head + 1) * dim)
            a = torch.softmax(k[:, sl] @ q[sl] / math.sqrt(dim), dim=0)
            out.append(a @ v[:, sl])
        y = layer.norm(layer.attn_out(torch.cat(out)) + centre)
        rows.append(layer.out_proj(y))
    return torch.stack(rows)


def test_ppf_groups_shapes_values_and_padding():
    pos, normal = _cloud(20)
    index, ppf = ppf_groups(pos, normal, 4)
    assert index.shape == (20, 4) and ppf.shape == (20, 4, 4)
    assert torch.equal(index[:, 0], torch.arange(20))  # the centre is its own nearest neighbour
    assert torch.allclose(ppf[:, 0, 0], torch.zeros(20, dtype=pos.dtype))
    d = (pos[index[3, 2]] - pos[3]).norm()
    assert torch.allclose(ppf[3, 2, 0], d)
    assert ((ppf[..., 1:] >= 0) & (ppf[..., 1:] <= 0.5 + 1e-12)).all()  # folded angles / pi
    index, ppf = ppf_groups(pos[:3], normal[:3], 5)
    assert (index[:, 3:] == -1).all() and (ppf[:, 3:] == 0).all()


def test_ppf_groups_sign_invariant_and_rigid_invariant():
    pos, normal = _cloud(40, seed=1)
    flipped = normal * torch.where(torch.rand(40, 1) < 0.5, -1.0, 1.0).to(normal)
    _, a = ppf_groups(pos, normal, 6, sign_invariant=True)
    _, b = ppf_groups(pos, flipped, 6, sign_invariant=True)
    assert torch.allclose(a, b, atol=1e-12)
    T = _rigid(2)
    _, c = ppf_groups(transform_points(pos, T), normal @ T[:3, :3].T, 6, sign_invariant=False)
    _, d = ppf_groups(pos, normal, 6, sign_invariant=False)
    assert torch.allclose(c, d, atol=1e-9)


def test_ppf_attention_matches_reference_with_queries_and_padding():
    pos, normal = _cloud(12, seed=3)
    layer = PPFAttention(5, 7, hidden_channels=8, heads=2).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    query_index = torch.tensor([0, 4, 9])
    index, ppf = ppf_groups(pos, normal, 5, query_index)
    index[1, 3:] = -1  # padding must be ignored
    ppf[1, 3:] = 0
    out = layer(x, index, ppf, query_index)
    assert out.shape == (3, 7)
    assert torch.allclose(out, _reference_ppf_attention(layer, x, index, ppf, query_index), atol=1e-10)


def test_ppf_attention_gradcheck():
    pos, normal = _cloud(6, seed=4)
    layer = PPFAttention(3, 4, hidden_channels=4, heads=2).double()
    index, ppf = ppf_groups(pos, normal, 3)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    ppf = ppf.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, index, b), (x, ppf))


def test_ppf_attention_all_padding_row_is_finite():
    layer = PPFAttention(2, 3, hidden_channels=4, heads=2)
    x = torch.randn(4, 2)
    index = torch.tensor([[0, 1], [-1, -1]])
    out = layer(x, index, torch.zeros(2, 2, 4), torch.tensor([0, 1]))
    assert torch.isfinite(out).all()


def test_ppf_attention_argument_errors_and_repr():
    layer = PPFAttention(4, 8, heads=4)
    with pytest.raises(ValueError, match="x: expected a 2-D tensor"):
        layer(torch.randn(5, 3), torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2, 4))
    with pytest.raises(ValueError, match="ppf: expected shape"):
        layer(torch.randn(5, 4), torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 3, 4))
    with pytest.raises(ValueError, match="heads"):
        PPFAttention(4, 6, heads=4)
    with pytest.raises(ValueError, match="pos: expected"):
        ppf_groups(torch.randn(5, 2), torch.randn(5, 2), 3)
    assert "hidden=8" in repr(layer) and "heads=4" in repr(layer)


def test_ppf_attention_block_residual_shape():
    pos, normal = _cloud(10)
    block = PPFAttentionBlock(8, heads=2).double()
    index, ppf = ppf_groups(pos, normal, 4)
    out = block(torch.randn(10, 8, dtype=torch.float64), index, ppf)
    assert out.shape == (10, 8) and (out >= 0).all()
    assert "PPFAttentionBlock(8" in repr(block)


def test_knn_interpolate_exact_at_sources_and_weights():
    src = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0]])
    x = torch.tensor([[1.0], [3.0], [5.0]])
    assert torch.allclose(knn_interpolate(x, src, src, k=3), x, atol=1e-6)
    mid = knn_interpolate(x, src, torch.tensor([[0.5, 0, 0]]), k=2)
    assert torch.allclose(mid, torch.tensor([[2.0]]))


def _reference_embedding(module: GeometricStructureEmbedding, pos: torch.Tensor) -> torch.Tensor:
    n, h = pos.size(0), module.hidden_channels

    def sinus(value: float) -> torch.Tensor:
        freq = torch.exp(torch.arange(0, h, 2, dtype=pos.dtype) * (-math.log(10000.0) / h))
        return torch.stack([torch.sin(value * freq), torch.cos(value * freq)], -1).flatten()

    dist = torch.cdist(pos, pos)
    out = torch.zeros(n, n, h, dtype=pos.dtype)
    for i in range(n):
        order = [j for j in torch.argsort(dist[i]).tolist() if j != i][: module.angle_k]
        for j in range(n):
            e = module.distance_proj(sinus(float(dist[i, j]) / module.sigma_d))
            angles = []
            for x in order:
                a, b = pos[x] - pos[i], pos[j] - pos[i]
                angle = math.atan2(float(torch.linalg.cross(a, b).norm()), float(a @ b))
                angles.append(module.angle_proj(sinus(angle * 180 / (math.pi * module.sigma_a))))
            out[i, j] = e + torch.stack(angles).max(0).values
    return out


def test_geometric_embedding_matches_reference_and_is_invariant():
    pos, _ = _cloud(7, seed=5)
    module = GeometricStructureEmbedding(8, sigma_d=0.3, sigma_a=15, angle_k=3).double()
    out = module(pos)
    assert torch.allclose(out, _reference_embedding(module, pos), atol=1e-9)
    moved = module(transform_points(pos, _rigid(6)))
    assert torch.allclose(out, moved, atol=1e-9)
    assert module(pos[:1]).shape == (1, 1, 8)  # one point: distance part only
    with pytest.raises(ValueError, match="max_points"):
        GeometricStructureEmbedding(8, max_points=4)(pos)


def test_self_attention_positional_state_reference():
    block = RPESelfAttentionBlock(8, heads=2).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    r = torch.randn(5, 5, 8, dtype=torch.float64)
    out, pos = block(x, r)
    q = block.query(x).view(5, 2, 4)
    k = block.key(x).view(5, 2, 4)
    v = block.value(x).view(5, 2, 4)
    p = block.key_position(r).view(5, 5, 2, 4)  # the block itself never forms these [N, N, C] products
    vp = block.value_position(r).view(5, 5, 2, 4)
    expected = torch.zeros(5, 2, 4, dtype=torch.float64)
    expected_h = torch.zeros(5, 2, 4, dtype=torch.float64)
    for i in range(5):
        for head in range(2):
            s = torch.stack([(q[i, head] @ (k[j, head] + p[i, j, head])) / 2.0 for j in range(5)])
            expected_h[i, head] = torch.softmax(s, 0) @ v[:, head]
            others = [j for j in range(5) if j != i]
            expected[i, head] = torch.softmax(s[others], 0) @ vp[i, others, head]
    expected = block.pos_ffn(block.pos_norm(block.pos_out(expected.reshape(5, 8))))
    assert torch.allclose(pos, expected, atol=1e-10)
    expected_out = block.ffn(block.norm(x + block.out(expected_h.reshape(5, 8))))
    assert torch.allclose(out, expected_out, atol=1e-10)
    x.requires_grad_(True)
    r.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: torch.cat([t.flatten() for t in block(a, b)]), (x, r))
    with pytest.raises(ValueError, match="embedding: expected shape"):
        block(x, r[:4])


def test_cross_attention_shapes_and_errors():
    block = PositionalCrossAttentionBlock(8, heads=4)
    out = block(torch.randn(3, 8), torch.randn(3, 8), torch.randn(5, 8), torch.randn(5, 8))
    assert out.shape == (3, 8)
    with pytest.raises(ValueError, match="pos_y"):
        block(torch.randn(3, 8), torch.randn(3, 8), torch.randn(5, 8), torch.randn(5, 6))


def test_transformer_invariant_to_independent_rigid_motions():
    a, _ = _cloud(9, seed=7)
    b, _ = _cloud(11, seed=8)
    model = RotationInvariantTransformer(6, 8, 5, heads=2, sigma_d=0.5).double().eval()
    xa, xb = torch.randn(9, 6, dtype=torch.float64), torch.randn(11, 6, dtype=torch.float64)
    out_a, out_b = model(a, xa, b, xb)
    moved_a, moved_b = model(transform_points(a, _rigid(9)), xa, transform_points(b, _rigid(10)), xb)
    assert out_a.shape == (9, 5) and out_b.shape == (11, 5)
    assert torch.allclose(out_a, moved_a, atol=1e-9) and torch.allclose(out_b, moved_b, atol=1e-9)
    with pytest.raises(ValueError, match="blocks"):
        RotationInvariantTransformer(4, 4, 4, blocks=("self", "global"))


def test_optimal_transport_marginals_and_masks():
    ot = LearnableLogOptimalTransport(num_iterations=200).double()
    scores = torch.randn(2, 4, 3, dtype=torch.float64)
    row_masks = torch.tensor([[True, True, True, True], [True, True, False, False]])
    col_masks = torch.tensor([[True, True, True], [True, True, True]])
    with torch.no_grad():
        log_p = ot(scores, row_masks, col_masks)
    assert log_p.shape == (2, 5, 4)
    p = log_p.exp()
    for b in range(2):
        m, n = int(row_masks[b].sum()), int(col_masks[b].sum())
        rows = torch.cat([row_masks[b], torch.tensor([True])])
        # rows of real points sum to 1 (scaled by m + n), the dustbin row to n
        row_sums = p[b].sum(1)[rows]
        assert torch.allclose(row_sums[:-1], torch.ones(m, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(row_sums[-1], torch.tensor(float(n), dtype=torch.float64), atol=1e-6)
        assert torch.allclose(p[b].sum(0)[:-1], torch.ones(n, dtype=torch.float64), atol=1e-6)
        if not bool(rows.all()):
            assert float(p[b][~rows].abs().max()) < 1e-12  # masked rows carry no mass
    with pytest.raises(ValueError, match="scores"):
        ot(torch.randn(4, 3))
    assert "num_iterations=200" in repr(ot)


def test_optimal_transport_inference_path_matches_the_log_domain():
    # without gradients the layer iterates on exp-domain scalings; with them, in the log domain
    ot = LearnableLogOptimalTransport(num_iterations=30).double()
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 7, 5, generator=g, dtype=torch.float64) * 20  # a wide spread of scores
    row_masks = torch.rand(3, 7, generator=g) > 0.3
    col_masks = torch.rand(3, 5, generator=g) > 0.3
    row_masks[:, 0], col_masks[:, 0] = True, True
    row_masks[2] = False  # a patch pair with no real source point
    with torch.no_grad():
        fast = ot(scores, row_masks, col_masks)
    reference = ot(scores.clone().requires_grad_(True), row_masks, col_masks).detach()
    valid = (torch.cat([row_masks, torch.ones(3, 1, dtype=torch.bool)], 1).unsqueeze(2)
             & torch.cat([col_masks, torch.ones(3, 1, dtype=torch.bool)], 1).unsqueeze(1))
    finite = valid & torch.isfinite(reference)  # the empty pair's dustbin marginal is log 0 = -inf there
    assert torch.allclose(fast[finite], reference[finite], rtol=1e-9, atol=1e-9)
    assert torch.allclose(fast.exp(), reference.exp(), atol=1e-12)
    assert float(fast[~valid].max()) < -1e11


def test_point_instance_norm_reference_and_invariance():
    norm = PointInstanceNorm(3).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(10, 3, dtype=torch.float64)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) * norm.weight + norm.bias
    assert torch.allclose(norm(x), expected)
    assert torch.allclose(norm(x[torch.randperm(10)]).sort(0).values, norm(x).sort(0).values)
    assert torch.allclose(norm(x[:1]), norm.bias.unsqueeze(0))  # one point: the bias
    assert torch.autograd.gradcheck(norm, (x.clone().requires_grad_(True),))
    with pytest.raises(ValueError, match="x: expected"):
        norm(torch.randn(4, 2))
    assert repr(norm) == "PointInstanceNorm(3)"


def test_ppf_attention_checks_dtypes_at_the_door():
    layer = PPFAttention(4, 8, heads=4)
    index, ppf = torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2, 4)
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.float64"):
        layer(torch.randn(5, 4, dtype=torch.float64), index, ppf)
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.int64"):
        layer(torch.ones(5, 4, dtype=torch.long), index, ppf)
    with pytest.raises(TypeError, match="neighbor_index: expected an int64 or int32 tensor, got torch.float32"):
        layer(torch.randn(5, 4), index.float(), ppf)
    with pytest.raises(TypeError, match="ppf: expected a floating-point tensor"):
        layer(torch.randn(5, 4), index, ppf.long())
    with pytest.raises(TypeError, match="query_index: expected an int64 or int32 tensor"):
        layer(torch.randn(5, 4), index, ppf, torch.zeros(5))


def test_ppf_attention_index_ranges_are_debug_checks(monkeypatch):
    """Out-of-range indices used to raise IndexError inside geoattn, and values below -1 passed as padding."""
    layer = PPFAttention(4, 8, heads=4)
    x, ppf = torch.randn(5, 4), torch.zeros(3, 2, 4)
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"neighbor_index: expected values in \[-1, 5\) .*, got range \[0, 7\]"):
        layer(x, torch.tensor([[0, 7], [1, 2], [3, 4]]), ppf, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"neighbor_index: expected values in \[-1, 5\) .*, got range \[-2, 4\]"):
        layer(x, torch.tensor([[0, -2], [1, 2], [3, 4]]), ppf, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"query_index: expected values in \[0, 5\) .*, got range \[0, 5\]"):
        layer(x, torch.tensor([[0, 1], [1, 2], [3, 4]]), ppf, torch.tensor([0, 1, 5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_roitr_layers_run_in_every_dtype(dtype):
    pos, normal = _cloud(12, seed=3, dtype=torch.float32)
    index, ppf = ppf_groups(pos, normal, 4)
    torch.manual_seed(0)
    layer = PPFAttentionBlock(8, heads=2)
    transformer = RotationInvariantTransformer(8, 8, 8, heads=2, blocks=("self", "cross"))
    x = torch.randn(12, 8)
    expected = (layer(x, index, ppf), *transformer(pos, x, pos[:6], x[:6]))
    layer, transformer = layer.to(dtype), transformer.to(dtype)
    out = (layer(x.to(dtype), index, ppf), *transformer(pos.to(dtype), x.to(dtype), pos[:6].to(dtype), x[:6].to(dtype)))
    tolerance = 1e-1 if dtype == torch.bfloat16 else 1e-5
    for got, want in zip(out, expected):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)
