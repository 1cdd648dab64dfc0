r"""Segment and scatter reductions along dimension 0.

Two kinds of grouping are supported:

* **segments**: rows are grouped contiguously and described by CSR ``offsets`` of length ``S + 1``
  (segment ``s`` owns rows ``offsets[s]:offsets[s + 1]``); a sorted index converts with
  :func:`offsets_from_index`. These are the fast path (one pass, no atomics).
* **scatter**: rows carry an arbitrary (unsorted) ``index`` into ``dim_size`` groups.

For segment ``s`` with rows :math:`x_i`, the reductions are

.. math::
    \mathrm{sum}_s = \sum_{i \in s} x_i,\quad
    \mathrm{mean}_s = \frac{1}{|s|}\sum_{i \in s} x_i,\quad
    \mathrm{softmax}(x)_i = \frac{\exp(x_i - m_s)}{\sum_{j \in s} \exp(x_j - m_s)},\ m_s = \max_{j\in s} x_j.

Empty segments reduce to ``0`` (for max/min too). All functions support autograd and run on any device.
The backend is chosen once at import: ``torch_scatter`` when importable (an optional accelerator),
otherwise native ``torch.segment_reduce`` / ``index_add_`` / ``scatter_reduce_``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from geoattn import backends

__all__ = [
    "offsets_from_index",
    "index_from_offsets",
    "offsets_from_counts",
    "counts_from_offsets",
    "segment_sum",
    "segment_mean",
    "segment_max",
    "segment_min",
    "segment_softmax",
    "scatter_sum",
    "scatter_mean",
    "scatter_max",
    "scatter_min",
    "scatter_softmax",
    "SCATTER_BACKEND",
]

_torch_scatter = backends.torch_scatter()
SCATTER_BACKEND = "torch_scatter" if _torch_scatter is not None else "torch"


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _check_index_tensor(name: str, value, ndim: int = 1) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected an integer tensor (int64 or int32), got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")


def _check_src(src) -> None:
    if not isinstance(src, Tensor):
        raise TypeError(f"src: expected a torch.Tensor, got {type(src).__name__}")
    if src.dim() == 0:
        raise ValueError("src: expected at least 1 dimension [N, ...], got a 0-D tensor")


def _check_offsets(offsets: Tensor, num_rows: int) -> Tensor:
    _check_index_tensor("offsets", offsets)
    if offsets.numel() == 0:
        raise ValueError("offsets: expected length S + 1 >= 1 (CSR offsets start with 0), got an empty tensor")
    # The reductions read rows offsets[0]:offsets[-1] unchecked: a wrong bound reads past src. On the CPU the
    # two ends are read from host memory (no synchronisation, O(1)); on accelerators reading them would
    # synchronise with the host, so there they are checked only with GEOATTN_DEBUG=1.
    if offsets.device.type == "cpu" and not torch.compiler.is_compiling():
        ends = offsets.numpy()
        first, last = int(ends[0]), int(ends[-1])
    elif backends.debug_checks():
        first, last = offsets[[0, -1]].tolist()
    else:
        return offsets.long()
    if first != 0 or last != num_rows:
        raise ValueError(
            f"offsets: expected offsets[0] == 0 and offsets[-1] == src.size(0) == {num_rows}, "
            f"got offsets[0] == {first} and offsets[-1] == {last}"
        )
    return offsets.long()


def _check_index(index: Tensor, num_rows: int, dim_size: int | None) -> int:
    _check_index_tensor("index", index)
    if index.numel() != num_rows:
        raise ValueError(f"index: expected {num_rows} entries (src.size(0)), got {index.numel()}")
    if dim_size is None:
        # the output size depends on the data: one host synchronisation (pass dim_size to avoid it)
        return int(index.max()) + 1 if index.numel() else 0
    if dim_size < 0:
        raise ValueError(f"dim_size: expected a non-negative integer, got {dim_size}")
    if index.numel() and backends.debug_checks():
        low, high = index.aminmax()
        low, high = int(low), int(high)
        if low < 0 or high >= dim_size:
            raise ValueError(f"index: expected values in [0, {dim_size}) (dim_size), got range [{low}, {high}]")
    return dim_size


# ---------------------------------------------------------------------------------------------
# index <-> offsets
# ---------------------------------------------------------------------------------------------
def offsets_from_counts(counts: Tensor) -> Tensor:
    """CSR offsets ``[S + 1]`` (int64, starting at 0) from per-segment counts ``[S]``."""
    _check_index_tensor("counts", counts)
    offsets = counts.new_zeros(counts.numel() + 1, dtype=torch.long)
    torch.cumsum(counts, dim=0, out=offsets[1:])
    return offsets


def counts_from_offsets(offsets: Tensor) -> Tensor:
    """Per-segment counts ``[S]`` from CSR offsets ``[S + 1]``."""
    _check_index_tensor("offsets", offsets)
    return offsets[1:] - offsets[:-1]


def offsets_from_index(index: Tensor, num_segments: int | None = None) -> Tensor:
    """CSR offsets ``[S + 1]`` from a sorted (ascending) segment index ``[N]``.

    ``num_segments`` defaults to ``index.max() + 1``; trailing empty segments need it explicitly.
    With ``GEOATTN_DEBUG=1`` an unsorted or out-of-range index raises ``ValueError`` (a full pass over the
    index, so it is off by default).
    """
    _check_index_tensor("index", index)
    if num_segments is None:
        num_segments = int(index.max()) + 1 if index.numel() else 0
    if index.numel() and backends.debug_checks():
        if bool((index[1:] < index[:-1]).any()):
            raise ValueError("index: expected a sorted (ascending) index; sort it or use the scatter_* functions")
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= num_segments:
            raise ValueError(f"index: expected values in [0, {num_segments}), got range [{low}, {high}]")
    if index.numel() == 0:
        return index.new_zeros(num_segments + 1, dtype=torch.long)
    # One binary-search pass (what torch's sparse COO->CSR conversion does), cheaper than bincount + cumsum.
    # The conversion reads the raw buffer, so a strided view must be made contiguous first.
    return torch._convert_indices_from_coo_to_csr(index.contiguous(), num_segments, out_int32=False)


def index_from_offsets(offsets: Tensor, num_rows: int | None = None) -> Tensor:
    """Segment index ``[N]`` (int64, sorted) from CSR offsets ``[S + 1]``; inverse of :func:`offsets_from_index`.

    ``num_rows`` is ``N = offsets[-1]``; giving it saves a host synchronisation on accelerators.
    """
    counts = counts_from_offsets(offsets)
    segments = torch.arange(counts.numel(), device=offsets.device)
    if num_rows is None:
        num_rows = int(offsets[-1]) if offsets.numel() else 0
    return torch.repeat_interleave(segments, counts, output_size=num_rows)


# ---------------------------------------------------------------------------------------------
# segment reductions (contiguous groups)
# ---------------------------------------------------------------------------------------------
def _segment_reduce(src: Tensor, offsets: Tensor, reduce: str) -> Tensor:
    _check_src(src)
    offsets = _check_offsets(offsets, src.size(0))
    num_segments = offsets.numel() - 1
    if src.size(0) == 0 or num_segments == 0:
        return src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    if _torch_scatter is not None:
        # max/min of torch_scatter return (values, argmax).
        out = _torch_scatter.segment_csr(src, offsets, reduce=reduce)
        return out[0] if isinstance(out, tuple) else out
    if (src.device.type == "cpu" and src[:1].numel() >= 32 and not torch.compiler.is_compiling()
            and torch.get_num_threads() > 1):
        # Measured on a quiet machine, 1M rows into 100k segments: segment_reduce runs on one thread
        # whatever the setting, while the scatter kernels use them all; with 2 threads they win on rows of
        # >= 32 values (64: sum 40 vs 49 ms, max 39 vs 69 ms) and lose on narrower rows. The thread count
        # is not traceable, so torch.compile takes segment_reduce (no graph break).
        index = index_from_offsets(offsets, src.size(0))
        out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
        if reduce == "sum":
            return out.index_add_(0, index, src)
        # In place on a fresh buffer (no copy; autograd records it); include_self=False leaves empty
        # segments at their initial 0.
        return out.scatter_reduce_(0, _broadcast_index(index, src), src, "a" + reduce, include_self=False)
    out = torch.segment_reduce(src, reduce, offsets=offsets, axis=0, unsafe=True)
    if reduce in ("max", "min"):
        # Empty segments come back as -inf/+inf; define them as 0 (a copy only when autograd needs it).
        # Unconditionally: testing for empty segments first would synchronise with the host.
        empty = (offsets[1:] == offsets[:-1]).view((-1,) + (1,) * (src.dim() - 1))
        out = out.masked_fill(empty, 0) if out.requires_grad else out.masked_fill_(empty, 0)
    return out


def segment_sum(src: Tensor, offsets: Tensor) -> Tensor:
    """Sum of rows per segment: ``src [N, ...]``, ``offsets [S + 1]`` -> ``[S, ...]``."""
    return _segment_reduce(src, offsets, "sum")


def segment_mean(src: Tensor, offsets: Tensor) -> Tensor:
    """Mean of rows per segment (0 for empty segments): ``[N, ...]`` -> ``[S, ...]``."""
    total = _segment_reduce(src, offsets, "sum")
    # Dividing a sum keeps empty segments at 0 (the native mean returns 0/0 = nan there).
    counts = counts_from_offsets(offsets).clamp(min=1).to(total.dtype)
    return total / counts.view((-1,) + (1,) * (total.dim() - 1))


def segment_max(src: Tensor, offsets: Tensor) -> Tensor:
    """Maximum per segment (0 for empty segments): ``[N, ...]`` -> ``[S, ...]``."""
    return _segment_reduce(src, offsets, "max")


def segment_min(src: Tensor, offsets: Tensor) -> Tensor:
    """Minimum per segment (0 for empty segments): ``[N, ...]`` -> ``[S, ...]``."""
    return _segment_reduce(src, offsets, "min")


def _expand_to_rows(values: Tensor, offsets: Tensor, num_rows: int) -> Tensor:
    return values.repeat_interleave(counts_from_offsets(offsets), dim=0, output_size=num_rows)


def segment_softmax(src: Tensor, offsets: Tensor) -> Tensor:
    """Softmax over the rows of each segment, independently per trailing channel: ``[N, ...]`` -> ``[N, ...]``.

    The maximum is subtracted for stability (detached: softmax is shift invariant); half-precision inputs
    are accumulated in float32 and returned in their own dtype.
    """
    _check_src(src)
    offsets = _check_offsets(offsets, src.size(0))
    if src.size(0) == 0:
        return src.clone()
    compute = src.float() if src.dtype in (torch.float16, torch.bfloat16) else src
    seg_max = segment_max(compute.detach(), offsets)
    shifted = (compute - _expand_to_rows(seg_max, offsets, src.size(0))).exp()
    denom = segment_sum(shifted, offsets)
    return (shifted / _expand_to_rows(denom, offsets, src.size(0))).to(src.dtype)


# ---------------------------------------------------------------------------------------------
# scatter reductions (arbitrary index)
# ---------------------------------------------------------------------------------------------
def _broadcast_index(index: Tensor, src: Tensor) -> Tensor:
    return index.long().view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
    """Sum of rows per group of an unsorted ``index [N]``: ``[N, ...]`` -> ``[dim_size, ...]``."""
    _check_src(src)
    dim_size = _check_index(index, src.size(0), dim_size)
    if _torch_scatter is not None:
        return _torch_scatter.scatter(src, index.long(), dim=0, dim_size=dim_size, reduce="sum")
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index.long(), src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
    """Mean of rows per group (0 for empty groups): ``[N, ...]`` -> ``[dim_size, ...]``."""
    _check_src(src)
    dim_size = _check_index(index, src.size(0), dim_size)
    total = scatter_sum(src, index, dim_size)
    counts = torch.bincount(index.long(), minlength=dim_size).clamp_(min=1)
    return total / counts.view((-1,) + (1,) * (src.dim() - 1)).to(total.dtype)


def _scatter_extreme(src: Tensor, index: Tensor, dim_size: int | None, reduce: str) -> Tensor:
    _check_src(src)
    dim_size = _check_index(index, src.size(0), dim_size)
    if _torch_scatter is not None:
        return _torch_scatter.scatter(src, index.long(), dim=0, dim_size=dim_size, reduce=reduce)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    # include_self=False leaves empty groups at their initial 0.
    return out.scatter_reduce_(0, _broadcast_index(index, src), src, "a" + reduce, include_self=False)


def scatter_max(src: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
    """Maximum per group (0 for empty groups): ``[N, ...]`` -> ``[dim_size, ...]``."""
    return _scatter_extreme(src, index, dim_size, "max")


def scatter_min(src: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
    """Minimum per group (0 for empty groups): ``[N, ...]`` -> ``[dim_size, ...]``."""
    return _scatter_extreme(src, index, dim_size, "min")


def scatter_softmax(src: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
    """Softmax over the rows sharing an (unsorted) index value: ``[N, ...]`` -> ``[N, ...]``."""
    _check_src(src)
    dim_size = _check_index(index, src.size(0), dim_size)
    if src.size(0) == 0:
        return src.clone()
    compute = src.float() if src.dtype in (torch.float16, torch.bfloat16) else src
    index = index.long()
    group_max = scatter_max(compute.detach(), index, dim_size)
    shifted = (compute - group_max.index_select(0, index)).exp()
    denom = scatter_sum(shifted, index, dim_size)
    return (shifted / denom.index_select(0, index)).to(src.dtype)
