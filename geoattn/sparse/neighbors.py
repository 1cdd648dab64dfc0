r"""Neighbour search on point clouds: k nearest neighbours, radius search, furthest point sampling, grid
subsampling. Batch-aware in the PyG way: ``batch`` vectors are sorted ascending and a query only sees the
support points of its own batch element.

Neighbour order is fully specified so that every backend returns the same answer: neighbours are sorted by
squared Euclidean distance

.. math:: d^2(q, p) = (q_x - p_x)^2 + (q_y - p_y)^2 + (q_z - p_z)^2

(summed in that order, in the input dtype), and equal distances are broken by the smaller support index.
The selected set is therefore unique even when ties straddle the ``k``-th place.

Backends (chosen per call; ``backend=`` overrides, ``GEOATTN_BACKEND=naive`` forces ``"torch"``):

* ``"open3d"``: ``open3d.ml.torch.ops`` (kd-tree knn, FPS), used for CPU float32/float64 inputs (FPS:
  float32) when :func:`geoattn.backends.open3d_ops` finds it. One kd-tree call per batch (row splits) for
  ``k + 1`` neighbours, then an O(M k) numpy pass that imposes the tie rule; the rare rows whose ``k``-th
  and ``(k+1)``-th distances tie are redone exactly (numpy brute force for a few rows, else one kd-tree
  radius search).
* ``"torch"``: blocked brute force (exact distances on query blocks of at most ``2**24`` entries, then
  ``topk``), any device and dtype: the CUDA path and the fallback. It is O(M N) per batch element, so
  on the CPU it suits clouds up to some ten thousand points; install open3d for whole LiDAR frames.

``grid_subsample`` has one implementation (integer cell keys, a sorted unique, a scatter mean).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from geoattn import backends
from geoattn.sparse.segment import offsets_from_index, scatter_sum

__all__ = ["knn", "radius", "fps", "grid_subsample", "neighbor_backend"]

# Elements of one [query block, support] distance matrix in the torch backend (float32: 64 MiB).
_BLOCK_ELEMENTS = 1 << 24
_BACKENDS = ("open3d", "torch")


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_points(name: str, value, dim: int | None = 3) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 2 or (dim is not None and value.size(1) != dim):
        expected = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(f"{name}: expected a 2-D tensor {expected}, got shape {tuple(value.shape)}")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _real_scalar(value) -> float | None:
    """``value`` as a Python float when it is a real number (Python, numpy or a one-element tensor)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _check_batch(name: str, batch, num_points: int, device: torch.device) -> int:
    """Validate sorted batch ids; returns ``last id + 1`` (0 when empty)."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of int64 batch ids, got {type(batch).__name__}")
    if batch.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected an integer tensor (int64), got dtype {batch.dtype}")
    if batch.dim() != 1 or batch.numel() != num_points:
        raise ValueError(f"{name}: expected shape ({num_points},), got {tuple(batch.shape)}")
    if batch.device != device:
        raise ValueError(f"{name}: expected device {device}, got {batch.device}")
    if batch.numel() == 0:
        return 0
    if batch.device.type == "cpu":
        # numpy on the CPU: one cheap single-threaded pass, no parallel-region start-up for a tiny check
        values = batch.numpy()
        unsorted, first, last = bool((values[1:] < values[:-1]).any()), int(values[0]), int(values[-1])
    elif backends.debug_checks():
        unsorted = bool((batch[1:] < batch[:-1]).any())
        first, last = batch[[0, -1]].tolist()
    else:  # the number of batch elements is still needed: one read, no pass over the ids
        return int(batch[-1]) + 1
    if unsorted:
        raise ValueError(f"{name}: expected sorted (ascending) batch ids, got an unsorted tensor")
    if first < 0:
        raise ValueError(f"{name}: expected non-negative batch ids, got minimum {first}")
    return last + 1


def _batch_offsets(batch: Tensor | None, num_points: int, num_batches: int, device) -> Tensor:
    if batch is None:
        return torch.tensor([0, num_points], dtype=torch.long, device=device)
    # contiguous: the CSR conversion reads the index buffer directly
    return offsets_from_index(batch.long().contiguous(), num_batches)


def _pair_offsets(support: Tensor, query: Tensor, support_batch, query_batch) -> tuple[Tensor, Tensor]:
    """CSR offsets ``[B + 1]`` of support and query points per batch element (same ``B`` for both)."""
    if (support_batch is None) != (query_batch is None):
        raise ValueError(
            "support_batch, query_batch: expected both or neither, got "
            f"support_batch={'None' if support_batch is None else 'tensor'}, "
            f"query_batch={'None' if query_batch is None else 'tensor'}"
        )
    if support_batch is None:
        return (
            _batch_offsets(None, support.size(0), 1, support.device),
            _batch_offsets(None, query.size(0), 1, query.device),
        )
    num_batches = max(
        _check_batch("support_batch", support_batch, support.size(0), support.device),
        _check_batch("query_batch", query_batch, query.size(0), query.device),
        1,
    )
    return (
        _batch_offsets(support_batch, support.size(0), num_batches, support.device),
        _batch_offsets(query_batch, query.size(0), num_batches, query.device),
    )


def _check_pair(support, query) -> None:
    _check_points("support", support)
    _check_points("query", query)
    if query.dtype != support.dtype:
        raise TypeError(f"query: expected dtype {support.dtype} (the dtype of support), got {query.dtype}")
    if query.device != support.device:
        raise ValueError(f"query: expected device {support.device} (the device of support), got {query.device}")


def _select_backend(backend: str | None, points: Tensor, dtypes=(torch.float32, torch.float64)) -> str:
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend: expected one of {_BACKENDS} or None, got {backend!r}")
        if backend == "open3d" and (
            backends.open3d_ops() is None or points.device.type != "cpu" or points.dtype not in dtypes
        ):
            raise ValueError(
                "backend: 'open3d' needs open3d.ml.torch and CPU tensors of dtype "
                f"{' or '.join(str(d) for d in dtypes)}, got device {points.device}, dtype {points.dtype}"
                + ("" if backends.open3d_ops() is not None else " (open3d.ml.torch is not importable)")
            )
        return backend
    return neighbor_backend(points, dtypes)


def neighbor_backend(points: Tensor, dtypes=(torch.float32, torch.float64)) -> str:
    """Backend that :func:`knn`, :func:`radius` and :func:`fps` use for ``points``: ``"open3d"`` or ``"torch"``."""
    if backends.forced_backend() == "naive":
        return "torch"
    if backends.open3d_ops() is not None and points.device.type == "cpu" and points.dtype in dtypes:
        return "open3d"
    return "torch"


# ---------------------------------------------------------------------------------------------
# exact row-wise selection shared by both backends
# ---------------------------------------------------------------------------------------------
def _block_dist2(query: Tensor, support: Tensor) -> Tensor:
    """``[Mq, N]`` squared distances summed x, y, z in order (bitwise equal to the open3d kd-tree's)."""
    out = None
    diff = None
    for axis in range(query.size(1)):
        diff = torch.sub(query[:, axis, None], support[None, :, axis], out=diff)
        if out is None:
            out = diff * diff
        else:
            out += diff.mul_(diff)  # separate multiply and add: no fused multiply-add rounding
    return out


def _order_ties(dist2: Tensor, index: Tensor) -> None:
    """In place: rows already ordered by distance get equal distances ordered by ascending index."""
    if dist2.size(1) < 2:
        return
    rows = (dist2[:, 1:] == dist2[:, :-1]).any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    sub_index, order = index[rows].sort(dim=1)
    sub_dist2, order = dist2[rows].gather(1, order).sort(dim=1, stable=True)
    dist2[rows] = sub_dist2
    index[rows] = sub_index.gather(1, order)


def _select_up_to(dist2: Tensor, threshold: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """First ``k`` entries by (distance, index) of rows ``dist2 [R, n]`` whose ``k``-th smallest is ``threshold``.

    Only the few entries ``<= threshold`` are sorted, so this is O(n) per row, not O(n log n).
    """
    num_rows = dist2.size(0)
    row, column = (dist2 <= threshold[:, None]).nonzero(as_tuple=True)  # column ascending within a row
    values = dist2[row, column]
    order = values.argsort(stable=True)
    order = order[row[order].argsort(stable=True)]
    row, column, values = row[order], column[order], values[order]
    counts = torch.bincount(row, minlength=num_rows)
    rank = torch.arange(row.numel(), device=row.device) - (torch.cumsum(counts, 0) - counts)[row]
    keep = rank < k
    out_values = dist2.new_full((num_rows, k), math.inf)
    out_index = torch.full((num_rows, k), -1, dtype=torch.long, device=dist2.device)
    out_values[row[keep], rank[keep]] = values[keep]
    out_index[row[keep], rank[keep]] = column[keep]
    return out_values, out_index


def _exact_topk(dist2: Tensor, k: int, limit: float | None) -> tuple[Tensor, Tensor]:
    """Smallest ``min(k, n)`` entries per row of ``dist2 [R, n]`` by (distance, index)."""
    num = dist2.size(1)
    if num <= k:
        return dist2.sort(dim=1, stable=True)
    values, index = dist2.topk(k + 1, dim=1, largest=False, sorted=True)
    boundary = values[:, k - 1] == values[:, k]
    if limit is not None:
        boundary &= values[:, k - 1] <= limit
    values, index = values[:, :k].contiguous(), index[:, :k].contiguous()
    _order_ties(values, index)
    rows = boundary.nonzero().squeeze(1)
    if rows.numel():
        values[rows], index[rows] = _select_up_to(dist2[rows], values[rows, k - 1], k)
    return values, index


def _knn_rows_torch(support, query, k, support_offsets, query_offsets, limit):
    """Blocked brute-force knn: per batch element, query blocks of at most ``_BLOCK_ELEMENTS`` distances."""
    index_out = torch.full((query.size(0), k), -1, dtype=torch.long, device=query.device)
    dist2_out = torch.full((query.size(0), k), math.inf, dtype=query.dtype, device=query.device)
    support_bounds, query_bounds = support_offsets.tolist(), query_offsets.tolist()
    for b in range(len(support_bounds) - 1):
        s0, s1 = support_bounds[b], support_bounds[b + 1]
        q0, q1 = query_bounds[b], query_bounds[b + 1]
        if s1 == s0 or q1 == q0:
            continue
        support_b = support[s0:s1]
        block = max(1, _BLOCK_ELEMENTS // (s1 - s0))
        for start in range(q0, q1, block):
            end = min(start + block, q1)
            values, index = _exact_topk(_block_dist2(query[start:end], support_b), k, limit)
            width = values.size(1)
            dist2_out[start:end, :width] = values
            index_out[start:end, :width] = index + s0
    return index_out, dist2_out


def _knn_open3d(support, query, k, support_offsets, query_offsets, limit):
    """kd-tree search for ``k + 1`` neighbours, then the tie rule in numpy.

    The post-processing is O(M k) and runs in numpy: on a loaded machine a dozen small multi-threaded torch
    ops cost more than the search itself.
    """
    ops = backends.open3d_ops()
    result = ops.knn_search(
        support, query, k + 1, support_offsets, query_offsets, index_dtype=torch.int64, return_distances=True
    )
    num_query = query.size(0)
    found, found_dist2 = result.neighbors_index.numpy(), result.neighbors_distance.numpy()
    if found.size == num_query * (k + 1):
        index, dist2 = found.reshape(num_query, k + 1), found_dist2.reshape(num_query, k + 1)
    else:  # some batch elements have at most k points: pad their rows
        splits = result.neighbors_row_splits.numpy()
        row = np.repeat(np.arange(num_query), np.diff(splits))
        column = np.arange(found.size) - splits[:-1][row]
        index = np.full((num_query, k + 1), -1, dtype=np.int64)
        dist2 = np.full((num_query, k + 1), np.inf, dtype=found_dist2.dtype)
        index[row, column] = found
        dist2[row, column] = found_dist2
    boundary = (dist2[:, k - 1] == dist2[:, k]) & (dist2[:, k] < np.inf)
    if limit is not None:
        boundary &= dist2[:, k - 1] <= dist2.dtype.type(limit)
    index, dist2 = np.ascontiguousarray(index[:, :k]), np.ascontiguousarray(dist2[:, :k])
    tied = np.flatnonzero((dist2[:, 1:] == dist2[:, :-1]).any(1)) if k > 1 else np.empty(0, np.int64)
    if tied.size:  # equal distances: ascending index
        order = np.lexsort((index[tied], dist2[tied]), axis=-1)
        index[tied] = np.take_along_axis(index[tied], order, 1)
        dist2[tied] = np.take_along_axis(dist2[tied], order, 1)
    rows = np.flatnonzero(boundary)
    if rows.size:  # the k-th place is tied: the kd-tree's choice among equals is arbitrary, redo exactly
        index[rows], dist2[rows] = _boundary_rows_open3d(
            support, query, k, support_offsets, query_offsets.numpy(), rows, dist2[rows, k - 1]
        )
    return torch.from_numpy(index), torch.from_numpy(dist2)


def _boundary_rows_open3d(support, query, k, support_offsets, query_offsets, rows, threshold):
    """Exact first ``k`` by (distance, index) for query ``rows`` whose ``k``-th distance is ``threshold``.

    Every support point with ``d2 <= threshold`` is a candidate: found by brute force in numpy for a few
    rows (the usual case on real scans), else by one kd-tree radius search just above ``sqrt(threshold)``.
    """
    row_batch = np.searchsorted(query_offsets, rows, side="right") - 1
    bounds = support_offsets.numpy()
    if rows.size * int(np.diff(bounds).max()) <= _BLOCK_ELEMENTS // 4:
        support_np, query_np = support.numpy(), query.numpy()
        pieces = []
        for slot, (row, element) in enumerate(zip(rows.tolist(), row_batch.tolist())):
            start, end = bounds[element], bounds[element + 1]
            diff = support_np[start:end, 0] - query_np[row, 0]
            dist2 = diff * diff
            for axis in range(1, support_np.shape[1]):  # same order and rounding as the kd-tree
                diff = support_np[start:end, axis] - query_np[row, axis]
                dist2 = dist2 + diff * diff
            inside = np.flatnonzero(dist2 <= threshold[slot])
            pieces.append((np.full(inside.size, slot), inside + start, dist2[inside]))
        candidate_row, found, found_dist2 = (np.concatenate(parts) for parts in zip(*pieces))
    else:
        counts = np.bincount(row_batch, minlength=query_offsets.size - 1)
        sub_offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        radii = np.sqrt(threshold.astype(np.float64)) * (1 + 1e-6) + 1e-12
        result = backends.open3d_ops().radius_search(
            support,
            query[torch.from_numpy(rows)],
            torch.from_numpy(radii).to(query.dtype),
            support_offsets,
            sub_offsets,
            index_dtype=torch.int64,
            return_distances=True,
        )
        found, found_dist2 = result.neighbors_index.numpy(), result.neighbors_distance.numpy()
        candidate_row = np.repeat(np.arange(rows.size), np.diff(result.neighbors_row_splits.numpy()))
        keep = found_dist2 <= threshold[candidate_row]
        found, found_dist2, candidate_row = found[keep], found_dist2[keep], candidate_row[keep]
    order = np.lexsort((found, found_dist2, candidate_row))
    found, found_dist2, candidate_row = found[order], found_dist2[order], candidate_row[order]
    starts = np.searchsorted(candidate_row, np.arange(rows.size))
    rank = np.arange(found.size) - starts[candidate_row]
    take = rank < k
    index = np.full((rows.size, k), -1, dtype=np.int64)
    dist2 = np.full((rows.size, k), np.inf, dtype=found_dist2.dtype)
    index[candidate_row[take], rank[take]] = found[take]
    dist2[candidate_row[take], rank[take]] = found_dist2[take]
    return index, dist2


def _knn_search(support, query, k, support_batch, query_batch, backend, limit):
    """``(index, dist2)`` of the search; half-precision points are searched in float32 (their squared
    distances round to ties far too often for a meaningful order), ``dist2`` is then float32."""
    _check_pair(support, query)
    k = _check_positive_int("k", k)
    if support.dtype in (torch.float16, torch.bfloat16):
        support, query = support.float(), query.float()
    support_offsets, query_offsets = _pair_offsets(support, query, support_batch, query_batch)
    chosen = _select_backend(backend, support)
    num_query = query.size(0)
    if num_query == 0 or support.size(0) == 0:
        index = torch.full((num_query, k), -1, dtype=torch.long, device=query.device)
        dist2 = torch.full((num_query, k), math.inf, dtype=query.dtype, device=query.device)
        return index, dist2
    with torch.no_grad():
        if chosen == "open3d":
            index, dist2 = _knn_open3d(support.detach(), query.detach(), k, support_offsets, query_offsets, limit)
        else:
            index, dist2 = _knn_rows_torch(support.detach(), query.detach(), k, support_offsets, query_offsets, limit)
    return index, dist2


def _differentiable_dist2(support: Tensor, query: Tensor, index: Tensor, dist2: Tensor) -> Tensor:
    """Recompute ``dist2`` with autograd when the positions require gradients (same values)."""
    if not (torch.is_grad_enabled() and (support.requires_grad or query.requires_grad)):
        return dist2
    diff = query[:, None, :] - support[index.clamp(min=0)]
    recomputed = diff[..., 0] * diff[..., 0]
    for axis in range(1, diff.size(-1)):  # same summation order as the search: identical values
        recomputed = recomputed + diff[..., axis] * diff[..., axis]
    return torch.where(index >= 0, recomputed, dist2)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def knn(
    support: Tensor,
    query: Tensor,
    k: int,
    support_batch: Tensor | None = None,
    query_batch: Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The ``k`` nearest support points of every query point.

    Args:
        support: support points ``[N, 3]`` (float).
        query: query points ``[M, 3]``, same dtype and device as ``support``.
        k: number of neighbours (``k`` may exceed a batch element's size).
        support_batch, query_batch: sorted batch ids ``[N]`` / ``[M]`` (both or neither).
        backend: ``"open3d"``, ``"torch"`` or ``None`` (automatic, see module docs).

    Returns:
        ``(index [M, k] long, dist2 [M, k])``: support indices (into ``support``) nearest first, equal
        distances by ascending index; rows with fewer than ``k`` candidates are padded with index ``-1``
        and ``dist2 = +inf``. ``dist2`` is the squared distance in the input dtype and carries gradients
        to ``support``/``query`` when they require them (the index does not). float16/bfloat16 points
        are searched in float32.
    """
    index, dist2 = _knn_search(support, query, k, support_batch, query_batch, backend, None)
    return index, _differentiable_dist2(support, query, index, dist2.to(query.dtype))


def radius(
    support: Tensor,
    query: Tensor,
    r: float,
    max_neighbors: int,
    support_batch: Tensor | None = None,
    query_batch: Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Up to ``max_neighbors`` support points within distance ``r`` (closed ball, :math:`d^2 \le r^2`).

    Unlike a plain ball query that keeps an arbitrary subset, the nearest ``max_neighbors`` inside the ball
    are kept, nearest first (ties by ascending index), so results do not depend on the backend.

    Returns:
        ``(index [M, max_neighbors] long, count [M] long)``; ``index`` is padded with ``-1`` after the
        ``count[i]`` neighbours of query ``i``. float16/bfloat16 points are searched in float32.
    """
    radius_value = _real_scalar(r)
    if radius_value is None or not math.isfinite(radius_value) or radius_value <= 0:
        raise ValueError(f"r: expected a positive finite radius, got {r!r}")
    r = radius_value
    max_neighbors = _check_positive_int("max_neighbors", max_neighbors)
    limit = r * r
    index, dist2 = _knn_search(support, query, max_neighbors, support_batch, query_batch, backend, limit)
    if index.device.type == "cpu":  # numpy: avoids parallel start-up costs of small torch ops
        index_np, dist2_np = index.numpy(), dist2.numpy()
        inside = dist2_np <= dist2_np.dtype.type(limit)
        index_np[~inside] = -1  # index is a fresh tensor owned by this call
        return index, torch.from_numpy(inside.sum(1, dtype=np.int64))
    inside = dist2 <= torch.tensor(limit, dtype=dist2.dtype, device=dist2.device)
    return index.masked_fill_(~inside, -1), inside.sum(1)


def fps(
    pos: Tensor,
    num_samples: int | None = None,
    ratio: float | None = None,
    batch: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    r"""Furthest point sampling, per batch element.

    Starts from the first point of each batch element, then repeatedly takes the point whose squared
    distance to the samples so far is largest. The torch backend takes the lowest index on ties and is
    deterministic; open3d's multithreaded argmax may take any of several exactly tied points (lattices,
    duplicated points), so there only untied inputs give a reproducible order.

    Args:
        pos: points ``[N, 3]``.
        num_samples: samples per batch element (clamped to the element's size), or
        ratio: fraction in ``(0, 1]`` per element, ``ceil(ratio * n_b)`` samples (exactly one of the two).
        batch: sorted batch ids ``[N]``.

    Returns:
        ``index [S] long`` into ``pos``: batch element 0's samples in sampling order, then element 1's, ...
    """
    _check_points("pos", pos)
    if (num_samples is None) == (ratio is None):
        raise ValueError(
            f"num_samples, ratio: expected exactly one of them, got num_samples={num_samples!r}, ratio={ratio!r}"
        )
    if num_samples is not None:
        num_samples = _check_positive_int("num_samples", num_samples)
    else:
        ratio_value = _real_scalar(ratio)
        if ratio_value is None or not 0.0 < ratio_value <= 1.0:
            raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
        ratio = ratio_value
    num_batches = 1 if batch is None else max(_check_batch("batch", batch, pos.size(0), pos.device), 1)
    offsets = _batch_offsets(batch, pos.size(0), num_batches, pos.device)
    counts = offsets[1:] - offsets[:-1]
    if num_samples is not None:
        samples = counts.clamp(max=num_samples)
    else:
        # ceil(ratio * n), shrunk by 1e-12 first so that 0.1 * 30 = 3.0000000000000004 gives 3, not 4
        samples = torch.ceil(counts.double() * ratio * (1 - 1e-12)).long().clamp(max=counts)
    if pos.dtype in (torch.float16, torch.bfloat16):
        pos = pos.float()  # sampled in float32, as knn and radius search half-precision points
    chosen = _select_backend(backend, pos, dtypes=(torch.float32,))
    with torch.no_grad():
        if chosen == "open3d":
            return _fps_open3d(pos.detach(), offsets, samples)
        return _fps_torch(pos.detach(), offsets, samples)


def _fps_open3d(pos: Tensor, offsets: Tensor, samples: Tensor) -> Tensor:
    ops = backends.open3d_ops()
    pieces = []
    bounds, sizes = offsets.tolist(), samples.tolist()
    for b, size in enumerate(sizes):
        if size == 0:
            continue
        start, end = bounds[b], bounds[b + 1]
        local = ops.furthest_point_sampling(pos[start:end].contiguous().unsqueeze(0), size)
        pieces.append(local.view(-1).long() + start)
    if not pieces:
        return torch.empty(0, dtype=torch.long, device=pos.device)
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _fps_torch(pos: Tensor, offsets: Tensor, samples: Tensor) -> Tensor:
    """All batch elements in lock step on a padded ``[B, N_max]`` layout; ``max(samples)`` iterations."""
    device = pos.device
    counts = offsets[1:] - offsets[:-1]
    total = int(samples.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    num_batches = counts.numel()
    width = int(counts.max())
    steps = int(samples.max())
    column = torch.arange(width, device=device)
    present = column[None, :] < counts[:, None]
    padded_index = (offsets[:-1, None] + column[None, :]).clamp(max=pos.size(0) - 1)
    axes = pos.t()[:, padded_index].contiguous()  # [3, B, W]: one contiguous plane per axis
    # Padding never wins the argmax: its distance stays -1 while real points are >= 0.
    min_dist2 = torch.full((num_batches, width), math.inf, dtype=pos.dtype, device=device)
    min_dist2.masked_fill_(~present, -1.0)
    dist2 = torch.empty_like(min_dist2)
    diff = torch.empty_like(min_dist2)
    current = torch.zeros(num_batches, 1, dtype=torch.long, device=device)
    picked = torch.empty((num_batches, steps), dtype=torch.long, device=device)
    for step in range(steps):
        picked[:, step : step + 1] = current
        for axis, plane in enumerate(axes):
            torch.sub(plane, plane.gather(1, current), out=diff)
            if axis == 0:
                torch.mul(diff, diff, out=dist2)
            else:
                dist2.add_(diff.mul_(diff))
        torch.minimum(min_dist2, dist2, out=min_dist2)
        current = min_dist2.argmax(1, keepdim=True)
    keep = torch.arange(steps, device=device)[None, :] < samples[:, None]
    return (picked + offsets[:-1, None])[keep]


def grid_subsample(
    pos: Tensor,
    voxel_size: float | Sequence[float] | Tensor,
    batch: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Average the points of each occupied grid cell (voxel-grid subsampling, KPConv style).

    The grid is anchored at the origin: point :math:`p` falls in cell :math:`\lfloor p / s \rfloor`
    (per axis, ``s`` the voxel size), separately per batch element.

    Returns:
        ``(pos_sub [V, 3], batch_sub [V] long, cluster [N] long)``: cell centroids (gradients flow to
        ``pos``), their batch ids (ascending; cells ordered by (batch, x, y, z) cell coordinates), and the
        cell of every input point (``pos_sub[cluster]`` is each point's centroid).
    """
    _check_points("pos", pos, dim=None)
    dims = pos.size(1)
    if isinstance(voxel_size, Tensor):
        size = voxel_size.detach().to(device=pos.device, dtype=pos.dtype).reshape(-1)
    elif isinstance(voxel_size, (int, float)) and not isinstance(voxel_size, bool):
        size = torch.tensor([float(voxel_size)], dtype=pos.dtype, device=pos.device)
    elif isinstance(voxel_size, Sequence):
        size = torch.tensor([float(v) for v in voxel_size], dtype=pos.dtype, device=pos.device)
    else:
        raise TypeError(f"voxel_size: expected a float or a sequence of {dims} floats, got {voxel_size!r}")
    if size.numel() not in (1, dims) or not bool(torch.isfinite(size).all() and (size > 0).all()):
        raise ValueError(
            f"voxel_size: expected a positive finite float or {dims} of them, got {size.tolist()}"
        )
    num_batches = 1 if batch is None else max(_check_batch("batch", batch, pos.size(0), pos.device), 1)
    if pos.size(0) == 0:
        empty = torch.empty(0, dtype=torch.long, device=pos.device)
        return pos.new_empty((0, dims)), empty, empty
    if pos.device.type == "cpu":  # integer bookkeeping in numpy: single-threaded, no parallel start-up cost
        cells = np.floor(pos.detach().numpy() / size.numpy()).astype(np.int64)
        cells -= cells.min(0)
        extent = (cells.max(0) + 1).tolist()
        cells_per_batch = math.prod(extent)
        if cells_per_batch * num_batches < 2**62:
            key = np.zeros(len(cells), dtype=np.int64) if batch is None else batch.numpy().astype(np.int64)
            for axis in range(dims):
                key = key * extent[axis] + cells[:, axis]
            unique_key, cluster, counts = np.unique(key, return_inverse=True, return_counts=True)
            cluster = torch.from_numpy(cluster.reshape(-1))
            counts = torch.from_numpy(counts)
            cell_batch = torch.from_numpy(unique_key // cells_per_batch)
            return _cell_means(pos, cluster, counts), cell_batch, cluster
        cells = torch.from_numpy(cells)
    else:
        with torch.no_grad():
            cells = torch.floor(pos.detach() / size).long()
            cells -= cells.min(0).values
        extent = (cells.max(0).values + 1).tolist()
        cells_per_batch = math.prod(extent)
        if cells_per_batch * num_batches < 2**62:
            key = torch.zeros_like(cells[:, 0]) if batch is None else batch.long()
            for axis in range(dims):
                key = key * extent[axis] + cells[:, axis]
            unique_key, cluster, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
            return _cell_means(pos, cluster, counts), unique_key // cells_per_batch, cluster
    # astronomically large extents: unique over (batch, cell) rows instead of a packed key
    columns = [torch.zeros_like(cells[:, 0]) if batch is None else batch.long().to(cells.device), cells]
    rows = torch.cat([columns[0][:, None], columns[1]], 1)
    unique_rows, cluster, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    return _cell_means(pos, cluster, counts), unique_rows[:, 0], cluster


def _cell_means(pos: Tensor, cluster: Tensor, counts: Tensor) -> Tensor:
    return scatter_sum(pos, cluster, counts.numel()) / counts.to(pos.dtype).unsqueeze(1)
