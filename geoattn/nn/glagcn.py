"""GLA-GCN layers: adaptive graph convolution over a skeleton, strided temporal units, per-joint heads.

Feature maps use the convolutional layout ``x [N, C, T, V]`` (batch, channels, frames, joints), the
layout in which a temporal convolution is a ``Conv2d`` with a ``(k, 1)`` kernel.

The skeleton is given as a directed ``edge_index [2, E]`` from parent (row 0, source) to child
(row 1, target), the PyG ``source_to_target`` convention; :func:`skeleton_edge_index` builds it
from a parents list such as :data:`H36M_PARENTS`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "H36M_PARENTS",
    "H36M_JOINTS_LEFT",
    "H36M_JOINTS_RIGHT",
    "H36M_JOINT_NAMES",
    "skeleton_edge_index",
    "adjacency_subsets",
    "AdaptiveGraphConv",
    "TemporalConv",
    "GraphTemporalUnit",
    "StridedGraphTemporalBlock",
    "PerJointHead",
]

#: Parent of each joint of the 17-joint Human3.6M skeleton (VideoPose3D order); -1 marks the root.
H36M_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
#: Left-side joints (hip, knee, foot, shoulder, elbow, wrist); index i pairs with H36M_JOINTS_RIGHT[i].
H36M_JOINTS_LEFT: tuple[int, ...] = (4, 5, 6, 11, 12, 13)
#: Right-side joints, in the same order as :data:`H36M_JOINTS_LEFT`.
H36M_JOINTS_RIGHT: tuple[int, ...] = (1, 2, 3, 14, 15, 16)
H36M_JOINT_NAMES: tuple[str, ...] = (
    "hip", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot", "spine",
    "thorax", "neck", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
    "right_elbow", "right_wrist",
)


def skeleton_edge_index(parents: Sequence[int], device=None) -> Tensor:
    """Directed parent -> child edges ``[2, V - r]`` of a kinematic tree (``r`` roots, marked -1).

    Row 0 holds the parents (sources), row 1 the children (targets).
    """
    parents_t = torch.as_tensor(list(parents), dtype=torch.long)
    if parents_t.dim() != 1:
        raise ValueError(f"parents: expected a flat sequence of ints, got shape {tuple(parents_t.shape)}")
    num_joints = parents_t.numel()
    if ((parents_t < -1) | (parents_t >= num_joints)).any():
        raise ValueError(f"parents: entries must lie in [-1, {num_joints - 1}], got {parents_t.tolist()}")
    children = torch.nonzero(parents_t >= 0).flatten()
    return torch.stack([parents_t[children], children]).to(device)


def adjacency_subsets(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The three 2s-AGCN partition subsets ``[3, V, V]``: identity, along ``edge_index``, against it.

    With ``M[s, t] = 1`` for every edge ``s -> t``, the subsets are ``I``, ``M D_in^-1`` and
    ``M^T D_out^-1`` where each column is divided by its sum (column normalisation; empty columns stay
    zero). A feature map aggregated as ``y[w] = sum_v x[v] A[v, w]`` then takes at each node the mean
    of its in-neighbours (subset 1) or of its out-neighbours (subset 2). For a parent -> child skeleton
    subset 1 hands each joint its parent's feature and subset 2 gives each parent the mean of its
    children (the official "inward" and "outward" subsets).
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index: node ids must lie in [0, {num_nodes - 1}]")
    forward = torch.zeros(num_nodes, num_nodes)
    forward[edge_index[0].cpu(), edge_index[1].cpu()] = 1.0

    def column_normalise(matrix: Tensor) -> Tensor:
        column_sums = matrix.sum(0, keepdim=True)
        return torch.where(column_sums > 0, matrix / column_sums.clamp_min(1.0), matrix)

    return torch.stack([torch.eye(num_nodes), column_normalise(forward), column_normalise(forward.t())])


def _check_feature_map(x: Tensor, channels: int, num_joints: int | None, name: str = "x",
                       dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the layer's parameters), got {x.dtype}")
    if x.dim() != 4 or x.size(1) != channels or (num_joints is not None and x.size(3) != num_joints):
        joints = "V" if num_joints is None else f"V={num_joints}"
        raise ValueError(
            f"{name}: expected a 4-D tensor [N, C, T, V] with C={channels}, {joints}, got shape {tuple(x.shape)}"
        )


class AdaptiveGraphConv(nn.Module):
    r"""Adaptive graph convolution of 2s-AGCN / GLA-GCN over a fixed set of joints.

    For each subset :math:`k` of the partition ``adjacency [K, V, V]`` the effective adjacency is

    .. math::
        \tilde A_k(x) = A_k + B_k + C_k(x), \qquad
        C_k(x) = \operatorname{softmax}_{v}\Big(\frac{\theta_k(x)^\top \phi_k(x)}{C_e T}\Big)

    with :math:`B_k` a learnable offset initialised to a small constant and :math:`\theta_k, \phi_k`
    1x1 convolutions to :math:`C_e = C_{out} / r` channels whose frames are folded into the embedding;
    the softmax runs over the source axis so every column of :math:`C_k` sums to one. Then

    .. math::
        y = \operatorname{ReLU}\Big(\operatorname{Dropout}\big(\operatorname{BN}(\textstyle\sum_k W_k\,
        x \tilde A_k(x))\big) + \operatorname{down}(x)\Big)

    where :math:`(x A)[w] = \sum_v x[v] A[v, w]`, :math:`W_k` is a 1x1 convolution and ``down`` is the
    identity (or a 1x1 convolution + BN when the channel count changes). BN's scale starts at
    ``1e-6`` so that a freshly initialised layer is close to ``ReLU(down(x))``.

    Args:
        in_channels, out_channels: feature sizes :math:`C_{in}`, :math:`C_{out}`.
        adjacency: ``[K, V, V]`` fixed partition (e.g. :func:`adjacency_subsets`), stored as a buffer.
        embedding_ratio: :math:`r` in :math:`C_e = \max(1, C_{out} / r)`.
        learn_offset: learn :math:`B_k` (else it is absent).
        attention: use the input-dependent :math:`C_k(x)`.
        dropout: dropout probability after BN.

    Shapes: ``x [N, C_in, T, V] -> [N, C_out, T, V]``.

    Runs in the dtype of its parameters (float32, float64 or bfloat16; ``x`` must match); the attention
    softmax of half-precision inputs is computed in float32, everything else in the input dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        adjacency: Tensor,
        embedding_ratio: int = 4,
        learn_offset: bool = True,
        attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if adjacency.dim() != 3 or adjacency.size(1) != adjacency.size(2):
            raise ValueError(f"adjacency: expected shape [K, V, V], got {tuple(adjacency.shape)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_subsets, self.num_joints = adjacency.size(0), adjacency.size(1)
        self.embed_channels = max(1, out_channels // embedding_ratio)
        self.register_buffer("adjacency", adjacency.detach().clone().float())
        self.offset = nn.Parameter(torch.empty_like(self.adjacency)) if learn_offset else None
        self.attention = attention
        if attention:
            subsets_embed = self.num_subsets * self.embed_channels
            self.theta = nn.Conv2d(in_channels, subsets_embed, 1)
            self.phi = nn.Conv2d(in_channels, subsets_embed, 1)
        else:
            self.theta = self.phi = None
        # One weight per subset; no bias because the batch norm right after absorbs it.
        self.weight = nn.Parameter(torch.empty(self.num_subsets, out_channels, in_channels))
        self.bn = nn.BatchNorm2d(out_channels)
        if in_channels != out_channels:
            self.down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        else:
            self.down = None
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.offset is not None:
            nn.init.constant_(self.offset, 1e-6)
        for conv in (self.theta, self.phi):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out")
                nn.init.zeros_(conv.bias)
        std = math.sqrt(2.0 / (self.out_channels * self.in_channels * self.num_subsets))
        nn.init.normal_(self.weight, 0.0, std)
        nn.init.constant_(self.bn.weight, 1e-6)
        nn.init.zeros_(self.bn.bias)
        self.bn.reset_running_stats()
        if self.down is not None:
            nn.init.kaiming_normal_(self.down[0].weight, mode="fan_out")
            nn.init.zeros_(self.down[0].bias)
            self.down[1].reset_parameters()

    def effective_adjacency(self, x: Tensor) -> Tensor:
        """``A_k + B_k + C_k(x)`` as ``[N, K, V, V]`` (or ``[1, K, V, V]`` without attention)."""
        adjacency = self.adjacency.to(x.dtype)
        if self.offset is not None:
            adjacency = adjacency + self.offset.to(x.dtype)
        adjacency = adjacency.unsqueeze(0)
        if not self.attention:
            return adjacency
        n, _, t, v = x.shape
        k, e = self.num_subsets, self.embed_channels
        theta = self.theta(x).reshape(n, k, e * t, v)
        phi = self.phi(x).reshape(n, k, e * t, v)
        logits = theta.transpose(-1, -2) @ phi / float(e * t)
        # Softmax over the source joint v; at least fp32 so half-precision inputs do not overflow.
        attention = torch.softmax(logits, dim=-2, dtype=torch.promote_types(logits.dtype, torch.float32))
        attention = attention.to(x.dtype)
        return adjacency + attention

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.in_channels, self.num_joints, dtype=self.weight.dtype)
        adjacency = self.effective_adjacency(x)
        n, c, t, v = x.shape
        # Two plain GEMMs: aggregate over joints per subset, then mix (subset, channel) pairs.
        aggregated = x.reshape(n, 1, c * t, v) @ adjacency  # [N, K, C*T, V]
        mixing = self.weight.to(x.dtype).transpose(0, 1).reshape(self.out_channels, self.num_subsets * c)
        y = (mixing @ aggregated.reshape(n, self.num_subsets * c, t * v)).view(n, self.out_channels, t, v)
        y = self.dropout(self.bn(y))
        y = y + (x if self.down is None else self.down(x))
        return F.relu(y)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, subsets={self.num_subsets}, "
            f"joints={self.num_joints}, embed={self.embed_channels}, attention={self.attention}, "
            f"offset={self.offset is not None})"
        )


