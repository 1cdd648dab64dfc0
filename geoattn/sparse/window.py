r"""Window partitions of sparse voxels, built once per stage and shared by its layers.

A voxel at integer coords :math:`(b, z, y, x)` belongs to the window

.. math::
    w = \big(b,\ \lfloor (z + s_z) / W_z \rfloor,\ \lfloor (y + s_y) / W_y \rfloor,\ \lfloor (x + s_x) / W_x \rfloor\big)

for a window shape :math:`(W_z, W_y, W_x)` and shift :math:`(s_z, s_y, s_x)`. ``W_z = None`` makes the windows
span the full height (BEV columns, as ScatterFormer's 12 x 12 pillars). Windows are numbered in lexicographic
``(b, wz, wy, wx)`` order; voxels are sorted by window (stably, so in-window order follows the input) into one
flat sequence described by CSR ``offsets``. No padding rows are created.

:class:`WindowIndex` holds that permutation and its metadata. Kernels derive per-partition tables from it
(chunk tables, length buckets, neighbour tables) through :meth:`WindowIndex.cached`, so they are computed once
per stage and reused by every layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from geoattn.sparse.segment import offsets_from_counts

__all__ = ["WindowIndex", "WindowChunks", "WindowBucket"]


@dataclass
class WindowChunks:
    """Windows cut into chunks of at most ``chunk_size`` consecutive sorted rows; chunks never span windows.

    Attributes:
        chunk_size: the chunk length ``L``.
        window: ``[K]`` long, window of each chunk (chunks of a window are consecutive).
        start: ``[K]`` long, first sorted row of each chunk.
        length: ``[K]`` long, rows in each chunk (``L`` except for a window's last chunk).
        offsets: ``[W + 1]`` long CSR offsets of each window's chunks.
        row_chunk: ``[N]`` long, chunk of each sorted row.
        row_position: ``[N]`` long, position of each sorted row inside its chunk (``< L``).
        max_chunks: the largest number of chunks of one window (a Python int).
    """

    chunk_size: int
    window: Tensor
    start: Tensor
    length: Tensor
    offsets: Tensor
    row_chunk: Tensor
    row_position: Tensor
    max_chunks: int

    @property
    def num_chunks(self) -> int:
        return int(self.window.shape[0])

    @property
    def padding(self) -> tuple[Tensor, Tensor]:
        """``(chunk, position)`` of every padding slot (``position >= length``), computed once."""
        cached = self.__dict__.get("_padding")
        if cached is None:
            slots = torch.arange(self.chunk_size, device=self.window.device)
            is_padding = slots.unsqueeze(0) >= self.length.unsqueeze(1)
            cached = tuple(is_padding.nonzero().unbind(dim=1))
            self.__dict__["_padding"] = cached
        return cached


@dataclass
class WindowBucket:
    """Windows whose length rounds up to the same power of two, padded to ``length`` rows.

    Attributes:
        length: padded window length ``L`` (a power of two, at least the bucket minimum).
        windows: ``[Wb]`` long, the windows in this bucket.
        rows: ``[Wb, L]`` long, sorted row of each slot; padding slots hold ``N`` (one past the last row),
            so gathering from ``x`` with a zero row appended pads with zeros.
        valid: ``[Wb, L]`` bool, ``False`` at padding slots.
    """

    length: int
    windows: Tensor
    rows: Tensor
    valid: Tensor


def _normalise_window_shape(window_shape) -> tuple[int | None, int, int]:
    if isinstance(window_shape, int):
        shape = (None, window_shape, window_shape)
    else:
        values = tuple(window_shape)
        if len(values) == 2:
            shape = (None, values[0], values[1])
        elif len(values) == 3:
            shape = values
        else:
            raise ValueError(f"window_shape: expected an int, (wy, wx) or (wz, wy, wx), got {window_shape!r}")
    for value in shape:
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"window_shape: expected positive integers (or None for full height), got {shape}")
    return shape


def _normalise_shift(shift) -> tuple[int, int, int]:
    if shift is None:
        return (0, 0, 0)
    if isinstance(shift, int):
        return (0, shift, shift)
    values = tuple(int(v) for v in shift)
    if len(values) == 2:
        return (0, values[0], values[1])
    if len(values) == 3:
        return values
    raise ValueError(f"shift: expected an int, (sy, sx) or (sz, sy, sx), got {shift!r}")


class WindowIndex:
    """Voxels grouped by window: the sort permutation, CSR offsets and window coordinates.

    Build with :meth:`from_coords`. For ``N`` voxels in ``W`` windows:

    * ``window_of_voxel [N]``: window id of each voxel (input order);
    * ``perm [N]``: input index of each sorted row (``x_sorted = x[perm]``); ``inverse [N]``: sorted row of each
      input voxel (``x = x_sorted[inverse]``);
    * ``offsets [W + 1]``, ``counts [W]``: rows of window ``w`` are ``offsets[w]:offsets[w + 1]`` of the sorted
      sequence;
    * ``window_coords [W, 4]``: ``(b, wz, wy, wx)`` of each window (``wz = 0`` for full-height windows);
    * ``coords [N, 4]``: the voxel coords in input order; ``sorted_coords`` in window order.

    Layers receive the index and never rebuild it; per-partition tables are memoised with :meth:`cached`.
    """

    def __init__(self, coords: Tensor, window_shape: tuple, shift: tuple, window_of_voxel: Tensor, perm: Tensor,
                 inverse: Tensor, offsets: Tensor, counts: Tensor, window_coords: Tensor):
        self.coords = coords
        self.window_shape = window_shape
        self.shift = shift
        self.window_of_voxel = window_of_voxel
        self.perm = perm
        self.inverse = inverse
        self.offsets = offsets
        self.counts = counts
        self.window_coords = window_coords
        self.num_voxels = int(coords.shape[0])
        self.num_windows = int(counts.shape[0])
        self.max_count = int(counts.max()) if self.num_windows > 0 else 0
        self._cache: dict = {}

    @classmethod
    def from_coords(cls, coords: Tensor, window_shape, shift=None) -> "WindowIndex":
        """Partition voxels ``coords [N, 4]`` ``(batch, z, y, x)`` into windows.

        Args:
            coords: integer voxel coords (any order).
            window_shape: ``int`` (square BEV windows of full height), ``(wy, wx)`` (full height) or
                ``(wz, wy, wx)`` (``wz`` may be ``None`` for full height).
            shift: optional non-negative offset added to the coords before the division, ``int``, ``(sy, sx)``
                or ``(sz, sy, sx)`` (shifted windows).
        """
        if not isinstance(coords, Tensor):
            raise TypeError(f"coords: expected a torch.Tensor, got {type(coords).__name__}")
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords: expected a 2-D tensor [N, 4] (batch, z, y, x), got shape {tuple(coords.shape)}")
        if coords.is_floating_point() or coords.dtype == torch.bool:
            raise TypeError(f"coords: expected an integer tensor, got dtype {coords.dtype}")
        shape = _normalise_window_shape(window_shape)
        offset = _normalise_shift(shift)
        device = coords.device
        num_voxels = coords.shape[0]
        c = coords.long()
        window_parts = [c[:, 0]]
        for axis, (size, extra) in enumerate(zip(shape, offset), start=1):
            if size is None:
                window_parts.append(torch.zeros_like(c[:, 0]))
            else:
                window_parts.append(torch.div(c[:, axis] + extra, size, rounding_mode="floor"))
        window_part = torch.stack(window_parts, dim=1)  # [N, 4]
        # pack (b, wz, wy, wx) into one key with per-axis bounds from the data; the same read of the data
        # checks that no coordinate is negative (which would break the packing)
        if num_voxels > 0:
            lowest, *extents = torch.cat([c.amin().view(1), window_part.amax(dim=0) + 1]).tolist()
            if lowest < 0:
                raise ValueError(f"coords: expected non-negative coords, got minimum {lowest}")
        else:
            extents = [1, 1, 1, 1]
        key = window_part[:, 0]
        for axis in range(1, 4):
            key = key * extents[axis] + window_part[:, axis]
        # stable: in-window order follows the input, so the result is deterministic
        sorted_key, perm = torch.sort(key, stable=True)
        unique_key, counts = torch.unique_consecutive(sorted_key, return_counts=True)
        num_windows = unique_key.shape[0]
        offsets = offsets_from_counts(counts)
        window_of_sorted = torch.repeat_interleave(torch.arange(num_windows, device=device), counts)
        window_of_voxel = torch.empty_like(window_of_sorted)
        window_of_voxel[perm] = window_of_sorted
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(num_voxels, device=device)
        window_coords = torch.empty((num_windows, 4), dtype=torch.long, device=device)
        rest = unique_key
        for axis in range(3, 0, -1):
            window_coords[:, axis] = rest % extents[axis]
            rest = torch.div(rest, extents[axis], rounding_mode="floor")
        window_coords[:, 0] = rest
        return cls(coords, shape, offset, window_of_voxel, perm, inverse, offsets, counts, window_coords)

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.offsets.device

    @property
    def sorted_coords(self) -> Tensor:
        """``[N, 4]`` voxel coords in window order."""
        return self.cached("sorted_coords", lambda: self.coords.index_select(0, self.perm))

    @property
    def window_of_row(self) -> Tensor:
        """``[N]`` window id of each sorted row (non-decreasing)."""
        return self.cached("window_of_row", lambda: self.window_of_voxel.index_select(0, self.perm))

    def sort(self, x: Tensor) -> Tensor:
        """Rows of ``x [N, ...]`` (input order) in window order."""
        self._check_rows("x", x)
        return x.index_select(0, self.perm)

    def unsort(self, x_sorted: Tensor) -> Tensor:
        """Rows of ``x_sorted [N, ...]`` (window order) back in input order."""
        self._check_rows("x_sorted", x_sorted)
        return x_sorted.index_select(0, self.inverse)

    def cached(self, key: Hashable, build: Callable[[], object]):
        """Memoise ``build()`` under ``key`` for the lifetime of this partition (metadata for kernels)."""
        value = self._cache.get(key)
        if value is None:
            value = build()
            self._cache[key] = value
        return value

    def _check_rows(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != self.num_voxels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a tensor with {self.num_voxels} rows (one per voxel), got {shape}")

    # ------------------------------------------------------------------------------------------
    def chunks(self, chunk_size: int) -> WindowChunks:
        """Chunk table for ``chunk_size``-row chunks that never span windows (cached)."""
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        return self.cached(("chunks", chunk_size), lambda: self._build_chunks(chunk_size))

    def _build_chunks(self, chunk_size: int) -> WindowChunks:
        device = self.device
        chunks_per_window = torch.div(self.counts + (chunk_size - 1), chunk_size, rounding_mode="floor")
        chunk_offsets = offsets_from_counts(chunks_per_window)
        num_chunks = int(chunk_offsets[-1])
        window = torch.repeat_interleave(torch.arange(self.num_windows, device=device), chunks_per_window)
        rank = torch.arange(num_chunks, device=device) - chunk_offsets[:-1].index_select(0, window)
        start = self.offsets[:-1].index_select(0, window) + rank * chunk_size
        end = self.offsets[1:].index_select(0, window)
        length = torch.clamp(end - start, max=chunk_size)
        row_window = self.window_of_row
        position_in_window = torch.arange(self.num_voxels, device=device) - self.offsets[:-1].index_select(0, row_window)
        row_chunk = chunk_offsets[:-1].index_select(0, row_window) + torch.div(
            position_in_window, chunk_size, rounding_mode="floor")
        row_position = position_in_window % chunk_size
        max_chunks = int(chunks_per_window.max()) if self.num_windows > 0 else 0
        return WindowChunks(chunk_size, window, start, length, chunk_offsets, row_chunk, row_position, max_chunks)

    def length_buckets(self, min_length: int = 32) -> list[WindowBucket]:
        """Windows grouped by padded length ``max(min_length, next_pow2(count))`` (cached).

        For batched dense CPU paths: each bucket pads its windows to one length, so the padding is below 2x
        per window and one batched matmul serves the whole bucket.
        """
        if not isinstance(min_length, int) or min_length <= 0:
            raise ValueError(f"min_length: expected a positive int, got {min_length!r}")
        return self.cached(("length_buckets", min_length), lambda: self._build_buckets(min_length))

    def _build_buckets(self, min_length: int) -> list[WindowBucket]:
        device = self.device
        if self.num_windows == 0:
            return []
        padded = torch.clamp(self.counts, min=min_length).double().log2().ceil().long()
        buckets = []
        for exponent in torch.unique(padded).tolist():
            length = 1 << exponent
            windows = (padded == exponent).nonzero().squeeze(1)
            slots = torch.arange(length, device=device)
            starts = self.offsets[:-1].index_select(0, windows).unsqueeze(1)
            valid = slots.unsqueeze(0) < self.counts.index_select(0, windows).unsqueeze(1)
            rows = torch.where(valid, starts + slots, self.num_voxels)
            buckets.append(WindowBucket(length, windows, rows, valid))
        return buckets

    def pad_bucket(self, x_sorted: Tensor, bucket: WindowBucket) -> Tensor:
        """``[Wb, L, ...]`` rows of ``x_sorted [N, ...]`` for a bucket, zeros at padding slots."""
        self._check_rows("x_sorted", x_sorted)
        padded_source = torch.cat([x_sorted, x_sorted.new_zeros((1,) + tuple(x_sorted.shape[1:]))], dim=0)
        return padded_source.index_select(0, bucket.rows.reshape(-1)).reshape(
            tuple(bucket.rows.shape) + tuple(x_sorted.shape[1:]))

    def __repr__(self) -> str:
        return (f"WindowIndex(num_voxels={self.num_voxels}, num_windows={self.num_windows}, "
                f"max_count={self.max_count}, window_shape={self.window_shape}, shift={self.shift})")
