"""Reading clouds in every supported format, one-line errors for bad files, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geoattn.registration.io import read_point_cloud, write_transform


def test_read_formats(tmp_path, real_data):
    pts = np.random.default_rng(0).random((20, 3))
    np.save(tmp_path / "a.npy", pts)
    np.savetxt(tmp_path / "a.xyz", np.hstack([pts, pts]))
    assert torch.allclose(read_point_cloud(tmp_path / "a.npy"), torch.from_numpy(pts).float())
    assert torch.allclose(read_point_cloud(tmp_path / "a.xyz"), torch.from_numpy(pts).float(), atol=1e-6)
    pcd = read_point_cloud(real_data / "registration" / "open3d_feature" / "cloud_bin_0.pcd")
    assert pcd.shape == (3903, 3)
    ply = read_point_cloud(real_data / "registration" / "bunny" / "bun_zipper_res3.ply")
    assert ply.shape == (1889, 3)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.npy", None, "no such file"),
        ("a.obj", b"v 0 0 0", "unsupported format"),
        ("nan.npy", np.array([[0.0, np.nan, 1.0]]), "NaN or infinite"),
        ("flat.npy", np.zeros((5, 2)), r"expected an \[N, 3\]"),
        ("empty.npy", np.zeros((0, 3)), "empty"),
        ("junk.npy", b"garbage", "not a readable .npy"),
        ("junk.ply", b"garbage", "not a PLY file"),
        ("text.xyz", b"1 2 three\n", "not a readable"),
    ],
)
def test_bad_inputs_raise_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        read_point_cloud(path)
    assert "\n" not in str(info.value)


def test_write_transform_text_and_json(tmp_path):
    T = torch.eye(4, dtype=torch.float64)
    T[0, 3] = 1.5
    write_transform(tmp_path / "T.txt", T)
    assert np.allclose(np.loadtxt(tmp_path / "T.txt"), T.numpy())
    write_transform(tmp_path / "T.json", T, extra={"method": "fpfh"})
    data = json.loads((tmp_path / "T.json").read_text())
    assert data["method"] == "fpfh" and np.allclose(data["transform"], T.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T.json", "T.txt"]  # no temporary leftovers


def _binary_ply(path, points, faces=None):
    """A binary little-endian PLY of float32 vertices (and uchar/int triangle lists)."""
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
    header += "property float x\nproperty float y\nproperty float z\n"
    if faces is not None:
        header += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
    body = np.asarray(points, dtype="<f4").tobytes()
    if faces is not None:
        record = np.dtype([("n", "u1"), ("v", "<i4", (3,))])
        table = np.zeros(len(faces), dtype=record)
        table["n"], table["v"] = 3, faces
        body += table.tobytes()
    path.write_bytes((header + "end_header\n").encode() + body)
    return path


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_binary_ply_is_refused(tmp_path, cut):
    pts = np.random.default_rng(0).random((200, 3))
    full = _binary_ply(tmp_path / "full.ply", pts, faces=[[0, 1, 2]] * 10)
    assert torch.equal(read_point_cloud(full), torch.from_numpy(pts).float())
    data = full.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ValueError, match=r"cut\.ply: the file ends inside element '(vertex|face)'"):
        read_point_cloud(tmp_path / "cut.ply")


def test_truncated_ascii_ply_and_pcd_are_refused(tmp_path, real_data):
    for name in ("bunny/bun_zipper_res3.ply", "open3d_feature/cloud_bin_0.pcd"):
        data = (real_data / "registration" / name).read_bytes()
        path = tmp_path / ("cut" + name[-4:])
        path.write_bytes(data[:len(data) // 2])
        with pytest.raises(ValueError, match=r"cut\.(ply|pcd): .*(cut short|expected 5 values)"):
            read_point_cloud(path)


def test_malformed_ply_headers_and_records_name_the_place(tmp_path):
    head = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
    cases = [
        (head + "end_header\n0 1 2\n3 4\n", "line 9: expected 3 values, got 2"),
        (head + "end_header\n0 1 2\n3 4 five\n", "line 9: expected a number, got 'five'"),
        (head + "end_header\n0 1 2\n3 4 5\n6 7 8\n", "lines after the last element"),
        (head.replace("float z", "float w") + "end_header\n0 1 2\n3 4 5\n", "no z coordinate"),
        (head.replace("vertex 2", "vertex -2") + "end_header\n", "header line 3: expected a non-negative"),
        (head.replace("float y", "real y") + "end_header\n", "header line 5"),
        (head, "no 'end_header' line"),
    ]
    for index, (text, message) in enumerate(cases):
        path = tmp_path / f"bad{index}.ply"
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            read_point_cloud(path)
        assert str(path) in str(info.value)


def test_reading_twice_gives_the_same_points(tmp_path):
    pts = np.random.default_rng(0).random((300, 3))
    data = _binary_ply(tmp_path / "full.ply", pts).read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-100])
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(read_point_cloud(tmp_path / "cut.ply"))
        except ValueError as error:
            outcomes.append(str(error))
    assert isinstance(outcomes[0], str) and outcomes[0] == outcomes[1]


def test_float32_overflow_is_not_finite(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1e39, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    np.savetxt(tmp_path / "big.xyz", np.array([[0.0, -1e39, 0.0], [0.0, 0.0, 0.0]]))
    for name in ("big.npy", "big.xyz"):
        with pytest.raises(ValueError, match="1 of .* points contain NaN or infinite.*float32 range"):
            read_point_cloud(tmp_path / name)
