"""3DMatch / 3DLoMatch readers: benchmark metadata (``gt.log``, ``gt.info``, ``gt_overlap.log``), fragments
and the training pair lists of Predator/GeoTransformer.

Layouts (see ``datasets/3dmatch.md``):

* benchmark: ``<root>/<benchmark>/<scene>/gt.log`` (+ ``gt.info``), or
  ``<root>/metadata/benchmarks/<benchmark>/<scene>/...`` (GeoTransformer), or
  ``<root>/benchmarks/<benchmark>/<scene>/...``;
  fragments ``<root>/data/test/<scene>/cloud_bin_<i>.pth`` (GeoTransformer/Predator ``.pth``) or
  ``<root>/fragments/<scene>/cloud_bin_<i>.ply`` (the original 3DMatch ``.ply``) or the same with ``.npy``.
* training: ``<root>/metadata/train.pkl`` (GeoTransformer: list of dicts with ``pcd0``, ``pcd1``,
  ``rotation``, ``translation``, ``overlap``; the transform maps ``pcd1`` into ``pcd0``) or
  ``<root>/train_info.pkl`` (Predator: dict of ``src``, ``tgt``, ``rot``, ``trans``, ``overlap``; the
  transform maps ``src`` into ``tgt``). Fragment paths are relative to ``<root>/data`` (GeoTransformer)
  or ``<root>`` (Predator).

The ``.pth`` fragments and the ``.pkl`` lists are pickles; they are read with a restricted unpickler
that only admits numpy arrays and plain containers, never arbitrary objects.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "LogEntry",
    "read_gt_log",
    "read_gt_info",
    "read_gt_overlap",
    "write_gt_log",
    "find_benchmark_dir",
    "fragment_path",
    "read_fragment",
    "safe_pickle_load",
    "ThreeDMatchPairs",
]


class LogEntry(NamedTuple):
    """One ``gt.log`` block: target fragment ``i``, source fragment ``j``, number of fragments and the
    4x4 transform mapping fragment ``j`` (source) into fragment ``i``'s frame (target)."""

    i: int
    j: int
    num_fragments: int
    transform: torch.Tensor


def _blocks(path: Path, rows: int) -> list[tuple[list[int], np.ndarray]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) % (rows + 1) != 0:
        raise ValueError(f"{path}: expected blocks of {rows + 1} lines, got {len(lines)} lines")
    blocks = []
    for start in range(0, len(lines), rows + 1):
        header = [int(float(v)) for v in lines[start][:3]]
        if len(header) != 3:
            raise ValueError(f"{path}: line {start + 1}: expected 'i j n', got {' '.join(lines[start])!r}")
        matrix = np.array([[float(v) for v in row] for row in lines[start + 1:start + 1 + rows]])
        if matrix.shape != (rows, rows):
            raise ValueError(f"{path}: block at line {start + 1}: expected a {rows}x{rows} matrix, got {matrix.shape}")
        blocks.append((header, matrix))
    return blocks


def read_gt_log(path: str | Path) -> list[LogEntry]:
    """Parse a Redwood/3DMatch trajectory ``gt.log`` (blocks of ``i j n`` + 4 rows)."""
    return [LogEntry(h[0], h[1], h[2], torch.from_numpy(m)) for h, m in _blocks(Path(path), 4)]


