"""Losses: ground-truth overlaps against brute force, circle loss behaviour, transport labels."""
from __future__ import annotations

import torch

from geoattn.registration.losses import overlap_circle_loss, patch_overlaps, transport_labels, transport_nll_loss
from geoattn.registration.matching import partition_points_to_nodes
from geoattn.sparse.geometry import make_transform, random_rotation, transform_points


def test_patch_overlaps_brute_force():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(120, 3, generator=g, dtype=torch.float64)
    truth = make_transform(random_rotation(generator=g, dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3],
                                                                                           dtype=torch.float64))
    tgt = transform_points(src[40:], truth)  # partial overlap
    sp = partition_points_to_nodes(src, src[:6], 30)
    tp = partition_points_to_nodes(tgt, tgt[:5], 30)
    src_node, tgt_node, overlap = patch_overlaps(src, tgt, sp.index, tp.index, truth, radius=0.05)
    aligned = transform_points(src, truth)
    dense = {}
    for a in range(6):
        for b in range(5):
            pa = aligned[sp.index[a][sp.mask[a]]]
            pb = tgt[tp.index[b][tp.mask[b]]]
            d = torch.cdist(pa, pb) < 0.05
            value = float((d.any(1).double().mean() + d.any(0).double().mean()) / 2)
            if value > 0:
                dense[(a, b)] = value
    got = {(int(a), int(b)): float(o) for a, b, o in zip(src_node, tgt_node, overlap)}
    assert got.keys() == dense.keys()
    for key in dense:
        assert abs(got[key] - dense[key]) < 1e-9


def test_circle_loss_prefers_matching_features():
    feats = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    idx = torch.arange(6)
    good = overlap_circle_loss(feats, feats, idx, idx, torch.full((6,), 0.8))
    shuffled = overlap_circle_loss(feats, feats[torch.randperm(6)].roll(1, 0), idx, idx, torch.full((6,), 0.8))
    assert good < shuffled
    learn = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_(True)
    loss = overlap_circle_loss(learn, feats, idx, idx, torch.full((6,), 0.8))
    loss.backward()
    assert learn.grad is not None and torch.isfinite(learn.grad).all()
    empty = overlap_circle_loss(learn, feats, idx[:0], idx[:0], torch.zeros(0))
    assert float(empty.detach()) == 0.0


def test_transport_labels_and_nll():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    src_patch = torch.tensor([[0, 1, 2, -1]])
    tgt_patch = torch.tensor([[1, 0, -1, -1]])
    labels = transport_labels(pts, pts, src_patch, tgt_patch, torch.eye(4), radius=0.1)
    assert labels.shape == (1, 5, 5)
    assert labels[0, 0, 1] and labels[0, 1, 0] and labels[0, 2, -1]  # point 2 unmatched -> dustbin
    assert not labels[0, 3].any() and not labels[0, :, 2].any()  # padding has no label
    log_p = torch.log_softmax(torch.randn(1, 5, 5), dim=-1)
    assert torch.isclose(transport_nll_loss(log_p, labels), -log_p[labels].mean())
