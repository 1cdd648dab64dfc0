"""``geoattn register`` / ``geoattn evaluate-3dmatch``: outputs, one-line errors, no overwrite, no fallback."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geoattn.cli import main
from geoattn.data.threedmatch import LogEntry, write_gt_log
from geoattn.models.roitr import RoITr, RoITrConfig
from geoattn.registration.pipeline import save_roitr

TINY = RoITrConfig.small(channels=(8, 16, 16, 16), neighbors=(6, 6, 6, 6), transformer_channels=16,
                         transformer_heads=2, heads=2, decoder_heads=2, coarse_channels=8, fine_channels=8,
                         sinkhorn_iterations=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    rng = np.random.default_rng(0)
    cloud = rng.random((600, 3)) * [2.0, 1.5, 1.0]
    np.save(root / "src.npy", cloud)
    np.save(root / "tgt.npy", cloud + [0.1, 0.0, 0.0])
    torch.manual_seed(0)
    save_roitr(RoITr(TINY), root / "tiny.pt")
    return root


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_roitr_json_out_and_render(files, capsys, tmp_path):
    code, out, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--weights", files / "tiny.pt",
                          "--voxel-size", "0.1", "--json", "--out", tmp_path / "T.json", "--render", tmp_path / "a.png")
    assert code == 0, err
    report = json.loads(out)
    assert report["method"] == "roitr" and np.asarray(report["transform"]).shape == (4, 4)
    assert json.loads((tmp_path / "T.json").read_text())["method"] == "roitr"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T.json", "a.png"]


def test_register_fpfh_text_output(files, capsys, tmp_path):
    code, out, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--method", "fpfh",
                          "--voxel-size", "0.1", "--out", tmp_path / "T.txt")
    assert code == 0, err
    assert "transform (source -> target)" in out and "time:" in out
    assert np.loadtxt(tmp_path / "T.txt").shape == (4, 4)


@pytest.mark.parametrize("extra, message", [
    (["--out", "{src}"], "refusing to overwrite an input"),
    (["--out", "{tmp}/T.csv"], "expected a file ending in .txt or .json"),
    (["--render", "{tmp}/r.jpg"], "expected a file ending in .png"),
    (["--voxel-size", "-1"], "--voxel-size"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--weights", "{tmp}/none.pt"], "checkpoint not found"),
    (["--method", "fpfh", "--weights", "{tmp}/none.pt"], "only used with --method roitr"),
])
def test_register_errors_are_one_line(files, capsys, tmp_path, extra, message):
    extra = [e.format(src=files / "src.npy", tmp=tmp_path) for e in extra]
    if "--weights" not in extra:
        extra += ["--weights", str(files / "tiny.pt")] if "fpfh" not in extra else []
    code, _, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", *extra)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not any(p.suffix in (".csv", ".jpg") for p in tmp_path.iterdir())


def test_register_bad_inputs(files, capsys, tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan, 1.0]] * 5))
    for src, message in [(tmp_path / "missing.ply", "no such file"), (tmp_path / "nan.npy", "NaN")]:
        code, _, err = _run(capsys, "register", src, files / "tgt.npy", "--weights", files / "tiny.pt")
        assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = _run(capsys, "register", files / "src.npy")
    assert code == 2 and "expected SRC and TGT" in err
    code, _, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--demo")
    assert code == 2 and "--demo" in err


def test_register_demo(files, capsys):
    code, out, err = _run(capsys, "register", "--demo", "--method", "fpfh", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["demo"]["rre_deg"] < 15 and report["demo"]["rte"] < 0.3  # the classical baseline solves it


def test_evaluate_3dmatch_on_generated_benchmark(files, capsys, tmp_path):
    rng = np.random.default_rng(1)
    scene = tmp_path / "fragments" / "room"
    scene.mkdir(parents=True)
    base = rng.random((400, 3)) * [2.0, 1.5, 1.0]
    for index in range(3):
        np.save(scene / f"cloud_bin_{index}.npy", base + [0.05 * index, 0, 0])
    entries = []
    for i, j in [(0, 1), (0, 2)]:
        T = torch.eye(4, dtype=torch.float64)
        T[0, 3] = 0.05 * (j - i)  # fragment j (source) into fragment i (target)
        entries.append(LogEntry(i, j, 3, T))
    bench = tmp_path / "3DMatch" / "room"
    bench.mkdir(parents=True)
    write_gt_log(bench / "gt.log", entries)
    info = "\n".join(f"{i}\t{j}\t3\n" + "\n".join(" ".join("5000" if r == c else "0" for c in range(6))
                                                    for r in range(6)) for i, j in [(0, 1), (0, 2)])
    (bench / "gt.info").write_text(info + "\n")
    code, out, err = _run(capsys, "evaluate-3dmatch", "--root", tmp_path, "--method", "fpfh", "--voxel-size", "0.1",
                          "--json", "--out", tmp_path / "report.json")
    assert code == 0, err
    brief = json.loads(out)
    assert brief["inlier_ratio"] is None and 0.0 <= brief["registration_recall"] <= 1.0
    assert len(json.loads((tmp_path / "report.json").read_text())["pairs"]) == 2
    code, out, err = _run(capsys, "evaluate-3dmatch", "--root", tmp_path, "--weights", files / "tiny.pt",
                          "--voxel-size", "0.1", "--json")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["inlier_ratio"] <= 1.0
    code, _, err = _run(capsys, "evaluate-3dmatch", "--root", tmp_path / "nope")
    assert code == 2 and "no such folder" in err
