r"""Scattered linear attention (SLA): per-window ReLU linear attention over voxels sorted by window.

For window :math:`w` and head :math:`h`, with feature-mapped queries and keys :math:`q_i, k_j \ge 0`,

.. math::
    S_w = \sum_{j \in w} k_j^\top v_j,\quad z_w = \sum_{j \in w} k_j,\quad
    y_i = \frac{q_i S_w}{q_i \cdot z_w + \varepsilon}.

One function, three implementations with the same autograd semantics:

* ``triton`` (:mod:`.triton`): chunk-wise kernels, chosen for CUDA tensors when Triton is importable;
* ``cpu`` (:mod:`.cpu`): chunked batched matmuls with a hand-written backward; plain torch, chosen for CPU
  tensors and for any device without Triton (and for float64 or head widths above 128, which the kernels do not
  take);
* ``naive`` (:mod:`.naive`): a Python loop over windows, the reference for tests.

``GEOATTN_BACKEND=naive|cpu|triton`` or the ``backend`` argument forces a path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from geoattn import backends
from geoattn.kernels.sla.cpu import DEFAULT_CHUNK_SIZE, sla_cpu
from geoattn.kernels.sla.naive import sla_naive
from geoattn.sparse.window import WindowIndex

__all__ = ["scattered_linear_attention", "select_backend"]

_BACKENDS = ("naive", "cpu", "triton")


def select_backend(q: Tensor, backend: str | None = None) -> str:
    """The implementation :func:`scattered_linear_attention` uses for ``q`` (forced, or by device and dtype)."""
    choice = backend if backend is not None else backends.forced_backend()
    if choice is not None:
        if choice not in _BACKENDS:
            raise ValueError(f"backend: expected one of {_BACKENDS}, got {choice!r}")
        if choice == "triton" and backends.triton() is None:
            raise RuntimeError("backend: 'triton' was requested but triton is not importable")
        return choice
    # the kernels keep a [D, D] float32 state per program: head widths above 128 go to the torch path
    if q.is_cuda and backends.triton() is not None and q.dtype != torch.float64 and q.shape[-1] <= 128:
        return "triton"
    return "cpu"


def scattered_linear_attention(q: Tensor, k: Tensor, v: Tensor, window: WindowIndex, eps: float = 1e-6,
                               backend: str | None = None) -> Tensor:
    """Per-window linear attention on rows sorted by ``window``.

    Args:
        q, k: ``[N, H, D]`` feature-mapped (non-negative) queries and keys, rows in window order
            (``window.sort``).
        v: ``[N, H, D]`` values.
        window: the :class:`~geoattn.sparse.window.WindowIndex` of the rows (its tables are cached on it).
        eps: added to the denominator.
        backend: ``'naive'``, ``'cpu'`` or ``'triton'`` to force a path.

    Returns:
        ``y [N, H, D]`` in the dtype of ``q`` (states and normalisers are accumulated in float32).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 3:
            raise ValueError(f"{name}: expected a 3-D tensor [N, H, D], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"k, v: expected the shape of q {tuple(q.shape)}, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected the dtype of q ({q.dtype}), got {k.dtype} and {v.dtype}")
    if not isinstance(window, WindowIndex):
        raise TypeError(f"window: expected a WindowIndex, got {type(window).__name__}")
    if q.shape[0] != window.num_voxels:
        raise ValueError(f"q: expected {window.num_voxels} rows (window.num_voxels), got {q.shape[0]}")
    choice = select_backend(q, backend)
    if choice == "naive":
        return sla_naive(q, k, v, window.offsets, eps)
    if choice == "triton":
        from geoattn.kernels.sla.triton import sla_triton

        return sla_triton(q, k, v, window, eps)
    return sla_cpu(q, k, v, window.chunks(DEFAULT_CHUNK_SIZE), eps)
