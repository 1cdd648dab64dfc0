from geoattn.nn.roitr import (GeometricStructureEmbedding, LearnableLogOptimalTransport, PositionalCrossAttentionBlock,
                              PPFAttention, PPFAttentionBlock, RotationInvariantTransformer, RPESelfAttentionBlock,
                              knn_interpolate, ppf_groups)
from geoattn.nn.largegt import CodebookGlobalAttention, LargeGTLocalAttention
