"""3-D object detection tasks: target assignment, losses, decoding and NMS, data pipeline, metrics, training,
inference and synthetic LiDAR scenes.

This is a task package (like :mod:`geoattn.registration` and :mod:`geoattn.pose`): it sits above
:mod:`geoattn.models`, whose detectors only produce dense head maps, and turns those maps into losses,
boxes and scores. Names are imported lazily (PEP 562) so that the command line stays fast.
"""
from __future__ import annotations

from geoattn._exports import lazy_exports

_EXPORTS = {
    "config": ["builtin_configs", "load_config", "validate_config", "check_same_model"],
    "targets": ["gaussian_radius", "CenterTargets", "assign_center_targets", "CenterTargetAssigner", "decode_boxes"],
    "losses": ["focal_loss_centernet", "reg_l1_loss", "iou_branch_loss", "diou_loss", "center_head_loss",
               "CenterHeadLoss"],
    "postprocess": ["decode_center_head", "CenterHeadPostProcessor"],
    "nms": ["nms_bev", "multiclass_nms_bev"],
    "dataset": ["KittiDetectionDataset", "WaymoDetectionDataset", "build_dataset", "collate_detection"],
    "augmentation": ["DataAugmentor", "GTDatabaseSampler"],
    "gt_database": ["create_gt_database"],
    "kitti_eval": ["evaluate_kitti", "evaluate_kitti_folders", "format_kitti_table", "lidar_detections_to_kitti"],
    "waymo_eval": ["evaluate_waymo", "evaluate_waymo_infos"],
    "optim": ["AdamOneCycle", "OneCycleSchedule", "build_optimizer"],
    "training": ["DEFAULT_CHECKPOINT", "DetectionCriterion", "build_detector_from_config", "load_detector",
                 "train_one_epoch", "predict", "evaluate_predictions"],
    "inference": ["Detector", "DetectionFrame", "DetectionResult", "read_frame_for_detection"],
    "render": ["render_bev"],
    "synthetic": ["generate_scene", "write_synthetic_kitti", "SyntheticFrame", "kitti_calibration"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
