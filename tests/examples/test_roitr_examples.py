"""examples/train_roitr_3dmatch.py: a two-step synthetic run writes, exports and resumes checkpoints."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from geoattn.registration.pipeline import load_roitr

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_roitr_3dmatch.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_roitr_3dmatch", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_steps_export_and_resume(tmp_path, capsys):
    example = _load()
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
