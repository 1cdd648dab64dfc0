r"""GLA-GCN's adaptive graph convolution as a PyG ``MessagePassing`` layer over a batch of skeletons."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from geoattn.nn.conv._edges import as_edge_index

__all__ = ["AGCNConv"]


class AGCNConv(MessagePassing):
    r"""Adaptive graph convolution (2s-AGCN / GLA-GCN) with the skeleton given as ``edge_index``.

    Nodes are the joints of a batch of skeletons, ``V`` consecutive nodes per skeleton in joint order (what a
    PyG ``Batch`` of skeleton graphs gives), each with ``T`` frames of ``C`` features. For the three subsets
    :math:`k` (the node itself; the mean over its in-neighbours :math:`j \to i`; the mean over its
    out-neighbours, i.e. over the reversed edges) and the adaptive part over all joints :math:`j` of the same
    skeleton,

    .. math::
        a_k(i) = \big[\text{subset } k \text{ of } x\big]_i + \sum_{j} \big(B_k[v_j, v_i] + C_k(x)_{ji}\big)\,x_j,
        \qquad C_k(x)_{ji} = \mathrm{softmax}_{j}\Big(\frac{\langle\theta_k(x_j), \phi_k(x_i)\rangle}{C_e T}\Big)

    (:math:`v_j` the joint of node :math:`j`, :math:`\langle\cdot,\cdot\rangle` over frames and the
    :math:`C_e` embedding channels, PyG's :func:`~torch_geometric.utils.softmax` over the edges into
    :math:`i`), then :math:`y = \mathrm{ReLU}(\mathrm{Dropout}(\mathrm{BN}(\sum_k a_k W_k^\top)) +
    \mathrm{down}(x))`. With :func:`geoattn.nn.adjacency_subsets` of the same skeleton this equals
    :class:`~geoattn.nn.AdaptiveGraphConv`, the dense (faster) form on ``[N, C, T, V]`` maps; the subsets
    assume no repeated edge.

    Args:
        in_channels, out_channels: :math:`C_{in}`, :math:`C_{out}`; num_joints: ``V``;
        embedding_ratio, learn_offset, attention, dropout: as :class:`~geoattn.nn.AdaptiveGraphConv`.

    Shapes: ``x [M, C_in]`` or ``[M, T, C_in]`` (``M = S V`` nodes of ``S`` skeletons), ``edge_index [2, E]``
    (parent -> child, or an ``EdgeIndex`` or a sparse ``adj_t [M, M]``) -> ``[M, C_out]`` or ``[M, T, C_out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_joints: int, embedding_ratio: int = 4,
                 learn_offset: bool = True, attention: bool = True, dropout: float = 0.0):
        super().__init__(aggr="sum", node_dim=0)
        if num_joints < 1:
            raise ValueError(f"num_joints: expected a positive int, got {num_joints}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_joints, self.num_subsets = num_joints, 3  # self, in-neighbours, out-neighbours
        num_subsets = self.num_subsets
        self.embed_channels = max(1, out_channels // embedding_ratio)
        self.offset = nn.Parameter(torch.empty(num_subsets, num_joints, num_joints)) if learn_offset else None
        self.attention = attention
        if attention:
            self.theta = nn.Linear(in_channels, num_subsets * self.embed_channels)
            self.phi = nn.Linear(in_channels, num_subsets * self.embed_channels)
        else:
            self.theta = self.phi = None
        self.weight = nn.Parameter(torch.empty(num_subsets, out_channels, in_channels))
        self.bn = nn.BatchNorm1d(out_channels)
        if in_channels != out_channels:
            self.down = nn.Sequential(nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels))
        else:
            self.down = None
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.offset is not None:
            nn.init.constant_(self.offset, 1e-6)
        for lin in (self.theta, self.phi):
            if lin is not None:
                nn.init.kaiming_normal_(lin.weight, mode="fan_out")
                nn.init.zeros_(lin.bias)
        std = math.sqrt(2.0 / (self.out_channels * self.in_channels * self.num_subsets))
        nn.init.normal_(self.weight, 0.0, std)
        nn.init.constant_(self.bn.weight, 1e-6)
        nn.init.zeros_(self.bn.bias)
        self.bn.reset_running_stats()
        if self.down is not None:
            nn.init.kaiming_normal_(self.down[0].weight, mode="fan_out")
            nn.init.zeros_(self.down[0].bias)
            self.down[1].reset_parameters()

    def forward(self, x: Tensor, edge_index) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3) or x.size(-1) != self.in_channels:
            raise ValueError(f"x: expected [M, C] or [M, T, C] with C={self.in_channels}, got shape {tuple(x.shape)}")
        if not x.is_floating_point() or x.dtype != self.weight.dtype:
            raise TypeError(f"x: expected dtype {self.weight.dtype} (the layer's parameters), got {x.dtype}")
        num_nodes, num_joints = x.size(0), self.num_joints
        if num_nodes % num_joints != 0:
            raise ValueError(f"x: expected a multiple of num_joints={num_joints} rows (whole skeletons), "
                             f"got {num_nodes}")
        frames = x.unsqueeze(1) if x.dim() == 2 else x  # [M, T, C]
        edge_index = as_edge_index(edge_index, num_nodes)
        ones = frames.new_ones(edge_index.size(1))
        subsets = [frames]
        for edges in (edge_index, edge_index.flip(0)):  # mean over in-neighbours, then over out-neighbours
            degree = frames.new_zeros(num_nodes).index_add_(0, edges[1], ones)
            weight = 1.0 / degree.clamp(min=1.0).index_select(0, edges[1])
            subsets.append(self.propagate(edges, x=frames, edge_weight=weight.view(-1, 1, 1),
                                          size=(num_nodes, num_nodes)))
        aggregated = torch.stack(subsets, dim=1)  # [M, K, T, C]
        if self.offset is not None or self.attention:
            aggregated = aggregated + self._adaptive(frames)
        y = torch.einsum("mktc,koc->mto", aggregated, self.weight)
        steps = y.size(1)
        y = self.dropout(self.bn(y.reshape(-1, self.out_channels))).view(num_nodes, steps, self.out_channels)
        residual = frames if self.down is None else self.down[1](
            self.down[0](frames).reshape(-1, self.out_channels)).view(num_nodes, steps, self.out_channels)
        out = F.relu(y + residual)
        return out.squeeze(1) if x.dim() == 2 else out

    def _adaptive(self, frames: Tensor) -> Tensor:
        """``sum_j (B_k + C_k)_{ji} x_j`` over all joint pairs of each skeleton: ``[M, K, T, C]``."""
        num_nodes, steps, _ = frames.shape
        v = self.num_joints
        joints = torch.arange(v, device=frames.device)
        source_joint = joints.repeat_interleave(v).repeat(num_nodes // v)
        target_joint = joints.repeat(v * (num_nodes // v))
        base = torch.arange(num_nodes // v, device=frames.device).repeat_interleave(v * v) * v
        edges = torch.stack([base + source_joint, base + target_joint])
        weight = frames.new_zeros(edges.size(1), self.num_subsets)
        if self.offset is not None:
            weight = weight + self.offset.to(frames.dtype)[:, source_joint, target_joint].t()
        if self.attention:
            k, e = self.num_subsets, self.embed_channels
            theta = self.theta(frames).view(num_nodes, steps, k, e)
            phi = self.phi(frames).view(num_nodes, steps, k, e)
            logits = (theta.index_select(0, edges[0]) * phi.index_select(0, edges[1])).sum(dim=(1, 3))
            logits = logits / float(e * steps)
            accumulate = torch.promote_types(logits.dtype, torch.float32)
            weight = weight + softmax(logits.to(accumulate), edges[1], num_nodes=num_nodes).to(frames.dtype)
        return self.propagate(edges, x=frames, edge_weight=weight.view(-1, self.num_subsets, 1, 1),
                              size=(num_nodes, num_nodes))

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        # [E, T, C] * [E, 1, 1] (one subset) or [E, 1, T, C] * [E, K, 1, 1] (all subsets at once)
        return edge_weight * (x_j.unsqueeze(1) if edge_weight.dim() > x_j.dim() else x_j)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, joints={self.num_joints}, "
                f"embed={self.embed_channels}, attention={self.attention}, offset={self.offset is not None})")
