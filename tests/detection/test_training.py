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
