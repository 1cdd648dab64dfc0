"""Edge inputs of the message-passing layers: ``edge_index [2, E]``, ``EdgeIndex`` or a sparse ``adj_t``."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index

from geoattn import backends

__all__ = ["as_edge_index"]


def as_edge_index(edge_index, num_nodes: int, name: str = "edge_index") -> Tensor:
    """A plain long ``[2, E]`` tensor (source row 0, target row 1) from any PyG adjacency.

    Accepts ``edge_index [2, E]`` (int64 or int32), an ``EdgeIndex``, a torch.sparse ``adj_t`` (COO, CSR or
    CSC) or a torch_sparse ``SparseTensor`` ``adj_t``; ``adj_t[i, j] != 0`` is the edge ``j -> i`` (PyG's
    transposed adjacency, as ``GCNConv`` takes it). Edge values of a sparse input are not used. With
    ``GEOATTN_DEBUG=1`` node ids outside ``[0, num_nodes)`` raise.
    """
    if isinstance(edge_index, SparseTensor):
        if edge_index.size(0) != num_nodes:
            raise ValueError(f"{name}: expected an adj_t with {num_nodes} rows (one per target node), "
                             f"got {edge_index.size(0)}")
        target, source, _ = edge_index.coo()
        return torch.stack([source, target])
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{name}: expected an edge_index [2, E], an EdgeIndex or a sparse adj_t, "
                        f"got {type(edge_index).__name__}")
    if is_torch_sparse_tensor(edge_index):
        if edge_index.dim() != 2 or edge_index.size(0) != num_nodes:
            raise ValueError(f"{name}: expected a sparse adj_t of {num_nodes} rows (one per target node), "
                             f"got shape {tuple(edge_index.shape)}")
        pairs, _ = to_edge_index(edge_index)
        return pairs.flip(0)
    if isinstance(edge_index, EdgeIndex):
        edge_index = edge_index.as_tensor()
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: expected an integer tensor (int64 or int32), got dtype {edge_index.dtype}")
    if backends.debug_checks() and edge_index.numel() > 0:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            raise ValueError(f"{name}: expected node ids in [0, {num_nodes}), got range [{low}, {high}]")
    return edge_index.long()
