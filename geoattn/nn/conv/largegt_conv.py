r"""LargeGT's local attention as a PyG ``MessagePassing`` layer over each node's sampled neighbourhood."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, softmax

from geoattn.nn.conv._edges import as_edge_index
from geoattn.sparse.segment import offsets_from_counts

__all__ = ["LargeGTConv"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _token_pairs(slot_target: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """``(query slot, key slot)`` of every ordered pair of slots with the same target (self pairs included)."""
    order = torch.argsort(slot_target, stable=True)
    counts = torch.zeros(num_nodes, dtype=torch.long, device=slot_target.device).index_add_(
        0, slot_target, torch.ones_like(slot_target))
    offsets = offsets_from_counts(counts)
    target_sorted = slot_target.index_select(0, order)
    repeats = counts.index_select(0, target_sorted)  # each query slot meets every slot of its set
    query = torch.repeat_interleave(torch.arange(order.numel(), device=order.device), repeats)
    block_start = offsets_from_counts(repeats)[:-1].index_select(0, query)
    key = offsets[:-1].index_select(0, target_sorted.index_select(0, query)) + (
        torch.arange(query.numel(), device=order.device) - block_start)
    return order.index_select(0, query), order.index_select(0, key)


class LargeGTConv(MessagePassing):
    r"""LargeGT local attention where node :math:`i`'s token set is :math:`\{i\} \cup \{j : j \to i\}`.

    The edges ``j -> i`` of ``edge_index`` are the sampled neighbours of target :math:`i` (repeated edges are
    repeated tokens, as a sampler drawing with replacement gives). With :math:`z = x W_{in}`,
    :math:`y = \mathrm{LN}(z)` and :math:`q, k, v = y W_{QKV}` per head, every token :math:`t` of the set
    :math:`S_i` attends over the set,

    .. math::
        A_t = \sum_{s \in S_i} \mathrm{softmax}_{s \in S_i}\big(q_t \cdot k_s / \sqrt d\big)\, v_s,\qquad
        O_t = \mathrm{LN}\big(z_t W_{skip} + [A^1_t \| \dots \| A^H_t] W_O\big),

    and the target reads out its set through the edges,

    .. math::
        \mathrm{out}_i = O_i + \sum_{j \to i} \mathrm{softmax}_{j \to i}\big(w^\top [O_i \| O_j]\big)\, O_j.

    Both softmaxes are PyG's :func:`~torch_geometric.utils.softmax` over edges (the readout runs through
    ``propagate``). On fixed-size token sets ``tokens = x[[i, j_1, ..., j_{T-1}]]`` it equals
    :class:`~geoattn.nn.LargeGTLocalAttention` with the same parameters
    (``conv.load_state_dict(dense.state_dict())``); the dense layer is the fast path for the sampler's
    fixed-length sequences, this one takes any neighbourhood (``k_hop_subgraph``, mini-batch subgraphs).

    Args:
        in_channels: token width ``C``; heads: ``H``; head_channels: per-head width ``d`` (default
            ``in_channels``, as the official code); dropout: after the attention output and the residual;
            attn_dropout: on the in-set attention weights.

    Shapes: ``x [N, C]``, ``edge_index [2, E]`` (or ``EdgeIndex``, or a sparse ``adj_t [N, N]``) ->
    ``[N, H d]``; with ``return_attention_weights=True`` also ``(edge_index [2, E], alpha [E])``, the readout
    weights (they sum to one over the edges of each target).
    """

    def __init__(self, in_channels: int, heads: int = 2, head_channels: int | None = None, dropout: float = 0.3,
                 attn_dropout: float = 0.0):
        super().__init__(aggr="sum", node_dim=0)
        if in_channels < 1 or heads < 1:
            raise ValueError(f"in_channels, heads: expected positive ints, got {in_channels}, {heads}")
        self.in_channels = in_channels
        self.heads = heads
        self.head_channels = head_channels or in_channels
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        width = self.heads * self.head_channels
        # the submodules of LargeGTLocalAttention, with the same names
        self.lin_in = nn.Linear(in_channels, in_channels)
        self.norm = nn.LayerNorm(in_channels)
        self.lin_qkv = nn.Linear(in_channels, 3 * width)
        self.lin_out = nn.Linear(width, width)
        self.lin_skip = nn.Linear(in_channels, width)
        self.norm_out = nn.LayerNorm(width)
        self.readout = nn.Linear(2 * width, 1)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.heads * self.head_channels

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in (self.lin_in, self.lin_qkv, self.lin_out, self.lin_skip, self.readout):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        self.norm.reset_parameters()
        self.norm_out.reset_parameters()

    def forward(self, x: Tensor, edge_index, return_attention_weights: bool = False):
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"x: expected a 2-D tensor [N, C] with C={self.in_channels}, got shape {tuple(x.shape)}")
        if not x.is_floating_point() or x.dtype != self.lin_in.weight.dtype:
            raise TypeError(f"x: expected dtype {self.lin_in.weight.dtype} (the layer's parameters), got {x.dtype}")
        num_nodes = x.size(0)
        edge_index = as_edge_index(edge_index, num_nodes)
        source, target = edge_index[0], edge_index[1]
        # slots: the N targets themselves (token 0 of each set), then one per edge
        nodes = torch.arange(num_nodes, device=x.device)
        slot_node = torch.cat([nodes, source])
        slot_target = torch.cat([nodes, target])
        num_slots = slot_node.numel()
        z = self.lin_in(x)
        q, k, v = self.lin_qkv(self.norm(z)).view(num_nodes, 3, self.heads, self.head_channels).unbind(1)
        pair_query, pair_key = _token_pairs(slot_target, num_nodes)
        query_node, key_node = slot_node.index_select(0, pair_query), slot_node.index_select(0, pair_key)
        score = (q.index_select(0, query_node) * k.index_select(0, key_node)).sum(-1) / math.sqrt(self.head_channels)
        accumulate = _accumulation_dtype(x.dtype)
        alpha = softmax(score.to(accumulate), pair_query, num_nodes=num_slots).to(x.dtype)
        alpha = F.dropout(alpha, self.attn_dropout, self.training)
        attended = scatter(alpha.unsqueeze(-1) * v.index_select(0, key_node), pair_query, 0, num_slots, "sum")
        attended = F.dropout(self.lin_out(attended.reshape(num_slots, self.out_channels)), self.dropout, self.training)
        out = self.lin_skip(z).index_select(0, slot_node) + attended
        out = self.norm_out(F.dropout(out, self.dropout, self.training))
        node_out, edge_out = out[:num_nodes], out[num_nodes:]
        readout = self.propagate(edge_index, node_out=node_out, edge_out=edge_out, size=(num_nodes, num_nodes))
        alpha, self._alpha = self._alpha, None
        result = node_out + readout
        return (result, (edge_index, alpha)) if return_attention_weights else result

    def message(self, node_out_i: Tensor, edge_out: Tensor, index: Tensor, ptr: Tensor | None,
                size_i: int | None) -> Tensor:
        score = self.readout(torch.cat([node_out_i, edge_out], dim=-1)).squeeze(-1)
        weights = softmax(score.to(_accumulation_dtype(score.dtype)), index, ptr, size_i).to(edge_out.dtype)
        self._alpha = weights  # handed to forward (return_attention_weights), as GATConv does
        return weights.unsqueeze(-1) * edge_out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, heads={self.heads}, "
                f"head_channels={self.head_channels})")
