"""3D human pose task logic: metrics, virtual cameras and training helpers for 2D -> 3D lifting."""
from geoattn.pose.cameras import (look_at_camera, random_cameras, ray_aligned_keypoints, ray_aligned_pairs,
                                  ray_frame_to_camera, ray_rotations, render_pairs, virtual_cameras)
from geoattn.pose.metrics import auc, joint_errors, mpjpe, n_mpjpe, p_mpjpe, pck, procrustes_align
from geoattn.pose.training import (ScaleNormalizedLifter, bn_momentum, pose_metrics, predict, set_bn_momentum,
                                   train_epoch)
