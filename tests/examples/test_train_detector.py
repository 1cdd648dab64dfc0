"""examples/train_detector.py end to end on tiny synthetic KITTI scenes: train + score, resume (bit-identical to an
uninterrupted run), --eval-only, errors, and two CPU processes under torchrun (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

yaml = pytest.importorskip("yaml")

from geoattn.detection.config import load_config  # noqa: E402
from geoattn.io import load_checkpoint  # noqa: E402
from geoattn.train_log import read_csv_log  # noqa: E402
from tests.examples import EXAMPLES, load_example  # noqa: E402


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def tiny_config(path: Path, epochs: int = 2, no_gt_epochs: int = 1) -> Path:
    """The KITTI config on a 41 x 41 m range with 16-channel networks (a few seconds per epoch on one core)."""
    config = load_config("kitti_scatterformer")
    config["DATA_CONFIG"]["POINT_CLOUD_RANGE"] = [0.0, -20.48, -3.0, 40.96, 20.48, 1.0]
    model = config["MODEL"]
    model["VFE"]["NUM_FILTERS"] = [16, 16]
    model["BACKBONE_3D"].update(CHANNELS=16, HEADS=2, BLOCKS=[1, 1], STEM_BLOCKS=1, PILLAR_HEADS=2)
    model["MAP_TO_BEV"]["NUM_BEV_FEATURES"] = 16
    model["BACKBONE_2D"]["FEATURE_DIM"] = 16
    model["DENSE_HEAD"]["SHARED_CONV_CHANNEL"] = 16
    model["DENSE_HEAD"]["BN_MOM"] = 0.5  # running statistics usable after a handful of iterations
    model["DENSE_HEAD"]["POST_PROCESSING"]["SCORE_THRESH"] = 0.0  # an untrained model still detects something
    config["OPTIMIZATION"].update(NUM_EPOCHS=epochs, NUM_EPOCHS_NO_GT_SAMPLING=no_gt_epochs, BATCH_SIZE_PER_GPU=2,
                                  LR=0.001, DIV_FACTOR=10)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run: 4 synthetic frames (3 train, 1 val), 2 epochs (the last without GT sampling), scored."""
    tmp = tmp_path_factory.mktemp("detector")
    config = tiny_config(tmp / "tiny.yaml")
    out = tmp / "run"
    example = load_example("train_detector")
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = example.main(["--config", str(config), "--synthetic", "4", "--out", str(out), "--seed", "0",
                             "--json"])
    return {"code": code, "result": last_json(buffer.getvalue()), "out": out, "config": config, "example": example}


def test_train_and_score(trained):
    assert trained["code"] == 0
    result, out = trained["result"], trained["out"]
    assert result["iteration"] == result["planned_iterations"] == 4  # 3 frames, batch 2 -> 2 iterations x 2 epochs
    assert result["stopped_early"] is False and result["world_size"] == 1
    # the GT database was built because epoch 1 samples from it
    assert (out / "synthetic" / "kitti_dbinfos_train.pkl").is_file()
    metrics = result["metrics"]
    assert metrics["frames"] == 1 and 0.0 <= metrics["Car_3d/moderate_R40"] <= 100.0
    assert (out / "predictions" / "000003.txt").is_file()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["iteration"] == 4 and state["config"]["OPTIMIZATION"]["NUM_EPOCHS"] == 2
    assert state["optimizer"]["one_cycle"]["iteration"] == 4
    rows = read_csv_log(out / "log.csv")
    assert [row["epoch"] for row in rows[:2]] == ["1", "2"] and float(rows[0]["loss"]) > 0
    assert "Car_3d/moderate_R40" in rows[-1]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_only(trained, capsys):
    example, out = trained["example"], trained["out"]
    args = ["--eval-only", "--checkpoint", str(out / "checkpoint.pt"), "--data-root", str(out / "synthetic"),
            "--json"]
    assert example.main(args) == 0
    metrics = last_json(capsys.readouterr().out)
    assert metrics == trained["result"]["metrics"]  # same model, same frames, same numbers
    # a checkpoint of another model config is refused with one line
    assert example.main(args + ["--config", "kitti_scatterformer"]) == 2
    assert "trained with another model config" in capsys.readouterr().err


def test_export_is_a_compact_float16_copy_that_scores_alike(trained, tmp_path, capsys):
    example, out = trained["example"], trained["out"]
    exported = tmp_path / "detector.pt"
    args = ["--eval-only", "--checkpoint", str(out / "checkpoint.pt"), "--data-root", str(out / "synthetic"),
            "--export", str(exported), "--json"]
    assert example.main(args) == 0
    metrics = last_json(capsys.readouterr().out)
    state = load_checkpoint(exported)
    assert "optimizer" not in state and state["config"] == load_checkpoint(out / "checkpoint.pt")["config"]
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert exported.stat().st_size < (out / "checkpoint.pt").stat().st_size / 2
    assert set(metrics) == set(trained["result"]["metrics"])
    # exporting onto the checkpoint itself is refused
    assert example.main(args[:-3] + ["--export", str(out / "checkpoint.pt")]) == 2


def test_errors(tmp_path, capsys):
    example = load_example("train_detector")
    assert example.main(["--out", str(tmp_path)]) == 2
    assert "--data-root DIR or --synthetic N is required" in capsys.readouterr().err
    assert example.main(["--data-root", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert example.main(["--data-root", str(tmp_path), "--resume", "--out", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert example.main(["--data-root", str(tmp_path), "--config", str(tmp_path / "x.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert example.main(["--eval-only", "--checkpoint", str(tmp_path / "c.pt"), "--data-root", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_resume_is_bit_identical(trained, tmp_path, capsys):
    example = trained["example"]
    root = trained["out"] / "synthetic"
    config = tiny_config(tmp_path / "tiny.yaml")
    common = ["--config", str(config), "--data-root", str(root), "--no-eval", "--json"]
    assert example.main(common + ["--out", str(tmp_path / "full")]) == 0
    assert example.main(common + ["--out", str(tmp_path / "part"), "--stop-after", "1"]) == 0
    stopped = last_json(capsys.readouterr().out)
    assert stopped["stopped_early"] is True and stopped["iteration"] == 1  # mid-epoch
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 0
    assert example.main(common + ["--out", str(tmp_path / "part"), "--resume"]) == 0
    resumed = last_json(capsys.readouterr().out)
    assert resumed["iteration"] == 4 and resumed["stopped_early"] is False
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    assert [row["epoch"] for row in read_csv_log(tmp_path / "part" / "log.csv")] == ["0.5", "1", "2"]
    # a resumed run must keep the planned schedule
    assert example.main(common + ["--out", str(tmp_path / "part"), "--resume", "--epochs", "5"]) == 2
    assert "NUM_EPOCHS" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(trained, tmp_path):
    root = trained["out"] / "synthetic"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "train_detector.py"), "--config", str(trained["config"]), "--data-root", str(root),
               "--out", str(tmp_path / "ddp"), "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = last_json(completed.stdout)
    # 3 frames padded to 4 over 2 ranks: 2 per rank, batch 2 -> 1 iteration per epoch
    assert result["world_size"] == 2 and result["iteration"] == result["planned_iterations"] == 2
    assert result["metrics"]["frames"] == 1
    state = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
