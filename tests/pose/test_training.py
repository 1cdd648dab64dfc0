import math

import numpy as np
import pytest
import torch

from geoattn.data.h36m import ChunkedWindows, flip_pose
from geoattn.models import GLAGCN
from geoattn.pose.training import (ScaleNormalizedLifter, bn_momentum, pose_metrics, predict, recalibrate_batch_norm,
                                   recalibrate_if_better, set_bn_momentum, train_epoch)


class MirrorConsistent(torch.nn.Module):
    """Predicts (x, y, 0) of the centre frame: commutes with flipping."""

    def forward(self, windows):
        centre = windows[:, windows.shape[1] // 2]
        return torch.cat([centre, torch.zeros_like(centre[..., :1])], -1)[:, None]


def test_bn_momentum_schedule():
    assert np.isclose(bn_momentum(0, 10), 0.1) and np.isclose(bn_momentum(9, 10), 0.001)
    assert bn_momentum(1, 1) == 0.1
    model = GLAGCN(channels=8, filter_widths=(3,))
    set_bn_momentum(model, 0.02)
    assert model.input_norm.momentum == 0.02


def test_predict_with_flip_test_time_augmentation():
    poses = np.random.default_rng(0).normal(size=(6, 17, 2)).astype(np.float32)
    windows = ChunkedWindows([poses], None, receptive_field=3)
    plain = predict(MirrorConsistent(), windows, batch_size=4, flip_test=False)
    assert plain.shape == (6, 17, 3)
    assert torch.allclose(predict(MirrorConsistent(), windows, flip_test=True), plain, atol=1e-6)
    assert torch.allclose(flip_pose(flip_pose(plain)), plain)


def test_train_epoch_reduces_the_loss():
    rng = np.random.default_rng(0)
    poses_3d = rng.normal(size=(12, 17, 3)).astype(np.float32) * 0.1
    windows = ChunkedWindows([poses_3d[..., :2]], [poses_3d], receptive_field=3, flip=True)
    model = GLAGCN(channels=8, filter_widths=(3,), dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = [train_epoch(model, windows, optimizer, 8, rng) for _ in range(8)]
    assert losses[-1] < losses[0]
    metrics = pose_metrics(predict(model, ChunkedWindows([poses_3d[..., :2]], [poses_3d], 3)),
                           torch.from_numpy(poses_3d))
    assert set(metrics) == {"mpjpe", "p_mpjpe", "n_mpjpe"}


def test_recalibrate_batch_norm_matches_exact_statistics():
    rng = np.random.default_rng(0)
    poses = rng.normal(size=(10, 17, 2)).astype(np.float32)
    windows = ChunkedWindows([poses], None, receptive_field=3)
    model = GLAGCN(channels=8, filter_widths=(3,))
    set_bn_momentum(model, 0.3)
    recalibrate_batch_norm(model, windows, batch_size=5)  # equal batches: the average of batch means is exact
    inputs, _ = windows.get(np.arange(10))
    flat = inputs.reshape(10, 3, 34).transpose(1, 2)
    assert torch.allclose(model.input_norm.running_mean, flat.mean((0, 2)), atol=1e-5)
    assert model.input_norm.momentum == 0.3 and not model.training


def test_recalibrate_if_better_keeps_only_improving_statistics():
    poses = np.random.default_rng(1).normal(loc=0.5, size=(10, 17, 2)).astype(np.float32)
    windows = ChunkedWindows([poses], None, receptive_field=3)
    model = GLAGCN(channels=8, filter_widths=(3,))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    def mean_size(m):
        return float(m.input_norm.running_mean.abs().sum())

    assert not recalibrate_if_better(model, windows, mean_size, batch_size=5)  # the fresh zeros score best
    assert all(torch.equal(before[name], buffer) for name, buffer in model.named_buffers())
    assert recalibrate_if_better(model, windows, lambda m: -mean_size(m), batch_size=5)
    inputs, _ = windows.get(np.arange(10))
    assert torch.allclose(model.input_norm.running_mean, inputs.reshape(10, 3, 34).mean((0, 1)), atol=1e-5)
    assert not model.training


def test_scale_normalized_lifter_matches_a_manual_rescale_and_is_scale_invariant():
    torch.manual_seed(0)
    lifter = GLAGCN(channels=8, filter_widths=(3,)).eval()
    wrapped = ScaleNormalizedLifter(lifter, target_rms=0.1).eval()
    windows = torch.randn(5, 3, 17, 2, dtype=torch.float64)
    lifter.double()
    centre = windows[:, 1] - windows[:, 1, :1]
    scale = torch.tensor([math.sqrt(sum(float(c[v] @ c[v]) for v in range(17)) / 17) for c in centre],
                         dtype=torch.float64)  # slow per-sample reference
    expected = lifter(windows * (0.1 / scale)[:, None, None, None])
    assert torch.allclose(wrapped(windows), expected)
    assert torch.allclose(wrapped(windows * 7.0), expected)  # the same subject seen 7 times larger
    assert torch.allclose(wrapped.window_scale(windows), scale)
    assert wrapped.receptive_field() == 3 and "target_rms=0.1" in repr(wrapped)


def test_scale_normalized_lifter_degenerate_and_bad_inputs():
    wrapped = ScaleNormalizedLifter(MirrorConsistent())
    collapsed = torch.zeros(2, 3, 17, 2)  # every joint on the root: no scale, no division by zero
    assert torch.isfinite(wrapped(collapsed)).all()
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        wrapped(np.zeros((2, 3, 17, 2)))
    with pytest.raises(ValueError, match="x: expected a 4-D tensor"):
        wrapped(torch.zeros(3, 17, 2))
    with pytest.raises(ValueError, match="target_rms"):
        ScaleNormalizedLifter(MirrorConsistent(), target_rms=0.0)
    windows = ChunkedWindows([np.random.default_rng(0).normal(size=(6, 17, 2)).astype(np.float32)], None, 3)
    assert torch.allclose(predict(wrapped, windows), predict(wrapped, windows, flip_test=False), atol=1e-6)


class Recorder(MirrorConsistent):
    """MirrorConsistent with one trainable offset, keeping every input batch it sees."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, windows):
        self.seen.append(windows.clone())
        return super().forward(windows) + self.offset


def test_train_epoch_shards_batches_over_processes():
    poses_3d = np.random.default_rng(0).normal(size=(12, 17, 3)).astype(np.float32)
    windows = ChunkedWindows([poses_3d[..., :2]], [poses_3d], receptive_field=3, flip=True)  # 24 items
    single = Recorder()
    train_epoch(single, windows, torch.optim.SGD(single.parameters(), lr=0.0), 5, np.random.default_rng(3))
    expected = [inputs for inputs, _ in windows.batches(5, shuffle=True, generator=np.random.default_rng(3))]
    assert len(single.seen) == 5 and all(torch.equal(a, b) for a, b in zip(single.seen, expected))
    shards = []
    for rank in range(2):
        model = Recorder()
        train_epoch(model, windows, torch.optim.SGD(model.parameters(), lr=0.0), 5, np.random.default_rng(3),
                    rank=rank, world_size=2)
        shards.append(model.seen)
    assert [len(shard) for shard in shards] == [3, 3]  # 5 batches padded to 6: the same number of steps
    assert all(torch.equal(a, b) for a, b in zip(shards[0], expected[0::2]))
    assert all(torch.equal(a, b) for a, b in zip(shards[1], expected[1::2] + expected[:1]))
    with pytest.raises(ValueError, match="rank, world_size"):
        train_epoch(single, windows, torch.optim.SGD(single.parameters(), lr=0.0), 5, np.random.default_rng(3),
                    rank=2, world_size=2)
