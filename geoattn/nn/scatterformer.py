r"""ScatterFormer layers (Scattered Linear Attention, ECCV 2024): SLA, depthwise sparse conv, CWI, block.

All layers take voxel features **in window order** ``x [N, C]`` (``window.sort(x)``) together with the
stage's :class:`~geoattn.sparse.window.WindowIndex`; nothing is padded. Per-stage tables (SLA chunk tables,
submanifold neighbour tables) are cached on the index, so the three blocks of a stage share them.

:class:`ScatteredLinearAttention` and :class:`ScatterFormerBlock` also take PyG-style inputs: ``(x, coords)``
(optionally with ``batch``) or a ``Data`` / ``Batch`` with ``x`` and ``coords``, rows in any order. They then
partition the voxels themselves with :func:`cached_window_index`, which keeps one
:class:`~geoattn.sparse.window.WindowIndex` per coords tensor and window shape for as long as that tensor
lives, so every layer of a stage (and every call on the same batch) shares it; the output comes back in the
input row order.

* :class:`ScatteredLinearAttention`: ``q, k, v = x W_qkv``; per window and head
  :math:`y_i = \phi(q_i) S_w / (\phi(q_i) \cdot z_w + \varepsilon)` with
  :math:`S_w = \sum_{j \in w} \phi(k_j)^\top v_j`, :math:`z_w = \sum_{j \in w} \phi(k_j)`; output ``y W_o + b``.
* :class:`DepthwiseSparseConv3d`: submanifold depthwise convolution
  :math:`out_{i,c} = \sum_k x_{n_k(i), c} w_{k,c}` over active neighbours :math:`n_k(i)` (spconv has no grouped
  convolution); equals ``conv3d(groups=C)`` on the densified grid, read at the active sites.
* :class:`CrossWindowInteraction`: ``u = BN(x)``; channels in quarters
  ``[u1 | u2 | u3 | u4] -> u + [DW_3x3x3(u1) | DW_1x1xK(u2) (along x) | DW_1xKx1(u3) (along y) | u4]`` with
  ``K = window + 1``, then ``x' + FC2(ReLU(FC1(BN(x'))))``.
* :class:`ScatterFormerBlock`: ``x + SLA(BN(x))`` followed by :class:`CrossWindowInteraction`.
* :class:`AttentionPillarPooling`: voxels of each BEV pillar -> one feature, ``LN(MHA(max, x + E[z]) + max)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from geoattn.kernels.sla import scattered_linear_attention
from geoattn.sparse.segment import segment_max
from geoattn.sparse.voxel import submanifold_neighbors
from geoattn.sparse.window import WindowIndex

__all__ = [
    "cached_window_index",
    "ScatteredLinearAttention",
    "DepthwiseSparseConv3d",
    "depthwise_sparse_conv",
    "CrossWindowInteraction",
    "ScatterFormerBlock",
    "AttentionPillarPooling",
]

_FEATURE_MAPS = {
    "relu": torch.relu,
    "elu": lambda t: torch.nn.functional.elu(t) + 1.0,
}


def _check_features(x, channels: int, window: WindowIndex, dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != channels:
        raise ValueError(f"x: expected a 2-D tensor [N, C] with C={channels}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"x: expected dtype {dtype} (the layer's parameters; convert with .to()), got {x.dtype}")
    if not isinstance(window, WindowIndex):
        raise TypeError(f"window: expected a WindowIndex, got {type(window).__name__}")
    if x.shape[0] != window.num_voxels:
        raise ValueError(f"x: expected {window.num_voxels} rows (window.num_voxels), got {x.shape[0]}")


# coords tensor -> {(window_shape, shift): (coords version, batch tensor, batch version, WindowIndex)}; weak
# keys, so an entry goes with its coords tensor. The index is built from a detached alias of the coords (one
# that does not keep the key alive).
_WINDOW_CACHE = WeakIdKeyDictionary()


def _check_coords(coords, num_rows: int | None = None) -> None:
    if not isinstance(coords, Tensor):
        raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 2 or coords.shape[1] != 4 or (num_rows is not None and coords.shape[0] != num_rows):
        rows = "N" if num_rows is None else num_rows
        raise ValueError(f"coords: expected shape ({rows}, 4) (batch, z, y, x), got {tuple(coords.shape)}")
    if coords.is_floating_point() or coords.dtype == torch.bool:
        raise TypeError(f"coords: expected an integer tensor, got dtype {coords.dtype}")


def cached_window_index(coords: Tensor, window_shape, shift=None, batch: Tensor | None = None) -> WindowIndex:
    """The :class:`~geoattn.sparse.window.WindowIndex` of ``coords [N, 4]``, built once per coords tensor.

    Args:
        coords: integer voxel coords ``(b, z, y, x)``, any row order.
        window_shape, shift: as in :meth:`WindowIndex.from_coords`.
        batch: optional ``[N]`` batch id of each voxel (a PyG ``Batch``'s ``batch``); it replaces the ``b``
            column, so voxels of different graphs of a mini-batch never share a window.

    The index is cached for as long as ``coords`` lives, keyed by the tensor itself, the window shape, the
    shift and ``batch``; an in-place change of ``coords`` or ``batch`` rebuilds it.
    """
    _check_coords(coords)
    if batch is not None:
        if not isinstance(batch, Tensor) or batch.shape != (coords.shape[0],):
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"batch: expected a 1-D tensor [N] with N={coords.shape[0]}, got {shape}")
        if batch.is_floating_point() or batch.dtype == torch.bool:
            raise TypeError(f"batch: expected an integer tensor, got dtype {batch.dtype}")
    key = (window_shape if isinstance(window_shape, int) else tuple(window_shape),
           shift if shift is None or isinstance(shift, int) else tuple(shift))
    entries = _WINDOW_CACHE.setdefault(coords, {})
    entry = entries.get(key)
    batch_version = None if batch is None else batch._version
    if entry is not None and entry[0] == coords._version and entry[1] is batch and entry[2] == batch_version:
        return entry[3]
    source = coords.detach()
    if batch is not None:
        source = torch.cat([batch.to(coords.dtype).unsqueeze(1), source[:, 1:]], dim=1)
    index = WindowIndex.from_coords(source, window_shape, shift)
    entries[key] = (coords._version, batch, batch_version, index)
    return index


def _voxel_inputs(x, window, batch, channels: int, dtype: torch.dtype, window_shape):
    """``(x, WindowIndex, sorted)`` from ``(x, window)``, ``(x, coords[, batch])`` or a ``Data`` with coords.

    ``sorted`` is True when ``x`` is already in window order (a ``WindowIndex`` was given).
    """
    if isinstance(window, WindowIndex):
        if batch is not None:
            raise ValueError("batch: only taken with coords (a WindowIndex already holds the batch column)")
        _check_features(x, channels, window, dtype)
        return x, window, True
    if window is None and hasattr(x, "coords") and not isinstance(x, Tensor):
        data = x
        x, window = getattr(data, "x", None), data.coords
        batch = getattr(data, "batch", None) if batch is None else batch
        if x is None:
            raise ValueError("data: expected a Data with x [N, C] and coords [N, 4], got no x")
    if window is None:
        raise TypeError(f"window: expected a WindowIndex or coords [N, 4] (or a Data with x and coords), got None "
                        f"(x is a {type(x).__name__})")
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    _check_coords(window, x.shape[0])
    index = cached_window_index(window, window_shape, batch=batch)
    _check_features(x, channels, index, dtype)
    return x, index, False


class ScatteredLinearAttention(nn.Module):
    r"""Per-window linear attention over voxels sorted by window (no padding).

    Args:
        channels: feature width ``C`` (divisible by ``heads``).
        heads: attention heads ``H`` (head width ``D = C / H``).
        feature_map: ``'relu'`` (the paper's EfficientViT-style map) or ``'elu'`` (``elu + 1``).
        eps: added to the denominator.
        window_size: BEV window size used when the layer partitions ``coords`` itself (full-height
            ``window_size x window_size`` windows; ScatterFormer uses 12).

    Shapes: ``x [N, C]`` in window order with a ``window`` of ``N`` voxels -> ``[N, C]`` in window order; or
    ``x [N, C]`` and integer ``coords [N, 4]`` ``(b, z, y, x)`` (optional ``batch [N]`` replacing ``b``), or a
    ``Data`` with ``x`` and ``coords``, rows in any order -> ``[N, C]`` in the same order. ``x`` must have the
    dtype of the parameters (float32, float64 or bfloat16; attention states accumulate in float32).
    """

    def __init__(self, channels: int, heads: int = 4, feature_map: str = "relu", eps: float = 1e-6,
                 window_size: int = 12):
        super().__init__()
        if channels <= 0 or heads <= 0 or channels % heads != 0:
            raise ValueError(f"channels: expected a positive multiple of heads={heads}, got {channels}")
        if feature_map not in _FEATURE_MAPS:
            raise ValueError(f"feature_map: expected one of {sorted(_FEATURE_MAPS)}, got {feature_map!r}")
        if not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"window_size: expected a positive int, got {window_size!r}")
        self.channels = channels
        self.heads = heads
        self.feature_map = feature_map
        self.eps = eps
        self.window_size = window_size
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.qkv.reset_parameters()
        self.proj.reset_parameters()

    def forward(self, x, window: WindowIndex | Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        x, window, in_window_order = _voxel_inputs(x, window, batch, self.channels, self.qkv.weight.dtype,
                                                   self.window_size)
        if not in_window_order:
            return window.unsort(self._attend(window.sort(x), window))
        return self._attend(x, window)

    def _attend(self, x: Tensor, window: WindowIndex) -> Tensor:
        num_rows = x.shape[0]
        depth = self.channels // self.heads
        q, k, v = self.qkv(x).view(num_rows, 3, self.heads, depth).unbind(dim=1)
        phi = _FEATURE_MAPS[self.feature_map]
        y = scattered_linear_attention(phi(q), phi(k), v, window, eps=self.eps)
        return self.proj(y.reshape(num_rows, self.channels))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(channels={self.channels}, heads={self.heads}, "
                f"feature_map={self.feature_map!r}, window_size={self.window_size})")


class _DepthwiseConvFunction(torch.autograd.Function):
    """``out = sum_k x[table[k]] * w[k]`` with zero rows where ``table`` is -1; gathers only, no atomics.

    The table of an odd submanifold kernel is symmetric (``table[k, i] = j <=> table[K-1-k, j] = i``), so the
    input gradient is the same gather with the kernel flipped: ``dx = sum_k dout[table[K-1-k]] * w[k]``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, table: Tensor) -> Tensor:
        num_rows = x.shape[0]
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])], dim=0)
        rows = torch.where(table >= 0, table, num_rows)
        out = x.new_zeros(x.shape)
        for k in range(rows.shape[0]):
            out.addcmul_(padded.index_select(0, rows[k]), weight[k])
        ctx.save_for_backward(padded, weight, rows)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        padded, weight, rows = ctx.saved_tensors
        num_kernel = rows.shape[0]
        grad_padded = torch.cat([grad_out, grad_out.new_zeros(1, grad_out.shape[1])], dim=0)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(grad_out)
            for k in range(num_kernel):
                grad_x.addcmul_(grad_padded.index_select(0, rows[num_kernel - 1 - k]), weight[k])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.stack([
                (padded.index_select(0, rows[k]) * grad_out).sum(dim=0) for k in range(num_kernel)
            ])
        return grad_x, grad_weight, None