def write_gt_log(path: str | Path, entries: list[LogEntry]) -> None:
    """Write entries in the ``gt.log`` format (used for estimated trajectories too)."""
    from geoattn.registration.io import atomic_write_bytes

    lines = []
    for entry in entries:
        lines.append(f"{entry.i}\t{entry.j}\t{entry.num_fragments}")
        lines += [" ".join(f"{v:.10f}" for v in row) for row in entry.transform.double().tolist()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_gt_info(path: str | Path) -> dict[tuple[int, int], torch.Tensor]:
    """Parse ``gt.info`` into ``{(i, j): 6x6 information matrix}``."""
    return {(h[0], h[1]): torch.from_numpy(m) for h, m in _blocks(Path(path), 6)}


def read_gt_overlap(path: str | Path) -> dict[tuple[int, int], float]:
    """Parse ``gt_overlap.log`` lines ``i,j,overlap`` (commas or whitespace)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    result = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}: line {number}: expected 'i,j,overlap', got {line!r}")
        result[(int(fields[0]), int(fields[1]))] = float(fields[2])
    return result


def find_benchmark_dir(root: str | Path, benchmark: str) -> Path:
    """The folder holding ``<scene>/gt.log`` for ``benchmark`` ('3DMatch' or '3DLoMatch') under ``root``."""
    root = Path(root)
    if benchmark not in ("3DMatch", "3DLoMatch"):
        raise ValueError(f"benchmark: expected '3DMatch' or '3DLoMatch', got {benchmark!r}")
    candidates = [root / benchmark, root / "metadata" / "benchmarks" / benchmark, root / "benchmarks" / benchmark]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*/gt.log")):
            return candidate
    raise FileNotFoundError(
        f"{root}: no {benchmark} metadata found (looked for */gt.log in "
        + ", ".join(str(c.relative_to(root)) for c in candidates) + ")"
    )


def fragment_path(root: str | Path, scene: str, index: int) -> Path:
    """The file of fragment ``index`` of ``scene`` under ``root`` (first existing layout, see module docs)."""
    root = Path(root)
    name = f"cloud_bin_{index}"
    candidates = [root / "data" / "test" / scene / f"{name}.pth", root / "test" / scene / f"{name}.pth",
                  root / "fragments" / scene / f"{name}.ply", root / "fragments" / scene / f"{name}.npy",
                  root / scene / f"{name}.ply", root / scene / f"{name}.npy"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: fragment {scene}/{name} not found (.pth under data/test, or .ply/.npy "
                            "under fragments/)")


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an untrusted pickle")


def safe_pickle_load(path: str | Path):
    """Load a pickle (or a ``torch.save`` zip of numpy data) admitting only numpy arrays and containers."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"PK":  # zip-format torch file: weights-only torch.load with numpy reconstruction allowed
        from numpy.core.multiarray import _reconstruct

        with torch.serialization.safe_globals([_reconstruct, np.ndarray, np.dtype]):
            return torch.load(path, map_location="cpu", weights_only=True)
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def read_fragment(path: str | Path) -> torch.Tensor:
    """Points ``[N, 3]`` float32 of a fragment (``.pth`` pickled numpy array, ``.ply``, ``.pcd`` or ``.npy``)."""
    path = Path(path)
    if path.suffix == ".pth":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        array = safe_pickle_load(path)
        array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        if array.ndim != 2 or array.shape[1] < 3:
            raise ValueError(f"{path}: expected an [N, 3] array, got shape {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array[:, :3], dtype=np.float32))
    from geoattn.registration.io import read_point_cloud

    return read_point_cloud(path)


class ThreeDMatchPairs(torch.utils.data.Dataset):
    """Training/validation pairs from a Predator or GeoTransformer 3DMatch layout.

    Item ``i`` is ``(src [N, 3], tgt [M, 3], transform [4, 4] mapping src into tgt, overlap)``.
    ``split`` picks ``metadata/<split>.pkl`` (GeoTransformer) or ``<split>_info.pkl`` (Predator).
    """

    def __init__(self, root: str | Path, split: str = "train", min_overlap: float = 0.0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder (expected a 3DMatch root, see datasets/3dmatch.md)")
        geotr = self.root / "metadata" / f"{split}.pkl"
        predator = [self.root / f"{split}_info.pkl", self.root / "configs" / "indoor" / f"{split}_info.pkl"]
        self.items: list[tuple[Path, Path, torch.Tensor, float]] = []
        if geotr.is_file():
            for entry in safe_pickle_load(geotr):
                transform = torch.eye(4, dtype=torch.float64)
                transform[:3, :3] = torch.as_tensor(np.asarray(entry["rotation"]), dtype=torch.float64)
                transform[:3, 3] = torch.as_tensor(np.asarray(entry["translation"]).reshape(3), dtype=torch.float64)
                data = self.root / "data"
                self.items.append((data / entry["pcd1"], data / entry["pcd0"], transform, float(entry["overlap"])))
        else:
            info_path = next((p for p in predator if p.is_file()), None)
            if info_path is None:
                raise FileNotFoundError(f"{self.root}: no metadata/{split}.pkl (GeoTransformer) or "
                                        f"{split}_info.pkl (Predator) pair list")
            info = safe_pickle_load(info_path)
            for src, tgt, rot, trans, overlap in zip(info["src"], info["tgt"], info["rot"], info["trans"],
                                                     info["overlap"]):
                transform = torch.eye(4, dtype=torch.float64)
                transform[:3, :3] = torch.as_tensor(np.asarray(rot), dtype=torch.float64)
                transform[:3, 3] = torch.as_tensor(np.asarray(trans).reshape(3), dtype=torch.float64)
                self.items.append((self.root / src, self.root / tgt, transform, float(overlap)))
        self.items = [item for item in self.items if item[3] >= min_overlap]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        src, tgt, transform, overlap = self.items[index]
        return read_fragment(src), read_fragment(tgt), transform.float(), overlap
