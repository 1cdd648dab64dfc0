from geoattn.nn.glagcn import (H36M_JOINTS_LEFT, H36M_JOINTS_RIGHT, H36M_PARENTS, AdaptiveGraphConv,
                               GraphTemporalUnit, PerJointHead, StridedGraphTemporalBlock, TemporalConv,
                               adjacency_subsets, skeleton_edge_index)
from geoattn.nn.local_augmentation import (BranchConcat, LocalAugmenter, UncertaintySelector, combine_augmented,
                                           consistency_loss, row_normalize)
from geoattn.nn.roitr import (GeometricStructureEmbedding, LearnableLogOptimalTransport, PositionalCrossAttentionBlock,
                              PointInstanceNorm, PPFAttention, PPFAttentionBlock, RotationInvariantTransformer,
                              RPESelfAttentionBlock, knn_interpolate, ppf_groups)
from geoattn.nn.largegt import CodebookGlobalAttention, LargeGTLocalAttention
from geoattn.nn.scatterformer import (AttentionPillarPooling, CrossWindowInteraction, DepthwiseSparseConv3d,
                                      ScatteredLinearAttention, ScatterFormerBlock, depthwise_sparse_conv)
from geoattn.nn.logonet import (CameraProjection, CameraSetup, FeatureDynamicAggregation, GlobalFusion, LocalFusion,
                                PointImageFusion, RoIGridPool, project_to_cameras, roi_grid_points, voxel_centroids)
from geoattn.nn.scatterformer import cached_window_index
from geoattn.nn.conv import AGCNConv, LargeGTConv, PPFAttentionConv, knn_edge_index