def depthwise_sparse_conv(x: Tensor, weight: Tensor, table: Tensor) -> Tensor:
    """Depthwise submanifold convolution: ``x [N, C]``, ``weight [K, C]``, neighbour ``table [K, N]`` -> ``[N, C]``.

    ``table`` comes from :func:`geoattn.sparse.voxel.submanifold_neighbors` (odd kernels).
    """
    if weight.dim() != 2 or weight.shape[1] != x.shape[1] or table.shape != (weight.shape[0], x.shape[0]):
        raise ValueError(f"weight, table: expected [K, C] and [K, N] with C={x.shape[1]}, N={x.shape[0]}, "
                         f"got {tuple(weight.shape)} and {tuple(table.shape)}")
    return _DepthwiseConvFunction.apply(x, weight.to(x.dtype), table)


class DepthwiseSparseConv3d(nn.Module):
    r"""Depthwise submanifold sparse convolution (no bias), for CPU and CUDA tensors.

    Args:
        channels: ``C`` (one filter per channel).
        kernel_size: ``(kz, ky, kx)`` odd sizes (or one odd int).

    Shapes: ``x [N, C]`` in window order with ``window`` (its ``sorted_coords`` give the sites) -> ``[N, C]``.
    The neighbour table is built once per window index and kernel size and cached on it. Weights start like a
    dense ``conv3d(groups=C)`` (uniform, fan-in = kernel volume); the official code draws them from
    ``randn`` (std 1).
    """

    def __init__(self, channels: int, kernel_size: int | Sequence[int]):
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
        if len(kernel) != 3 or any(k <= 0 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size: expected three odd positive sizes (kz, ky, kx), got {kernel_size!r}")
        self.channels = channels
        self.kernel_size = kernel
        self.weight = nn.Parameter(torch.empty(math.prod(kernel), channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same scale as a dense conv3d(groups=C) default init (fan_in = kernel volume)
        bound = 1.0 / math.sqrt(self.weight.shape[0])
        nn.init.uniform_(self.weight, -bound, bound)

    def neighbour_table(self, window: WindowIndex) -> Tensor:
        return window.cached(("submanifold_neighbors", self.kernel_size),
                             lambda: submanifold_neighbors(window.sorted_coords, self.kernel_size))

    def forward(self, x: Tensor, window: WindowIndex) -> Tensor:
        _check_features(x, self.channels, window)
        return depthwise_sparse_conv(x, self.weight, self.neighbour_table(window))

    def dense_weight(self) -> Tensor:
        """The equivalent ``conv3d(groups=C)`` weight ``[C, 1, kz, ky, kx]``."""
        return self.weight.t().reshape(self.channels, 1, *self.kernel_size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(channels={self.channels}, kernel_size={self.kernel_size})"


class CrossWindowInteraction(nn.Module):
    r"""CWI feed-forward: depthwise 3-D and long 1-D sparse convolutions on channel quarters, then an MLP.

    Args:
        channels: ``C`` (divisible by 4).
        window_size: BEV window size ``ws``; the 1-D kernels have length ``ws + 1`` (13 for ``ws = 12``).
        ffn_ratio: hidden width of the MLP in multiples of ``C``.

    Shapes: ``x [N, C]`` in window order -> ``[N, C]``. The quarters follow the official code (3-D kernel
    first); the paper lists the 1-D kernels first, a channel permutation of the same layer.
    """

    def __init__(self, channels: int, window_size: int = 12, ffn_ratio: int = 2):
        super().__init__()
        if channels % 4 != 0:
            raise ValueError(f"channels: expected a multiple of 4 (channel quarters), got {channels}")
        self.channels = channels
        self.window_size = window_size
        quarter = channels // 4
        length = window_size + 1 if window_size % 2 == 0 else window_size
        self.norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv_cube = DepthwiseSparseConv3d(quarter, (3, 3, 3))
        self.conv_x = DepthwiseSparseConv3d(quarter, (1, 1, length))
        self.conv_y = DepthwiseSparseConv3d(quarter, (1, length, 1))
        self.ffn_norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.fc1 = nn.Linear(channels, ffn_ratio * channels)
        self.fc2 = nn.Linear(ffn_ratio * channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.norm, self.conv_cube, self.conv_x, self.conv_y, self.ffn_norm, self.fc1, self.fc2):
            module.reset_parameters()

    def forward(self, x: Tensor, window: WindowIndex) -> Tensor:
        _check_features(x, self.channels, window, self.fc1.weight.dtype)
        u = self.norm(x)
        u_cube, u_x, u_y, u_id = u.chunk(4, dim=1)
        mixed = torch.cat([self.conv_cube(u_cube, window), self.conv_x(u_x, window), self.conv_y(u_y, window),
                           u_id], dim=1)
        x = u + mixed
        return x + self.fc2(torch.relu(self.fc1(self.ffn_norm(x))))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(channels={self.channels}, window_size={self.window_size})"


class ScatterFormerBlock(nn.Module):
    r"""``x <- x + SLA(BN(x))``, then ``x <- CWI(x)`` (the CWI includes its own feed-forward residual).

    Args:
        channels: ``C``; heads: SLA heads; window_size: BEV window size of the stage; ffn_ratio: MLP width.

    Shapes: ``x [N, C]`` in window order with the stage's ``window`` -> ``[N, C]`` in window order; or
    ``(x, coords)`` (optional ``batch``) or a ``Data`` with ``x`` and ``coords``, rows in any order -> ``[N, C]``
    in the same order (the window index is built with ``window_size`` and cached, see
    :func:`cached_window_index`).
    """

    def __init__(self, channels: int, heads: int = 4, window_size: int = 12, ffn_ratio: int = 2,
                 feature_map: str = "relu"):
        super().__init__()
        self.channels = channels
        self.norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.attention = ScatteredLinearAttention(channels, heads, feature_map=feature_map, window_size=window_size)
        self.interaction = CrossWindowInteraction(channels, window_size, ffn_ratio)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.attention.reset_parameters()
        self.interaction.reset_parameters()

    def forward(self, x, window: WindowIndex | Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        x, window, in_window_order = _voxel_inputs(x, window, batch, self.channels,
                                                   self.attention.qkv.weight.dtype, self.interaction.window_size)
        if not in_window_order:
            return window.unsort(self._block(window.sort(x), window))
        return self._block(x, window)

    def _block(self, x: Tensor, window: WindowIndex) -> Tensor:
        x = x + self.attention(self.norm(x), window)
        return self.interaction(x, window)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(channels={self.channels}, heads={self.attention.heads}, "
                f"window_size={self.interaction.window_size})")


class AttentionPillarPooling(nn.Module):
    r"""Pool the voxels of each BEV pillar ``(b, y, x)`` into one feature with attention over the column.

    With ``m`` the channel-wise max over the pillar's voxels and :math:`E[z]` a learned height embedding,
    ``out = LayerNorm(MHA(query=m, keys=values=x_j + E[z_j]) + m)``; padding slots of the column are masked.

    Args:
        channels: ``C``; heads: attention heads; height: number of z cells ``Z`` of the input grid.

    Shapes: ``x [N, C]`` and ``coords [N, 4]`` ``(b, z, y, x)`` (any order) ->
    ``(pillar features [P, C], pillar coords [P, 3] (b, y, x))``, pillars sorted by ``(b, y, x)``; no voxels
    give ``[0, C]`` and ``[0, 3]``. ``x`` has the dtype of the parameters (float32, float64 or bfloat16).
    """

    def __init__(self, channels: int, heads: int = 8, height: int = 8):
        super().__init__()
        self.channels = channels
        self.height = height
        self.height_embedding = nn.Embedding(height, channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.height_embedding.reset_parameters()
        self.attention._reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.channels:
            raise ValueError(f"x: expected a 2-D tensor [N, C] with C={self.channels}, got shape {tuple(x.shape)}")
        dtype = self.height_embedding.weight.dtype
        if x.dtype != dtype:
            raise TypeError(f"x: expected dtype {dtype} (the layer's parameters; convert with .to()), got {x.dtype}")
        _check_coords(coords, x.shape[0])
        if x.shape[0] == 0:
            return x.new_zeros(0, self.channels), coords.new_zeros(0, 3)
        if int(coords[:, 1].max()) >= self.height:
            raise ValueError(f"coords: expected z < height={self.height}, got {int(coords[:, 1].max())}")
        pillars = WindowIndex.from_coords(coords, (None, 1, 1))  # one window per BEV cell
        x_sorted = pillars.sort(x)
        z = pillars.sorted_coords[:, 1]
        pooled = segment_max(x_sorted, pillars.offsets)  # [P, C]
        keys = x_sorted.new_zeros(pillars.num_windows, self.height, self.channels)
        keys[pillars.window_of_row, z] = x_sorted + self.height_embedding(z)
        padding = torch.ones(pillars.num_windows, self.height, dtype=torch.bool, device=x.device)
        padding[pillars.window_of_row, z] = False
        attended, _ = self.attention(pooled.unsqueeze(1), keys, keys, key_padding_mask=padding, need_weights=False)
        out = self.norm(attended.squeeze(1) + pooled)
        return out, pillars.window_coords[:, [0, 2, 3]]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(channels={self.channels}, height={self.height})"
