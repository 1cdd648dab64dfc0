"""examples/train_roitr_3dmatch.py: a two-step synthetic run writes, exports and resumes checkpoints."""
from __future__ import annotations

import json

import torch

from geoattn.registration.pipeline import load_roitr
from tests.examples import load_example


def test_two_steps_export_and_resume(tmp_path, capsys):
    example = load_example("train_roitr_3dmatch")
    common = ["--pairs", "1", "--val-pairs", "0", "--max-points", "256", "--patch-pairs", "4", "--threads", "1",
              "--out", str(tmp_path / "run.ckpt"), "--export", str(tmp_path / "w.pt"), "--cache",
              str(tmp_path / "pool.pt"), "--json"]
    assert example.main(["--steps", "1", *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 1 and (tmp_path / "pool.pt").is_file()
    assert example.main(["--steps", "2", "--resume", *common]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 2
    assert torch.load(tmp_path / "run.ckpt", weights_only=True)["step"] == 2
    assert not load_roitr(tmp_path / "w.pt").training
    assert example.main(["--root", str(tmp_path / "missing"), *common]) == 2


def test_fine_tuning_starts_from_the_given_weights(tmp_path, capsys):
    example = load_example("train_roitr_3dmatch")
    common = ["--pairs", "1", "--val-pairs", "0", "--max-points", "256", "--patch-pairs", "4", "--threads", "1",
              "--cache", str(tmp_path / "pool.pt"), "--fragment-voxel", "0.1", "--json"]
    assert example.main(["--steps", "1", "--out", str(tmp_path / "a.ckpt"), "--export", str(tmp_path / "a.pt"),
                         *common]) == 0
    assert example.main(["--steps", "1", "--lr", "0", "--init", str(tmp_path / "a.pt"), "--out",
                         str(tmp_path / "b.ckpt"), "--export", str(tmp_path / "b.pt"), *common]) == 0
    capsys.readouterr()
    start, tuned = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert tuned["config"] == start["config"] and tuned["meta"]["init"] == "a.pt"
    assert tuned["meta"]["fragment_voxel"] == 0.1
    # with a zero learning rate the fine-tuned weights are the initial ones
    assert all(torch.equal(tuned["state_dict"][k], v) for k, v in start["state_dict"].items())
    assert example.main(["--init", str(tmp_path / "none.pt"), "--out", str(tmp_path / "c.ckpt"), *common]) == 2
