"""Whole-model forward passes that read no tensor value into Python with GEOATTN_DEBUG off.

RoITr and LoGoNetHead are not here: sampling, neighbour search, camera projection and their padded pair
tables have data-dependent shapes, so they read sizes back by design.
"""
from __future__ import annotations

import pytest
import torch

from geoattn.models import GLAGCN, LargeGT, TemporalConvLifter
from tests.nn._host_sync import forbid_host_sync


def _runs():
    large = LargeGT(10, 16, 3, num_nodes=30, num_centroids=8, global_channels=8, pos_channels=4)
    tokens, pos, nodes = torch.randn(6, 9, 10), torch.randn(6, 4), torch.tensor([1, 5, 5, 9, 0, 29])
    glagcn, lifter = GLAGCN(channels=8, filter_widths=(3, 3)), TemporalConvLifter(channels=16, filter_widths=(3, 3))
    window = torch.randn(2, 9, 17, 2)
    return {
        "LargeGT train": lambda: large.train()(tokens, node_index=nodes, pos_enc=pos).sum().backward(),
        "LargeGT eval": lambda: large.eval()(tokens, pos_enc=pos),
        "GLAGCN train": lambda: glagcn.train()(window).sum().backward(),
        "TemporalConvLifter eval": lambda: lifter.eval()(window),
    }


@pytest.mark.parametrize("name", list(_runs()))
def test_model_forward_reads_no_tensor_value(name, monkeypatch):
    monkeypatch.delenv("GEOATTN_DEBUG", raising=False)
    run = _runs()[name]
    run()
    with forbid_host_sync():
        run()