class TemporalConv(nn.Module):
    r"""Per-joint temporal convolution + BN (no activation): ``Conv2d`` with a ``(k, 1)`` kernel.

    :math:`y[n, :, t, v] = \operatorname{BN}\big(\sum_{\tau} W_\tau\, x[n, :, s t + \tau - \lfloor k/2 \rfloor, v]\big)`
    with zero padding :math:`\lfloor k/2 \rfloor` and stride :math:`s`.

    Shapes: ``x [N, C_in, T, V] -> [N, C_out, ceil(T / s), V]`` (odd ``k``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, stride: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive int, got {kernel_size}")
        if stride < 1:
            raise ValueError(f"stride: expected a positive int, got {stride}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), stride=(stride, 1),
                              padding=(kernel_size // 2, 0))
        self.bn = nn.BatchNorm2d(out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out")
        nn.init.zeros_(self.conv.bias)
        self.bn.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.in_channels, None, dtype=self.conv.weight.dtype)
        return self.bn(self.conv(x))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride})")


class GraphTemporalUnit(nn.Module):
    r"""``ReLU(TemporalConv(AdaptiveGraphConv(x)) + residual(x))`` (the 2s-AGCN ``TCN_GCN_unit``).

    The residual is the identity when shapes match, a strided 1x1 :class:`TemporalConv` when they do
    not, or absent with ``residual=False``.

    Shapes: ``x [N, C_in, T, V] -> [N, C_out, ceil(T / stride), V]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        adjacency: Tensor,
        stride: int = 1,
        residual: bool = True,
        kernel_size: int = 9,
        embedding_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.gcn = AdaptiveGraphConv(in_channels, out_channels, adjacency, embedding_ratio=embedding_ratio,
                                     dropout=dropout)
        self.tcn = TemporalConv(out_channels, out_channels, kernel_size, stride)
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = TemporalConv(in_channels, out_channels, 1, stride)

    def reset_parameters(self) -> None:
        self.gcn.reset_parameters()
        self.tcn.reset_parameters()
        if isinstance(self.residual, TemporalConv):
            self.residual.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        y = self.tcn(self.gcn(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return F.relu(y)

    def __repr__(self) -> str:
        kind = "none" if self.residual is None else type(self.residual).__name__
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"residual={kind})")


class StridedGraphTemporalBlock(nn.Module):
    r"""GLA-GCN block that shrinks time by ``filter_width``.

    .. math::
        y = x[:, :, \lfloor f/2 \rfloor :: f] + U_f\big(\operatorname{Dropout}(U_1(x))\big)

    where :math:`U_1` is a stride-1 :class:`GraphTemporalUnit` with identity residual and
    :math:`U_f` a stride-:math:`f` unit without residual; the strided skip keeps the centre frame of
    every group of :math:`f` frames (VideoPose3D's single-frame bookkeeping).

    Shapes: ``x [N, C, T, V] -> [N, C, T / f, V]``; ``T`` must be a multiple of ``f``.
    """

    def __init__(
        self,
        channels: int,
        adjacency: Tensor,
        filter_width: int = 3,
        kernel_size: int = 9,
        embedding_ratio: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if filter_width < 1:
            raise ValueError(f"filter_width: expected a positive int, got {filter_width}")
        self.channels, self.filter_width = channels, filter_width
        self.unit = GraphTemporalUnit(channels, channels, adjacency, 1, True, kernel_size, embedding_ratio, dropout)
        self.strided_unit = GraphTemporalUnit(channels, channels, adjacency, filter_width, False, kernel_size,
                                              embedding_ratio, dropout)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.unit.reset_parameters()
        self.strided_unit.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, None)
        if x.size(2) % self.filter_width:
            raise ValueError(
                f"x: expected a number of frames divisible by filter_width={self.filter_width}, got {x.size(2)}"
            )
        skip = x[:, :, self.filter_width // 2 :: self.filter_width]
        return skip + self.strided_unit(self.dropout(self.unit(x)))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, filter_width={self.filter_width})"


class PerJointHead(nn.Module):
    r"""Individually connected head: each joint's output depends only on its own node feature.

    :math:`y_v = W_v \bar h_v + b_v` with :math:`\bar h_v` the mean over frames of joint :math:`v`'s
    feature. ``shared=True`` uses one :math:`(W, b)` for all joints (the released GLA-GCN code);
    ``shared=False`` learns one per joint (the paper's unshared variant, needs ``num_joints``).

    Shapes: ``x [N, C, T, V] -> [N, V, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int = 3, num_joints: int | None = None,
                 shared: bool = True) -> None:
        super().__init__()
        if not shared and (num_joints is None or num_joints < 1):
            raise ValueError(f"num_joints: the unshared head needs a positive joint count, got {num_joints}")
        self.in_channels, self.out_channels, self.num_joints, self.shared = (
            in_channels, out_channels, num_joints, shared)
        heads = 1 if shared else num_joints
        self.weight = nn.Parameter(torch.empty(heads, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(heads, out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.in_channels, self.num_joints, dtype=self.weight.dtype)
        pooled = x.mean(dim=2).transpose(1, 2)  # [N, V, C]
        return torch.einsum("nvc,vco->nvo", pooled, self.weight.expand(pooled.size(1), -1, -1)
                            if self.shared else self.weight) + self.bias

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, shared={self.shared}, "
                f"joints={self.num_joints})")
