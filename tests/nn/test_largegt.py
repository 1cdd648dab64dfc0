"""LargeGTLocalAttention and CodebookGlobalAttention against slow references and their stated properties."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.nn import CodebookGlobalAttention, LargeGTLocalAttention


def reference_local(layer: LargeGTLocalAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-head loops with explicit softmax (eval mode, no dropout)."""
    outputs = []
    d, heads = layer.head_channels, layer.heads
    for sample in tokens:
        z = layer.lin_in(sample)
        y = layer.norm(z)
        qkv = layer.lin_qkv(y).view(sample.size(0), 3, heads, d)
        head_outputs = []
        for h in range(heads):
            q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            weights = torch.softmax(q @ k.t() / math.sqrt(d), dim=-1)
            head_outputs.append(weights @ v)
        out = layer.norm_out(layer.lin_skip(z) + layer.lin_out(torch.cat(head_outputs, dim=-1)))
        node = out[0]
        scores = torch.stack([layer.readout(torch.cat([node, out[t]])) for t in range(1, out.size(0))]).flatten()
        weights = torch.softmax(scores, dim=0)
        outputs.append(node + (weights[:, None] * out[1:]).sum(0))
    return torch.stack(outputs)


def test_local_matches_reference_and_shapes():
    layer = LargeGTLocalAttention(8, heads=2).eval()
    tokens = torch.randn(3, 7, 8)
    out, weights = layer(tokens, return_attention=True)
    assert out.shape == (3, 16) and layer.out_channels == 16 and weights.shape == (3, 6)
    assert torch.allclose(weights.sum(1), torch.ones(3))
    assert torch.allclose(out, reference_local(layer, tokens), atol=1e-5)
    assert repr(layer) == "LargeGTLocalAttention(8, heads=2, head_channels=8)"
    assert LargeGTLocalAttention(8, heads=4, head_channels=2)(tokens).shape == (3, 8)


def test_local_readout_is_invariant_to_neighbour_order():
    layer = LargeGTLocalAttention(6, heads=3, head_channels=4).eval()
    tokens = torch.randn(4, 10, 6)
    permutation = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(9)])
    assert torch.allclose(layer(tokens), layer(tokens[:, permutation]), atol=1e-5)
    # token 0 is special: moving it changes the result
    swapped = torch.cat([tokens[:, 1:2], tokens[:, :1], tokens[:, 2:]], dim=1)
    assert not torch.allclose(layer(tokens), layer(swapped), atol=1e-4)


def test_local_gradients_and_degenerate_sets():
    layer = LargeGTLocalAttention(4, heads=2, head_channels=3).double().eval()
    tokens = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (tokens,))
    single = torch.randn(3, 1, 4, dtype=torch.float64)  # only the target token: readout of nothing
    out = layer(single)
    assert out.shape == (3, 6) and torch.isfinite(out).all()
    assert layer(torch.randn(0, 5, 4, dtype=torch.float64)).shape == (0, 6)
    layer.train()
    layer(torch.randn(1, 5, 4, dtype=torch.float64)).sum().backward()  # batch of one in training


def test_local_bad_arguments():
    layer = LargeGTLocalAttention(8)
    with pytest.raises(ValueError, match=r"tokens: expected a 3-D tensor \[B, T, C\] with last dimension 8"):
        layer(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="tokens"):
        layer([[1.0]])
    with pytest.raises(ValueError, match="at least one token"):
        layer(torch.randn(2, 0, 8))


def make_codebook(**kwargs) -> CodebookGlobalAttention:
    defaults = dict(in_channels=6, num_nodes=40, num_centroids=8, global_channels=4, heads=2, head_channels=3)
    defaults.update(kwargs)
    return CodebookGlobalAttention(**defaults)


def test_codebook_counts_and_assignment_buffer():
    layer = make_codebook()
    assert layer.assignment.dtype == torch.int32 and layer.assignment.shape == (40,)
    assert int(layer.cluster_counts.sum()) == 40
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        nodes = torch.randint(0, 40, (16,), generator=generator)  # duplicates included
        layer(torch.randn(16, 6, generator=generator), nodes)
        assert int(layer.cluster_counts.sum()) == 40
        assert torch.equal(layer.cluster_counts, torch.bincount(layer.assignment.long(), minlength=8))


