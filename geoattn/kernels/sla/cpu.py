r"""Scattered linear attention as chunked batched matmuls (the CPU path; plain torch, so it runs anywhere).

Windows are cut into chunks of ``L`` sorted rows that never span windows (:meth:`WindowIndex.chunks`, cached
per partition). Rows are scattered once into zero-padded chunk buffers ``[K, H, L, D]`` (about 1.3x the rows
on real frames, against 8x for padding every window to the longest), and every step is one batched matmul
over all chunks and heads:

* chunk states ``[S_c | z_c] = K_c^T [V_c | 1]`` (the normaliser is the ones column appended to ``V``);
* window states ``[S_w | z_w]`` = segment sum of the chunk states (skipped when no window has two chunks);
* ``[q S_w | q z_w] = Q_c [S_w | z_w]`` gives numerator and denominator in one matmul; ``y = num / (den + eps)``.

The backward is written by hand (:class:`SLAFunction`), with ``a = 1 / (den + eps)``:
``dnum = g a``, ``dden = -(g . y) a``; ``[dS_w | dz_w] = sum_c Q_c^T [dnum | dden]``;
``dq = [dnum | dden] [S_w | z_w]^T``, ``dk = [V | 1] [dS_w | dz_w]^T``, ``dv = K dS_w``. States and
normalisers are accumulated in float32 (or float64 for float64 inputs); half inputs are upcast once.
"""
from __future__ import annotations

import torch
from torch import Tensor

from geoattn.sparse.segment import segment_sum
from geoattn.sparse.window import WindowChunks

__all__ = ["sla_cpu", "SLAFunction", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 32


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat_slots(chunks: WindowChunks, heads: int) -> tuple[Tensor, Tensor]:
    """Slot indices into a chunk buffer ``[K, H, L, X]`` viewed as ``[K * H * L, X]`` (cached on the table).

    Returns ``(rows [N * H], padding [P])``: the slot of every (row, head) pair in ``rows.reshape(N * H, X)``
    order, and every padding slot. Flat slots make scatters and gathers plain ``index_copy_`` and
    ``index_select`` over contiguous ``X``-element rows.
    """
    key = ("_sla_flat_slots", heads)
    cached = chunks.__dict__.get(key)
    if cached is None:
        length = chunks.chunk_size
        head = torch.arange(heads, device=chunks.window.device)
        rows = ((chunks.row_chunk.unsqueeze(1) * heads + head) * length + chunks.row_position.unsqueeze(1)).reshape(-1)
        pad_chunk, pad_position = chunks.padding
        padding = ((pad_chunk.unsqueeze(1) * heads + head) * length + pad_position.unsqueeze(1)).reshape(-1)
        cached = (rows, padding)
        chunks.__dict__[key] = cached
    return cached


def _scatter_rows(rows: Tensor, chunks: WindowChunks, extra: float | Tensor | None = None) -> Tensor:
    """Rows ``[N, H, D]`` into zero-padded chunk buffers ``[K, H, L, D]``, or ``[K, H, L, D + 1]`` when ``extra``
    (a number or ``[N, H]``) fills one more column at the row slots."""
    num_rows, heads, depth = rows.shape
    width = depth if extra is None else depth + 1
    row_slots, padding_slots = _flat_slots(chunks, heads)
    buffer = rows.new_empty(chunks.num_chunks * heads * chunks.chunk_size, width)
    if extra is None:
        buffer.index_copy_(0, row_slots, rows.reshape(num_rows * heads, depth))
    else:
        buffer[:, :depth].index_copy_(0, row_slots, rows.reshape(num_rows * heads, depth))
        if isinstance(extra, Tensor):
            buffer[:, depth].index_copy_(0, row_slots, extra.reshape(-1))
        else:
            buffer[:, depth].index_fill_(0, row_slots, extra)
    # zero only the padding slots (about a quarter of the buffer on real frames) instead of filling it all
    buffer.index_fill_(0, padding_slots, 0)
    return buffer.view(chunks.num_chunks, heads, chunks.chunk_size, width)


def _gather_rows(buffer: Tensor, chunks: WindowChunks) -> Tensor:
    """Inverse of :func:`_scatter_rows`: ``[K, H, L, X]`` -> ``[N, H, X]``."""
    heads, width = buffer.shape[1], buffer.shape[-1]
    row_slots, _ = _flat_slots(chunks, heads)
    return buffer.reshape(-1, width).index_select(0, row_slots).view(-1, heads, width)


def _window_states(chunk_states: Tensor, chunks: WindowChunks) -> Tensor:
    """Sum chunk states ``[K, ...]`` per window and broadcast them back to the chunks."""
    if chunks.max_chunks <= 1:
        return chunk_states  # every window is one chunk: chunk states are window states, in order
    flat = chunk_states.reshape(chunk_states.shape[0], -1)
    per_window = segment_sum(flat, chunks.offsets)
    return per_window.index_select(0, chunks.window).reshape(chunk_states.shape)


class SLAFunction(torch.autograd.Function):
    """Autograd function of :func:`sla_cpu` with the hand-written backward described in the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunks: WindowChunks, eps: float) -> Tensor:
        dtype = _compute_dtype(q.dtype)
        heads, depth = q.shape[1], q.shape[2]
        q_chunks = _scatter_rows(q.to(dtype), chunks)
        k_chunks = _scatter_rows(k.to(dtype), chunks)
        v_chunks = _scatter_rows(v.to(dtype), chunks, extra=1.0)  # [V | 1]: the state's last column is z
        states = _window_states(torch.matmul(k_chunks.transpose(-1, -2), v_chunks), chunks)  # [K, H, D, D+1]
        both = _gather_rows(torch.matmul(q_chunks, states), chunks)  # [N, H, D+1]
        scale = 1.0 / (both[..., depth:] + eps)
        y = both[..., :depth] * scale
        ctx.save_for_backward(q_chunks, k_chunks, v_chunks, states, y, scale)
        ctx.chunks = chunks
        return y.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        q_chunks, k_chunks, v_chunks, states, y, scale = ctx.saved_tensors
        chunks: WindowChunks = ctx.chunks
        depth = y.shape[-1]
        grad = grad_y.to(y.dtype)
        grad_num = grad * scale
        grad_den = -(grad_num * y).sum(dim=-1)
        grad_both = _scatter_rows(grad_num, chunks, extra=grad_den)
        grad_q = _gather_rows(torch.matmul(grad_both, states.transpose(-1, -2)), chunks)
        grad_states = _window_states(torch.matmul(q_chunks.transpose(-1, -2), grad_both), chunks)  # [K,H,D,D+1]
        grad_k = _gather_rows(torch.matmul(v_chunks, grad_states.transpose(-1, -2)), chunks)
        grad_v = _gather_rows(torch.matmul(k_chunks, grad_states[..., :depth]), chunks)
        return grad_q.to(grad_y.dtype), grad_k.to(grad_y.dtype), grad_v.to(grad_y.dtype), None, None


def sla_cpu(q: Tensor, k: Tensor, v: Tensor, chunks: WindowChunks, eps: float = 1e-6) -> Tensor:
    """``q, k, v [N, H, D]`` sorted by window and a chunk table -> ``y [N, H, D]``."""
    if q.shape[0] == 0:
        return (q + k + v) * 0  # keeps the graph for empty batches
    return SLAFunction.apply(q, k, v, chunks, eps)
