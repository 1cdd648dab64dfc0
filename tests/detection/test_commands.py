"""The detection sub-commands of ``geoattn``: detect, evaluate-kitti, evaluate-waymo, synthetic-kitti,
create-gt-database (one-line errors with exit 2, nothing overwritten, outputs written)."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("yaml")

from geoattn import cli  # noqa: E402
from geoattn.data.kitti import read_label, write_label  # noqa: E402
from geoattn.detection.config import load_config  # noqa: E402
from geoattn.detection.training import build_detector_from_config, checkpoint_state  # noqa: E402
from geoattn.io import save_checkpoint  # noqa: E402
from tests.examples.test_train_detector import tiny_config  # noqa: E402


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two synthetic KITTI frames and an untrained tiny checkpoint of the KITTI config."""
    from geoattn.detection.synthetic import write_synthetic_kitti

    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_kitti(root / "kitti", 2, seed=3, val_fraction=0.5, progress=False)
    config = load_config(tiny_config(root / "tiny.yaml"))
    torch.manual_seed(0)
    model = build_detector_from_config(config)
    save_checkpoint(root / "tiny.pt", checkpoint_state(model, epoch=0, iteration=0), config)
    return root


def test_detect_writes_kitti_labels_and_picture(scenes, tmp_path, capsys):
    frame = scenes / "kitti" / "training" / "velodyne" / "000000.bin"
    out, picture = tmp_path / "pred.txt", tmp_path / "bev.png"
    code, stdout, err = run(capsys, "detect", frame, "--checkpoint", scenes / "tiny.pt", "--out", out,
                            "--render", picture, "--json")
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["frame"] == "000000" and report["num_points"] > 1000
    labels = read_label(out)
    assert labels.score is not None or len(labels) == 0
    assert len(labels) <= len(report["detections"])
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_detect_demo_prints_a_table(scenes, capsys):
    code, stdout, err = run(capsys, "detect", "--demo", "--checkpoint", scenes / "tiny.pt")
    assert code == 0, err
    assert stdout.startswith("synthetic_0:") and "ground_truth" in stdout


@pytest.mark.parametrize("case", ["bad_length", "no_calib", "other_config", "out_is_input", "missing_frame",
                                  "not_a_checkpoint", "bad_suffix"])
def test_detect_bad_input_is_one_line_and_exit_2(scenes, tmp_path, capsys, case):
    frame = scenes / "kitti" / "training" / "velodyne" / "000000.bin"
    argv = ["detect", frame, "--checkpoint", scenes / "tiny.pt"]
    if case == "bad_length":
        bad = tmp_path / "bad.bin"
        bad.write_bytes(frame.read_bytes()[:-6])
        argv[1] = bad
    elif case == "no_calib":
        lonely = tmp_path / "velodyne" / "000000.bin"
        lonely.parent.mkdir()
        shutil.copy(frame, lonely)
        argv[1] = lonely
    elif case == "other_config":
        argv += ["--config", "kitti_scatterformer"]
    elif case == "out_is_input":
        argv += ["--out", frame.with_suffix(".txt")]
        shutil.copy(frame, frame.with_suffix(".txt"))
        argv[1] = frame.with_suffix(".txt")
    elif case == "missing_frame":
        argv[1] = tmp_path / "nothing.bin"
    elif case == "not_a_checkpoint":
        fake = tmp_path / "fake.pt"
        fake.write_text("not a checkpoint")
        argv[3] = fake
    elif case == "bad_suffix":
        argv += ["--render", tmp_path / "bev.jpg"]
    before = {p: p.read_bytes() for p in (scenes / "kitti" / "training" / "velodyne").iterdir()}
    code, stdout, err = run(capsys, *argv)
    assert code == 2, (stdout, err)
    assert err.startswith("geoattn detect: error:") and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in before} == before
    if case == "out_is_input":
        frame.with_suffix(".txt").unlink()


