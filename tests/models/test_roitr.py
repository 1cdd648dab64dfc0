"""RoITr network: shapes, rigid-motion invariance of every descriptor, degenerate and bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn.models.roitr import RoITr, RoITrConfig, centroid_fps
from geoattn.sparse.geometry import estimate_normals, make_transform, random_rotation, transform_points

TINY = RoITrConfig.small(channels=(8, 16, 16, 16), neighbors=(6, 6, 6, 6), transformer_channels=16,
                         transformer_heads=2, heads=2, decoder_heads=2, coarse_channels=8, fine_channels=8,
                         sinkhorn_iterations=5)


def _scene(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def model() -> RoITr:
    torch.manual_seed(0)
    return RoITr(TINY).double().eval()


@pytest.fixture(scope="module")
def clouds():
    src, tgt = _scene(160, 1), _scene(140, 2)
    return src, estimate_normals(src), tgt, estimate_normals(tgt)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp(min=1e-30))


def test_output_shapes(model, clouds):
    with torch.no_grad():
        out = model(*clouds)
    # strides 1, 4, 4, 2: 160 -> 40 -> 10 -> 5 superpoints
    assert out.src_nodes.shape == (5, 3) and out.tgt_nodes.shape == (4, 3)
    assert out.src_node_feats.shape == (5, 8)
    assert torch.allclose(out.src_node_feats.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert out.src_point_feats.shape == (160, 8) and out.tgt_point_feats.shape == (140, 8)
    assert "channels=[8, 16, 16, 16]" in repr(model)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), which=st.sampled_from(["src", "tgt", "both"]))
def test_descriptors_invariant_to_rigid_motions(model, clouds, seed, which):
    src, src_n, tgt, tgt_n = clouds
    g = torch.Generator().manual_seed(seed)
    motions = [make_transform(random_rotation(generator=g, dtype=torch.float64),
                              torch.randn(3, generator=g, dtype=torch.float64) * 10) for _ in range(2)]
    moved_src = transform_points(src, motions[0]) if which in ("src", "both") else src
    moved_tgt = transform_points(tgt, motions[1]) if which in ("tgt", "both") else tgt
    with torch.no_grad():
        ref = model(src, src_n, tgt, tgt_n)
        # normals re-estimated in the moved frame: the orientation rule must not need a fixed viewpoint
        out = model(moved_src, estimate_normals(moved_src), moved_tgt, estimate_normals(moved_tgt))
    for name in ("src_node_feats", "tgt_node_feats", "src_point_feats", "tgt_point_feats"):
        assert _relative(getattr(ref, name), getattr(out, name)) < 1e-4, name


def test_float32_invariance(clouds):
    torch.manual_seed(1)
    model = RoITr(TINY).eval()
    src, _, tgt, _ = (c.float() for c in clouds)
    T = make_transform(random_rotation(dtype=torch.float32), torch.tensor([1.0, -2.0, 0.5]))
    with torch.no_grad():
        ref = model(src, estimate_normals(src), tgt, estimate_normals(tgt))
        moved = transform_points(src, T)
        out = model(moved, estimate_normals(moved), tgt, estimate_normals(tgt))
    assert _relative(ref.src_node_feats, out.src_node_feats) < 1e-4
    assert _relative(ref.src_point_feats, out.src_point_feats) < 1e-4


def test_tiny_and_bad_inputs(model):
    pts = _scene(5, 3)
    with torch.no_grad():
        out = model(pts, estimate_normals(pts, k=4), pts, estimate_normals(pts, k=4))
    assert out.src_nodes.shape[0] >= 1 and torch.isfinite(out.src_point_feats).all()
    with pytest.raises(ValueError, match="empty"):
        model.encode(pts[:0], pts[:0])
    with pytest.raises(ValueError, match="normal: expected shape"):
        model.encode(pts, pts[:3])
    with pytest.raises(ValueError, match="pos: expected a 2-D tensor"):
        model.encode(pts[:, :2], pts[:, :2])
    with pytest.raises(ValueError, match="point_norm"):
        RoITrConfig(point_norm="batch")
    with pytest.raises(ValueError, match="equal lengths"):
        RoITrConfig(channels=(8, 16), neighbors=(4, 4, 4))


def test_gradients_reach_every_parameter(clouds):
    torch.manual_seed(2)
    model = RoITr(TINY).double()
    out = model(*clouds)
    loss = out.src_node_feats.sum() + out.tgt_node_feats.sum() + out.src_point_feats.sum()
    loss = loss + model.optimal_transport(out.src_point_feats[None, :4, :4]).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_paper_config_defaults():
    config = RoITrConfig()
    assert config.channels == (64, 128, 256, 256) and config.neighbors == (8, 16, 16, 16)
    assert config.strides == (1, 4, 4, 4) and config.transformer_blocks == ("self", "cross") * 3
    assert RoITrConfig(**config.to_dict()) == config
    assert config.point_norm == "layer" and RoITrConfig.small().point_norm == "instance"
    assert not config.transformer_skip and RoITrConfig.small().transformer_skip
    layer_model = RoITr(RoITrConfig(channels=(8, 8), neighbors=(4, 4), blocks=(1, 1), strides=(1, 2),
                                    transformer_channels=8, transformer_heads=2, heads=2, decoder_heads=2))
    pts = torch.rand(40, 3)
    out = layer_model(pts, estimate_normals(pts), pts, estimate_normals(pts))
    assert out.src_node_feats.shape == (20, 256)


def test_centroid_fps_ignores_point_order_and_rigid_motions():
    cloud = _scene(300, 3)
    index = centroid_fps(cloud.float(), 40)
    start = int((cloud - cloud.mean(0)).norm(dim=1).argmin())
    assert int(index[0]) == start and index.unique().numel() == 40
    permutation = torch.randperm(300, generator=torch.Generator().manual_seed(4))
    assert torch.equal(permutation[centroid_fps(cloud[permutation].float(), 40)], index)
    motion = make_transform(random_rotation(generator=torch.Generator().manual_seed(5), dtype=torch.float64),
                            torch.tensor([2.0, -1.0, 4.0], dtype=torch.float64))
    assert torch.equal(centroid_fps(transform_points(cloud, motion).float(), 40), index)


def test_non_finite_points_are_named(model, clouds):
    """One NaN point used to spread to every feature and fail in linalg.eigh deep inside."""
    src, src_n, tgt, tgt_n = clouds
    bad = src.clone()
    bad[17, 1] = float("nan")
    with pytest.raises(ValueError, match=r"pos: expected finite coordinates, got NaN or inf in 1 of 160 points "
                                         r"\(first at row 17\)"):
        model(bad, src_n, tgt, tgt_n)
    bad_normal = tgt_n.clone()
    bad_normal[3:5] = float("inf")
    with pytest.raises(ValueError, match=r"normal: expected finite .* in 2 of 140 points \(first at row 3\)"):
        model(src, src_n, tgt, bad_normal)


def test_wrong_dtype_is_refused_at_the_door(model, clouds):
    src, src_n, tgt, tgt_n = clouds
    with pytest.raises(TypeError, match="pos: expected dtype torch.float64 .*, got torch.float32"):
        model(src.float(), src_n.float(), tgt, tgt_n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_runs_in_every_dtype(clouds, dtype):
    torch.manual_seed(0)
    network = RoITr(TINY).to(dtype).eval()
    with torch.no_grad():
        out = network(*(t.to(dtype) for t in clouds))
    assert out.src_point_feats.dtype == dtype and out.src_node_feats.dtype == dtype
    assert all(torch.isfinite(t.float()).all() for t in out)
