import numpy as np
import pytest

from geoattn.nn.glagcn import H36M_PARENTS
from geoattn.pose.augment import random_limb_rotations


def bone_lengths(poses):
    return np.stack([np.linalg.norm(poses[:, j] - poses[:, p], axis=-1) for j, p in enumerate(H36M_PARENTS) if p >= 0])


def test_limb_rotations_keep_bones_and_move_only_limbs(real_data):
    poses = np.load(real_data / "pose/cmu_131_01_h36m17.npy")[:30]
    turned = random_limb_rotations(poses, np.random.default_rng(0), max_degrees=30)
    assert np.allclose(bone_lengths(turned), bone_lengths(poses), atol=1e-5)
    assert np.allclose(turned[:, [0, 1, 4, 7, 8, 9, 10, 11, 14]], poses[:, [0, 1, 4, 7, 8, 9, 10, 11, 14]], atol=1e-6)
    assert np.abs(turned[:, [3, 6, 13, 16]] - poses[:, [3, 6, 13, 16]]).max() > 0.01
    assert np.array_equal(random_limb_rotations(poses, np.random.default_rng(0), 0.0), poses)


def test_limb_rotations_errors():
    with pytest.raises(ValueError, match="poses"):
        random_limb_rotations(np.zeros((3, 16, 3)), np.random.default_rng(0))


def test_limb_rotations_per_joint_bounds():
    poses = np.random.default_rng(0).normal(size=(5, 17, 3)).astype(np.float32)  # any skeleton will do
    joints = (11, 14, 12)
    # a zero bound leaves that joint's own turn out: only the right arm (below 14) moves here
    turned = random_limb_rotations(poses, np.random.default_rng(3), max_degrees=[0.0, 90.0, 0.0], joints=joints)
    assert np.allclose(turned[:, [11, 12, 13]], poses[:, [11, 12, 13]], atol=1e-6)
    assert np.abs(turned[:, [15, 16]] - poses[:, [15, 16]]).max() > 0.01
    assert np.allclose(bone_lengths(turned), bone_lengths(poses), atol=1e-5)
    # one bound for all joints and the same bound given per joint draw the same rotations
    same = random_limb_rotations(poses, np.random.default_rng(4), max_degrees=[30.0] * len(joints), joints=joints)
    assert np.allclose(same, random_limb_rotations(poses, np.random.default_rng(4), 30.0, joints=joints))
    with pytest.raises(ValueError, match="max_degrees"):
        random_limb_rotations(poses, np.random.default_rng(0), max_degrees=[10.0, 20.0], joints=joints)
    with pytest.raises(ValueError, match="max_degrees"):
        random_limb_rotations(poses, np.random.default_rng(0), max_degrees=-5.0)
