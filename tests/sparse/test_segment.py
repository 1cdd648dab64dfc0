import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.sparse.segment import (
    counts_from_offsets,
    index_from_offsets,
    offsets_from_counts,
    offsets_from_index,
    scatter_max,
    scatter_mean,
    scatter_min,
    scatter_softmax,
    scatter_sum,
    segment_max,
    segment_mean,
    segment_min,
    segment_softmax,
    segment_sum,
)

SEGMENT_FNS = {"sum": segment_sum, "mean": segment_mean, "max": segment_max, "min": segment_min}
SCATTER_FNS = {"sum": scatter_sum, "mean": scatter_mean, "max": scatter_max, "min": scatter_min}


def reference_reduce(src, groups, num_groups, reduce):
    """Loop over groups: obviously correct, slow."""
    out = src.new_zeros((num_groups,) + tuple(src.shape[1:]))
    for g in range(num_groups):
        rows = src[groups == g]
        if rows.numel() == 0:
            continue
        out[g] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.amax(0), "min": rows.amin(0)}[reduce]
    return out


def reference_softmax(src, groups, num_groups):
    out = torch.empty_like(src)
    for g in range(num_groups):
        mask = groups == g
        if mask.any():
            out[mask] = torch.softmax(src[mask], dim=0)
    return out


