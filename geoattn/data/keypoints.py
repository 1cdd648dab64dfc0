"""Keypoint layout conversion: COCO-17 detections (e.g. from an off-the-shelf 2D detector) -> H36M-17.

COCO-17 order: nose, left/right eye, left/right ear, left/right shoulder, left/right elbow, left/right
wrist, left/right hip, left/right knee, left/right ankle. Human3.6M has joints COCO lacks; they are
synthesised: pelvis = mean of the hips, thorax = mean of the shoulders, spine = mean of pelvis and
thorax, neck/nose = nose, head = mean of the eyes (the common convention of lifting pipelines).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["COCO_KEYPOINT_NAMES", "COCO_TO_H36M17", "coco_to_h36m17"]

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)

_PELVIS, _THORAX = (11, 12), (5, 6)
#: For every H36M-17 joint, the COCO joints averaged to make it (spine uses both hips and shoulders).
COCO_TO_H36M17: tuple[tuple[int, ...], ...] = (
    _PELVIS, (12,), (14,), (16,), (11,), (13,), (15,), _PELVIS + _THORAX, _THORAX, (0,), (1, 2),
    (5,), (7,), (9,), (6,), (8,), (10,),
)


def coco_to_h36m17(keypoints):
    """``[..., 17, C]`` COCO keypoints -> ``[..., 17, C]`` in H36M-17 order (numpy or torch).

    ``C`` is 2 (x, y) or 3 (x, y, confidence); the coordinates of synthesised joints are means, their
    confidence is the minimum of the joints used (a missing hip makes the pelvis unreliable).
    """
    is_numpy = not isinstance(keypoints, Tensor)
    points = torch.as_tensor(np.asarray(keypoints)) if is_numpy else keypoints
    if points.dim() < 2 or points.shape[-2] != 17 or points.shape[-1] not in (2, 3):
        raise ValueError(f"keypoints: expected shape [..., 17, 2 or 3] (COCO-17), got {tuple(points.shape)}")
    columns = []
    for group in COCO_TO_H36M17:
        selected = points[..., list(group), :]
        joint = selected[..., :2].mean(-2)
        if points.shape[-1] == 3:
            joint = torch.cat([joint, selected[..., 2:].amin(-2)], dim=-1)
        columns.append(joint)
    out = torch.stack(columns, dim=-2)
    return out.numpy() if is_numpy else out
