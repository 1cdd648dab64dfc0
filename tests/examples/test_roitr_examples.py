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
