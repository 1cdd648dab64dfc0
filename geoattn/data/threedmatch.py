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

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from geoattn.data.points import checked_points, read_point_file
from geoattn.io import atomic_write_bytes, restricted_pickle_load

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


def _text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None


def _numbers(path: Path, number: int, tokens: list[str], count: int, kind: type, what: str) -> list:
    """``count`` values of type ``kind`` from line ``number``'s tokens, or a ``ValueError`` naming the line."""
    if len(tokens) != count:
        raise ValueError(f"{path}: line {number}: expected {what} ({count} values), got {' '.join(tokens)!r}")
    try:
        values = [kind(token) for token in tokens]
    except ValueError:
        raise ValueError(f"{path}: line {number}: expected {what} ({count} {kind.__name__} values), got "
                         f"{' '.join(tokens)!r}") from None
    if kind is float and not all(np.isfinite(values)):
        raise ValueError(f"{path}: line {number}: expected finite numbers, got {' '.join(tokens)!r}")
    return values


def _blocks(path: Path, rows: int) -> list[tuple[list[int], np.ndarray]]:
    lines = [(number, line.split()) for number, line in enumerate(_text(path).splitlines(), 1) if line.strip()]
    if len(lines) % (rows + 1) != 0:
        raise ValueError(f"{path}: expected blocks of {rows + 1} lines, got {len(lines)} lines")
    blocks = []
    for start in range(0, len(lines), rows + 1):
        number, tokens = lines[start]
        header = _numbers(path, number, tokens, 3, int, "'i j n'")
        matrix = np.array([_numbers(path, row_number, row, rows, float, f"a row of a {rows}x{rows} matrix")
                           for row_number, row in lines[start + 1:start + 1 + rows]])
        blocks.append((header, matrix))
    return blocks


def read_gt_log(path: str | Path) -> list[LogEntry]:
    """Parse a Redwood/3DMatch trajectory ``gt.log`` (blocks of ``i j n`` + 4 rows)."""
    return [LogEntry(h[0], h[1], h[2], torch.from_numpy(m)) for h, m in _blocks(Path(path), 4)]


def write_gt_log(path: str | Path, entries: list[LogEntry]) -> None:
    """Write entries in the ``gt.log`` format (used for estimated trajectories too)."""
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
    result = {}
    for number, line in enumerate(_text(path).splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}: line {number}: expected 'i,j,overlap', got {line!r}")
        i, j = _numbers(path, number, fields[:2], 2, int, "'i,j,overlap'")
        result[(i, j)] = _numbers(path, number, fields[2:], 1, float, "'i,j,overlap'")[0]
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


def safe_pickle_load(path: str | Path):
    """Load a pickle (or a ``torch.save`` zip of numpy data) admitting only numpy arrays and containers
    (:func:`geoattn.io.restricted_pickle_load`; a refused or unreadable file is a
    :class:`~geoattn.io.PickleRefusedError`, a ``ValueError`` naming the file)."""
    return restricted_pickle_load(path)


def read_fragment(path: str | Path) -> torch.Tensor:
    """Points ``[N, 3]`` float32 of a fragment (``.pth`` pickled numpy array or tensor, or any point file of
    :func:`geoattn.data.points.read_point_file`), validated by :func:`geoattn.data.points.checked_points`."""
    path = Path(path)
    if path.suffix == ".pth":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        array = safe_pickle_load(path)
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{path}: expected a pickled [N, 3] array of points, got {type(array).__name__}")
        return checked_points(array, path)
    return read_point_file(path)


def _entry(path: Path, entry, index: int, keys: tuple[str, ...]) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: pair {index}: expected a dict with {', '.join(keys)}, got {type(entry).__name__}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{path}: pair {index}: missing key(s) {', '.join(map(repr, missing))}")
    return entry


def _pair_transform(path: Path, index: int, rotation, translation) -> torch.Tensor:
    try:
        rotation = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        translation = np.asarray(translation, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: pair {index}: expected a 3x3 rotation and a 3-vector translation, got shapes "
                         f"{np.shape(rotation)} and {np.shape(translation)}") from None
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = torch.from_numpy(rotation)
    transform[:3, 3] = torch.from_numpy(translation)
    return transform


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
            entries = safe_pickle_load(geotr)
            if not isinstance(entries, (list, tuple)):
                raise ValueError(f"{geotr}: expected a list of pairs, got {type(entries).__name__}")
            for index, entry in enumerate(entries):
                entry = _entry(geotr, entry, index, ("pcd0", "pcd1", "rotation", "translation", "overlap"))
                transform = _pair_transform(geotr, index, entry["rotation"], entry["translation"])
                data = self.root / "data"
                self.items.append((data / str(entry["pcd1"]), data / str(entry["pcd0"]), transform,
                                   float(entry["overlap"])))
        else:
            info_path = next((p for p in predator if p.is_file()), None)
            if info_path is None:
                raise FileNotFoundError(f"{self.root}: no metadata/{split}.pkl (GeoTransformer) or "
                                        f"{split}_info.pkl (Predator) pair list")
            keys = ("src", "tgt", "rot", "trans", "overlap")
            info = _entry(info_path, safe_pickle_load(info_path), 0, keys)
            bad = [key for key in keys if not isinstance(info[key], (list, tuple, np.ndarray))]
            if bad:
                raise ValueError(f"{info_path}: expected lists under {', '.join(map(repr, bad))}")
            lengths = {key: len(info[key]) for key in keys}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"{info_path}: the lists differ in length ({lengths})")
            for index, (src, tgt, rot, trans, overlap) in enumerate(zip(*(info[key] for key in keys))):
                transform = _pair_transform(info_path, index, rot, trans)
                self.items.append((self.root / str(src), self.root / str(tgt), transform, float(overlap)))
        self.items = [item for item in self.items if item[3] >= min_overlap]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        src, tgt, transform, overlap = self.items[index]
        return read_fragment(src), read_fragment(tgt), transform.float(), overlap
