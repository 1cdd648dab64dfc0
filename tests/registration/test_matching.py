"""Coarse-to-fine matching pieces against brute-force references."""
from __future__ import annotations

import torch

from geoattn.nn.roitr import LearnableLogOptimalTransport
from geoattn.registration.matching import (fine_correspondences, partition_points_to_nodes, patch_scores,
                                           superpoint_matching)


def test_partition_assigns_nearest_node_and_limits_patch_size():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(200, 3, generator=g)
    nodes = points[:7]
    patches = partition_points_to_nodes(points, nodes, point_limit=10)
    nearest = torch.cdist(points, nodes).argmin(1)
    assert torch.equal(patches.point_to_node, nearest)
    assert patches.index.shape[0] == 7 and patches.index.shape[1] <= 10
    assert (patches.mask[:, :-1] | ~patches.mask[:, 1:]).all()  # members first, padding last
    for node in range(7):
        members = patches.index[node][patches.mask[node]]
        assert (nearest[members] == node).all()
        owned = (nearest == node).nonzero().flatten()
        # the kept members are the node's nearest owned points
        order = owned[torch.argsort((points[owned] - nodes[node]).norm(dim=1))]
        assert set(members.tolist()) <= set(order.tolist())
    assert patches.node_valid.all()


def test_superpoint_matching_dual_normalisation_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    src, tgt, score = superpoint_matching(a, b, 4)
    s = torch.exp(-torch.cdist(a, b) ** 2)
    ref = (s / s.sum(1, keepdim=True)) * (s / s.sum(0, keepdim=True))
    values, flat = ref.flatten().topk(4)
    assert torch.allclose(score, values, atol=1e-6)
    assert torch.equal(src * 6 + tgt, flat)
    src, _, _ = superpoint_matching(a, b, 100, src_valid=torch.tensor([True, False, True, True, True]))
    assert 1 not in src.tolist() and src.numel() == 24


def test_fine_correspondences_mutual_topk_and_threshold():
    points = torch.arange(12, dtype=torch.float32).view(4, 3)
    src_patch = torch.tensor([[0, 1, -1]])
    tgt_patch = torch.tensor([[2, 3, -1]])
    probs = torch.tensor([[[0.6, 0.1, 0.0, 0.3], [0.2, 0.7, 0.0, 0.1], [0.0, 0.0, 0.0, 1.0], [0.2, 0.2, 1.0, 0.0]]])
    corr = fine_correspondences(points, points, src_patch, tgt_patch, probs.clamp(min=1e-12).log(), k=1,
                                threshold=0.05)
    assert corr.src.tolist() == [points[0].tolist(), points[1].tolist()]
    assert corr.tgt.tolist() == [points[2].tolist(), points[3].tolist()]
    assert torch.allclose(corr.scores, torch.tensor([0.6, 0.7]))
    corr = fine_correspondences(points, points, src_patch, tgt_patch, probs.clamp(min=1e-12).log(), k=1,
                                threshold=0.65)
    assert corr.src.shape == (1, 3) and corr.patch.tolist() == [0]


def test_patch_scores_and_transport_end_to_end_identity():
    feats = torch.nn.functional.normalize(torch.randn(8, 16), dim=1) * 6
    patch = torch.arange(8).view(1, 8)
    scores = patch_scores(feats, feats, patch, patch)
    assert torch.allclose(scores[0], feats @ feats.T / 4.0)
    log_p = LearnableLogOptimalTransport(50)(scores)
    corr = fine_correspondences(feats, feats, patch, patch, log_p, k=1, threshold=0.05)
    assert torch.equal(corr.src, corr.tgt) and corr.src.size(0) == 8
