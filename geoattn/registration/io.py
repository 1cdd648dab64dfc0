"""Reading point clouds and writing transforms (atomically, with the mode a plain ``open`` would give)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from geoattn.data.points import POINT_FILE_SUFFIXES as SUPPORTED_SUFFIXES
from geoattn.data.points import read_point_file
from geoattn.io import atomic_write_bytes

__all__ = ["SUPPORTED_SUFFIXES", "read_point_cloud", "write_transform", "atomic_write_bytes", "check_cloud",
           "check_downsampled", "json_dumps"]


def read_point_cloud(path: str | os.PathLike) -> torch.Tensor:
    """Points ``[N, 3]`` float32 of a point file (see :func:`geoattn.data.points.read_point_file`: .ply, .pcd,
    .xyz/.xyzn/.pts/.txt, .npy). Raises ``FileNotFoundError`` or ``ValueError`` with a one-line reason naming the
    file for a missing file, unknown format, malformed or truncated file, wrong shape, empty cloud or
    non-finite coordinates (checked in float32)."""
    return read_point_file(path)


def check_cloud(points, name: str = "points") -> None:
    """What every registration entry point checks of a cloud it is given (the Python API checks what the
    command line checks): a floating tensor ``[N, 3]``, ``N > 0``, every coordinate finite. The finiteness test
    reads the values once; registration subsamples to a data-dependent size right after, so on CUDA it adds no
    synchronisation that the call does not already make."""
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [N, 3], got {type(points).__name__}")
    if points.dim() != 2 or points.size(1) != 3:
        raise ValueError(f"{name}: expected [N, 3], got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {points.dtype}")
    if points.size(0) == 0:
        raise ValueError(f"{name}: the point cloud is empty")
    finite = torch.isfinite(points).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{name}: {int((~finite).sum())} of {points.size(0)} points contain NaN or infinite "
                         "coordinates")


def check_downsampled(count: int, voxel_size: float, name: str = "points") -> None:
    """The rule every registration method applies to a cloud after voxel downsampling: at least 3 points (a
    rigid transform is not determined by fewer). ``ValueError`` naming ``name`` otherwise."""
    if count < 3:
        raise ValueError(f"{name}: only {count} points remain after {voxel_size} voxel downsampling; "
                         "use a smaller --voxel-size (or a cloud with more than one distinct point)")


def write_transform(path: str | os.PathLike, transform: torch.Tensor, extra: dict | None = None) -> None:
    """Write a 4x4 transform as text (4 rows) or, for ``.json``, as ``{"transform": [[...]], **extra}`` (strict
    JSON: NaN and infinities in ``extra`` are written as ``null``)."""
    path = Path(path)
    matrix = transform.detach().double().cpu().numpy()
    if path.suffix.lower() == ".json":
        text = json_dumps({"transform": matrix.tolist(), **(extra or {})}, indent=2) + "\n"
    else:
        text = "\n".join(" ".join(f"{value:.10f}" for value in row) for row in matrix) + "\n"
    atomic_write_bytes(path, text.encode())


def _strict(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def json_dumps(value, **kwargs) -> str:
    """``json.dumps`` of ``value`` with every NaN / infinite float replaced by ``null`` (strict JSON, which
    ``json.dumps`` alone does not write: it prints a bare ``NaN``)."""
    return json.dumps(_strict(value), allow_nan=False, **kwargs)