def random_offsets(counts):
    return offsets_from_counts(torch.tensor(counts, dtype=torch.long))


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def intra_op_threads(request):
    """Segment reductions pick their CPU kernel by thread count: run both paths."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_segment_matches_reference_with_empty_segments(reduce, intra_op_threads):
    offsets = random_offsets([3, 0, 1, 5, 0, 2])
    index = index_from_offsets(offsets)
    src = torch.randn(int(offsets[-1]), 4, 2)
    out = SEGMENT_FNS[reduce](src, offsets)
    torch.testing.assert_close(out, reference_reduce(src, index, 6, reduce))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_segment_wide_rows_match_reference(reduce, intra_op_threads):
    """Rows of >= 32 values take the scatter kernels when several threads are available."""
    offsets = random_offsets([2, 0, 5, 1])
    index = index_from_offsets(offsets)
    src = torch.randn(8, 40, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(SEGMENT_FNS[reduce](src, offsets), reference_reduce(src.detach(), index, 4, reduce))
    assert torch.autograd.gradcheck(lambda x: SEGMENT_FNS[reduce](x, offsets), (src,))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_scatter_matches_reference_unsorted(reduce):
    index = torch.tensor([4, 0, 4, 1, 0, 6, 6, 6, 0, 4])
    src = torch.randn(10, 3)
    out = SCATTER_FNS[reduce](src, index, 8)
    torch.testing.assert_close(out, reference_reduce(src, index, 8, reduce))


def test_softmax_matches_reference(intra_op_threads):
    offsets = random_offsets([4, 0, 1, 7])
    index = index_from_offsets(offsets)
    src = torch.randn(12, 3) * 10
    torch.testing.assert_close(segment_softmax(src, offsets), reference_softmax(src, index, 4))
    perm = torch.randperm(12)
    torch.testing.assert_close(scatter_softmax(src[perm], index[perm], 4), reference_softmax(src, index, 4)[perm])


def test_softmax_half_precision_is_stable():
    offsets = random_offsets([5, 3])
    src = (torch.randn(8, 2) * 1e3).half()
    out = segment_softmax(src, offsets)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(segment_sum(out.float(), offsets), torch.ones(2, 2), atol=1e-2, rtol=0)


@pytest.mark.parametrize("fn", [segment_sum, segment_mean, segment_max, segment_min, segment_softmax])
def test_segment_gradcheck(fn, intra_op_threads):  # includes an empty segment
    offsets = random_offsets([3, 0, 4, 1])
    src = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, offsets), (src,))


@pytest.mark.parametrize("fn", [scatter_sum, scatter_mean, scatter_max, scatter_min, scatter_softmax])
def test_scatter_gradcheck(fn):
    index = torch.tensor([2, 0, 2, 1, 0, 5, 5, 0])
    src = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, index, 7), (src,))


def test_empty_inputs(intra_op_threads):
    offsets = random_offsets([0, 0, 0])
    src = torch.empty(0, 5)
    for fn in SEGMENT_FNS.values():
        assert fn(src, offsets).shape == (3, 5) and not fn(src, offsets).any()
    assert segment_softmax(src, offsets).shape == (0, 5)
    assert segment_sum(src, torch.zeros(1, dtype=torch.long)).shape == (0, 5)
    for fn in SCATTER_FNS.values():
        assert fn(src, torch.empty(0, dtype=torch.long), 2).shape == (2, 5)
    assert scatter_softmax(src, torch.empty(0, dtype=torch.long), 0).shape == (0, 5)


def test_single_row_and_non_contiguous():
    src = torch.randn(6, 4).t()  # non-contiguous [4, 6]
    offsets = random_offsets([1, 3])
    torch.testing.assert_close(segment_sum(src, offsets), torch.stack([src[0], src[1:].sum(0)]))
    torch.testing.assert_close(segment_softmax(src[:1], random_offsets([1])), torch.ones(1, 6))


def test_index_offsets_round_trip_and_trailing_empty():
    index = torch.tensor([0, 0, 2, 2, 2])
    offsets = offsets_from_index(index, num_segments=5)
    assert offsets.tolist() == [0, 2, 2, 5, 5, 5]
    assert counts_from_offsets(offsets).tolist() == [2, 0, 3, 0, 0]
    assert torch.equal(index_from_offsets(offsets), index)
    assert offsets_from_index(torch.empty(0, dtype=torch.long)).tolist() == [0]
    assert offsets_from_index(torch.empty(0, dtype=torch.long), 2).tolist() == [0, 0, 0]
    assert offsets_from_index(index.int(), num_segments=5).tolist() == offsets.tolist()


def test_offsets_from_strided_index():
    batch = torch.repeat_interleave(torch.arange(2), 3000)
    assert offsets_from_index(batch[::50], 2).tolist() == [0, 60, 120]


def test_debug_checks_catch_unsorted_and_out_of_range_index(monkeypatch):
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    with pytest.raises(ValueError, match="sorted"):
        offsets_from_index(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"index: expected values in \[0, 2\)"):
        offsets_from_index(torch.tensor([0, 3]), num_segments=2)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"offsets\[-1\] == src.size\(0\) == 4"):
        segment_sum(torch.randn(4, 2), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="offsets: expected an integer tensor"):
        segment_sum(torch.randn(4, 2), torch.tensor([0.0, 4.0]))
    with pytest.raises(ValueError, match="index: expected 4 entries"):
        scatter_sum(torch.randn(4, 2), torch.tensor([0, 1]), 2)
    with pytest.raises(TypeError, match="src: expected a torch.Tensor"):
        segment_sum([1.0, 2.0], torch.tensor([0, 2]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=12))
def test_offsets_properties(counts):
    offsets = random_offsets(counts)
    assert offsets[0] == 0 and offsets[-1] == sum(counts)
    assert (offsets[1:] >= offsets[:-1]).all()
    index = index_from_offsets(offsets)
    assert torch.equal(offsets_from_index(index, len(counts)), offsets)
    src = torch.randn(sum(counts), 2, dtype=torch.float64)
    torch.testing.assert_close(segment_sum(src, offsets), scatter_sum(src, index, len(counts)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_scatter_is_permutation_invariant(groups, rnd):
    index = torch.tensor(groups)
    src = torch.randn(len(groups), 3, dtype=torch.float64)
    perm = list(range(len(groups)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    for fn in SCATTER_FNS.values():
        torch.testing.assert_close(fn(src[perm], index[perm], 5), fn(src, index, 5))
    torch.testing.assert_close(scatter_softmax(src[perm], index[perm], 5), scatter_softmax(src, index, 5)[perm])


def test_scatter_index_range_is_a_debug_check(monkeypatch):
    """An index past ``dim_size`` is named with its range under GEOATTN_DEBUG=1 (torch's own IndexError
    otherwise, a device-side assert on CUDA)."""
    monkeypatch.setenv("GEOATTN_DEBUG", "1")
    for fn in (*SCATTER_FNS.values(), scatter_softmax):
        with pytest.raises(ValueError, match=r"index: expected values in \[0, 2\) \(dim_size\), got range \[0, 5\]"):
            fn(torch.randn(3, 2), torch.tensor([0, 5, 1]), 2)


@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("threads", [1, 2])
def test_segment_reductions_read_no_tensor_value(reduce, threads):
    """Given offsets (and dim_size), the reductions never read a tensor value into Python: no host
    synchronisation on CUDA. Empty segments are zeroed without first testing whether there are any."""
    from tests.nn._host_sync import forbid_host_sync

    src = torch.randn(7, 40)  # rows of >= 32 values take the multi-threaded scatter path with 2 threads
    offsets = torch.tensor([0, 3, 3, 7])
    index = index_from_offsets(offsets)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with forbid_host_sync():
            out = SEGMENT_FNS[reduce](src, offsets)
            scattered = SCATTER_FNS[reduce](src, index, 3)
            softmax = segment_softmax(src, offsets)
            rows = index_from_offsets(offsets, 7)
    finally:
        torch.set_num_threads(previous)
    expected = reference_reduce(src, index, 3, reduce)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(scattered, expected)
    torch.testing.assert_close(softmax, reference_softmax(src, index, 3))
    assert torch.equal(rows, index)
