"""examples/train_roitr_3dmatch.py: a two-step synthetic run writes, exports and resumes checkpoints."""
from __future__ import annotations

import json

import pytest
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


def _small(tmp_path, out):
    return ["--pairs", "2", "--val-pairs", "0", "--max-points", "256", "--patch-pairs", "4", "--threads", "1",
            "--checkpoint-every", "1", "--cache", str(tmp_path / "pool.pt"), "--out", str(out), "--json"]


def test_same_seed_same_weights_exact_resume_and_log(tmp_path, capsys):
    """Two 3-step runs agree bit for bit; 2 steps + --resume to 3 ends on the same weights; log.csv and
    curve.png are written beside the checkpoint."""
    from tests.examples.test_lagnn_examples import assert_log_files

    example = load_example("train_roitr_3dmatch")
    for name in ("a", "b"):
        assert example.main(["--steps", "3", *_small(tmp_path, tmp_path / name / "run.ckpt")]) == 0
    assert example.main(["--steps", "2", *_small(tmp_path, tmp_path / "part" / "run.ckpt")]) == 0
    assert example.main(["--steps", "3", "--resume", *_small(tmp_path, tmp_path / "part" / "run.ckpt")]) == 0
    outputs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    states = [torch.load(tmp_path / name / "run.ckpt", weights_only=True) for name in ("a", "b", "part")]
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]) and torch.equal(value, states[2]["state_dict"][key]), key
    drop = ("minutes",)
    assert ({k: v for k, v in outputs[0].items() if k not in drop} == {k: v for k, v in outputs[1].items() if k not in drop}
            == {k: v for k, v in outputs[3].items() if k not in drop})
    assert_log_files_by_step(tmp_path / "part", 3)


def assert_log_files_by_step(folder, steps):
    from geoattn.train_log import read_csv_log

    rows = read_csv_log(folder / "log.csv")
    assert [row["step"] for row in rows] == [str(step) for step in range(1, steps + 1)]
    assert all(float(row["loss"]) > 0 and row["lr"] for row in rows)
    assert (folder / "curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.examples import EXAMPLES

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "train_roitr_3dmatch.py"), "--steps", "2", "--dist-timeout", "120",
               *_small(tmp_path, tmp_path / "ddp" / "run.ckpt")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        out, err = process.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["steps"] == 2
    state = torch.load(tmp_path / "ddp" / "run.ckpt", weights_only=True)
    assert state["step"] == 2 and len(state["generator"]) == 2
    assert_log_files_by_step(tmp_path / "ddp", 2)


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
