import pytest
import torch

from geoattn.models import GLAGCN, TemporalConvLifter
from geoattn.models.glagcn import receptive_field


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_official_243_frames():
    params = count(GLAGCN(channels=96, filter_widths=(3, 3, 3, 3, 3)))
    assert params == 1_345_688
    assert abs(params - 1_349_000) / 1_349_000 < 0.05


@pytest.mark.parametrize("widths,official", [((3, 3, 3), 844_000), ((3, 3, 3, 3), 1_096_000)])
def test_parameter_count_smaller_receptive_fields(widths, official):
    assert abs(count(GLAGCN(filter_widths=widths)) - official) / official < 0.01


def test_baseline_matches_videopose3d_size():
    # VideoPose3D, 243 frames, 1024 channels: 16.95 M parameters.
    assert abs(count(TemporalConvLifter(channels=1024)) - 16_950_000) / 16_950_000 < 0.001


@pytest.mark.parametrize("widths,frames", [((3,), 3), ((3, 3, 3), 27), ((3, 3, 3, 3), 81), ((3, 3, 3, 3, 3), 243),
                                           ((3, 5), 15)])
def test_receptive_field(widths, frames):
    assert receptive_field(widths) == frames
    assert GLAGCN(channels=8, filter_widths=widths).receptive_field() == frames
    assert TemporalConvLifter(channels=8, filter_widths=widths).receptive_field() == frames


def test_receptive_field_rejects_even_widths():
    with pytest.raises(ValueError, match="filter_widths"):
        receptive_field((3, 2))


@pytest.mark.parametrize("shared", [True, False])
def test_glagcn_shapes_and_gradient_flow(shared):
    model = GLAGCN(channels=16, filter_widths=(3, 3), shared_head=shared)
    x = torch.randn(4, 9, 17, 2)
    out = model(x)
    assert out.shape == (4, 1, 17, 3)
    out.square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_glagcn_float64_and_eval_single_sample():
    model = GLAGCN(channels=8, filter_widths=(3,)).double().eval()
    out = model(torch.randn(1, 3, 17, 2, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 1, 17, 3)


def test_glagcn_errors_and_repr():
    model = GLAGCN(channels=8, filter_widths=(3, 3))
    with pytest.raises(ValueError, match=r"T=9, V=17, C=2"):
        model(torch.randn(2, 10, 17, 2))
    with pytest.raises(ValueError, match="edge_index"):
        GLAGCN(num_joints=15)
    assert "receptive_field=9" in repr(model)


def test_glagcn_custom_skeleton():
    edge_index = torch.tensor([[0, 1, 1], [1, 2, 3]])
    model = GLAGCN(num_joints=4, channels=8, filter_widths=(3,), edge_index=edge_index)
    assert model(torch.randn(2, 3, 4, 2)).shape == (2, 1, 4, 3)


def test_baseline_shapes_and_gradients():
    model = TemporalConvLifter(channels=32, filter_widths=(3, 3, 3))
    out = model(torch.randn(3, 27, 17, 2))
    assert out.shape == (3, 1, 17, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="T=27"):
        model(torch.randn(3, 26, 17, 2))


def test_glagcn_fits_a_small_batch():
    model = GLAGCN(channels=16, filter_widths=(3,), dropout=0.0)
    x, y = torch.randn(16, 3, 17, 2), torch.randn(16, 1, 17, 3) * 0.1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = (model(x) - y).norm(dim=-1).mean()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.6 * first


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_models_run_in_every_dtype(dtype):
    for model in (GLAGCN(channels=8, filter_widths=(3,)), TemporalConvLifter(channels=16, filter_widths=(3,))):
        model = model.to(dtype)
        out = model(torch.randn(2, 3, 17, 2, dtype=dtype))
        assert out.shape == (2, 1, 17, 3) and out.dtype == dtype and torch.isfinite(out.float()).all()
        out.float().sum().backward()


def test_models_refuse_other_dtypes():
    for model in (GLAGCN(channels=8, filter_widths=(3,)), TemporalConvLifter(channels=16, filter_widths=(3,))):
        with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.int64"):
            model(torch.ones(2, 3, 17, 2, dtype=torch.long))
        with pytest.raises(TypeError, match="x: expected dtype torch.float32 .*, got torch.bfloat16"):
            model(torch.randn(2, 3, 17, 2, dtype=torch.bfloat16))
