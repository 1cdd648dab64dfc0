"""RoITr: a rotation-invariant transformer for point cloud registration (Yu et al., CVPR 2023).

The network maps two clouds (positions and normals, each in its own frame) to

* superpoints (the coarsest encoder level) with L2-normalised coarse descriptors refined by the
  rotation-invariant global transformer, and
* dense points (the input points) with fine descriptors from the decoder,

plus the learnable optimal-transport layer used to match patches. Matching, pose estimation and the
losses are task logic and live in :mod:`geoattn.registration`.

All geometry enters through point pair features and intra-frame distances/angles, so every output
descriptor is unchanged when either cloud (with its normals) is rotated and translated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from geoattn.nn.roitr import (
    LearnableLogOptimalTransport,
    PPFAttention,
    PPFAttentionBlock,
    PointInstanceNorm,
    RotationInvariantTransformer,
    knn_interpolate,
    ppf_groups,
)
from geoattn.sparse.neighbors import fps

__all__ = ["RoITrConfig", "RoITrLevel", "RoITrFeatures", "RoITrOutput", "RoITr", "centroid_fps"]


@dataclass
class RoITrConfig:
    """Hyper-parameters of :class:`RoITr`. The defaults are the paper's 3DMatch configuration.

    ``voxel_size`` is the point spacing (metres) the network expects; the registration pipeline
    rescales inputs so that the user's voxel size maps onto it. ``point_norm`` is the normalisation after
    each encoder transition and in the decoder MLPs: ``"layer"`` (the paper) or ``"instance"``
    (:class:`~geoattn.nn.roitr.PointInstanceNorm`, statistics over the points; the small CPU config uses
    it because it trains far faster from constant input features). ``transformer_skip`` adds a linear
    map of the encoder's superpoint features to the global transformer's output (the small config uses it:
    in short CPU training the stacked global attention otherwise learns to average all superpoints of a
    cloud into one descriptor).
    """

    channels: tuple[int, ...] = (64, 128, 256, 256)
    neighbors: tuple[int, ...] = (8, 16, 16, 16)
    blocks: tuple[int, ...] = (1, 2, 2, 2)
    strides: tuple[int, ...] = (1, 4, 4, 4)
    heads: int = 4
    decoder_heads: int = 8
    transformer_channels: int = 256
    transformer_heads: int = 4
    transformer_blocks: tuple[str, ...] = ("self", "cross") * 3
    sigma_d: float = 0.2
    sigma_a: float = 15.0
    angle_k: int = 3
    coarse_channels: int = 256
    fine_channels: int = 256
    sinkhorn_iterations: int = 100
    sign_invariant_ppf: bool = True
    voxel_size: float = 0.025
    max_superpoints: int = 2048
    point_norm: str = "layer"
    transformer_skip: bool = False

    def __post_init__(self) -> None:
        lengths = {len(self.channels), len(self.neighbors), len(self.blocks), len(self.strides)}
        if len(lengths) != 1:
            raise ValueError(
                "channels, neighbors, blocks, strides: expected equal lengths, got "
                f"{len(self.channels)}, {len(self.neighbors)}, {len(self.blocks)}, {len(self.strides)}"
            )
        if self.point_norm not in ("layer", "instance"):
            raise ValueError(f"point_norm: expected 'layer' or 'instance', got {self.point_norm!r}")
        for name in ("channels", "neighbors", "blocks", "strides", "transformer_blocks"):
            setattr(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def small(cls, **overrides) -> "RoITrConfig":
        """A CPU-sized variant (about 8x fewer weights; superpoints at 1/32 of the points, 5 cm voxels),
        used for the shipped checkpoint."""
        params = dict(channels=(32, 64, 128, 128), blocks=(1, 1, 1, 1), strides=(1, 4, 4, 2), transformer_channels=128,
                      transformer_blocks=("self", "cross") * 2, coarse_channels=128, fine_channels=64,
                      voxel_size=0.05, sigma_d=0.4, point_norm="instance", transformer_skip=True)
        params.update(overrides)
        return cls(**params)


class RoITrLevel(NamedTuple):
    """One encoder level: points, normals, the PPF groups of each point among this level's points,
    and (for levels after the first) the groups of each point among the previous level's points."""

    pos: Tensor
    normal: Tensor
    neighbor_index: Tensor
    ppf: Tensor
    down_index: Tensor | None
    down_neighbor_index: Tensor | None
    down_ppf: Tensor | None


class RoITrFeatures(NamedTuple):
    """Per-cloud output of the local encoder-decoder."""

    levels: list[RoITrLevel]
    superpoint_feats: Tensor  # [S, C_last] pre-transformer superpoint features
    point_feats: Tensor  # [N, C_0] decoder output at input resolution


