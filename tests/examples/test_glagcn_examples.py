import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.examples import load_example
from tests.examples.test_lagnn_examples import assert_log_files


def test_mocap_example_synthetic_train_resume(tmp_path, capsys):
    example = load_example("mocap_glagcn")
    common = ["--channels", "8", "--filter-widths", "3", "--train-cameras", "2", "--cameras-per-epoch", "2",
              "--eval-cameras", "1", "--frame-stride", "20", "--json", "--quiet",
              "--checkpoint", str(tmp_path / "run.pt")]
    assert example.main(["--epochs", "1"] + common) == 0
    assert example.main(["--epochs", "2", "--resume", "--limb-augment", "20", "--shoulder-augment", "90"] + common) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("mpjpe_mm", "p_mpjpe_mm", "baseline_mpjpe_mm", "baseline_p_mpjpe_mm", "params", "baseline_params"):
        assert key in result
    assert result["epochs"] == 2 and result["receptive_field"] == 3
    assert result["limb_augment"] == 20 and result["shoulder_augment"] == 90 and result["train_cameras"] == 2
    assert abs(result["baseline_params"] - result["params"]) / result["params"] < 0.05
    assert result["input_2d"] == "ray" and result["camera_sampling"] == "random"
    assert result["bn_statistics"] == "auto" and set(result["recalibrated_bn"]) == {"glagcn", "baseline"}
    assert result["normalize_scale"] is True
    # the log beside the checkpoint: the resumed run appended epoch 2 to epoch 1's row
    assert_log_files(tmp_path, 2, ["glagcn_train_mpjpe_mm", "baseline_train_mpjpe_mm"])


