"""Pose-space augmentation for lifting: new, physically plausible poses from a few recorded ones."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geoattn.nn.glagcn import H36M_PARENTS
from geoattn.sparse.geometry import axis_angle_to_matrix

__all__ = ["LIMB_JOINTS", "SHOULDER_JOINTS", "random_limb_rotations"]

#: Joints whose subtrees are turned by default: hips, knees, shoulders and elbows of H36M-17.
LIMB_JOINTS: tuple[int, ...] = (1, 2, 4, 5, 11, 12, 14, 15)
#: The left and right shoulders of H36M-17 (their subtrees are the arms).
SHOULDER_JOINTS: tuple[int, ...] = (11, 14)


def random_limb_rotations(poses: np.ndarray, rng: np.random.Generator,
                          max_degrees: float | Sequence[float] = 20.0, joints: Sequence[int] = LIMB_JOINTS,
                          parents: Sequence[int] = H36M_PARENTS) -> np.ndarray:
    r"""Turn the subtree below each of ``joints`` about that joint by its own random rotation.

    For joint :math:`j` (taken in tree order) and every descendant :math:`d`:
    :math:`p_d \leftarrow R_j (p_d - p_j) + p_j`, with :math:`R_j` about a uniformly random axis by an
    angle uniform in :math:`[0, m_j]`. ``max_degrees`` is one bound :math:`m` for all joints or one
    per entry of ``joints`` (e.g. a wide range for the shoulders, whose arms move most freely). One
    rotation per joint for the whole sequence ``poses [T, V, 3]``, so motion stays smooth and bone
    lengths are kept exactly.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1] != len(parents) or poses.shape[2] != 3:
        raise ValueError(f"poses: expected a (T, {len(parents)}, 3) array, got shape {poses.shape}")
    joints = tuple(joints)
    bounds = np.asarray(max_degrees, dtype=np.float64)
    if bounds.ndim == 0:
        bounds = np.full(len(joints), float(bounds))
    if bounds.shape != (len(joints),) or (bounds < 0).any():
        raise ValueError(f"max_degrees: expected one non-negative angle or {len(joints)} (one per joint), "
                         f"got {max_degrees!r}")
    bound_of = dict(zip(joints, bounds.tolist()))
    children: list[list[int]] = [[] for _ in parents]
    for joint, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(joint)

    def descendants(joint: int) -> list[int]:
        found, stack = [], list(children[joint])
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(children[node])
        return found

    depth = [0] * len(parents)
    for joint, parent in enumerate(parents):
        depth[joint] = depth[parent] + 1 if parent >= 0 else 0
    out = poses.copy()
    for joint in sorted(joints, key=lambda j: depth[j]):
        below = descendants(joint)
        if not below:
            continue
        axis = rng.normal(size=3)
        axis /= max(np.linalg.norm(axis), 1e-12)
        angle = np.deg2rad(rng.uniform(0.0, bound_of[joint]))
        rotation = axis_angle_to_matrix(torch.from_numpy(angle * axis)).numpy()
        pivot = out[:, joint:joint + 1]
        out[:, below] = (out[:, below] - pivot) @ rotation.T + pivot
    return out.astype(np.float32)
