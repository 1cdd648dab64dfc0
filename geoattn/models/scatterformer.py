r"""ScatterFormer backbone: sparse-conv stem, two window-attention stages, attention pillar pooling to BEV.

Layout (defaults = the official Waymo config; C = 128, 4 heads, window 12, voxel [0.32, 0.32, 0.1875] m,
range [-76.8, -76.8, -2, 76.8, 76.8, 4] m, voxel grid ``(Z, Y, X) = (32, 480, 480)``):

0. the input: voxel features ``[V, in_channels]`` made by a separate voxel feature encoder, in the official
   model :class:`geoattn.models.detection.DynamicVoxelVFE` (64 channels); the backbone has no encoder of its own;
1. the sparse grid is the official ``grid_size[::-1] + [1, 0, 0]``: ``(Z + 1, Y, X) = (33, 480, 480)``. The extra
   (always empty) top layer lets the stem's ``(3, 1, 1)`` stride-2 convolution without padding cover every
   voxel layer: ``(33 - 3) // 2 + 1 = 16`` output layers whose windows ``[2k, 2k + 2]`` reach layer 31
   (with 32 cells the stem gives 15 layers and drops layer 31);
2. stem (conditional positional encoding): ``SubMConv3d 3^3 (in -> C) + BN + ReLU``, three sparse basic blocks
   (two ``SubMConv3d 3^3`` with BN, residual), ``SparseConv3d (3, 1, 1)`` stride ``(2, 1, 1)`` + BN + ReLU;
3. stage 1: three :class:`~geoattn.nn.ScatterFormerBlock` on ``ws x ws`` full-height windows (z = 16), BN;
4. ``SparseConv3d 3^3`` stride 2, padding 1 (no BN or activation), stage 2 (three blocks, z = 8), BN;
5. :class:`~geoattn.nn.AttentionPillarPooling` over each BEV column (height ``P = 8``) -> dense BEV map
   ``[B, C, ceil(Y / 2), ceil(X / 2)]``.

Each stage builds one :class:`~geoattn.sparse.window.WindowIndex`, sorts its features once and shares the index
(and the tables cached on it) among its blocks. The stem uses spconv (CPU or CUDA; required).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from geoattn import backends
from geoattn.nn.scatterformer import AttentionPillarPooling, ScatterFormerBlock
from geoattn.sparse.voxel import VoxelTensor, grid_shape
from geoattn.sparse.window import WindowIndex

__all__ = ["ScatterFormerBackbone", "ScatterFormerOutput"]

WAYMO_VOXEL_SIZE = (0.32, 0.32, 0.1875)
WAYMO_POINT_RANGE = (-76.8, -76.8, -2.0, 76.8, 76.8, 4.0)


def _spconv():
    module = backends.spconv()
    if module is None:
        raise ImportError("ScatterFormerBackbone needs spconv for its sparse-conv stem (pip install 'geoattn[point]')")
    return module


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class _SparseBasicBlock(nn.Module):
    """Two submanifold 3^3 convolutions with BN, residual, ReLU (spconv tensors in and out)."""

    def __init__(self, channels: int, indice_key: str):
        super().__init__()
        spconv = _spconv()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.norm1 = _norm(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.norm2 = _norm(channels)

    def forward(self, x):
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.norm1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.norm2(out.features) + x.features))


@dataclass
class ScatterFormerOutput:
    """``bev [B, C, Y', X']`` dense map; ``pillars`` the sparse BEV features (``coords (b, 0, y, x)``);
    ``stage1``, ``stage2`` the voxel features after each attention stage."""

    bev: Tensor
    pillars: VoxelTensor
    stage1: VoxelTensor
    stage2: VoxelTensor


class ScatterFormerBackbone(nn.Module):
    r"""ScatterFormer 3-D backbone (Waymo configuration by default).

    Args:
        in_channels: per-voxel input features, the output width of the voxel feature encoder (64 for the
            official :class:`~geoattn.models.detection.DynamicVoxelVFE`).
        channels: width ``C`` of the stem output and both stages.
        heads: SLA heads; window_size: BEV window size of both stages (12).
        blocks: ScatterFormer blocks per stage (3, 3); stem_blocks: sparse basic blocks in the stem (3).
        ffn_ratio: hidden width of the CWI feed-forward in multiples of ``C`` (2).
        pillar_heads: heads of the attention pillar pooling (8).
        voxel_size, point_range: the voxelisation of the input; they size the grid.

    ``forward(voxels: VoxelTensor)`` with float32 or float64 ``voxels.features [V, in_channels]`` (float16 under
    CUDA autocast; spconv has no bfloat16 kernels: bfloat16 is refused with a ``TypeError``) and ``voxels.spatial_shape`` equal
    to :attr:`grid` (``grid_shape(voxel_size, point_range)``, ``(Z, Y, X)``) returns a :class:`ScatterFormerOutput`;
    with no voxel at all (an empty or out-of-range scene) a zero BEV map and empty levels of the same shapes.
    Attributes: ``grid`` the voxel grid ``(Z, Y, X)``; ``sparse_shape`` the spconv grid ``(Z + 1, Y, X)``;
    ``stem_height`` the z cells after the stem; ``pillar_height`` those of stage 2 (the pillar pooling's ``P``);
    ``bev_stride`` the BEV map's stride in voxels (2).
    """

    bev_stride = 2

    def __init__(self, in_channels: int = 64, channels: int = 128, heads: int = 4,
                 window_size: int = 12, blocks: Sequence[int] = (3, 3), stem_blocks: int = 3, ffn_ratio: int = 2,
                 pillar_heads: int = 8, voxel_size: Sequence[float] = WAYMO_VOXEL_SIZE,
                 point_range: Sequence[float] = WAYMO_POINT_RANGE):
        super().__init__()
        spconv = _spconv()
        if len(tuple(blocks)) != 2:
            raise ValueError(f"blocks: expected two stage depths, got {blocks!r}")
        self.in_channels = in_channels
        self.channels = channels
        self.window_size = window_size
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        self.grid = grid_shape(self.voxel_size, self.point_range)
        # the official sparse shape grid_size[::-1] + [1, 0, 0]: one empty layer on top of the voxel grid
        self.sparse_shape = (self.grid[0] + 1, self.grid[1], self.grid[2])
        self.stem_height = (self.sparse_shape[0] - 3) // 2 + 1  # SparseConv3d (3, 1, 1), stride (2, 1, 1), pad 0
        if self.stem_height < 1:
            raise ValueError(f"point_range: expected at least 2 z cells, got a grid of {self.grid}")
        self.pillar_height = (self.stem_height - 1) // 2 + 1  # SparseConv3d 3^3, stride 2, padding 1

        self.stem_conv = spconv.SubMConv3d(in_channels, channels, 3, padding=1, bias=False, indice_key="stem")
        self.stem_norm = _norm(channels)
        self.stem_blocks = nn.ModuleList(_SparseBasicBlock(channels, "stem") for _ in range(stem_blocks))
        self.stem_down = spconv.SparseConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False)
        self.stem_down_norm = _norm(channels)
        self.stage1 = nn.ModuleList(ScatterFormerBlock(channels, heads, window_size, ffn_ratio)
                                    for _ in range(blocks[0]))
        self.stage1_norm = _norm(channels)
        self.down = spconv.SparseConv3d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.stage2 = nn.ModuleList(ScatterFormerBlock(channels, heads, window_size, ffn_ratio)
                                    for _ in range(blocks[1]))
        self.stage2_norm = _norm(channels)
        self.pillar_pool = AttentionPillarPooling(channels, pillar_heads, self.pillar_height)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is self:
                continue
            if hasattr(module, "reset_parameters") and not isinstance(module, ScatterFormerBlock):
                module.reset_parameters()

    def _stage(self, blocks: nn.ModuleList, norm: nn.BatchNorm1d, sparse):
        window = WindowIndex.from_coords(sparse.indices, self.window_size)
        x = window.sort(sparse.features)
        for block in blocks:
            x = block(x, window)
        return sparse.replace_feature(window.unsort(norm(x)))

    def forward(self, voxels: VoxelTensor) -> ScatterFormerOutput:
        if not isinstance(voxels, VoxelTensor):
            raise TypeError(f"voxels: expected a VoxelTensor, got {type(voxels).__name__}")
        if voxels.features.shape[1] != self.in_channels:
            raise ValueError(f"voxels: expected {self.in_channels} feature channels, got {voxels.features.shape[1]}")
        if tuple(voxels.spatial_shape) != self.grid:
            raise ValueError(f"voxels: expected spatial_shape {self.grid} (voxel_size, point_range), "
                             f"got {tuple(voxels.spatial_shape)}")
        if voxels.features.dtype not in (torch.float32, torch.float64, torch.float16):
            raise TypeError(f"voxels: expected float32 or float64 features (float16 under CUDA autocast): the "
                            f"spconv stem has no {voxels.features.dtype} kernels, got {voxels.features.dtype}")
        if voxels.num_voxels == 0:
            return self._empty_output(voxels)
        # coords stay in [0, Z); the spconv grid has one more (empty) z layer, as the official backbone
        sparse = VoxelTensor(voxels.features, voxels.coords, self.sparse_shape, voxels.batch_size).to_spconv()
        sparse = self.stem_conv(sparse)
        sparse = sparse.replace_feature(torch.relu(self.stem_norm(sparse.features)))
        for block in self.stem_blocks:
            sparse = block(sparse)
        sparse = self.stem_down(sparse)
        sparse = sparse.replace_feature(torch.relu(self.stem_down_norm(sparse.features)))
        sparse = self._stage(self.stage1, self.stage1_norm, sparse)
        stage1 = VoxelTensor.from_spconv(sparse)
        sparse = self._stage(self.stage2, self.stage2_norm, self.down(sparse))
        stage2 = VoxelTensor.from_spconv(sparse)
        pillar_features, pillar_coords = self.pillar_pool(stage2.features, stage2.coords)
        _, y_size, x_size = stage2.spatial_shape
        bev = pillar_features.new_zeros(voxels.batch_size, y_size, x_size, self.channels)
        bev[pillar_coords[:, 0], pillar_coords[:, 1], pillar_coords[:, 2]] = pillar_features
        pillar_coords4 = torch.stack([pillar_coords[:, 0], torch.zeros_like(pillar_coords[:, 0]), pillar_coords[:, 1],
                                      pillar_coords[:, 2]], dim=1)
        pillars = VoxelTensor(pillar_features, pillar_coords4, (1, y_size, x_size), voxels.batch_size)
        return ScatterFormerOutput(bev.permute(0, 3, 1, 2), pillars, stage1, stage2)

    def _empty_output(self, voxels: VoxelTensor) -> ScatterFormerOutput:
        """No voxel in the batch (spconv cannot run on none): a zero BEV map and empty sparse levels, shapes
        as for a non-empty input; the zero map stays connected to the parameters so a backward works."""
        features = voxels.features
        _, y_size, x_size = self.grid
        y2, x2 = -(-y_size // 2), -(-x_size // 2)
        anchor = 0.0 * sum(p.sum() for p in self.parameters())
        bev = features.new_zeros(voxels.batch_size, self.channels, y2, x2) + anchor

        def level(shape):
            return VoxelTensor(features.new_zeros(0, self.channels), voxels.coords.new_zeros(0, 4), shape,
                               voxels.batch_size)

        return ScatterFormerOutput(bev, level((1, y2, x2)), level((self.stem_height, y_size, x_size)),
                                   level((self.pillar_height, y2, x2)))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, channels={self.channels}, "
                f"window_size={self.window_size}, grid={self.grid}, sparse_shape={self.sparse_shape}, stages=({len(self.stage1)}, {len(self.stage2)}))")