def test_codebook_updates_only_in_training():
    layer = make_codebook()
    x, nodes = torch.randn(10, 6), torch.arange(10)
    layer.eval()
    before = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    layer(x, nodes)
    layer(x)  # node_index is optional in eval
    for name, buffer in layer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    layer.train()
    layer(x, nodes)
    assert not torch.equal(layer.embedding, before["embedding"])
    assert not torch.equal(layer.ema_cluster_size, before["ema_cluster_size"])
    assert not torch.equal(layer.norm.running_mean, before["norm.running_mean"])


def test_codebook_ema_matches_reference_step():
    layer = make_codebook(decay=0.9)
    x, nodes = torch.randn(12, 6), torch.arange(12)
    embedding, size, ema_w = layer.embedding.clone(), layer.ema_cluster_size.clone(), layer.ema_w.clone()
    queries = layer.lin_global(x).detach()
    normalised = (queries - queries.mean(0)) / torch.sqrt(queries.var(0, unbiased=False) + layer.eps)
    nearest = torch.stack([((embedding - q) ** 2).sum(1).argmin() for q in normalised])
    counts = torch.bincount(nearest, minlength=8).float()
    size = 0.9 * size + 0.1 * counts
    size = (size + layer.eps) / (size.sum() + 8 * layer.eps) * size.sum()
    sums = torch.zeros_like(ema_w)
    for q, c in zip(normalised, nearest):
        sums[c] += q
    ema_w = 0.9 * ema_w + 0.1 * sums
    layer(x, nodes)
    assert torch.allclose(layer.ema_cluster_size, size, atol=1e-5)
    assert torch.allclose(layer.embedding, ema_w / size[:, None], atol=1e-4)
    assert torch.equal(layer.assignment[:12].long(), nearest)
    scale = torch.sqrt(layer.norm.running_var + layer.eps)
    assert torch.allclose(layer.embedding_output, layer.embedding * scale + layer.norm.running_mean, atol=1e-5)


def test_codebook_attention_reference_and_empty_clusters():
    layer = make_codebook(num_nodes=5, num_centroids=8).eval()
    with torch.no_grad():
        layer.assignment.copy_(torch.tensor([0, 0, 3, 3, 6], dtype=torch.int32))
        layer.cluster_counts.copy_(torch.bincount(layer.assignment.long(), minlength=8))
    x = torch.randn(4, 6)
    out, alpha = layer(x, return_attention=True)
    assert out.shape == (4, 6) and alpha.shape == (4, 2, 8)
    empty = torch.tensor([1, 2, 4, 5, 7])
    assert (alpha[:, :, empty] == 0).all()  # exactly zero, not just small
    assert torch.allclose(alpha.sum(-1), torch.ones(4, 2))
    # slow reference
    q = layer.lin_query(layer.lin_global(x)).view(4, 2, 3)
    k = layer.lin_key(layer.embedding_output).view(8, 2, 3)
    v = layer.lin_value(layer.embedding_output[:, :4]).view(8, 2, 3)
    expected = torch.zeros(4, 2, 3)
    counts = layer.cluster_counts.float()
    for b in range(4):
        for h in range(2):
            logits = torch.stack([
                (q[b, h] @ k[c, h]) / math.sqrt(3) + (math.log(counts[c]) if counts[c] else -math.inf) for c in range(8)
            ])
            expected[b, h] = torch.softmax(logits, 0) @ v[:, h]
    assert torch.allclose(out, expected.reshape(4, 6), atol=1e-5)


def test_codebook_gradients_positional_encoding_and_batch_of_one():
    layer = make_codebook(pos_channels=2)
    x = torch.randn(5, 6, requires_grad=True)
    pos = torch.randn(5, 2, requires_grad=True)
    out = layer(x, torch.arange(5), pos)
    out.sum().backward()
    assert x.grad is not None and pos.grad is not None and layer.lin_query.weight.grad is not None
    assert layer.embedding.grad is None  # centroids are buffers: no gradient reaches them
    layer(torch.randn(1, 6), torch.tensor([7]), torch.randn(1, 2))  # batch of one in training
    assert int(layer.cluster_counts.sum()) == 40
    double = make_codebook().double().eval()
    inputs = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: double(t), (inputs,))
    assert "num_centroids=8" in repr(layer)
    layer.reset_parameters()
    assert int(layer.cluster_counts.sum()) == 40


