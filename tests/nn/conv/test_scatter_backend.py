"""The optional torch-scatter backend (the ``scatter`` extra) gives the results of the native torch one."""
from __future__ import annotations

import pytest
import torch

from geoattn.sparse import segment

torch_scatter = pytest.importorskip("torch_scatter", reason="torch-scatter is not installed (extra 'scatter')")


def native(monkeypatch, function, *args):
    with monkeypatch.context() as patch:
        patch.setattr(segment, "_torch_scatter", None)
        return function(*args)


@pytest.mark.parametrize("name", ["segment_sum", "segment_mean", "segment_max", "segment_min", "segment_softmax"])
def test_segment_reductions_match_native(monkeypatch, name):
    assert segment.SCATTER_BACKEND == "torch_scatter"
    src = torch.randn(50, 6, dtype=torch.float64)
    offsets = torch.tensor([0, 0, 7, 20, 20, 50])  # empty segments included
    function = getattr(segment, name)
    torch.testing.assert_close(function(src, offsets), native(monkeypatch, function, src, offsets))


@pytest.mark.parametrize("name", ["scatter_sum", "scatter_mean", "scatter_max", "scatter_min", "scatter_softmax"])
def test_scatter_reductions_match_native(monkeypatch, name):
    src = torch.randn(50, 6, dtype=torch.float64)
    index = torch.randint(0, 9, (50,))
    function = getattr(segment, name)
    torch.testing.assert_close(function(src, index, 10), native(monkeypatch, function, src, index, 10))


def test_message_passing_layers_match_their_dense_forms_with_torch_scatter():
    from geoattn.nn import LargeGTConv, LargeGTLocalAttention

    dense = LargeGTLocalAttention(8, heads=2).double().eval()
    conv = LargeGTConv(8, heads=2).double().eval()
    conv.load_state_dict(dense.state_dict())
    neighbours = torch.randint(0, 20, (20, 4))
    edge_index = torch.stack([neighbours.reshape(-1), torch.arange(20).repeat_interleave(4)])
    x = torch.randn(20, 8, dtype=torch.float64)
    tokens = x[torch.cat([torch.arange(20).unsqueeze(1), neighbours], 1)]
    torch.testing.assert_close(conv(x, edge_index), dense(tokens), atol=1e-6, rtol=0)
