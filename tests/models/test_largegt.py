"""LargeGT model: modes, batch of one, parameter usage, reset, repr, errors."""
from __future__ import annotations

import pytest
import torch

from geoattn.models import LargeGT


@pytest.mark.parametrize("mode", ["local", "global", "full"])
def test_modes_shapes_and_all_parameters_used(mode):
    model = LargeGT(10, 16, 3, num_nodes=30, mode=mode, num_centroids=8, global_channels=8)
    tokens = torch.randn(6, 9, 10)
    out = model(tokens, node_index=torch.arange(6))
    assert out.shape == (6, 3)
    out.sum().backward()
    unused = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert unused == []  # DDP without find_unused_parameters needs every parameter in the graph
    if mode == "global":
        assert model(None, x=torch.randn(4, 10), node_index=torch.arange(4)).shape == (4, 3)


def test_batch_of_one_train_and_eval_and_positional_encoding():
    model = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8, pos_channels=4)
    tokens, pos = torch.randn(1, 6, 10), torch.randn(1, 4)
    model(tokens, node_index=torch.tensor([2]), pos_enc=pos).sum().backward()
    model.eval()
    assert model(tokens, pos_enc=pos).shape == (1, 3)


def test_reset_parameters_and_repr():
    model = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8)
    before = model.head[0].weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.head[0].weight)
    assert repr(model) == "LargeGT(10, 16, 3, mode='full')"


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        LargeGT(10, 16, 3, num_nodes=5, mode="both")
    with pytest.raises(ValueError, match="num_nodes"):
        LargeGT(10, 16, 3, mode="full")
    model = LargeGT(10, 16, 3, mode="local")
    with pytest.raises(ValueError, match=r"tokens: expected a 3-D tensor \[B, 3K, F\] with F=10"):
        model(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="tokens: required"):
        model(None, x=torch.randn(2, 10))


def test_input_dropout_only_in_training():
    model = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8, input_dropout=0.9)
    tokens = torch.randn(4, 6, 10)
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    torch.manual_seed(1)
    first = model(tokens, node_index=torch.arange(4))
    torch.manual_seed(2)
    assert not torch.allclose(first, model(tokens, node_index=torch.arange(4)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_model_trains_and_infers_in_every_dtype(dtype):
    model = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8, pos_channels=4).to(dtype)
    tokens, pos = torch.randn(6, 9, 10, dtype=dtype), torch.randn(6, 4, dtype=dtype)
    out = model(tokens, node_index=torch.arange(6), pos_enc=pos)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    model.eval()
    assert torch.isfinite(model(tokens, pos_enc=pos).float()).all()


def test_wrong_input_dtype_is_refused_at_the_door():
    model = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8)
    with pytest.raises(TypeError, match="tokens: expected dtype torch.float32 .*, got torch.float64"):
        model(torch.randn(2, 9, 10, dtype=torch.float64), node_index=torch.arange(2))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.int64"):
        model(torch.randn(2, 9, 10), x=torch.ones(2, 10, dtype=torch.long), node_index=torch.arange(2))
