"""3DMatch readers on the real benchmark metadata and on generated files; safe pickle loading."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from geoattn.data.threedmatch import (LogEntry, ThreeDMatchPairs, find_benchmark_dir, fragment_path, read_fragment,
                                      read_gt_info, read_gt_log, read_gt_overlap, safe_pickle_load, write_gt_log)


def test_real_benchmark_metadata(real_data):
    scene = real_data / "registration" / "benchmark_meta" / "3DMatch" / "7-scenes-redkitchen"
    log = read_gt_log(scene / "gt.log")
    info = read_gt_info(scene / "gt.info")
    overlap = read_gt_overlap(scene / "gt_overlap.log")
    assert len(log) == len(info) == 506 and log[0].num_fragments == 60
    assert (log[0].i, log[0].j) == (0, 1) and overlap[(0, 1)] == pytest.approx(0.8017)
    rotation = log[0].transform[:3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-3)
    assert all(key in info for key in [(e.i, e.j) for e in log])
    assert find_benchmark_dir(real_data / "registration" / "benchmark_meta", "3DLoMatch").name == "3DLoMatch"


def test_write_read_round_trip_and_errors(tmp_path):
    entries = [LogEntry(0, 3, 10, torch.eye(4, dtype=torch.float64)), LogEntry(2, 5, 10, torch.eye(4) * 2)]
    write_gt_log(tmp_path / "gt.log", entries)
    back = read_gt_log(tmp_path / "gt.log")
    assert [(e.i, e.j, e.num_fragments) for e in back] == [(0, 3, 10), (2, 5, 10)]
    (tmp_path / "bad.log").write_text("0 1 2\n1 0 0 0\n")
    with pytest.raises(ValueError, match="blocks of 5 lines"):
        read_gt_log(tmp_path / "bad.log")
    with pytest.raises(FileNotFoundError):
        read_gt_log(tmp_path / "missing.log")
    with pytest.raises(FileNotFoundError, match="no 3DMatch metadata"):
        find_benchmark_dir(tmp_path, "3DMatch")
    with pytest.raises(ValueError, match="benchmark"):
        find_benchmark_dir(tmp_path, "KITTI")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_safe_pickle_and_fragment_layouts(tmp_path):
    points = np.random.default_rng(0).random((7, 3)).astype(np.float32)
    scene = tmp_path / "data" / "test" / "kitchen"
    scene.mkdir(parents=True)
    with open(scene / "cloud_bin_0.pth", "wb") as handle:
        pickle.dump(points, handle)
    assert fragment_path(tmp_path, "kitchen", 0) == scene / "cloud_bin_0.pth"
    assert torch.allclose(read_fragment(scene / "cloud_bin_0.pth"), torch.from_numpy(points))
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump(_Evil(), handle)
    with pytest.raises(Exception, match="refusing"):
        safe_pickle_load(tmp_path / "evil.pkl")
    with pytest.raises(FileNotFoundError, match="cloud_bin_4"):
        fragment_path(tmp_path, "kitchen", 4)


def test_predator_training_layout(tmp_path):
    points = np.random.default_rng(1).random((9, 3)).astype(np.float32)
    (tmp_path / "train" / "s").mkdir(parents=True)
    for name in ("cloud_bin_0.pth", "cloud_bin_1.pth"):
        with open(tmp_path / "train" / "s" / name, "wb") as handle:
            pickle.dump(points, handle)
    info = {"src": ["train/s/cloud_bin_0.pth"], "tgt": ["train/s/cloud_bin_1.pth"],
            "rot": [np.eye(3)], "trans": [np.ones((3, 1))], "overlap": [0.5]}
    with open(tmp_path / "train_info.pkl", "wb") as handle:
        pickle.dump(info, handle)
    dataset = ThreeDMatchPairs(tmp_path, "train")
    src, tgt, transform, overlap = dataset[0]
    assert len(dataset) == 1 and src.shape == (9, 3) and overlap == 0.5
    assert torch.allclose(transform[:3, 3], torch.ones(3))
    with pytest.raises(FileNotFoundError, match="pair list"):
        ThreeDMatchPairs(tmp_path, "val")


@pytest.mark.parametrize("text, message", [
    ("0 1 x\n" + "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"gt.log: line 1: expected 'i j n' \(3 int values\)"),
    ("0 1 2\n" + "1 0 0 0\n0 1 zero 0\n0 0 1 0\n0 0 0 1\n", r"gt.log: line 3: expected a row of a 4x4 matrix"),
    ("0 1 2\n" + "1 0 0 0\n0 1 0\n0 0 1 0 5\n0 0 0 1\n",
     r"gt.log: line 3: expected a row of a 4x4 matrix \(4 values\)"),
    ("0 1 2\n" + "1 0 0 0\n0 1 0 nan\n0 0 1 0\n0 0 0 1\n", r"gt.log: line 3: expected finite numbers"),
])
def test_gt_log_errors_name_the_line(tmp_path, text, message):
    (tmp_path / "gt.log").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_gt_log(tmp_path / "gt.log")


def test_one_unpickler_for_all_data_pickles(tmp_path):
    points = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    (tmp_path / "p2.pth").write_bytes(pickle.dumps(points, protocol=2))  # protocol 2 names _codecs.encode
    assert torch.equal(read_fragment(tmp_path / "p2.pth"), torch.from_numpy(points))
    (tmp_path / "cut.pth").write_bytes(pickle.dumps(points)[:40])
    with pytest.raises(ValueError, match="cut.pth: not a readable pickle") as info:
        read_fragment(tmp_path / "cut.pth")
    assert isinstance(info.value, pickle.UnpicklingError)
    (tmp_path / "big.pth").write_bytes(pickle.dumps(np.array([[1e39, 0, 0]])))
    with pytest.raises(ValueError, match="big.pth: .*float32 range"):
        read_fragment(tmp_path / "big.pth")


def test_pair_list_errors_name_the_file_and_key(tmp_path):
    (tmp_path / "metadata").mkdir()
    entry = {"pcd0": "a.pth", "pcd1": "b.pth", "rotation": np.eye(3), "translation": np.zeros(3), "overlap": 0.5}
    cases = [({k: v for k, v in entry.items() if k != "rotation"}, r"pair 0: missing key\(s\) 'rotation'"),
             ({**entry, "translation": np.zeros(2)}, r"pair 0: expected a 3x3 rotation and a 3-vector")]
    for broken, message in cases:
        (tmp_path / "metadata" / "train.pkl").write_bytes(pickle.dumps([broken]))
        with pytest.raises(ValueError, match=message) as info:
            ThreeDMatchPairs(tmp_path, "train")
        assert "train.pkl" in str(info.value)