def test_mocap_example_same_seed_same_numbers_and_exact_resume(tmp_path, capsys):
    """Two runs of one command agree, and a run stopped after epoch 1 and resumed ends where the
    uninterrupted run ends (weights and scores bit for bit)."""
    import torch

    from geoattn.io import load_checkpoint

    example = load_example("mocap_glagcn")
    common = ["--channels", "8", "--filter-widths", "3", "--train-cameras", "2", "--cameras-per-epoch", "2",
              "--eval-cameras", "1", "--frame-stride", "20", "--json", "--quiet", "--epochs", "2", "--threads", "1"]
    results = []
    for name in ("a", "b"):
        assert example.main(common + ["--checkpoint", str(tmp_path / name / "run.pt")]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    part = ["--checkpoint", str(tmp_path / "part" / "run.pt")]
    assert example.main(common + part + ["--stop-after", "1"]) == 0
    assert load_checkpoint(tmp_path / "part" / "run.pt")["epoch"] == 1
    assert example.main(common + part + ["--resume"]) == 0
    results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    scores = [{k: v for k, v in r.items() if k != "seconds"} for r in results]
    assert scores[0] == scores[1] == scores[2]
    full, resumed = (load_checkpoint(tmp_path / name / "run.pt") for name in ("a", "part"))
    for name, state in full["models"].items():
        assert all(torch.equal(value, resumed["models"][name][key]) for key, value in state.items()), name
    assert_log_files(tmp_path / "part", 2, ["glagcn_train_mpjpe_mm", "baseline_train_mpjpe_mm"])


def test_mocap_example_fixed_cameras_and_screen_inputs(capsys):
    example = load_example("mocap_glagcn")
    common = ["--channels", "8", "--filter-widths", "3", "--train-cameras", "2", "--cameras-per-epoch", "2",
              "--eval-cameras", "1", "--frame-stride", "20", "--epochs", "1", "--json", "--quiet",
              "--camera-sampling", "fixed"]
    for input_2d in ("relative", "centred"):
        assert example.main(common + ["--input-2d", input_2d, "--bn-statistics", "recalibrated",
                                      "--no-normalize-scale"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["input_2d"] == input_2d and result["camera_sampling"] == "fixed"
        assert result["normalize_scale"] is False
        assert np.isfinite(result["mpjpe_mm"])


def test_mocap_example_reads_npy_and_bvh(real_data, tmp_path, capsys):
    example = load_example("mocap_glagcn")
    clip = real_data / "pose/cmu_131_01_h36m17.npy"
    args = ["--train-npy", str(clip), "--eval-bvh", str(real_data / "pose/cmu_131_01_scaled.bvh"), "--split", "0.7",
            "--epochs", "1", "--channels", "8", "--filter-widths", "3", "--train-cameras", "2",
            "--cameras-per-epoch", "2", "--eval-cameras", "1", "--frame-stride", "30", "--json", "--quiet"]
    assert example.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["eval_frames"] == 415 - round(0.7 * 415)
    with pytest.raises(FileNotFoundError):
        example.main(["--train-npy", str(tmp_path / "missing.npy"), "--eval-npy", str(clip)])


def test_mocap_example_asf_amc_folders_and_per_clip_figures(real_data, tmp_path, capsys):
    """Training on an ASF/AMC trial and a BVH folder, evaluation on two clips: figures per clip and over all
    frames (frame-weighted); --split cuts the npy clip, not the ASF/AMC trial."""
    example = load_example("mocap_glagcn")
    cmu = real_data / "pose" / "cmu_asfamc"
    if not (cmu / "03" / "03.asf").is_file():
        pytest.skip("CMU ASF/AMC fixture missing")
    clip = real_data / "pose" / "cmu_131_01_h36m17.npy"
    bvh_folder = tmp_path / "bvh"
    bvh_folder.mkdir()
    (bvh_folder / "clip.bvh").symlink_to(real_data / "pose" / "cmu_131_01_scaled.bvh")
    args = ["--train-asf-amc", str(cmu / "03" / "03.asf"), str(cmu / "03" / "03_02.amc"),
            "--train-bvh", str(bvh_folder), "--eval-npy", str(clip),
            "--eval-asf-amc", str(cmu / "03" / "03.asf"), str(cmu / "03" / "03_01.amc"), "--split", "0.7",
            "--epochs", "1", "--channels", "8", "--filter-widths", "3", "--train-cameras", "2",
            "--cameras-per-epoch", "2", "--eval-cameras", "1", "--frame-stride", "30", "--json", "--quiet"]
    assert example.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_clip = result["per_clip"]
    assert list(per_clip) == [str(clip), str(cmu / "03" / "03_01.amc")]
    assert per_clip[str(clip)]["frames"] == 415 - round(0.7 * 415)  # the clip's last 30 %
    assert per_clip[str(cmu / "03" / "03_01.amc")]["frames"] > 100  # the whole trial
    frames = [figures["frames"] for figures in per_clip.values()]
    assert result["eval_frames"] == sum(frames)
    for key in ("mpjpe_mm", "baseline_mpjpe_mm"):
        overall = sum(figures[key] * count for figures, count in zip(per_clip.values(), frames)) / sum(frames)
        assert result[key] == pytest.approx(overall, rel=1e-4)
    with pytest.raises(ValueError, match="--\\*-asf-amc: expected folders or SKELETON.asf"):
        example.main(["--train-asf-amc", str(cmu / "03" / "03_01.amc"), "--eval-npy", str(clip)])


def write_fake_h36m(root: Path) -> None:
    rng = np.random.default_rng(0)
    cameras, positions_3d, positions_2d = {}, {}, {}
    for subject in ("S1", "S9"):
        for index, camera_id in enumerate(("54138969", "55011271", "58860488", "60457274")):
            cameras[(subject, camera_id)] = {"R": np.eye(3), "T": np.array([[0.1 * index], [0.0], [-5.0]]),
                                             "f": np.full((2, 1), 1000.0), "c": np.full((2, 1), 500.0),
                                             "k": np.zeros((3, 1)), "p": np.zeros((2, 1)), "w": 1000, "h": 1000}
        positions_3d[subject], positions_2d[subject] = {}, {}
        for action in ("Walking 1", "Eating"):
            world = rng.normal(scale=0.3, size=(7, 32, 3)).astype(np.float32)
            positions_3d[subject][action] = world
            views = []
            for index in range(4):
                camera_frame = world[:, [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]] - \
                    np.array([0.1 * index, 0.0, -5.0])
                views.append((1000 * camera_frame[..., :2] / camera_frame[..., 2:] + 500).astype(np.float32))
            positions_2d[subject][action] = views
    np.savez_compressed(root / "data_3d_h36m.npz", positions_3d=np.array(positions_3d, dtype=object))
    np.savez_compressed(root / "data_2d_h36m_gt.npz", positions_2d=np.array(positions_2d, dtype=object),
                        metadata=np.array({"layout_name": "h36m", "num_joints": 17}, dtype=object))
    with open(root / "cameras.pkl", "wb") as handle:
        pickle.dump(cameras, handle)


def test_h36m_example_on_fake_npz_files(tmp_path, capsys):
    example = load_example("h36m_glagcn")
    write_fake_h36m(tmp_path)
    common = ["--root", str(tmp_path), "--keypoints", "gt", "--filter-widths", "3", "--channels", "8",
              "--subjects-train", "S1", "--subjects-test", "S9", "--json", "--quiet"]
    checkpoint = tmp_path / "glagcn.pt"
    assert example.main(common + ["--epochs", "1", "--batch-size", "16", "--checkpoint", str(checkpoint)]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(trained["per_action"]) == {"Walking", "Eating"}
    assert example.main(common + ["--evaluate", str(checkpoint)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isclose(evaluated["p1_mm"], trained["p1_mm"])
    with pytest.raises(SystemExit, match="datasets/h36m.md"):
        example.main(["--root", str(tmp_path / "nothing")])
    assert_log_files(tmp_path, 1, ["train_mpjpe_mm", "lr"])


def test_h36m_example_exact_resume_and_same_numbers(tmp_path, capsys):
    import torch

    from geoattn.io import load_checkpoint

    example = load_example("h36m_glagcn")
    write_fake_h36m(tmp_path)
    common = ["--root", str(tmp_path), "--keypoints", "gt", "--filter-widths", "3", "--channels", "8",
              "--subjects-train", "S1", "--subjects-test", "S9", "--json", "--quiet", "--epochs", "2",
              "--batch-size", "8"]
    results = []
    for name in ("a", "b"):
        assert example.main(common + ["--checkpoint", str(tmp_path / name / "c.pt")]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    part = ["--checkpoint", str(tmp_path / "part" / "c.pt")]
    assert example.main(common + part + ["--stop-after", "1"]) == 0
    assert example.main(common + part + ["--resume"]) == 0
    results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0] == results[1] == results[2]
    full, resumed = (load_checkpoint(tmp_path / name / "c.pt") for name in ("a", "part"))
    assert all(torch.equal(value, resumed["model"][key]) for key, value in full["model"].items())
    assert_log_files(tmp_path / "part", 2, ["train_mpjpe_mm", "lr"])
    assert example.main(common + part + ["--resume", "--epochs", "3"]) == 2  # another schedule
    assert "3" in capsys.readouterr().err


@pytest.mark.slow
def test_h36m_example_two_cpu_processes(tmp_path):
    """torchrun with 2 gloo processes: trains, checkpoints, evaluates on process 0; killed as a process
    group if it hangs."""
    import os
    import signal
    import subprocess
    import sys

    from tests.examples import EXAMPLES

    write_fake_h36m(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "h36m_glagcn.py"), "--root", str(tmp_path), "--keypoints", "gt", "--filter-widths",
               "3", "--channels", "8", "--subjects-train", "S1", "--subjects-test", "S9", "--epochs", "2",
               "--batch-size", "4", "--device", "cpu", "--dist-timeout", "60", "--json", "--quiet",
               "--checkpoint", str(tmp_path / "ddp" / "c.pt")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and np.isfinite(result["p1_mm"])
    assert_log_files(tmp_path / "ddp", 2, ["train_mpjpe_mm"])


def test_mocap_validation_split_never_touches_the_evaluation_part(real_data, tmp_path, capsys):
    example = load_example("mocap_glagcn_validation")
    clip = str(real_data / "pose/cmu_131_01_h36m17.npy")
    common = ["--npy", clip, "--epochs", "2", "--log-every", "1", "--channels", "8", "--filter-widths", "3",
              "--cameras-per-epoch", "2", "--frame-stride", "30", "--json", "--quiet"]
    for model in ("glagcn", "baseline"):
        assert example.main(common + ["--model", model, "--log-dir", str(tmp_path / model)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["model"] == model and result["holdout"] == "170:215" and len(result["history"]) == 1
        assert np.isfinite(result["validation_mpjpe_mm"]) and np.isfinite(result["validation_mpjpe_recalibrated_bn_mm"])
        assert_log_files(tmp_path / model, 2, ["train_mpjpe_mm"])
    with pytest.raises(ValueError, match="--holdout"):
        example.main(common + ["--holdout", "280:300"])  # past the training part (290 of 415 frames)
    with pytest.raises(ValueError, match="no training frames"):
        example.main(common + ["--holdout", "3:287"])
    with pytest.raises(SystemExit):
        example.main(common + ["--holdout", "50:40"])
