"""RoITr registration pipeline: invariant matches, scale handling, checkpoints, no silent fallback."""
from __future__ import annotations

import pytest
import torch

from geoattn.models.roitr import RoITr, RoITrConfig
from geoattn.registration.pipeline import (RoITrRegistration, load_roitr, prepare_cloud, register,
                                           roitr_training_loss, save_roitr)
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
        prepare_cloud(torch.rand(10, 3) * 1e-3, 1.0)
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