def test_evaluate_kitti_table_and_json(scenes, tmp_path, capsys):
    labels = scenes / "kitti" / "training" / "label_2"
    predictions = tmp_path / "predictions"
    for path in labels.iterdir():  # the ground truth itself as detections of score 1
        rows = read_label(path).without_dontcare()
        rows.score = torch.ones(len(rows), dtype=torch.float64)
        write_label(predictions / path.name, rows)
    code, _, err = run(capsys, "evaluate-kitti", "--labels", labels, "--predictions", labels)
    assert code == 2 and "score" in err  # label files without scores are not detections
    code, stdout, err = run(capsys, "evaluate-kitti", "--labels", labels, "--predictions", predictions, "--json",
                            "--out", tmp_path / "metrics.json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert "Car_3d/moderate_R40" in result and json.loads((tmp_path / "metrics.json").read_text()) == result
    assert result["Car_image/easy_R11"] > 0
    code, stdout, _ = run(capsys, "evaluate-kitti", "--labels", labels, "--predictions", predictions)
    assert code == 0 and "Car AP" in stdout
    code, _, err = run(capsys, "evaluate-kitti", "--labels", tmp_path / "none", "--predictions", labels)
    assert code == 2 and "no such folder" in err


def test_evaluate_waymo(tmp_path, capsys):
    box = np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3]], dtype=np.float32)
    infos = [{"frame_id": "f0", "annos": {"name": np.array(["Vehicle"]), "gt_boxes_lidar": box,
                                           "num_points_in_gt": np.array([50]), "difficulty": np.array([0])}}]
    results = [{"frame_id": "f0", "name": np.array(["Vehicle"]), "score": np.array([0.9], dtype=np.float32),
                "boxes_lidar": box}]
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps(infos))
    (tmp_path / "result.pkl").write_bytes(pickle.dumps(results))
    code, stdout, err = run(capsys, "evaluate-waymo", "--predictions", tmp_path / "result.pkl", "--ground-truth",
                            tmp_path / "gt.pkl", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["Vehicle/L1 mAP"] == pytest.approx(1.0) and result["Vehicle/L2 mAPH"] == pytest.approx(1.0)
    (tmp_path / "text.pkl").write_text("hello")
    code, _, err = run(capsys, "evaluate-waymo", "--predictions", tmp_path / "text.pkl", "--ground-truth",
                       tmp_path / "gt.pkl")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_synthetic_kitti_and_gt_database(tmp_path, capsys):
    out = tmp_path / "syn"
    code, stdout, err = run(capsys, "synthetic-kitti", "--out", out, "--frames", "2", "--seed", "5", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (out / "training" / "velodyne").iterdir()) == ["000000.bin", "000001.bin"]
    code, stdout, err = run(capsys, "create-gt-database", out, "--split", "trainval", "--quiet")
    assert code == 0, err
    assert (out / "kitti_dbinfos_trainval.pkl").is_file()
    code, _, err = run(capsys, "create-gt-database", out, "--split", "trainval", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1  # an existing database is never overwritten
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "mine.txt").write_text("keep me")
    code, _, err = run(capsys, "synthetic-kitti", "--out", tmp_path / "user", "--frames", "1", "--quiet")
    assert code == 2 and (tmp_path / "user" / "mine.txt").read_text() == "keep me"
    code, _, err = run(capsys, "synthetic-kitti", "--out", tmp_path / "x", "--frames", "0")
    assert code == 2


def test_detect_demo_with_the_shipped_checkpoint(tmp_path, capsys):
    from geoattn.detection.training import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"no shipped checkpoint at {DEFAULT_CHECKPOINT}")
    code, stdout, err = run(capsys, "detect", "--demo", "--demo-seed", "3", "--json", "--render", tmp_path / "b.png")
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["detections"] and {row["class"] for row in report["detections"]} <= {"Car", "Pedestrian", "Cyclist"}
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
