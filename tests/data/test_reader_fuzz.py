"""Property test of the file readers: random truncations and byte flips of real fixtures.

Each reader, given a damaged copy of a real point, calib, label, BVH or pickle file, must either return a
well-formed result (the original one, for a binary file cut short) or raise a ``ValueError`` (a refused pickle
is one too, and a ``pickle.UnpicklingError``) whose message names the damaged file. Any other exception, a
message without the file, a malformed result or two reads of one file that differ fail the test.
"""
from __future__ import annotations

import math
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from geoattn.data.bvh import load_bvh  # noqa: E402
from geoattn.data.kitti import load_info_pickle, load_mmdet3d_frame, read_calib, read_label, read_velodyne  # noqa: E402
from geoattn.data.points import read_point_file  # noqa: E402
from geoattn.data.threedmatch import read_fragment  # noqa: E402

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _trimmed_bvh(source: Path, frames: int = 12) -> bytes:
    """The real clip's hierarchy with its first ``frames`` frames (small enough to parse many times)."""
    lines = source.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Frames:"))
    body = lines[:start] + [f"Frames: {frames}"] + lines[start + 1:start + 2 + frames]
    return ("\n".join(body) + "\n").encode()


def _points_ok(points) -> bool:
    return (isinstance(points, torch.Tensor) and points.dtype == torch.float32 and points.dim() == 2
            and bool(torch.isfinite(points).all()))


def _cloud_ok(points) -> bool:
    return _points_ok(points) and points.shape[1] == 3 and points.shape[0] > 0


def _calib_ok(calib) -> bool:
    return calib.P.shape == (4, 4, 4) and bool(torch.isfinite(calib.lidar2img(2)).all())


def _labels_ok(labels) -> bool:
    return (labels.boxes_camera.shape == (len(labels), 7) and bool(torch.isfinite(labels.boxes_camera).all())
            and all(isinstance(name, str) and name for name in labels.names))


def _bvh_ok(motion) -> bool:
    return (motion.frame_time > 0 and motion.motion.shape == (motion.num_frames, sum(map(len, motion.channels)))
            and bool(np.isfinite(motion.motion).all()) and len(motion.names) == len(motion.parents))


def _pickle_ok(value) -> bool:
    return value is not None


def _frame_ok(frame) -> bool:
    return (frame.boxes.shape == (len(frame.labels), 7) and bool(torch.isfinite(frame.boxes).all())
            and _points_ok(frame.points))


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(_equal(getattr(a, key), getattr(b, key)) for key in a.__dataclass_fields__)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


# (fixture path, suffix of the damaged copy, reader, well-formed check, does a truncation have to fail or
# give back the original result: binary formats, whose sizes are checked against the header)
CASES = {
    "ply_ascii": ("registration/bunny/bun_zipper_res3.ply", ".ply", read_point_file, _cloud_ok, False),
    "pcd_binary": ("registration/open3d_feature/cloud_bin_1.pcd", ".pcd", read_point_file, _cloud_ok, True),
    "npy": ("registration/geotransformer_demo/src.npy", ".npy", read_point_file, _cloud_ok, True),
    "velodyne": ("lidar/snippets/kitti/training/velodyne/000000.bin", ".bin", read_velodyne, _points_ok, False),
    "calib": ("lidar/kitti_360/calib/000000.txt", ".txt", read_calib, _calib_ok, False),
    "label": ("lidar/kitti_360/label_2/000000.txt", ".txt", read_label, _labels_ok, False),
    "bvh": ("pose/cmu_131_01_scaled.bvh", ".bvh", load_bvh, _bvh_ok, False),
    "info_pickle": ("lidar/snippets/kitti/kitti_infos_train.pkl", ".pkl", load_info_pickle, _pickle_ok, False),
    "fragment_pickle": (None, ".pth", read_fragment, _cloud_ok, False),
}


def _original(real_data: Path, name: str) -> bytes:
    source = CASES[name][0]
    if name == "bvh":
        return _trimmed_bvh(real_data / source)
    if name == "fragment_pickle":  # a Predator-style .pth fragment made of the real bunny's vertices
        return pickle.dumps(read_point_file(real_data / CASES["ply_ascii"][0]).numpy(), protocol=4)
    return (real_data / source).read_bytes()


def _damage(data: bytes, draw) -> tuple[bytes, bool]:
    """A truncated copy (``True``) or one with 1-4 bytes flipped (``False``)."""
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))], True
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        damaged[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(damaged), False


def _outcome(reader, path: Path):
    try:
        return reader(path)
    except ValueError as error:  # PickleRefusedError is a ValueError and a pickle.UnpicklingError
        assert str(path) in str(error), f"{type(error).__name__} without the file name: {error}"
        assert "\n" not in str(error), f"a multi-line message: {error!r}"
        return error


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_fixtures_give_a_correct_result_or_a_value_error(real_data, name):
    _, suffix, reader, well_formed, exact_truncation = CASES[name]
    data = _original(real_data, name)
    with tempfile.TemporaryDirectory() as folder:
        original_path = Path(folder) / f"original{suffix}"
        original_path.write_bytes(data)
        original = reader(original_path)
        assert well_formed(original)

        @FUZZ
        @given(st.data())
        def check(draws):
            damaged, truncated = _damage(data, draws.draw)
            path = Path(folder) / f"damaged{suffix}"
            path.write_bytes(damaged)
            first, second = _outcome(reader, path), _outcome(reader, path)
            if isinstance(first, ValueError):
                assert type(second) is type(first), f"{first!r} then {second!r}"
                return
            assert well_formed(first), f"malformed result from {len(damaged)} bytes"
            assert _equal(first, second), "two reads of one file differ"
            if truncated and exact_truncation:
                assert _equal(first, original), "a truncated binary file read as something else"

        check()


def test_damaged_info_pickle_frames(real_data):
    """The whole mmdet3d frame reader on damaged copies of a real info pickle (its cloud and image beside it)."""
    source = real_data / "fusion" / "000008.pkl"
    data = source.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        for name in ("000008.bin", "000008.png"):
            (Path(folder) / name).symlink_to(real_data / "fusion" / name)

        @FUZZ
        @given(st.data())
        def check(draws):
            damaged, _ = _damage(data, draws.draw)
            path = Path(folder) / "damaged.pkl"
            path.write_bytes(damaged)
            try:
                frame = load_mmdet3d_frame(path, load_image=False)
            except ValueError as error:
                assert str(path) in str(error) or "camera" in str(error), str(error)
                return
            except FileNotFoundError as error:  # a flip in a file name: the reader names the file it looked for
                assert "not found under" in str(error), str(error)
                return
            except IndexError as error:  # a flip that empties data_list: the index argument is out of range
                assert str(error).startswith("index:"), str(error)
                return
            assert _frame_ok(frame)

        check()
