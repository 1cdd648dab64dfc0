"""2D -> 3D pose lifting networks: GLA-GCN and a VideoPose3D-style temporal convolution baseline.

Both take a window of ``T = receptive_field()`` frames of 2D keypoints ``[N, T, V, 2]`` and predict
the 3D pose of the centre frame ``[N, 1, V, 3]`` (VideoPose3D's optimised single-frame scheme).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geoattn.nn.glagcn import (
    H36M_PARENTS,
    GraphTemporalUnit,
    PerJointHead,
    StridedGraphTemporalBlock,
    adjacency_subsets,
    skeleton_edge_index,
)

__all__ = ["GLAGCN", "TemporalConvLifter", "receptive_field"]


def receptive_field(filter_widths: Sequence[int]) -> int:
    """Frames seen by one output frame of a stack with these (odd) filter widths: ``1 + 2 * sum(pads)``.

    Layer ``i`` pads ``(w_i - 1) / 2 * prod(w_<i)`` frames on each side, so 3,3,3 -> 27,
    3,3,3,3 -> 81 and 3,3,3,3,3 -> 243.
    """
    widths = _check_filter_widths(filter_widths)
    frames, dilation = 1, 1
    for width in widths:
        frames += (width - 1) * dilation
        dilation *= width
    return frames


def _check_filter_widths(filter_widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in filter_widths)
    if not widths or any(w < 1 or w % 2 == 0 for w in widths):
        raise ValueError(f"filter_widths: expected a non-empty sequence of odd positive ints, got {filter_widths}")
    return widths


def _check_window(x: Tensor, num_joints: int, in_features: int, frames: int, dtype: torch.dtype) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"x: expected dtype {dtype} (the dtype of the model's parameters), got {x.dtype}")
    if x.dim() != 4 or x.shape[1:] != (frames, num_joints, in_features):
        raise ValueError(
            f"x: expected a 4-D tensor [N, T, V, C] with T={frames}, V={num_joints}, C={in_features}, "
            f"got shape {tuple(x.shape)}"
        )


class GLAGCN(nn.Module):
    r"""Global-local adaptive graph convolutional network (Yu et al., ICCV 2023) for 3D pose lifting.

    ``x [N, T, V, C_in]`` is batch-normalised per (joint, coordinate) channel, expanded to ``channels``
    by a :class:`~geoattn.nn.GraphTemporalUnit`, then each filter width ``f`` contributes one
    :class:`~geoattn.nn.StridedGraphTemporalBlock` dividing time by ``f`` until one frame remains; a
    :class:`~geoattn.nn.PerJointHead` maps every joint's feature to its 3D position.

    Args:
        num_joints: ``V``.
        in_features: coordinates per input joint (2 for 2D keypoints).
        out_features: coordinates per output joint.
        channels: hidden width (96 in the paper).
        filter_widths: temporal reduction per block; ``receptive_field()`` is their product
            (27 / 81 / 243 for three / four / five 3s).
        edge_index: directed parent -> child skeleton edges ``[2, E]``; defaults to Human3.6M-17.
        kernel_size: temporal convolution length inside each unit (9 in the paper).
        dropout: dropout probability (0.1 in the paper).
        shared_head: one C -> 3 map for all joints (released code) or one per joint (paper variant).

    Shapes: ``x [N, receptive_field(), V, C_in] -> [N, 1, V, out_features]``, in the dtype of the
    parameters (float32, float64 or bfloat16; see :class:`~geoattn.nn.AdaptiveGraphConv`).
    At 243 frames and 96 channels it has 1,345,688 parameters (the official model: 1.349 M; the
    difference is the redundant bias of each graph convolution, which the following BN absorbs).
    """

    def __init__(
        self,
        num_joints: int = 17,
        in_features: int = 2,
        out_features: int = 3,
        channels: int = 96,
        filter_widths: Sequence[int] = (3, 3, 3, 3, 3),
        edge_index: Tensor | None = None,
        kernel_size: int = 9,
        embedding_ratio: int = 4,
        dropout: float = 0.1,
        shared_head: bool = True,
    ) -> None:
        super().__init__()
        self.filter_widths = _check_filter_widths(filter_widths)
        if edge_index is None:
            if num_joints != len(H36M_PARENTS):
                raise ValueError(f"edge_index: required when num_joints != {len(H36M_PARENTS)}, got {num_joints}")
            edge_index = skeleton_edge_index(H36M_PARENTS)
        self.num_joints, self.in_features, self.out_features = num_joints, in_features, out_features
        self.channels = channels
        adjacency = adjacency_subsets(edge_index, num_joints)
        self.input_norm = nn.BatchNorm1d(num_joints * in_features)
        self.expand = GraphTemporalUnit(in_features, channels, adjacency, kernel_size=kernel_size,
                                        embedding_ratio=embedding_ratio, dropout=dropout)
        self.blocks = nn.ModuleList(
            StridedGraphTemporalBlock(channels, adjacency, width, kernel_size, embedding_ratio, dropout)
            for width in self.filter_widths
        )
        self.head = PerJointHead(channels, out_features, num_joints, shared=shared_head)

    def receptive_field(self) -> int:
        return receptive_field(self.filter_widths)

    def reset_parameters(self) -> None:
        self.input_norm.reset_parameters()
        self.expand.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.num_joints, self.in_features, self.receptive_field(), self.head.weight.dtype)
        n, t, v, c = x.shape
        # Normalise each (joint, coordinate) channel over batch and time, then move to [N, C, T, V].
        h = self.input_norm(x.reshape(n, t, v * c).transpose(1, 2))
        h = h.view(n, v, c, t).permute(0, 2, 3, 1).contiguous()
        h = self.expand(h)
        for block in self.blocks:
            h = block(h)
        return self.head(h).unsqueeze(1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(joints={self.num_joints}, channels={self.channels}, "
                f"filter_widths={self.filter_widths}, receptive_field={self.receptive_field()}, "
                f"shared_head={self.head.shared})")


class TemporalConvLifter(nn.Module):
    r"""VideoPose3D-style lifting baseline: strided 1-D convolutions over flattened joints.

    ``h_0 = Drop(ReLU(BN(Conv_{w_0, stride w_0}(x))))``; for each further width ``w_i``:
    ``h_i = h_{i-1}[:, :, w_i/2 :: w_i] + Drop(ReLU(BN(Conv_1(Drop(ReLU(BN(Conv_{w_i, stride w_i}(h_{i-1}))))))))``;
    output ``Conv_1(h) -> V * out_features``. Joints are mixed by the flatten (unlike :class:`GLAGCN`).

    Shapes: ``x [N, receptive_field(), V, C_in] -> [N, 1, V, out_features]``.
    """

    def __init__(
        self,
        num_joints: int = 17,
        in_features: int = 2,
        out_features: int = 3,
        channels: int = 1024,
        filter_widths: Sequence[int] = (3, 3, 3, 3, 3),
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.filter_widths = _check_filter_widths(filter_widths)
        self.num_joints, self.in_features, self.out_features = num_joints, in_features, out_features
        self.channels = channels
        first = self.filter_widths[0]
        self.expand = nn.Conv1d(num_joints * in_features, channels, first, stride=first, bias=False)
        self.expand_bn = nn.BatchNorm1d(channels)
        self.strided_convs = nn.ModuleList(
            nn.Conv1d(channels, channels, w, stride=w, bias=False) for w in self.filter_widths[1:])
        self.strided_bns = nn.ModuleList(nn.BatchNorm1d(channels) for _ in self.filter_widths[1:])
        self.pointwise_convs = nn.ModuleList(
            nn.Conv1d(channels, channels, 1, bias=False) for _ in self.filter_widths[1:])
        self.pointwise_bns = nn.ModuleList(nn.BatchNorm1d(channels) for _ in self.filter_widths[1:])
        self.shrink = nn.Conv1d(channels, num_joints * out_features, 1)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU()

    def receptive_field(self) -> int:
        return receptive_field(self.filter_widths)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_window(x, self.num_joints, self.in_features, self.receptive_field(), self.shrink.weight.dtype)
        n, t, v, c = x.shape
        h = x.reshape(n, t, v * c).transpose(1, 2)
        h = self.dropout(self.relu(self.expand_bn(self.expand(h))))
        for width, conv, bn, pointwise, pointwise_bn in zip(
            self.filter_widths[1:], self.strided_convs, self.strided_bns, self.pointwise_convs, self.pointwise_bns
        ):
            skip = h[:, :, width // 2 :: width]
            h = self.dropout(self.relu(bn(conv(h))))
            h = skip + self.dropout(self.relu(pointwise_bn(pointwise(h))))
        return self.shrink(h).transpose(1, 2).reshape(n, -1, v, self.out_features)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(joints={self.num_joints}, channels={self.channels}, "
                f"filter_widths={self.filter_widths}, receptive_field={self.receptive_field()})")
