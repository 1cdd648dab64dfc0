"""Rotated BEV NMS against the plain greedy loop over boxes_iou_bev."""
from __future__ import annotations

import math
import time

import pytest
import torch

import geoattn.detection.nms as nms_module
from geoattn.detection.nms import greedy_keep, multiclass_nms_bev, nms_bev, suppression_matrix
from geoattn.sparse.boxes import boxes_iou_bev


def reference_nms(boxes, scores, threshold, pre=None, post=None):
    """The obviously-correct greedy loop (one box at a time)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre is not None:
        order = order[:pre]
    candidates = boxes[order]
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep = []
    for position in range(order.numel()):
        if suppressed[position]:
            continue
        keep.append(int(order[position]))
        iou = boxes_iou_bev(candidates[position:position + 1], candidates)[0]
        suppressed |= iou > threshold
    if post is not None:
        keep = keep[:post]
    return torch.tensor(keep, dtype=torch.long)


def reference_multiclass(boxes, scores, labels, thresholds, pre=None, post=None):
    """OpenPCDet class_specific_nms: loop over classes, concatenate."""
    out = []
    for k, threshold in enumerate(thresholds):
        idx = (labels == k).nonzero(as_tuple=True)[0]
        p = pre[k] if isinstance(pre, (list, tuple)) else pre
        q = post[k] if isinstance(post, (list, tuple)) else post
        if idx.numel():
            out.append(idx[reference_nms(boxes[idx], scores[idx], threshold, p, q).to(idx.device)])
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def crowded_scene(n, seed, dtype=torch.float32, objects=6, spread=1.5, quantise=True):
    """Boxes clustered on a few objects (heavy overlap), exact duplicates and tied scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 12
    which = torch.randint(0, objects, (n,), generator=g)
    boxes = torch.zeros(n, 7, dtype=torch.float64)
    boxes[:, :2] = centres[which] + torch.randn(n, 2, generator=g) * spread * 0.3
    boxes[:, 2] = torch.randn(n, generator=g) * 0.2
    boxes[:, 3] = 3.5 + torch.rand(n, generator=g)
    boxes[:, 4] = 1.6 + torch.rand(n, generator=g) * 0.4
    boxes[:, 5] = 1.5
    boxes[:, 6] = torch.rand(n, generator=g) * 2 * math.pi
    dup = torch.randint(0, n, (n // 8,), generator=g)
    boxes[torch.randint(0, n, (n // 8,), generator=g)] = boxes[dup]
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if quantise:
        scores = torch.round(scores * 10) / 10  # many ties
    return boxes.to(dtype), scores.to(dtype)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.7])
def test_matches_greedy_loop_on_crowded_scenes(seed, threshold):
    boxes, scores = crowded_scene(70, seed)
    assert torch.equal(nms_bev(boxes, scores, threshold), reference_nms(boxes, scores, threshold))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_tiny_chunks(dtype):
    boxes, scores = crowded_scene(90, 11, dtype=dtype, quantise=False)
    expected = reference_nms(boxes, scores, 0.3)
    for pairs in (1, 7, 100, 1 << 16):  # chunking never changes the answer
        assert torch.equal(nms_bev(boxes, scores, 0.3, max_pairs_per_chunk=pairs), expected)


def test_empty_and_single_box():
    empty = nms_bev(torch.zeros(0, 7), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    one = nms_bev(torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0.3]]), torch.tensor([0.2]), 0.5)
    assert one.tolist() == [0]
    assert multiclass_nms_bev(torch.zeros(0, 7), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                              [0.5, 0.5]).shape == (0,)


def test_threshold_edges_strict_greater():
    # Axis-aligned 2 x 1 box and a 1 x 1 box inside it: IoU exactly 0.5 (exact in floating point).
    boxes = torch.tensor([[0.0, 0, 0, 2, 1, 1, 0], [0.5, 0, 0, 1, 1, 1, 0], [10.0, 0, 0, 1, 1, 1, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert boxes_iou_bev(boxes[:1], boxes[1:2]).item() == 0.5
    assert nms_bev(boxes, scores, 0.5).tolist() == [0, 1, 2]  # 0.5 > 0.5 is false: kept
    assert nms_bev(boxes, scores, 0.4999).tolist() == [0, 2]
    # threshold 0: any overlap suppresses, disjoint boxes never do; threshold 1: nothing suppressed
    assert nms_bev(boxes, scores, 0.0).tolist() == [0, 2]
    same = torch.tensor([[0.0, 0, 0, 2, 1, 1, 0]] * 3)
    assert nms_bev(same, torch.tensor([0.1, 0.5, 0.5]), 1.0).tolist() == [1, 2, 0]
    assert nms_bev(same, torch.tensor([0.1, 0.5, 0.5]), 0.99).tolist() == [1]  # tie: lower index first
    # touching edges (zero-area overlap) are not suppressed at threshold 0
    touch = torch.tensor([[0.0, 0, 0, 2, 1, 1, 0], [2.0, 0, 0, 2, 1, 1, 0]])
    assert nms_bev(touch, torch.tensor([0.9, 0.8]), 0.0).tolist() == [0, 1]


def test_pre_and_post_max_size():
    boxes, scores = crowded_scene(80, 3, quantise=False)
    for pre, post in ((None, 5), (10, None), (25, 3), (1, 1), (500, 500)):
        assert torch.equal(nms_bev(boxes, scores, 0.2, pre, post), reference_nms(boxes, scores, 0.2, pre, post))


def test_bad_input():
    boxes, scores = crowded_scene(5, 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms_bev(boxes, scores, 1.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        nms_bev(boxes, scores, float("nan"))
    with pytest.raises(ValueError, match="scores"):
        nms_bev(boxes, scores[:3], 0.5)
    with pytest.raises(ValueError, match="boxes"):
        nms_bev(boxes[:, :5], scores, 0.5)
    with pytest.raises(ValueError, match="pre_max_size"):
        nms_bev(boxes, scores, 0.5, pre_max_size=0)
    labels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        multiclass_nms_bev(boxes, scores, labels + 2, [0.5, 0.5])
    with pytest.raises(TypeError, match="labels"):
        multiclass_nms_bev(boxes, scores, labels.float(), [0.5])
    with pytest.raises(ValueError, match="post_max_size"):
        multiclass_nms_bev(boxes, scores, labels, [0.5, 0.5], post_max_size=[1, 2, 3])


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_matches_per_class_loop(seed):
    boxes, scores = crowded_scene(90, 20 + seed)
    labels = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(seed))
    thresholds = [0.75, 0.6, 0.55][: 3]
    for pre, post in ((None, None), (4096, 500), ([10, 5, 20], [3, None, 4]), (7, 2)):
        got = multiclass_nms_bev(boxes, scores, labels, thresholds, pre, post)
        assert torch.equal(got, reference_multiclass(boxes, scores, labels, thresholds, pre, post))


def test_classes_never_suppress_each_other():
    box = [0.0, 0, 0, 4, 2, 1.5, 0]
    boxes = torch.tensor([box, box, box])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([1, 0, 1])
    assert multiclass_nms_bev(boxes, scores, labels, [0.5, 0.5]).tolist() == [1, 0]
    assert nms_bev(boxes, scores, 0.5).tolist() == [0]


def test_long_suppression_chain():
    # A row of boxes, each overlapping only its neighbours, scores falling along the row: greedy keeps
    # every other box; the dependency chain has the length of the row (worst case for the rounds).
    n = 60
    boxes = torch.zeros(n, 7, dtype=torch.float64)
    boxes[:, 0] = torch.arange(n, dtype=torch.float64) * 1.2
    boxes[:, 3:6] = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    scores = torch.linspace(1, 0, n, dtype=torch.float64)
    assert nms_bev(boxes, scores, 0.1).tolist() == list(range(0, n, 2))
    order = torch.sort(scores, descending=True, stable=True).indices
    sup = suppression_matrix(boxes[order], torch.full((n,), 0.1, dtype=torch.float64))
    assert torch.equal(greedy_keep(sup, dense=True), greedy_keep(sup, dense=False))
    assert torch.equal(nms_bev(boxes, scores, 0.1), reference_nms(boxes, scores, 0.1))


def test_greedy_keep_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n = int(torch.randint(1, 40, (1,), generator=g))
        sup = torch.triu(torch.rand(n, n, generator=g) < 0.2, diagonal=1)
        keep = torch.zeros(n, dtype=torch.bool)
        for b in range(n):
            keep[b] = not bool((keep[:b] & sup[:b, b]).any())
        assert torch.equal(greedy_keep(sup), keep)
        assert torch.equal(greedy_keep(sup, dense=True), keep)  # the CUDA-style matrix-vector rounds


def test_memory_bound_at_4096_boxes(monkeypatch):
    """4096 boxes over a Waymo-sized scene: every IoU evaluation stays within the pair budget."""
    g = torch.Generator().manual_seed(0)
    n, objects = 4096, 250
    centres = (torch.rand(objects, 2, generator=g) - 0.5) * 150
    which = torch.randint(0, objects, (n,), generator=g)
    boxes = torch.zeros(n, 7)
    boxes[:, :2] = centres[which] + torch.randn(n, 2, generator=g) * 0.4
    boxes[:, 3:6] = torch.tensor([4.5, 2.0, 1.6]) + torch.rand(n, 3, generator=g) * 0.3
    boxes[:, 6] = torch.rand(n, generator=g) * 6.28
    scores = torch.rand(n, generator=g)
    calls = []
    real = nms_module.boxes_iou_bev

    def recording(a, b):
        calls.append(a.shape[0] * b.shape[0])
        return real(a, b)

    monkeypatch.setattr(nms_module, "boxes_iou_bev", recording)
    budget = 1 << 14
    start = time.perf_counter()
    keep = nms_bev(boxes, scores, 0.7, max_pairs_per_chunk=budget)
    elapsed = time.perf_counter() - start
    assert calls and max(calls) <= budget
    assert sum(calls) < n * n // 20  # circle pruning: a small fraction of the 16.7 M pairs
    print(f"nms_bev 4096 boxes: {elapsed:.3f} s, {len(calls)} IoU chunks, {sum(calls)} pairs, {keep.numel()} kept")
    # spot-check the result against the greedy loop on the first 400 candidates
    sub = torch.sort(scores, descending=True, stable=True).indices[:400]
    monkeypatch.setattr(nms_module, "boxes_iou_bev", real)
    assert torch.equal(sub[nms_bev(boxes[sub], scores[sub], 0.7)], sub[reference_nms(boxes[sub], scores[sub], 0.7)])


def test_suppression_matrix_is_upper_triangular_and_exact():
    boxes, _ = crowded_scene(40, 5, dtype=torch.float64)
    thr = torch.full((40,), 0.3, dtype=torch.float64)
    sup = suppression_matrix(boxes, thr, max_pairs_per_chunk=33)
    dense = torch.triu(boxes_iou_bev(boxes, boxes) > 0.3, diagonal=1)
    assert torch.equal(sup, dense)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    boxes, scores = crowded_scene(300, 9, quantise=True)
    boxes, scores = boxes.cuda(), scores.cuda()
    assert torch.equal(nms_bev(boxes, scores, 0.5).cpu(), reference_nms(boxes, scores, 0.5))
    labels = torch.randint(0, 3, (300,)).cuda()
    got = multiclass_nms_bev(boxes, scores, labels, [0.75, 0.6, 0.55], 100, 20).cpu()
    assert torch.equal(got, reference_multiclass(boxes, scores, labels, [0.75, 0.6, 0.55], 100, 20).cpu())