class RoITrOutput(NamedTuple):
    """Descriptors of a source/target pair."""

    src_points: Tensor  # [N, 3]
    tgt_points: Tensor  # [M, 3]
    src_nodes: Tensor  # [S, 3] superpoints
    tgt_nodes: Tensor  # [T, 3]
    src_node_feats: Tensor  # [S, coarse] L2-normalised
    tgt_node_feats: Tensor  # [T, coarse]
    src_point_feats: Tensor  # [N, fine]
    tgt_point_feats: Tensor  # [M, fine]


def centroid_fps(pos: Tensor, num_samples: int) -> Tensor:
    """Furthest point sampling of ``pos [N, 3]`` started at the point nearest the centroid -> ``index [S]``.

    :func:`geoattn.sparse.neighbors.fps` starts at index 0, so its samples depend on the order of the
    points, which a voxel grid or a file format sets in a rotation-dependent way. The point nearest the
    centroid is a rotation- and order-invariant start, which makes the samples move with the cloud.
    """
    start = int((pos.detach() - pos.detach().mean(0)).square().sum(1).argmin())
    if start == 0:
        return fps(pos, num_samples=num_samples)
    order = torch.arange(pos.size(0), device=pos.device)
    order[0], order[start] = start, 0
    return order[fps(pos[order], num_samples=num_samples)]


def _norm(kind: str, channels: int) -> nn.Module:
    return PointInstanceNorm(channels) if kind == "instance" else nn.LayerNorm(channels)


def _mlp_norm(in_channels: int, out_channels: int, kind: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, out_channels), _norm(kind, out_channels), nn.ReLU())


