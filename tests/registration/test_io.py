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
