"""RoITr registration pipeline: invariant matches, scale handling, checkpoints, no silent fallback."""
from __future__ import annotations

import copy

import pytest
import torch

from geoattn.models.roitr import RoITr, RoITrConfig
from geoattn.registration.pipeline import (RoITrRegistration, equivariant_grid_subsample, load_roitr, prepare_cloud,
                                           principal_frame, register, roitr_training_loss, save_roitr)
from geoattn.sparse.geometry import estimate_normals, make_transform, random_rotation, transform_points

TINY = RoITrConfig.small(channels=(8, 16, 16, 16), neighbors=(6, 6, 6, 6), transformer_channels=16,
                         transformer_heads=2, heads=2, decoder_heads=2, coarse_channels=8, fine_channels=8,
                         sinkhorn_iterations=10, voxel_size=0.1)


def _cloud(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RoITr(TINY).double().eval()


def test_matches_follow_a_rigid_motion_of_the_source(model):
    src, tgt = _cloud(200, 1), _cloud(180, 2)
    pipeline = RoITrRegistration(model, num_coarse=8, point_limit=16, fine_threshold=0.0)
    _, ref = pipeline.match(src, estimate_normals(src), tgt, estimate_normals(tgt))
    T = make_transform(random_rotation(generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                       torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64))
    moved = transform_points(src, T)
    _, out = pipeline.match(moved, estimate_normals(moved), tgt, estimate_normals(tgt))
    assert ref.src.size(0) > 0
    assert torch.allclose(out.tgt, ref.tgt) and torch.allclose(out.src, transform_points(ref.src, T), atol=1e-9)
    assert torch.allclose(out.scores, ref.scores, rtol=1e-4)


def test_end_to_end_transform_and_scale_convention(model, tmp_path):
    src = _cloud(400, 4).float()
    pipeline = RoITrRegistration(model.float(), voxel_size=0.05)  # model voxel 0.1 -> coordinates x2
    assert pipeline.scale == pytest.approx(2.0)
    result = pipeline(src, src)
    assert result.transform.shape == (4, 4) and result.transform.dtype == torch.float64
    assert torch.allclose(result.transform[3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))
    # correspondences come back in the input frame (not model units)
    assert float(result.correspondences.src.max()) <= float(src.max()) + 1e-3
    assert set(result.timings) == {"prepare", "match", "pose"}
    model.double()


def test_training_loss_backward(model):
    torch.manual_seed(1)
    trainable = RoITr(TINY).double()
    src = _cloud(200, 5)
    T = make_transform(random_rotation(generator=torch.Generator().manual_seed(6), dtype=torch.float64),
                       torch.zeros(3, dtype=torch.float64))
    tgt = transform_points(src, T)
    out = trainable(src, estimate_normals(src), tgt, estimate_normals(tgt))
    losses = roitr_training_loss(trainable, out, T, max_patch_pairs=8)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    losses["loss"].backward()
    assert trainable.optimal_transport.alpha.grad is not None


def test_checkpoint_round_trip_and_errors(model, tmp_path):
    path = tmp_path / "w.pt"
    save_roitr(model, path, meta={"steps": 1})
    loaded = load_roitr(path)
    assert loaded.config == model.config and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.float(), b.float()), name
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_roitr(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable RoITr checkpoint"):
        load_roitr(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):  # no silent switch to another method
        register(_cloud(50, 1).float(), _cloud(50, 2).float(), method="roitr", weights=tmp_path / "none.pt")
    with pytest.raises(ValueError, match="method"):
        register(_cloud(50, 1).float(), _cloud(50, 2).float(), method="icp")


def test_prepare_cloud_errors():
    with pytest.raises(ValueError, match="empty"):
        prepare_cloud(torch.zeros(0, 3), 0.05)
    with pytest.raises(ValueError, match="voxel_size"):
        prepare_cloud(torch.rand(10, 3), 0.0)
    with pytest.raises(ValueError, match="only 1 points remain"):
        prepare_cloud(torch.rand(10, 3) * 1e-3, 1.0)  # the centroid's cell holds the whole cloud
    pos, normal = prepare_cloud(torch.rand(500, 3), 0.05, scale=2.0, max_points=100)
    assert pos.shape == (100, 3) and torch.allclose(normal.norm(dim=1), torch.ones(100))


def test_shipped_checkpoint_loads_and_is_small():
    from geoattn.registration.pipeline import default_weights_path

    path = default_weights_path()
    if not path.is_file():
        pytest.skip("no shipped checkpoint in this checkout")
    assert path.stat().st_size <= 20 * 1024 * 1024
    shipped = load_roitr()
    assert shipped.config.voxel_size == 0.05 and not shipped.training
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["data"] == "synthetic"


def _motion(seed):
    g = torch.Generator().manual_seed(seed)
    return make_transform(random_rotation(generator=g, dtype=torch.float64), torch.randn(3, generator=g,
                                                                                        dtype=torch.float64) * 3)


def test_principal_frame_moves_with_the_cloud():
    cloud = _cloud(300, 4) ** 2  # skewed along every axis: the signs are well defined
    centroid, axes = principal_frame(cloud)
    assert torch.allclose(axes.T @ axes, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert abs(float(torch.linalg.det(axes)) - 1.0) < 1e-12
    motion = _motion(5)
    moved_centroid, moved_axes = principal_frame(transform_points(cloud, motion))
    assert torch.allclose(moved_centroid, transform_points(centroid[None], motion)[0], atol=1e-12)
    assert torch.allclose(moved_axes, motion[:3, :3] @ axes, atol=1e-10)


def test_grid_subsample_and_prepare_cloud_are_rotation_equivariant():
    cloud = _cloud(3000, 6) ** 2
    motion = _motion(7)
    moved = transform_points(cloud, motion)
    reference = equivariant_grid_subsample(cloud, 0.1)
    assert 50 < reference.size(0) < 3000
    # same cells in the same order (no point of this cloud lies within rounding of a cell border)
    assert torch.allclose(equivariant_grid_subsample(moved, 0.1), transform_points(reference, motion), atol=1e-9)
    # the point cap by centroid-started FPS and the invariant normal signs commute with the motion too
    pos, normal = prepare_cloud(cloud, 0.1, max_points=200)
    moved_pos, moved_normal = prepare_cloud(moved, 0.1, max_points=200)
    assert pos.size(0) == 200
    assert torch.allclose(moved_pos, transform_points(pos, motion), atol=1e-9)
    assert torch.allclose(moved_normal, normal @ motion[:3, :3].T, atol=1e-6)
    # a seeded random subset (training augmentation) is a different, reproducible subset
    random_pos, _ = prepare_cloud(cloud, 0.1, max_points=200, seed=0)
    assert torch.equal(random_pos, prepare_cloud(cloud, 0.1, max_points=200, seed=0)[0])
    assert not torch.equal(random_pos, pos)


def test_registration_of_a_rotated_raw_source_is_the_rotated_registration(model):
    # end to end, from raw clouds: rotating the source before preprocessing rotates the estimate
    src, tgt = _cloud(600, 8) ** 2, _cloud(500, 9) ** 2
    pipeline = RoITrRegistration(copy.deepcopy(model).float(), voxel_size=0.1, num_coarse=16, point_limit=16, fine_threshold=0.0)
    reference = pipeline(src, tgt)
    motion = _motion(10)
    moved = pipeline(transform_points(src, motion), tgt)
    assert reference.num_correspondences > 0 and moved.num_points == reference.num_points
    assert torch.allclose(moved.correspondences.scores, reference.correspondences.scores, rtol=1e-4)
    assert torch.allclose(moved.transform @ motion, reference.transform, atol=1e-5)
