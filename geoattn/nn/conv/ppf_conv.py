r"""RoITr's PPF attention as a PyG ``MessagePassing`` layer (the edge form of :class:`~geoattn.nn.PPFAttention`)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from geoattn.nn.conv._edges import as_edge_index
from geoattn.nn.roitr import PPFAttention
from geoattn.sparse.geometry import point_pair_features
from geoattn.sparse.neighbors import knn

__all__ = ["PPFAttentionConv", "knn_edge_index"]


def knn_edge_index(pos: Tensor, k: int, batch: Tensor | None = None) -> Tensor:
    """``edge_index [2, N k]`` from each point's ``k`` nearest points of its own graph (itself included).

    Source ``j`` (row 0) is a neighbour of target ``i`` (row 1); built with :func:`geoattn.sparse.knn`, so
    graphs with fewer than ``k`` points simply get fewer edges.
    """
    index, _ = knn(pos, pos, k, batch, batch)
    target = torch.arange(pos.size(0), device=pos.device).unsqueeze(1).expand_as(index)
    valid = index >= 0
    return torch.stack([index[valid], target[valid]])


class PPFAttentionConv(MessagePassing):
    r"""Local attention with a point-pair-feature embedding on keys and values, over the edges ``j -> i``.

    With :math:`h = W_{in} x` and :math:`\mathrm{PPF}(i, j)` the point pair feature of target :math:`i`
    and source :math:`j` (angles folded into :math:`[0, \pi/2]` when ``sign_invariant``, divided by
    :math:`\pi`), per head:

    .. math::
        e_{ij} = W_e\,\mathrm{PPF}(i, j),\quad
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}\Big(\frac{(W_q h_i)\cdot(W_k h_j + W_p e_{ij})}
        {\sqrt{d}}\Big),\quad
        y_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ij}\,(W_v h_j + W_{vp} e_{ij}),

    then ``out = W_out LayerNorm(W_o y_i + h_i)``. The softmax is PyG's :func:`~torch_geometric.utils.softmax`
    over the edges of each target. On the kNN groups of :func:`geoattn.nn.ppf_groups` it equals
    :class:`~geoattn.nn.PPFAttention` with the same parameters (``conv.load_state_dict(dense.state_dict())``);
    the dense layer is the faster path for fixed-size groups.

    Args:
        in_channels, out_channels: feature sizes; hidden_channels: attention width (default
            ``min(out_channels, 256)``); heads: attention heads (a divisor of ``hidden_channels``).
        k: group size used when ``edge_index`` is not given (kNN within each graph of ``batch``).
        add_self_loops: add one self loop per node and ignore those of ``edge_index`` (as ``PPFConv``, which
            removes them), so a point attends to itself exactly once.
        sign_invariant: fold the angles so a flipped normal gives the same feature (as ``ppf_groups``).

    Shapes: ``x [N, C_in]``, ``pos [N, 3]``, ``normal [N, 3]``, ``edge_index [2, E]`` (or ``EdgeIndex``, or a
    sparse ``adj_t [N, N]``), or ``edge_index=None`` with an optional ``batch [N]`` -> ``[N, C_out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None, heads: int = 4,
                 k: int = 16, add_self_loops: bool = True, sign_invariant: bool = True):
        super().__init__(aggr="sum", node_dim=0)
        hidden_channels = hidden_channels or min(out_channels, 256)
        if heads < 1 or hidden_channels % heads != 0:
            raise ValueError(f"heads: expected a divisor of hidden_channels={hidden_channels}, got {heads}")
        if k < 1:
            raise ValueError(f"k: expected a positive group size, got {k}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels, self.heads, self.k = hidden_channels, heads, k
        self.add_self_loops, self.sign_invariant = add_self_loops, sign_invariant
        # the submodules of PPFAttention, with the same names, so state dicts move between the two forms
        self.in_proj = nn.Linear(in_channels, hidden_channels)
        self.ppf_embed = nn.Linear(4, hidden_channels)
        self.query = nn.Linear(hidden_channels, hidden_channels)
        self.key = nn.Linear(hidden_channels, hidden_channels)
        self.value = nn.Linear(hidden_channels, hidden_channels)
        self.key_position = nn.Linear(hidden_channels, hidden_channels)
        self.value_position = nn.Linear(hidden_channels, hidden_channels)
        self.attn_out = nn.Linear(hidden_channels, hidden_channels)
        self.norm = nn.LayerNorm(hidden_channels)
        self.out_proj = nn.Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.children():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    _folded = PPFAttention._folded

    def forward(self, x: Tensor, pos: Tensor, normal: Tensor, edge_index=None, batch: Tensor | None = None) -> Tensor:
        for name, value in (("x", x), ("pos", pos), ("normal", normal)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"x: expected a 2-D tensor [N, C] with C={self.in_channels}, got shape {tuple(x.shape)}")
        num_nodes = x.size(0)
        for name, value in (("pos", pos), ("normal", normal)):
            if value.shape != (num_nodes, 3):
                raise ValueError(f"{name}: expected shape ({num_nodes}, 3) (one row per node of x), "
                                 f"got {tuple(value.shape)}")
        if not x.is_floating_point() or x.dtype != self.in_proj.weight.dtype:
            raise TypeError(f"x: expected dtype {self.in_proj.weight.dtype} (the layer's parameters), got {x.dtype}")
        if edge_index is None:
            edge_index = knn_edge_index(pos, self.k, batch)
        else:
            if batch is not None:
                raise ValueError("batch: only used to build the kNN graph when edge_index is None")
            edge_index = as_edge_index(edge_index, num_nodes)
        # edges into a self loop's target that are themselves self loops get no weight when one loop per
        # node is added (masking keeps every shape static, unlike removing them: no graph break)
        loop_mask = None
        if self.add_self_loops:
            loop_mask = edge_index[0] == edge_index[1]
            nodes = torch.arange(num_nodes, device=edge_index.device)
            edge_index = torch.cat([edge_index, torch.stack([nodes, nodes])], dim=1)
            loop_mask = torch.cat([loop_mask, torch.zeros_like(nodes, dtype=torch.bool)])
        h = self.in_proj(x)
        heads, head_dim = self.heads, self.hidden_channels // self.heads
        query = self.query(h).view(num_nodes, heads, head_dim)
        key = self.key(h).view(num_nodes, heads, head_dim)
        value = self.value(h).view(num_nodes, heads, head_dim)
        y = self.propagate(edge_index, query=query, key=key, value=value, pos=pos, normal=normal,
                           loop_mask=loop_mask, size=(num_nodes, num_nodes))
        y = self.norm(self.attn_out(y.reshape(num_nodes, self.hidden_channels)) + h)
        return self.out_proj(y)

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, pos_i: Tensor, pos_j: Tensor,
                normal_i: Tensor, normal_j: Tensor, loop_mask: Tensor | None, index: Tensor, ptr: Tensor | None,
                size_i: int | None) -> Tensor:
        ppf = point_pair_features(pos_i, normal_i, pos_j, normal_j)
        angles = ppf[:, 1:]
        if self.sign_invariant:
            angles = torch.minimum(angles, math.pi - angles)
        ppf = torch.cat([ppf[:, :1], angles / math.pi], dim=1).to(query_i.dtype)
        shape = (-1, self.heads, self.hidden_channels // self.heads)
        key = key_j + nn.functional.linear(ppf, *self._folded(self.key_position)).view(shape)
        value = value_j + nn.functional.linear(ppf, *self._folded(self.value_position)).view(shape)
        score = (query_i * key).sum(-1) / math.sqrt(shape[-1])
        if loop_mask is not None:
            score = score.masked_fill(loop_mask.unsqueeze(-1), float("-inf"))
        alpha = softmax(score, index, ptr, size_i)
        return alpha.unsqueeze(-1) * value

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"hidden={self.hidden_channels}, heads={self.heads})")
