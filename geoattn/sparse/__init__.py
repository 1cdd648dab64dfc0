"""Shared sparse primitives: every model in geoattn is built on these (depends on torch only)."""
from geoattn.sparse.segment import (
    SCATTER_BACKEND,
    counts_from_offsets,
    index_from_offsets,
    offsets_from_counts,
    offsets_from_index,
    scatter_max,
    scatter_mean,
    scatter_min,
    scatter_softmax,
    scatter_sum,
    segment_max,
    segment_mean,
    segment_min,
    segment_softmax,
    segment_sum,
)
from geoattn.sparse.graph import (
    CSRGraph,
    NormalizedAdjacency,
    csr_from_edge_index,
    csr_to_edge_index,
    gcn_norm_weights,
    hop_features,
    normalized_propagate,
    one_hop_neighbors,
    two_hop_neighbors,
    two_hop_walk_counts,
)
from geoattn.sparse.voxel import (
    Voxelization,
    VoxelTensor,
    grid_shape,
    install_spconv_cpu_shim,
    submanifold_neighbors,
    voxel_keys,
    voxelize,
)
from geoattn.sparse.window import WindowBucket, WindowChunks, WindowIndex
from geoattn.sparse.neighbors import fps, grid_subsample, knn, neighbor_backend, radius
from geoattn.sparse.geometry import (
    LidarAugmentation,
    compose_transforms,
    estimate_normals,
    invert_transform,
    make_transform,
    point_pair_features,
    project_to_image,
    quaternion_to_matrix,
    axis_angle_to_matrix,
    random_rotation,
    transform_points,
    vector_angle,
    weighted_kabsch,
)
from geoattn.sparse.boxes import (box_corners, boxes_iou3d, boxes_iou_bev, limit_angle, points_in_boxes,
                                  points_in_boxes_pairs, points_to_box_frame, rotate_points_z)
