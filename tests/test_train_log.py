"""geoattn.train_log: CSV rows with new keys, resume/truncate, the curve PNG, missing matplotlib."""
from __future__ import annotations

import builtins
import csv

import pytest
import torch

from geoattn.train_log import TrainingLog, plot_training_curve, read_csv_log


def _read(path):
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_csv_header_and_new_keys(tmp_path):
    log = TrainingLog(tmp_path / "run")
    log.append({"epoch": 1, "loss": 2.5, "lr": 1e-3})
    assert _read(log.csv_path) == [["epoch", "loss", "lr"], ["1", "2.5", "0.001"]]
    log.append({"epoch": 2, "loss": torch.tensor(1.25), "lr": 2e-3, "ap": 40.0})
    assert _read(log.csv_path) == [["epoch", "loss", "lr", "ap"], ["1", "2.5", "0.001", ""],
                                   ["2", "1.25", "0.002", "40.0"]]
    third = 1 / 3
    log.append({"epoch": 3, "loss": third})
    assert float(read_csv_log(log.csv_path)[-1]["loss"]) == third  # repr precision round-trips
    assert sorted(p.name for p in log.out_dir.iterdir()) == ["log.csv"]


def test_resume_and_truncate(tmp_path):
    log = TrainingLog(tmp_path)
    for epoch in range(1, 5):
        log.append({"epoch": epoch, "loss": 1.0 / epoch})
    fresh = TrainingLog(tmp_path)  # not resuming: starts empty and replaces the file at the first append
    assert fresh.rows == []
    resumed = TrainingLog(tmp_path, resume=True)
    assert [row["epoch"] for row in resumed.rows] == ["1", "2", "3", "4"]
    resumed.truncate(after=2)
    assert [row["epoch"] for row in read_csv_log(tmp_path / "log.csv")] == ["1", "2"]
    resumed.append({"epoch": 3, "loss": 0.3})
    assert [row["epoch"] for row in read_csv_log(tmp_path / "log.csv")] == ["1", "2", "3"]
    resumed.truncate(lambda row: row["epoch"] != "1")
    assert [row["epoch"] for row in resumed.rows] == ["2", 3]


def test_bad_input(tmp_path):
    log = TrainingLog(tmp_path)
    with pytest.raises(TypeError, match="mapping"):
        log.append([1, 2])
    with pytest.raises(ValueError, match="empty"):
        log.append({})
    with pytest.raises(TypeError, match="str"):
        log.append({1: 2})
    with pytest.raises(ValueError, match="plain file name"):
        TrainingLog(tmp_path, csv_name="a/b.csv")
    with pytest.raises(ValueError, match="exactly one"):
        log.truncate()
    assert log.plot() is None  # nothing logged yet


def test_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    log = TrainingLog(tmp_path)
    for epoch in range(1, 4):
        log.append({"epoch": epoch, "loss": 3.0 / epoch, "hm_loss": 1.0 / epoch, "lr": 1e-3 * epoch,
                    "Car_3d/moderate_R40": 10.0 * epoch, "note": "text"})
    path = log.plot(title="test")
    data = path.read_bytes()
    assert path == tmp_path / "curve.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="numeric"):
        plot_training_curve([{"epoch": 1, "note": "x"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plot_training_curve([], tmp_path / "x.png")


def test_missing_matplotlib_message(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    log = TrainingLog(tmp_path)
    log.append({"epoch": 1, "loss": 1.0})
    with pytest.warns(RuntimeWarning, match=r"pip install geoattn\[plot\]"):
        assert log.plot() is None
    with pytest.raises(ImportError, match="matplotlib is not installed"):
        log.plot(strict=True)
    assert not (tmp_path / "curve.png").exists()
