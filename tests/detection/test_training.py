"""geoattn.detection.training: the resumable per-epoch sampler and detector checkpoints."""
from __future__ import annotations

import pytest
import torch

from geoattn.detection.training import EpochSampler, checkpoint_state, load_detector
from geoattn.io import save_checkpoint


def test_epoch_sampler_shards_pads_and_skips():
    full = EpochSampler(7, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(7)) and len(full) == 7
    again = EpochSampler(7, shuffle=True, seed=3)
    again.set_epoch(2)
    assert list(again) == order
    again.set_epoch(3)
    assert list(again) != order  # another epoch, another permutation
    ranks = [EpochSampler(7, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [3, 3, 3] and all(len(s) == 3 for s in ranks)
    padded = order + order[:2]
    assert shards == [padded[r::3] for r in range(3)]
    ranks[1].set_epoch(2, skip=2)
    assert list(ranks[1]) == padded[1::3][2:] and len(ranks[1]) == 1
    plain = EpochSampler(5, shuffle=False, rank=1, world_size=2, pad=False)
    assert list(plain) == [1, 3] and len(plain) == 2
    assert list(EpochSampler(0)) == []
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="skip"):
        full.set_epoch(0, skip=-1)


def test_load_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pt"):
        load_detector(tmp_path / "none.pt")
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "plain.pt", checkpoint_state(model, epoch=1, iteration=3))
    with pytest.raises(ValueError, match="plain.pt: not a detector checkpoint"):
        load_detector(path)
    state = checkpoint_state(model, epoch=1, iteration=3, note="x")
    assert state["epoch"] == 1 and state["iteration"] == 3 and state["note"] == "x"
    assert torch.equal(state["model"]["weight"], model.weight.detach())


class _PointsNet(torch.nn.Module):
    """A detector-shaped module: ``(points, batch, batch_size)`` in, BN over points inside."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        self.norm = torch.nn.BatchNorm1d(3, momentum=0.01)

    def forward(self, points, index, batch_size):
        return {"out": self.norm(self.lin(points[:, :2]))}


def test_recompute_batchnorm_statistics_is_the_exact_average():
    from geoattn.detection.training import recompute_batchnorm_statistics

    torch.manual_seed(0)
    net = _PointsNet().eval()
    batches = [{"points": torch.randn(n, 4) * 3 + 1, "batch": torch.zeros(n, dtype=torch.long), "batch_size": 1}
               for n in (7, 7, 7, 7)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    used = recompute_batchnorm_statistics(net, batches, "cpu", num_batches=3)
    assert used == 3
    with torch.no_grad():
        features = [net.lin(b["points"][:, :2]) for b in batches[:3]]
    expected_mean = torch.stack([f.mean(0) for f in features]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(net.norm.running_mean, expected_mean)
    torch.testing.assert_close(net.norm.running_var, expected_var)
    assert net.norm.momentum == 0.01 and not net.training  # momentum and mode restored
    for key, value in weights.items():  # parameters untouched
        assert torch.equal(net.state_dict()[key], value)
    # the eval-mode output now normalises the data it was computed on
    with torch.no_grad():
        out = torch.cat([net(b["points"], b["batch"], 1)["out"] for b in batches[:3]])
    assert out.mean(0).abs().max() < 1e-4
