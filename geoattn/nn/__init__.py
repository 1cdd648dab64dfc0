from geoattn.nn.roitr import (GeometricStructureEmbedding, LearnableLogOptimalTransport, PositionalCrossAttentionBlock,
                              PPFAttention, PPFAttentionBlock, RotationInvariantTransformer, RPESelfAttentionBlock,
                              knn_interpolate, ppf_groups)
from geoattn.nn.largegt import CodebookGlobalAttention, LargeGTLocalAttention
from geoattn.nn.scatterformer import (CrossWindowInteraction, DepthwiseSparseConv3d, ScatteredLinearAttention,
                                      ScatterFormerBlock, depthwise_sparse_conv)
