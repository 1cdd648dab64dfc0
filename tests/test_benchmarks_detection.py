"""Smoke test of benchmarks/detection.py at its --quick sizes: one JSON object with every record and key."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "detection.py"
RECORDS = ("forward_kitti", "forward_waymo", "nms_bev", "kitti_metric", "voxel_encoder", "gaussian_targets")
KEYS = ("name", "geoattn_ms", "baseline_ms", "ratio", "baseline")


def load_script():
    spec = importlib.util.spec_from_file_location("geoattn_benchmark_detection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_record(real_data, capsys):
    frame = real_data / "lidar" / "kitti_360" / "velodyne" / "000000.bin"
    if not frame.is_file():
        pytest.skip(f"frame not found: {frame}")
    module = load_script()
    assert module.main(["--quick", "--repeats", "1", "--frame", str(frame), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["quick"] is True and out["device"] == "cpu"
    assert set(out["records"]) == set(RECORDS)
    for name, rec in out["records"].items():
        assert rec["name"] == name
        for key in KEYS:
            assert key in rec, (name, key)
        assert rec["geoattn_ms"] > 0 and rec["baseline_ms"] > 0
        assert rec["ratio"] == pytest.approx(rec["geoattn_ms"] / rec["baseline_ms"], rel=1e-2)
    assert out["records"]["nms_bev"]["same_indices"] is True
    assert out["records"]["forward_kitti"]["max_rel_err_vs_baseline"] < 1e-3
    assert out["records"]["voxel_encoder"]["max_abs_diff"] < 1e-3
    assert out["records"]["kitti_metric"]["max_abs_diff_vs_baseline"] < 1e-6


def test_greedy_baseline_and_heatmap_loop_agree_with_geoattn():
    import torch

    from geoattn.detection.nms import nms_bev
    from geoattn.detection.targets import assign_center_targets

    module = load_script()
    boxes, scores = module.crowded_boxes(6, 5, seed=3)
    assert torch.equal(module.greedy_nms(boxes, scores, 0.3), nms_bev(boxes, scores, 0.3))
    gt = torch.tensor([[[10.0, 0.0, -1.0, 3.9, 1.6, 1.5, 0.3], [0.2, -39.9, -1.0, 0.8, 0.6, 1.7, 0.0]]])
    labels = torch.tensor([[0, 1]])
    geometry = ((0.32, 0.32, 0.125), (0.0, -40.0, -3.0, 70.4, 40.0, 1.0), 2)
    loop = module.loop_heatmaps(gt, labels, 3, (125, 110), *geometry)
    assert loop.max() == 1.0 and loop[0, 2].max() == 0  # one peak per drawn object, empty third class
    assert torch.equal(loop, assign_center_targets(gt, labels, 3, (125, 110), *geometry).heatmap)
