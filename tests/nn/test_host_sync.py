"""Hot paths read no tensor value into Python when GEOATTN_DEBUG is off (no host synchronisation on CUDA).

The CPU test patches ``Tensor.item`` / ``__int__`` / ``tolist`` / ``__bool__`` (see ``_host_sync``); the CUDA
test runs the same forward passes under ``torch.cuda.set_sync_debug_mode("error")``, which also catches
synchronisations inside operators. Layers whose output shape depends on the data (LoGoNet's projection and
pair table, RoITr's neighbour search and sampling, window partitions) are built outside the guarded block.
"""
from __future__ import annotations

import pytest
import torch

from geoattn.kernels.sla import scattered_linear_attention
from geoattn.nn import (AdaptiveGraphConv, CodebookGlobalAttention, GraphTemporalUnit, LargeGTLocalAttention,
                        PerJointHead, PPFAttentionBlock, adjacency_subsets, skeleton_edge_index, H36M_PARENTS)
from geoattn.nn.logonet import FeatureDynamicAggregation
from geoattn.nn.roitr import LearnableLogOptimalTransport, PositionalCrossAttentionBlock, RPESelfAttentionBlock
from geoattn.sparse.window import WindowIndex
from tests.nn._host_sync import HostSyncError, forbid_host_sync


def _cases(device):
    """``name -> (module or None, callable running its forward pass)``; inputs built here, outside the guard."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    cases = {}
    local = LargeGTLocalAttention(8).to(device)
    tokens = randn(4, 5, 8)
    cases["LargeGTLocalAttention"] = lambda: local(tokens).sum().backward()
    codebook = CodebookGlobalAttention(8, num_nodes=30, num_centroids=6, global_channels=4).to(device)
    x, node_index = randn(5, 8), torch.tensor([3, 7, 3, 0, 29], device=device)
    cases["CodebookGlobalAttention train"] = lambda: codebook.train()(x, node_index).sum().backward()
    cases["CodebookGlobalAttention eval"] = lambda: codebook.eval()(x)
    adjacency = adjacency_subsets(skeleton_edge_index(H36M_PARENTS), 17)
    unit = GraphTemporalUnit(2, 8, adjacency, kernel_size=3).to(device)
    head = PerJointHead(8).to(device)
    frames = randn(2, 2, 9, 17)
    cases["GraphTemporalUnit + PerJointHead"] = lambda: head(unit(frames)).sum().backward()
    conv = AdaptiveGraphConv(2, 8, adjacency).to(device).eval()
    cases["AdaptiveGraphConv eval"] = lambda: conv(frames)
    block = PPFAttentionBlock(8, heads=2).to(device)
    features = randn(10, 8)
    neighbor_index = torch.randint(-1, 10, (10, 4), generator=generator).to(device)
    ppf = randn(10, 4, 4)
    cases["PPFAttentionBlock"] = lambda: block(features, neighbor_index, ppf).sum().backward()
    self_block, cross_block = RPESelfAttentionBlock(8, heads=2).to(device), PositionalCrossAttentionBlock(8, 2).to(device)
    embedding = randn(10, 10, 8)

    def transformer_blocks():
        y, pos = self_block(features, embedding)
        cross_block(y, pos, features[:6], pos[:6]).sum().backward()

    cases["RPESelfAttentionBlock + PositionalCrossAttentionBlock"] = transformer_blocks
    transport = LearnableLogOptimalTransport(5).to(device)
    scores = randn(1, 6, 7)
    cases["LearnableLogOptimalTransport"] = lambda: transport(scores)
    fda = FeatureDynamicAggregation(8, ffn_channels=16).to(device).eval()
    grid = randn(3, 8, 3)
    counts = torch.randint(0, 3, (3, 8), generator=generator).to(device)
    grid_features = randn(3, 8, 8)
    cases["FeatureDynamicAggregation"] = lambda: fda(grid_features, grid, counts, counts == 0)
    coords = torch.cat([torch.zeros(60, 2, dtype=torch.long), torch.randint(0, 30, (60, 2), generator=generator)], 1)
    window = WindowIndex.from_coords(torch.unique(coords, dim=0).to(device), 6)
    q = randn(window.num_voxels, 2, 8).relu().requires_grad_()
    k, v = randn(window.num_voxels, 2, 8).relu(), randn(window.num_voxels, 2, 8)
    scattered_linear_attention(q, k, v, window).sum().backward()  # tables are built once per partition
    cases["scattered_linear_attention"] = lambda: scattered_linear_attention(q, k, v, window).sum().backward()
    return cases


_NAMES = list(_cases("cpu"))


@pytest.mark.parametrize("name", _NAMES)
def test_forward_reads_no_tensor_value(name, monkeypatch):
    monkeypatch.delenv("GEOATTN_DEBUG", raising=False)
    run = _cases("cpu")[name]
    run()  # first call outside the guard (lazy tables), then the hot path
    with forbid_host_sync():
        run()


def test_guard_sees_debug_checks(monkeypatch):
    """The guard can fail: with GEOATTN_DEBUG=1 the value checks read tensors and are caught."""
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    run = _cases("cpu")["CodebookGlobalAttention train"]
    with pytest.raises(HostSyncError, match="Tensor"):
        with forbid_host_sync():
            run()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", _NAMES)
def test_forward_does_not_synchronise_on_cuda(name, monkeypatch):
    monkeypatch.delenv("GEOATTN_DEBUG", raising=False)
    run = _cases("cuda")[name]
    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