class RoITr(nn.Module):
    """RoITr network (PPF encoder-decoder + rotation-invariant global transformer + heads).

    ``forward(src_pos [N, 3], src_normal [N, 3], tgt_pos [M, 3], tgt_normal [M, 3]) -> RoITrOutput``.
    One pair at a time (batch size 1, as in the paper). Normals must be unit length and move with their
    cloud (estimate them on each cloud in its own frame, e.g. with
    :func:`geoattn.sparse.geometry.estimate_normals`). Input features are constant ones: every bit
    of geometry comes in through point pair features, which makes the network invariant.

    Runs in the dtype of its parameters (float32, float64 or bfloat16; positions and normals must match).
    In bfloat16, neighbour search and sampling run on float32 copies of the points, everything else in
    bfloat16. Non-finite points or normals raise ``ValueError`` naming the first bad row.
    """

    def __init__(self, config: RoITrConfig | None = None, **overrides):
        super().__init__()
        config = config or RoITrConfig()
        if overrides:
            config = RoITrConfig(**{**config.to_dict(), **overrides})
        self.config = config
        channels = config.channels
        self.encoder_down = nn.ModuleList()
        self.encoder_norm = nn.ModuleList()
        self.encoder_blocks = nn.ModuleList()
        previous = 1
        for level, width in enumerate(channels):
            self.encoder_down.append(PPFAttention(previous, width, heads=config.heads))
            self.encoder_norm.append(_norm(config.point_norm, width))
            self.encoder_blocks.append(
                nn.ModuleList(PPFAttentionBlock(width, config.heads) for _ in range(config.blocks[level]))
            )
            previous = width
        last = channels[-1]
        self.head_global = nn.Sequential(nn.Linear(last, last), nn.ReLU())
        self.head_fuse = _mlp_norm(2 * last, last, config.point_norm)
        self.head_block = PPFAttentionBlock(last, config.decoder_heads)
        self.decoder_skip = nn.ModuleList()
        self.decoder_coarse = nn.ModuleList()
        self.decoder_blocks = nn.ModuleList()
        for level in range(len(channels) - 2, -1, -1):
            self.decoder_skip.append(_mlp_norm(channels[level], channels[level], config.point_norm))
            self.decoder_coarse.append(_mlp_norm(channels[level + 1], channels[level], config.point_norm))
            self.decoder_blocks.append(PPFAttentionBlock(channels[level], config.decoder_heads))
        self.transformer = RotationInvariantTransformer(
            last, config.transformer_channels, config.transformer_channels, heads=config.transformer_heads,
            blocks=config.transformer_blocks, sigma_d=config.sigma_d, sigma_a=config.sigma_a,
            angle_k=config.angle_k, max_points=config.max_superpoints,
        )
        self.transformer_skip = (nn.Linear(last, config.transformer_channels) if config.transformer_skip
                                 else None)
        self.coarse_proj = nn.Linear(config.transformer_channels, config.coarse_channels)
        self.fine_proj = nn.Linear(channels[0], config.fine_channels)
        self.optimal_transport = LearnableLogOptimalTransport(config.sinkhorn_iterations)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def build_levels(self, pos: Tensor, normal: Tensor) -> list[RoITrLevel]:
        """Subsample by FPS from the point nearest the centroid (stride per level) and compute every level's PPF groups once."""
        config = self.config
        levels: list[RoITrLevel] = []
        current_pos, current_normal = pos, normal
        for level, (stride, k) in enumerate(zip(config.strides, config.neighbors)):
            down_index = down_neighbor_index = down_ppf = None
            if stride > 1:
                count = max(1, current_pos.size(0) // stride)
                down_index = centroid_fps(current_pos, count)
                down_neighbor_index, down_ppf = ppf_groups(
                    current_pos, current_normal, k, down_index, config.sign_invariant_ppf
                )
                current_pos, current_normal = current_pos[down_index], current_normal[down_index]
            neighbor_index, ppf = ppf_groups(current_pos, current_normal, k, None, config.sign_invariant_ppf)
            levels.append(RoITrLevel(current_pos, current_normal, neighbor_index, ppf,
                                     down_index, down_neighbor_index, down_ppf))
        return levels

    def encode(self, pos: Tensor, normal: Tensor) -> RoITrFeatures:
        """Local encoder-decoder of one cloud."""
        if pos.dim() != 2 or pos.size(1) != 3:
            raise ValueError(f"pos: expected a 2-D tensor [N, 3], got shape {tuple(pos.shape)}")
        if normal.shape != pos.shape:
            raise ValueError(f"normal: expected shape {tuple(pos.shape)} like pos, got {tuple(normal.shape)}")
        dtype = self.fine_proj.weight.dtype
        for name, value in (("pos", pos), ("normal", normal)):
            if value.dtype != dtype:
                raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the model's parameters), "
                                f"got {value.dtype}")
        if pos.size(0) == 0:
            raise ValueError("pos: expected at least one point, got an empty cloud")
        # Always on, although it reads the data: the network synchronises anyway (sampling and neighbour
        # search), and one NaN point would otherwise spread to every feature and fail deep in the pose solver.
        finite = torch.stack([torch.isfinite(pos).all(), torch.isfinite(normal).all()]).tolist()
        for name, value, ok in (("pos", pos, finite[0]), ("normal", normal, finite[1])):
            if not ok:
                bad = (~torch.isfinite(value)).any(dim=1).nonzero().flatten()
                raise ValueError(f"{name}: expected finite coordinates, got NaN or inf in {bad.numel()} of "
                                 f"{value.size(0)} points (first at row {int(bad[0])})")
        levels = self.build_levels(pos, normal)
        x = pos.new_ones(pos.size(0), 1)
        skips = []
        for level, info in enumerate(levels):
            if info.down_index is None:
                x = self.encoder_down[level](x, info.neighbor_index, info.ppf)
            else:
                x = self.encoder_down[level](x, info.down_neighbor_index, info.down_ppf, info.down_index)
            x = torch.relu(self.encoder_norm[level](x))
            for block in self.encoder_blocks[level]:
                x = block(x, info.neighbor_index, info.ppf)
            skips.append(x)
        superpoint_feats = x
        head = levels[-1]
        context = self.head_global(x.mean(dim=0, keepdim=True)).expand_as(x)
        y = self.head_fuse(torch.cat([x, context], dim=1))
        y = self.head_block(y, head.neighbor_index, head.ppf)
        for step, level in enumerate(range(len(levels) - 2, -1, -1)):
            info, coarse = levels[level], levels[level + 1]
            y = self.decoder_skip[step](skips[level]) + knn_interpolate(
                self.decoder_coarse[step](y), coarse.pos, info.pos, k=3
            )
            y = self.decoder_blocks[step](y, info.neighbor_index, info.ppf)
        return RoITrFeatures(levels, superpoint_feats, y)

    def forward(self, src_pos: Tensor, src_normal: Tensor, tgt_pos: Tensor, tgt_normal: Tensor) -> RoITrOutput:
        src = self.encode(src_pos, src_normal)
        tgt = self.encode(tgt_pos, tgt_normal)
        src_nodes, tgt_nodes = src.levels[-1].pos, tgt.levels[-1].pos
        src_coarse, tgt_coarse = self.transformer(src_nodes, src.superpoint_feats, tgt_nodes, tgt.superpoint_feats)
        if self.transformer_skip is not None:
            src_coarse = src_coarse + self.transformer_skip(src.superpoint_feats)
            tgt_coarse = tgt_coarse + self.transformer_skip(tgt.superpoint_feats)
        src_coarse = nn.functional.normalize(self.coarse_proj(src_coarse), dim=1)
        tgt_coarse = nn.functional.normalize(self.coarse_proj(tgt_coarse), dim=1)
        return RoITrOutput(
            src_pos, tgt_pos, src_nodes, tgt_nodes, src_coarse, tgt_coarse,
            self.fine_proj(src.point_feats), self.fine_proj(tgt.point_feats),
        )

    def __repr__(self) -> str:
        config = self.config
        return (
            f"{self.__class__.__name__}(channels={list(config.channels)}, neighbors={list(config.neighbors)}, "
            f"transformer={config.transformer_channels}x{len(config.transformer_blocks)}, "
            f"coarse={config.coarse_channels}, fine={config.fine_channels})"
        )
