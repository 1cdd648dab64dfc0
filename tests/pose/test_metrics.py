import numpy as np
import pytest
import torch

from geoattn.data.h36m import flip_pose
from geoattn.pose.metrics import auc, joint_errors, mpjpe, n_mpjpe, p_mpjpe, pck, procrustes_align


def real_poses(real_data):
    return torch.from_numpy(np.load(real_data / "pose/mmpose_h36m/test_h36m_body3d.npz")["S"][..., :3])


def test_mpjpe_by_hand():
    target = torch.zeros(1, 2, 3)
    prediction = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]])
    assert joint_errors(prediction, target).tolist() == [[5.0, 1.0]]
    assert mpjpe(prediction, target).item() == 3.0
    assert pck(prediction, target, threshold=2.0).item() == 0.5
    # AUC over thresholds 0, 1, ..., 6: PCK = 0, 0, .5, .5, .5, .5, 1 -> mean 3/7.
    assert np.isclose(auc(prediction, target, max_threshold=6.0, steps=7).item(), 3 / 7)


def test_p_mpjpe_ignores_similarity_transforms_of_real_poses(real_data):
    poses = real_poses(real_data)
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]  # proper rotations
    moved = 1.7 * poses @ q.transpose(-1, -2) + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert p_mpjpe(moved, poses).item() < 1e-9
    assert torch.allclose(procrustes_align(moved, poses), poses, atol=1e-9)
    assert mpjpe(moved, poses).item() > 0.1
    # N-MPJPE removes scale only.
    assert n_mpjpe(1.7 * poses, poses).item() < 1e-9
    assert n_mpjpe(moved, poses).item() > 0.01


def test_p_mpjpe_does_not_allow_reflections(real_data):
    poses = real_poses(real_data) - real_poses(real_data)[:, :1]
    mirrored = poses * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert p_mpjpe(mirrored, poses).item() > 0.005
    # ...but the properly flipped pose (x mirrored and left/right swapped) is only a left-right relabelling.
    assert p_mpjpe(flip_pose(poses), poses).item() > 0.0


def test_metric_errors_and_dtypes():
    with pytest.raises(ValueError, match="equal shapes"):
        mpjpe(torch.zeros(2, 17, 3), torch.zeros(2, 16, 3))
    with pytest.raises(TypeError, match="floating"):
        mpjpe(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        auc(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), steps=1)
    aligned = procrustes_align(torch.randn(3, 17, 3), torch.randn(3, 17, 3))
    assert aligned.dtype == torch.float32
    # Degenerate prediction (all joints at one point): finite result.
    assert torch.isfinite(p_mpjpe(torch.zeros(1, 17, 3), torch.randn(1, 17, 3)))
    assert np.isclose(mpjpe(np.ones((2, 3)), np.zeros((2, 3))).item(), np.sqrt(3))
