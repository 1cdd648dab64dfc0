"""``geoattn register`` / ``geoattn evaluate-3dmatch``: outputs, one-line errors, no overwrite, no fallback."""
from __future__ import annotations

import json
import pickle

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


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON output")
    return json.loads(text, parse_constant=refuse)


def _truncated_ply(folder, binary: bool):
    points = np.random.default_rng(2).random((400, 3)).astype(np.float32)
    header = (f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\nelement vertex 400\n"
              "property float x\nproperty float y\nproperty float z\nend_header\n").encode()
    body = points.tobytes() if binary else "".join(f"{x} {y} {z}\n" for x, y, z in points).encode()
    path = folder / f"cut_{'binary' if binary else 'ascii'}.ply"
    path.write_bytes(header + body[:len(body) // 2])
    return path


@pytest.mark.parametrize("binary", [True, False])
def test_register_refuses_a_truncated_ply_in_one_line(files, capsys, tmp_path, binary):
    path = _truncated_ply(tmp_path, binary)
    for method in ("fpfh", "roitr"):
        extra = ["--weights", files / "tiny.pt"] if method == "roitr" else []
        code, _, err = _run(capsys, "register", path, files / "tgt.npy", "--method", method, *extra,
                            "--out", tmp_path / "T.json")
        assert code == 2 and "cut short" in err and str(path) in err and err.count("\n") == 1
    assert not (tmp_path / "T.json").exists()


def test_register_float32_overflow_is_one_line(files, capsys, tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1e39, 0.0, 0.0]] + [[0.1 * i, 0.2, 0.3] for i in range(30)]))
    code, _, err = _run(capsys, "register", tmp_path / "big.npy", files / "tgt.npy", "--method", "fpfh")
    assert code == 2 and "float32 range" in err and err.count("\n") == 1


@pytest.mark.parametrize("cloud", [[[0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5]] * 50])
def test_fpfh_and_roitr_refuse_degenerate_clouds_alike(files, capsys, tmp_path, cloud):
    np.save(tmp_path / "one.npy", np.array(cloud))
    messages = []
    for method in ("fpfh", "roitr"):
        extra = ["--weights", files / "tiny.pt"] if method == "roitr" else []
        code, _, err = _run(capsys, "register", tmp_path / "one.npy", files / "tgt.npy", "--method", method, *extra,
                            "--voxel-size", "0.1")
        assert code == 2 and err.count("\n") == 1, err
        messages.append(err.split(": error: ", 1)[1])
    assert messages[0] == messages[1] and "only 1 points remain" in messages[0]


def test_register_validates_every_output_before_work(files, capsys, tmp_path):
    (tmp_path / "photo.png").write_text("my notes, not a picture")
    code, _, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--method", "fpfh",
                        "--out", tmp_path / "T.json", "--render", tmp_path / "photo.png")
    assert code == 2 and "--render" in err and "not a PNG" in err and err.count("\n") == 1
    assert (tmp_path / "photo.png").read_text() == "my notes, not a picture"
    (tmp_path / "file").write_text("x")
    for extra, message in [(["--render", tmp_path / "file" / "r.png"], "--render"),
                           (["--render", tmp_path / "T.json"], "the same file as --out"),
                           (["--out", tmp_path / "same.png"], "--out")]:
        code, _, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--method", "fpfh",
                            "--out", tmp_path / "T.json", *extra)
        assert code == 2 and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "photo.png"]


def test_register_outputs_honour_the_umask(files, capsys, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        code, _, err = _run(capsys, "register", files / "src.npy", files / "tgt.npy", "--method", "fpfh",
                            "--voxel-size", "0.1", "--out", tmp_path / "T.txt", "--render", tmp_path / "r.png")
    finally:
        os.umask(previous)
    assert code == 0, err
    for name in ("T.txt", "r.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def _benchmark(tmp_path, fragments: dict[int, object], info: bool = True):
    """A one-scene 3DMatch layout: ``fragments`` maps an index to an [N, 3] array or to raw ``.pth`` bytes."""
    scene = tmp_path / "data" / "test" / "room"
    scene.mkdir(parents=True)
    for index, content in fragments.items():
        path = scene / f"cloud_bin_{index}.pth"
        path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(np.asarray(content, np.float32)))
    bench = tmp_path / "3DMatch" / "room"
    bench.mkdir(parents=True)
    entries = [LogEntry(0, j, len(fragments), torch.eye(4, dtype=torch.float64)) for j in sorted(fragments)[1:]]
    write_gt_log(bench / "gt.log", entries)
    return tmp_path


class _Hostile:
    def __reduce__(self):
        return (print, ("pwned",))


def test_evaluate_refuses_a_hostile_pth_in_one_line(capsys, tmp_path):
    base = np.random.default_rng(3).random((300, 3))
    root = _benchmark(tmp_path, {0: base, 1: pickle.dumps(_Hostile())})
    code, out, err = _run(capsys, "evaluate-3dmatch", "--root", root, "--method", "fpfh", "--voxel-size", "0.1")
    assert code == 2 and "refusing to load builtins.print" in err and "cloud_bin_1.pth" in err
    assert err.count("\n") == 1 and "pwned" not in out


def test_evaluate_json_is_strict_and_max_pairs_positive(capsys, tmp_path):
    base = np.random.default_rng(4).random((300, 3)) * [2.0, 1.5, 1.0]
    root = _benchmark(tmp_path, {0: base, 1: base + [0.02, 0, 0]})  # no gt.info: RMSE unknown (NaN)
    code, out, err = _run(capsys, "evaluate-3dmatch", "--root", root, "--method", "fpfh", "--voxel-size", "0.1",
                          "--json", "--out", tmp_path / "report.json")
    assert code == 0, err
    _strict_json(out)
    report = _strict_json((tmp_path / "report.json").read_text())
    assert report["pairs"][0]["rmse"] is None
    for bad in ("-1", "0"):
        code, _, err = _run(capsys, "evaluate-3dmatch", "--root", root, "--method", "fpfh", "--max-pairs", bad)
        assert code == 2 and "--max-pairs" in err and err.count("\n") == 1
    (tmp_path / "dir.json").mkdir()
    code, _, err = _run(capsys, "evaluate-3dmatch", "--root", root, "--method", "fpfh", "--out", tmp_path / "dir.json")
    assert code == 2 and "--out" in err and "is a folder" in err
