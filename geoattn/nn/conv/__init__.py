"""PyG ``MessagePassing`` forms of geoattn's neighbourhood layers (``edge_index`` in, PyG conventions)."""
from geoattn.nn.conv.agcn_conv import AGCNConv
from geoattn.nn.conv.largegt_conv import LargeGTConv
from geoattn.nn.conv.ppf_conv import PPFAttentionConv, knn_edge_index

__all__ = ["AGCNConv", "LargeGTConv", "PPFAttentionConv", "knn_edge_index"]
