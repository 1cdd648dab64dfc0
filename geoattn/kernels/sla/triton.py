r"""Triton kernels for scattered linear attention (CUDA; testable on CPU with ``TRITON_INTERPRET=1``).

Work items are *blocks*: at most ``BLOCK_ROWS`` consecutive sorted rows of one window
(:meth:`WindowIndex.chunks` with ``BLOCK_ROWS``, cached per partition). Short windows are one block; long
windows are split into several, which run in parallel and are combined by a segmented sum, so the longest
window no longer sets the critical path. The grid is ``(blocks, heads)`` with the large count on axis 0.
Each program streams its block in masked ``CHUNK``-row tiles; row counts are loaded at run time, so window
sizes never trigger recompilation. States, normalisers, the denominator and the division stay in float32;
only ``y`` and the input gradients are written in the input dtype.

Four launches in all:

1. ``_state_kernel``: per block, ``S_b = K_b^T V_b`` and ``z_b = sum K_b`` (float32);
   a segmented sum over each window's blocks gives ``S_w, z_w`` (skipped when every window is one block);
2. ``_output_kernel``: ``y = (q S_w) / (q . z_w + eps)``; also stores ``a = 1 / (q . z_w + eps)`` (float32);
3. ``_grad_query_kernel``: ``dnum = g a``, ``dden = -(g . y) a``; ``dq = dnum S_w^T + dden z_w`` and block
   partials ``dS_b = Q_b^T dnum``, ``dz_b = Q_b^T dden`` (then summed per window);
4. ``_grad_key_value_kernel``: ``dk = v dS_w^T + dz_w``, ``dv = k dS_w``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from geoattn import backends
from geoattn.sparse.segment import segment_sum
from geoattn.sparse.window import WindowChunks, WindowIndex

__all__ = ["sla_triton", "BLOCK_ROWS", "CHUNK_ROWS"]

triton = backends.triton()
if triton is None:  # pragma: no cover - dispatch never selects this module without triton
    raise ImportError("geoattn.kernels.sla.triton needs triton (pip install 'geoattn[kernels]')")
import triton.language as tl  # noqa: E402

#: rows of one window handled by one program; longer windows are split into several blocks
BLOCK_ROWS = 256
#: rows per masked tile inside a program (tl.dot needs >= 16)
CHUNK_ROWS = 32


@triton.jit
def _state_kernel(k_ptr, v_ptr, block_start_ptr, block_length_ptr, state_ptr, norm_ptr,
                  stride_k_row, stride_k_head, stride_v_row, stride_v_head, depth,
                  BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr):
    block = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    start = tl.load(block_start_ptr + block)
    length = tl.load(block_length_ptr + block)
    rows = tl.arange(0, CHUNK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < depth
    state = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    norm = tl.zeros([BLOCK_D], dtype=tl.float32)
    for offset in range(0, length, CHUNK):
        row = (start + offset + rows).to(tl.int64)
        mask = ((offset + rows) < length)[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + row[:, None] * stride_k_row + head * stride_k_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row[:, None] * stride_v_row + head * stride_v_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        state += tl.dot(tl.trans(k), v, input_precision=PRECISION)
        norm += tl.sum(k, axis=0)
    out = (block * heads + head).to(tl.int64)
    mask2 = col_ok[:, None] & col_ok[None, :]
    tl.store(state_ptr + out * depth * depth + cols[:, None] * depth + cols[None, :], state, mask=mask2)
    tl.store(norm_ptr + out * depth + cols, norm, mask=col_ok)


@triton.jit
def _output_kernel(q_ptr, state_ptr, norm_ptr, y_ptr, scale_ptr, block_start_ptr, block_length_ptr,
                   block_window_ptr, stride_q_row, stride_q_head, depth, eps,
                   BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr):
    block = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    start = tl.load(block_start_ptr + block)
    length = tl.load(block_length_ptr + block)
    window = tl.load(block_window_ptr + block).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < depth
    state_index = window * heads + head
    state = tl.load(state_ptr + state_index * depth * depth + cols[:, None] * depth + cols[None, :],
                    mask=col_ok[:, None] & col_ok[None, :], other=0.0)
    norm = tl.load(norm_ptr + state_index * depth + cols, mask=col_ok, other=0.0)
    for offset in range(0, length, CHUNK):
        row = (start + offset + rows).to(tl.int64)
        row_ok = (offset + rows) < length
        mask = row_ok[:, None] & col_ok[None, :]
        q = tl.load(q_ptr + row[:, None] * stride_q_row + head * stride_q_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        numerator = tl.dot(q, state, input_precision=PRECISION)
        scale = 1.0 / (tl.sum(q * norm[None, :], axis=1) + eps)
        y = numerator * scale[:, None]
        tl.store(y_ptr + (row[:, None] * heads + head) * depth + cols[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(scale_ptr + row * heads + head, scale, mask=row_ok)


@triton.jit
def _grad_query_kernel(q_ptr, grad_ptr, y_ptr, scale_ptr, state_ptr, norm_ptr, grad_q_ptr,
                       grad_state_ptr, grad_norm_ptr, block_start_ptr, block_length_ptr, block_window_ptr,
                       stride_q_row, stride_q_head, stride_g_row, stride_g_head, depth,
                       BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr):
    block = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    start = tl.load(block_start_ptr + block)
    length = tl.load(block_length_ptr + block)
    window = tl.load(block_window_ptr + block).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < depth
    mask2 = col_ok[:, None] & col_ok[None, :]
    state_index = window * heads + head
    state = tl.load(state_ptr + state_index * depth * depth + cols[:, None] * depth + cols[None, :], mask=mask2,
                    other=0.0)
    norm = tl.load(norm_ptr + state_index * depth + cols, mask=col_ok, other=0.0)
    grad_state = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    grad_norm = tl.zeros([BLOCK_D], dtype=tl.float32)
    for offset in range(0, length, CHUNK):
        row = (start + offset + rows).to(tl.int64)
        row_ok = (offset + rows) < length
        mask = row_ok[:, None] & col_ok[None, :]
        q = tl.load(q_ptr + row[:, None] * stride_q_row + head * stride_q_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + row[:, None] * stride_g_row + head * stride_g_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        y = tl.load(y_ptr + (row[:, None] * heads + head) * depth + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + row * heads + head, mask=row_ok, other=0.0)
        grad_num = g * scale[:, None]
        grad_den = -tl.sum(grad_num * y, axis=1)
        grad_q = tl.dot(grad_num, tl.trans(state), input_precision=PRECISION) + grad_den[:, None] * norm[None, :]
        tl.store(grad_q_ptr + (row[:, None] * heads + head) * depth + cols[None, :],
                 grad_q.to(grad_q_ptr.dtype.element_ty), mask=mask)
        grad_state += tl.dot(tl.trans(q), grad_num, input_precision=PRECISION)
        grad_norm += tl.sum(q * grad_den[:, None], axis=0)
    out = (block * heads + head).to(tl.int64)
    tl.store(grad_state_ptr + out * depth * depth + cols[:, None] * depth + cols[None, :], grad_state, mask=mask2)
    tl.store(grad_norm_ptr + out * depth + cols, grad_norm, mask=col_ok)


@triton.jit
def _grad_key_value_kernel(k_ptr, v_ptr, grad_state_ptr, grad_norm_ptr, grad_k_ptr, grad_v_ptr,
                           block_start_ptr, block_length_ptr, block_window_ptr,
                           stride_k_row, stride_k_head, stride_v_row, stride_v_head, depth,
                           BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr):
    block = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    start = tl.load(block_start_ptr + block)
    length = tl.load(block_length_ptr + block)
    window = tl.load(block_window_ptr + block).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < depth
    state_index = window * heads + head
    grad_state = tl.load(grad_state_ptr + state_index * depth * depth + cols[:, None] * depth + cols[None, :],
                         mask=col_ok[:, None] & col_ok[None, :], other=0.0)
    grad_norm = tl.load(grad_norm_ptr + state_index * depth + cols, mask=col_ok, other=0.0)
    for offset in range(0, length, CHUNK):
        row = (start + offset + rows).to(tl.int64)
        mask = ((offset + rows) < length)[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + row[:, None] * stride_k_row + head * stride_k_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row[:, None] * stride_v_row + head * stride_v_head + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        grad_k = tl.dot(v, tl.trans(grad_state), input_precision=PRECISION) + grad_norm[None, :]
        grad_v = tl.dot(k, grad_state, input_precision=PRECISION)
        out = (row[:, None] * heads + head) * depth + cols[None, :]
        tl.store(grad_k_ptr + out, grad_k.to(grad_k_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_v_ptr + out, grad_v.to(grad_v_ptr.dtype.element_ty), mask=mask)


def _launch_config(q: Tensor) -> tuple[int, str]:
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    # fp32 inputs keep exact fp32 products; half inputs are upcast tiles, tf32 is as precise as their data
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return block_d, precision


def _sum_blocks(partial: Tensor, blocks: WindowChunks) -> Tensor:
    """Per-block partial states ``[B, ...]`` -> per-window states ``[W, ...]``."""
    if blocks.max_chunks <= 1:
        return partial  # one block per window, in window order
    return segment_sum(partial.reshape(partial.shape[0], -1), blocks.offsets).reshape(
        (blocks.offsets.shape[0] - 1,) + tuple(partial.shape[1:]))


def _row_strides(x: Tensor) -> tuple[Tensor, int, int]:
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1)


class SLATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, blocks: WindowChunks, eps: float) -> Tensor:
        num_rows, heads, depth = q.shape
        q, q_row, q_head = _row_strides(q)
        k, k_row, k_head = _row_strides(k)
        v, v_row, v_head = _row_strides(v)
        block_d, precision = _launch_config(q)
        num_blocks = blocks.num_chunks
        grid = (num_blocks, heads)
        partial_state = q.new_empty((num_blocks, heads, depth, depth), dtype=torch.float32)
        partial_norm = q.new_empty((num_blocks, heads, depth), dtype=torch.float32)
        _state_kernel[grid](k, v, blocks.start, blocks.length, partial_state, partial_norm, k_row, k_head,
                            v_row, v_head, depth, BLOCK_D=block_d, CHUNK=CHUNK_ROWS, PRECISION=precision)
        state = _sum_blocks(partial_state, blocks)
        norm = _sum_blocks(partial_norm, blocks)
        y = q.new_empty((num_rows, heads, depth))
        scale = q.new_empty((num_rows, heads), dtype=torch.float32)
        _output_kernel[grid](q, state, norm, y, scale, blocks.start, blocks.length, blocks.window, q_row, q_head,
                             depth, float(eps), BLOCK_D=block_d, CHUNK=CHUNK_ROWS, PRECISION=precision)
        ctx.save_for_backward(q, k, v, y, scale, state, norm)
        ctx.blocks = blocks
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        q, k, v, y, scale, state, norm = ctx.saved_tensors
        blocks: WindowChunks = ctx.blocks
        num_rows, heads, depth = q.shape
        grad_y, g_row, g_head = _row_strides(grad_y)
        block_d, precision = _launch_config(q)
        num_blocks = blocks.num_chunks
        grid = (num_blocks, heads)
        grad_q = torch.empty_like(y)
        partial_grad_state = q.new_empty((num_blocks, heads, depth, depth), dtype=torch.float32)
        partial_grad_norm = q.new_empty((num_blocks, heads, depth), dtype=torch.float32)
        _grad_query_kernel[grid](q, grad_y, y, scale, state, norm, grad_q, partial_grad_state, partial_grad_norm,
                                 blocks.start, blocks.length, blocks.window, q.stride(0), q.stride(1), g_row, g_head,
                                 depth, BLOCK_D=block_d, CHUNK=CHUNK_ROWS, PRECISION=precision)
        grad_state = _sum_blocks(partial_grad_state, blocks)
        grad_norm = _sum_blocks(partial_grad_norm, blocks)
        grad_k = torch.empty_like(y)
        grad_v = torch.empty_like(y)
        _grad_key_value_kernel[grid](k, v, grad_state, grad_norm, grad_k, grad_v, blocks.start, blocks.length,
                                     blocks.window, k.stride(0), k.stride(1), v.stride(0), v.stride(1), depth,
                                     BLOCK_D=block_d, CHUNK=CHUNK_ROWS, PRECISION=precision)
        return grad_q, grad_k, grad_v, None, None


def sla_triton(q: Tensor, k: Tensor, v: Tensor, window: WindowIndex, eps: float = 1e-6,
               block_rows: int = BLOCK_ROWS) -> Tensor:
    """``q, k, v [N, H, D]`` (float32/float16/bfloat16, last dim contiguous) sorted by window -> ``y [N, H, D]``."""
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"q: expected float32, float16 or bfloat16 for the Triton kernels, got {q.dtype}")
    if q.shape[-1] > 128:
        raise ValueError(f"q: expected a head width D <= 128 for the Triton kernels, got {q.shape[-1]}")
    if q.shape[0] == 0:
        return (q + k + v) * 0
    if block_rows % CHUNK_ROWS != 0:
        raise ValueError(f"block_rows: expected a multiple of {CHUNK_ROWS}, got {block_rows}")
    blocks = window.chunks(block_rows)
    if blocks.window.device != q.device:
        raise ValueError(f"window: expected its tables on {q.device}, got {blocks.window.device}")
    return SLATritonFunction.apply(q, k, v, blocks, eps)