def test_codebook_bad_arguments():
    layer = make_codebook()
    with pytest.raises(ValueError, match="node_index: required"):
        layer(torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"node_index: expected shape \(2,\) \(one id per row of x\), got \(1,\)"):
        layer(torch.randn(2, 6), torch.tensor([0]))
    with pytest.raises(TypeError, match="node_index: expected an int64 or int32 tensor, got torch.float32"):
        layer(torch.randn(2, 6), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.float64"):
        layer(torch.randn(2, 6, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.int64"):
        layer(torch.ones(2, 6, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="pos_enc: expected dtype torch.float32 .*, got torch.float64"):
        make_codebook(pos_channels=2)(torch.randn(2, 6), torch.tensor([0, 1]), torch.randn(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="tokens: expected dtype torch.float32 .*, got torch.bfloat16"):
        LargeGTLocalAttention(6)(torch.randn(2, 3, 6, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x: expected a 2-D tensor"):
        layer(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pos_enc"):
        layer(torch.randn(2, 6), torch.tensor([0, 1]), torch.randn(2, 2))
    with pytest.raises(ValueError, match="pos_enc"):
        make_codebook(pos_channels=2)(torch.randn(2, 6), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="decay"):
        make_codebook(decay=1.0)


def test_codebook_node_index_range_is_a_debug_check(monkeypatch):
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"node_index: expected ids in \[0, 40\), got range \[0, 40\]"):
        make_codebook()(torch.randn(2, 6), torch.tensor([0, 40]))


def _codebook_state(layer):
    return {name: value.clone() for name, value in layer.named_buffers()}


@pytest.mark.parametrize("rows", [1, 4])
def test_codebook_skips_a_non_finite_batch(rows):
    """One NaN in one batch used to make every centroid and running statistic NaN for good."""
    layer = make_codebook()
    layer(torch.randn(4, 6), torch.arange(4))
    before = _codebook_state(layer)
    x = torch.randn(rows, 6)
    x[0, 2] = float("nan")
    layer(x, torch.arange(10, 10 + rows))
    after = _codebook_state(layer)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    layer.eval()
    assert torch.isfinite(layer(torch.randn(3, 6))).all()
    layer.train()
    layer(torch.randn(4, 6), torch.arange(4))  # a finite batch still trains the codebook
    assert not torch.equal(layer.embedding, before["embedding"])
    assert torch.isfinite(layer.embedding).all() and int(layer.cluster_counts.sum()) == 40


def test_codebook_non_finite_batch_raises_in_debug(monkeypatch):
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    layer = make_codebook()
    with pytest.raises(ValueError, match="x: expected finite queries for the codebook update"):
        layer(torch.tensor([[1.0, 2.0, float("inf"), 0.0, 0.0, 0.0], [0.0] * 6]), torch.arange(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_largegt_layers_run_in_every_dtype(dtype):
    """float32, float64 and bfloat16, training (codebook update) and eval, against float32 in eval."""
    local, codebook = LargeGTLocalAttention(6), make_codebook(pos_channels=2)
    tokens, x, pos = torch.randn(5, 4, 6), torch.randn(5, 6), torch.randn(5, 2)
    local.eval()
    expected_local = local(tokens)
    codebook.train()
    codebook(x, torch.arange(5), pos)  # float32 update, then the same state in every dtype
    codebook.eval()
    expected_global = codebook(x, pos_enc=pos)
    local, codebook = local.to(dtype), codebook.to(dtype)
    out_local = local(tokens.to(dtype))
    out_global = codebook(x.to(dtype), pos_enc=pos.to(dtype))
    assert out_local.dtype == dtype and out_global.dtype == dtype
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out_local.float(), expected_local, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(out_global.float(), expected_global, atol=tolerance, rtol=tolerance)
    local.train()
    codebook.train()
    local(tokens.to(dtype)).sum().backward()
    codebook(x.to(dtype), torch.arange(5), pos.to(dtype)).sum().backward()
    assert torch.isfinite(codebook.embedding).all() and codebook.embedding.dtype == dtype
    assert int(codebook.cluster_counts.sum()) == 40
