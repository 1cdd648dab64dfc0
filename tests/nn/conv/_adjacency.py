"""The adjacency forms PyG layers take, built from one ``edge_index`` (source row 0, target row 1)."""
from __future__ import annotations

import torch
from torch_geometric import EdgeIndex
from torch_geometric.typing import WITH_TORCH_SPARSE
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csc_tensor, to_torch_csr_tensor


def adjacency_forms(edge_index: torch.Tensor, num_nodes: int) -> dict:
    size = (num_nodes, num_nodes)
    forms = {
        "int32": edge_index.int(),
        "EdgeIndex": EdgeIndex(edge_index.contiguous(), sparse_size=size),
        "adj_t coo": to_torch_coo_tensor(edge_index.flip(0), size=size),
        "adj_t csr": to_torch_csr_tensor(edge_index.flip(0), size=size),
        "adj_t csc": to_torch_csc_tensor(edge_index.flip(0), size=size),
    }
    if WITH_TORCH_SPARSE:
        from torch_sparse import SparseTensor

        forms["SparseTensor"] = SparseTensor.from_edge_index(edge_index, sparse_sizes=size).t()
    return forms
