"""Reading point clouds and writing transforms (atomically: temporary file, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["SUPPORTED_SUFFIXES", "read_point_cloud", "write_transform", "atomic_write_bytes"]

SUPPORTED_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".pts", ".npy", ".txt")


def _validate(points: np.ndarray, path: Path) -> torch.Tensor:
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"{path}: expected an [N, 3] (or wider) array of points, got shape {points.shape}")
    points = points[:, :3]
    if points.shape[0] == 0:
        raise ValueError(f"{path}: the point cloud is empty")
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise ValueError(f"{path}: {bad} of {points.shape[0]} points contain NaN or infinite coordinates")
    return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))


def read_point_cloud(path: str | os.PathLike) -> torch.Tensor:
    """Points ``[N, 3]`` float32 from .ply/.pcd (open3d; mesh vertices for a mesh-only PLY), .xyz/.xyzn/.pts/.txt
    (whitespace text, first three columns) or .npy (``[N, >=3]``). Raises ``FileNotFoundError`` or
    ``ValueError`` with a one-line reason for a missing file, unknown format, wrong shape, empty cloud
    or non-finite coordinates."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported format {suffix or '(none)'}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for corrupt files
            raise ValueError(f"{path}: not a readable .npy array ({exc.__class__.__name__}: {exc})") from None
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
        return _validate(np.asarray(array, dtype=np.float64), path)
    if suffix in (".xyz", ".xyzn", ".pts", ".txt"):
        try:
            array = np.loadtxt(path, ndmin=2, dtype=np.float64)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable whitespace-separated point file ({exc})") from None
        return _validate(array, path)
    import open3d as o3d

    with open(path, "rb") as handle:
        head = handle.read(4)
    if suffix == ".ply" and head[:3] != b"ply":
        raise ValueError(f"{path}: not a PLY file (missing 'ply' header)")
    cloud = o3d.io.read_point_cloud(str(path))
    points = np.asarray(cloud.points)
    if points.shape[0] == 0 and suffix == ".ply":
        mesh = o3d.io.read_triangle_mesh(str(path))
        points = np.asarray(mesh.vertices)
    if points.size == 0:
        raise ValueError(f"{path}: the point cloud is empty or could not be parsed")
    return _validate(points, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the destination folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_transform(path: str | os.PathLike, transform: torch.Tensor, extra: dict | None = None) -> None:
    """Write a 4x4 transform as text (4 rows) or, for ``.json``, as ``{"transform": [[...]], **extra}``."""
    path = Path(path)
    matrix = transform.detach().double().cpu().numpy()
    if path.suffix.lower() == ".json":
        text = json.dumps({"transform": matrix.tolist(), **(extra or {})}, indent=2) + "\n"
    else:
        text = "\n".join(" ".join(f"{value:.10f}" for value in row) for row in matrix) + "\n"
    atomic_write_bytes(path, text.encode())
