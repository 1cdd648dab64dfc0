"""Point cloud registration: RoITr coarse-to-fine matching, pose estimation, losses, metrics, the Open3D
FPFH baseline, evaluation and file I/O.

Names are imported lazily (PEP 562) so that the command line can build its parser from
:mod:`geoattn.registration.commands` without importing torch.
"""
from __future__ import annotations

from geoattn._exports import lazy_exports

_EXPORTS = {
    "io": ["SUPPORTED_SUFFIXES", "atomic_write_bytes", "check_cloud", "check_downsampled", "json_dumps",
           "read_point_cloud", "write_transform"],
    "losses": ["overlap_circle_loss", "patch_overlaps", "transport_labels", "transport_nll_loss"],
    "matching": ["Correspondences", "Patches", "fine_correspondences", "partition_points_to_nodes", "patch_scores",
                 "superpoint_matching"],
    "metrics": ["inlier_ratio", "information_rmse", "mean_distance_rmse", "relative_rotation_error",
                "relative_translation_error", "rotation_to_quaternion", "summarize_benchmark"],
    "pipeline": ["DEFAULT_WEIGHTS", "ESTIMATORS", "RegistrationResult", "RoITrRegistration", "default_weights_path",
                 "equivariant_grid_subsample", "load_roitr", "match_output", "prepare_cloud", "principal_frame",
                 "register", "roitr_training_loss", "save_roitr"],
    "pose": ["PoseEstimate", "compatibility_registration", "local_to_global_registration", "point_to_plane_icp",
             "ransac_registration", "refine_pose"],
    "fpfh": ["fpfh_registration", "icp_refine"],
    "render": ["alignment_png", "render_alignment"],
    "evaluation": ["evaluate_3dmatch"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
