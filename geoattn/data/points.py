"""Point files: one reader and one validation for every point cloud geoattn reads from disk.

:func:`checked_points` is the validation every point reader ends in (``read_point_file`` here, the 3DMatch
``.pth`` fragments, KITTI / Waymo ``.bin`` scans): a numeric ``[N, >= 3]`` array, cast to float32 *first* and
checked for finiteness after the cast (a coordinate of 1e39 is finite in float64 and infinite in float32),
empty clouds refused unless the caller allows them.

PLY and uncompressed PCD files are parsed here, not by Open3D: Open3D fills the points missing from a
truncated file with uninitialised memory and still returns the header's count. The parser checks the
header's element counts against the bytes (binary) or lines (ASCII) present, so a file cut short or with
malformed records is a ``ValueError`` naming the file and the place, never garbage. Compressed PCD
(``DATA binary_compressed``) is read by Open3D after its size fields have been checked against the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["POINT_FILE_SUFFIXES", "checked_points", "read_point_file"]

POINT_FILE_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".pts", ".npy", ".txt")

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def checked_points(array, path: str | os.PathLike, columns: int | None = 3, allow_empty: bool = False) -> torch.Tensor:
    """``array`` as a contiguous float32 tensor ``[N, columns]`` (``columns=None``: every column).

    Raises ``ValueError`` naming ``path`` for a non-numeric array, a shape other than ``[N, >= 3]`` (or fewer
    than ``columns`` columns), an empty cloud (unless ``allow_empty``) and any value that is NaN or infinite
    once cast to float32.
    """
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{path}: expected a numeric array of points, got dtype {array.dtype}")
    width = 3 if columns is None else columns
    if array.ndim != 2 or array.shape[1] < max(width, 3):
        raise ValueError(f"{path}: expected an [N, {max(width, 3)}] (or wider) array of points, got shape "
                         f"{tuple(array.shape)}")
    if columns is not None:
        array = array[:, :columns]
    if array.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{path}: the point cloud is empty")
    with np.errstate(over="ignore", invalid="ignore"):
        points = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(points)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"{path}: {bad} of {points.shape[0]} points contain NaN or infinite coordinates (or "
                         f"values beyond the float32 range); the first is point {row}")
    return torch.from_numpy(points)


def read_point_file(path: str | os.PathLike) -> torch.Tensor:
    """Points ``[N, 3]`` float32 of a ``.ply`` (vertices of a point cloud or mesh, ASCII or binary), ``.pcd``,
    ``.xyz`` / ``.xyzn`` / ``.pts`` / ``.txt`` (whitespace text, first three columns) or ``.npy``
    (``[N, >= 3]``) file, validated by :func:`checked_points`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and the header line,
    element or data line where it applies) for an unknown suffix, a malformed or truncated file, a wrong
    shape, an empty cloud or non-finite coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in POINT_FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported format {suffix or '(none)'}; expected one of "
                         f"{', '.join(POINT_FILE_SUFFIXES)}")
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # numpy raises several types for corrupt files
            raise ValueError(f"{path}: not a readable .npy array ({type(error).__name__}: {error})") from None
        return checked_points(array, path)
    if suffix == ".ply":
        return checked_points(_read_ply(path), path)
    if suffix == ".pcd":
        return checked_points(_read_pcd(path), path)
    try:
        array = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable whitespace-separated point file ({first})") from None
    return checked_points(array, path)


# ---------------------------------------------------------------------------------------------------------
# shared by the PLY and PCD parsers
# ---------------------------------------------------------------------------------------------------------

def _split_header(path: Path, data: bytes, last: bytes, magic: bytes, name: str) -> tuple[list[str], int]:
    """The header lines (up to and including the one starting with ``last``) and the offset of the body."""
    if not data.startswith(magic):
        raise ValueError(f"{path}: not a {name} file (missing '{magic.decode()}' header)")
    lines, offset = [], 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise ValueError(f"{path}: the {name} header has no '{last.decode()}' line (file cut short?)")
        raw = data[offset:end].rstrip(b"\r")
        offset = end + 1
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: header line {len(lines) + 1}: not ASCII text ({raw[:40]!r})") from None
        lines.append(line.strip())
        if raw.strip().split(b" ")[0] == last:
            return lines, offset


def _check_trailing(path: Path, data: bytes, offset: int) -> None:
    if data[offset:].strip():
        raise ValueError(f"{path}: {len(data) - offset} bytes after the last element the header announces "
                         "(wrong counts in the header?)")


def _text_lines(path: Path, data: bytes, offset: int) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of the non-blank lines of an ASCII body starting at byte ``offset``."""
    try:
        text = data[offset:].decode("ascii")
    except UnicodeDecodeError as error:
        line = data[:offset + error.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not ASCII text") from None
    first = data[:offset].count(b"\n") + 1
    return [(first + index, line.split()) for index, line in enumerate(text.splitlines()) if line.strip()]


def _floats(path: Path, rows: list[tuple[int, list[str]]], width: int) -> np.ndarray:
    """The ``[len(rows), width]`` float64 values of text rows that must have ``width`` tokens each."""
    for number, tokens in rows:
        if len(tokens) != width:
            raise ValueError(f"{path}: line {number}: expected {width} values, got {len(tokens)}")
    try:
        return np.array([tokens for _, tokens in rows], dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        for number, tokens in rows:
            for token in tokens:
                try:
                    float(token)
                except ValueError:
                    raise ValueError(f"{path}: line {number}: expected a number, got {token!r}") from None
        raise


def _xyz(path: Path, names: list[str], where: str) -> list[int]:
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise ValueError(f"{path}: {where} has no {'/'.join(missing)} coordinate (has {' '.join(names) or 'none'})")
    return [names.index(axis) for axis in "xyz"]


def _count(path: Path, number: int, token: str, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{path}: header line {number}: expected a non-negative {what}, got {token!r}")
    return value


# ---------------------------------------------------------------------------------------------------------
# PLY
# ---------------------------------------------------------------------------------------------------------

def _read_ply(path: Path) -> np.ndarray:
    data = path.read_bytes()
    lines, offset = _split_header(path, data, b"end_header", b"ply", "PLY")
    if lines[0] != "ply":
        raise ValueError(f"{path}: header line 1: expected 'ply', got {lines[0]!r}")
    endian, has_format = None, False
    elements: list[dict] = []  # {"name", "count", "props": [(name, dtype) | (name, count dtype, item dtype)]}
    for number, line in enumerate(lines[1:-1], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _PLY_FORMATS:
                raise ValueError(f"{path}: header line {number}: expected 'format ascii|binary_little_endian|"
                                 f"binary_big_endian 1.0', got {line!r}")
            endian, has_format = _PLY_FORMATS[words[1]], True
        elif words[0] == "element":
            if len(words) != 3:
                raise ValueError(f"{path}: header line {number}: expected 'element NAME COUNT', got {line!r}")
            elements.append({"name": words[1], "count": _count(path, number, words[2], "element count"),
                             "props": []})
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: header line {number}: a property before any element")
            if len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1]["props"].append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1]["props"].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"{path}: header line {number}: expected 'property TYPE NAME' or 'property list "
                                 f"TYPE TYPE NAME' with PLY types ({', '.join(_PLY_TYPES)}), got {line!r}")
        else:
            raise ValueError(f"{path}: header line {number}: unknown header keyword {words[0]!r}")
    if not has_format:
        raise ValueError(f"{path}: the PLY header has no 'format' line")
    vertex = next((element for element in elements if element["name"] == "vertex"), None)
    if vertex is None:
        raise ValueError(f"{path}: the PLY header declares no 'vertex' element")
    scalar_names = [prop[0] for prop in vertex["props"] if len(prop) == 2]
    columns = _xyz(path, scalar_names, "the 'vertex' element")
    if any(len(prop) == 3 for prop in vertex["props"]):
        raise ValueError(f"{path}: the 'vertex' element has list properties; expected scalar x, y, z")
    if endian is None:
        return _ply_ascii_body(path, data, offset, elements, vertex)[:, columns]
    return _ply_binary_body(path, data, offset, elements, vertex, endian)


def _ply_binary_body(path: Path, data: bytes, offset: int, elements: list[dict], vertex: dict,
                     endian: str) -> np.ndarray:
    points = None
    for element in elements:
        count, props, name = element["count"], element["props"], element["name"]
        if all(len(prop) == 2 for prop in props):
            dtype = np.dtype([(f"f{i}", endian + prop[1]) for i, prop in enumerate(props)])
            size = count * dtype.itemsize
            if offset + size > len(data):
                raise ValueError(f"{path}: the file ends inside element '{name}': the header announces {count} "
                                 f"records of {dtype.itemsize} bytes from byte {offset}, the file has "
                                 f"{len(data)} bytes (file cut short?)")
            if element is vertex:
                records = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
                names = [prop[0] for prop in props]
                points = np.stack([records[f"f{names.index(axis)}"].astype(np.float64) for axis in "xyz"], 1)
            offset += size
        else:
            offset = _skip_binary_lists(path, data, offset, element, endian)
    _check_trailing(path, data, offset)
    return points


def _skip_binary_lists(path: Path, data: bytes, offset: int, element: dict, endian: str) -> int:
    """The offset after ``element``'s records, each property read in turn (lists: count, then items)."""
    props, count, name = element["props"], element["count"], element["name"]
    if len(props) == 1 and count > 0:  # fast path: one list property whose lists all have the first one's length
        count_type, item_type = np.dtype(endian + props[0][1]), np.dtype(endian + props[0][2])
        if offset + count_type.itemsize <= len(data):
            first = int(np.frombuffer(data, count_type, 1, offset)[0])
            record = count_type.itemsize + max(first, 0) * item_type.itemsize
            if first >= 0 and offset + count * record <= len(data):
                lengths = np.ndarray((count,), count_type, data, offset, (record,))
                if (lengths == first).all():
                    return offset + count * record
    for index in range(count):
        for prop in props:
            if len(prop) == 2:
                offset += np.dtype(prop[1]).itemsize
                continue
            count_type = np.dtype(endian + prop[1])
            if offset + count_type.itemsize > len(data):
                offset = len(data) + 1
                break
            length = int(np.frombuffer(data, count_type, 1, offset)[0])
            if length < 0:
                raise ValueError(f"{path}: element '{name}' record {index}: negative list length {length}")
            offset += count_type.itemsize + length * np.dtype(prop[2]).itemsize
        if offset > len(data):
            raise ValueError(f"{path}: the file ends inside element '{name}' (record {index} of {count}; file cut "
                             "short?)")
    return offset


def _ply_ascii_body(path: Path, data: bytes, offset: int, elements: list[dict], vertex: dict) -> np.ndarray:
    rows = _text_lines(path, data, offset)
    position, points = 0, None
    for element in elements:
        count, props, name = element["count"], element["props"], element["name"]
        if position + count > len(rows):
            raise ValueError(f"{path}: the header announces {count} '{name}' lines, the file ends after "
                             f"{len(rows) - position} (file cut short?)")
        block = rows[position:position + count]
        position += count
        if element is vertex:
            points = _floats(path, block, len(props))
            continue
        for number, tokens in block:
            _check_ascii_record(path, number, tokens, props)
    if position != len(rows):
        raise ValueError(f"{path}: line {rows[position][0]}: {len(rows) - position} lines after the last element "
                         "the header announces (wrong counts in the header?)")
    return points


def _check_ascii_record(path: Path, number: int, tokens: list[str], props: list[tuple]) -> None:
    index = 0
    for prop in props:
        if len(prop) == 3:
            length = int(tokens[index]) if index < len(tokens) and tokens[index].isdigit() else -1
            if length < 0:
                raise ValueError(f"{path}: line {number}: expected a list length for '{prop[0]}', got "
                                 f"{tokens[index] if index < len(tokens) else 'end of line'!r}")
            index += 1 + length
        else:
            index += 1
    if index != len(tokens):
        raise ValueError(f"{path}: line {number}: expected {index} values, got {len(tokens)}")


# ---------------------------------------------------------------------------------------------------------
# PCD
# ---------------------------------------------------------------------------------------------------------

def _read_pcd(path: Path) -> np.ndarray:
    data = path.read_bytes()
    start = 0
    while data.startswith(b"#", start):  # comment lines before VERSION
        end = data.find(b"\n", start)
        start = len(data) if end < 0 else end + 1
    lines, offset = _split_header(path, data[start:], b"DATA", b"", "PCD")
    offset += start
    first_line = data[:start].count(b"\n") + 1
    fields: dict[str, tuple[int, list[str]]] = {}
    for number, line in enumerate(lines, start=first_line):
        words = line.split()
        if words and not words[0].startswith("#"):
            fields[words[0]] = (number, words[1:])
    for key in ("FIELDS", "SIZE", "TYPE", "POINTS", "DATA"):
        if key not in fields:
            raise ValueError(f"{path}: not a PCD file (its header has no {key} line)")
    names = fields["FIELDS"][1]
    sizes, types = fields["SIZE"][1], fields["TYPE"][1]
    counts = fields["COUNT"][1] if "COUNT" in fields else ["1"] * len(names)
    for key, values in (("SIZE", sizes), ("TYPE", types), ("COUNT", counts)):
        if len(values) != len(names):
            raise ValueError(f"{path}: header line {fields.get(key, fields['FIELDS'])[0]}: {key} has {len(values)} "
                             f"entries for {len(names)} FIELDS")
    dtype_fields = []
    for index, (name, size, kind, count) in enumerate(zip(names, sizes, types, counts)):
        code = {"F": "f", "I": "i", "U": "u"}.get(kind)
        if code is None or size not in ("1", "2", "4", "8") or (code == "f" and size not in ("4", "8")):
            raise ValueError(f"{path}: header line {fields['TYPE'][0]}: field {name!r} has TYPE {kind!r} SIZE "
                             f"{size!r}; expected F 4/8, I or U 1/2/4/8")
        number = _count(path, fields["COUNT"][0] if "COUNT" in fields else 0, count, "COUNT")
        dtype_fields.append((f"f{index}", "<" + code + size, (number,)))
    columns = _xyz(path, names, "the FIELDS line")
    points = _count(path, fields["POINTS"][0], (fields["POINTS"][1] or [""])[0], "POINTS count")
    mode = (fields["DATA"][1] or [""])[0]
    dtype = np.dtype(dtype_fields)
    if mode == "ascii":
        rows = _text_lines(path, data, offset)
        if len(rows) != points:
            raise ValueError(f"{path}: POINTS announces {points} points, the file has {len(rows)} data lines "
                             f"({'cut short?' if len(rows) < points else 'wrong POINTS?'})")
        widths = [int(np.prod(shape)) for _, _, shape in dtype_fields]
        values = _floats(path, rows, sum(widths))
        starts = np.concatenate([[0], np.cumsum(widths)])
        return values[:, [int(starts[i]) for i in columns]]
    if mode == "binary":
        if offset + points * dtype.itemsize > len(data):
            raise ValueError(f"{path}: POINTS announces {points} points of {dtype.itemsize} bytes from byte {offset}, "
                             f"the file has {len(data)} bytes (file cut short?)")
        records = np.frombuffer(data, dtype=dtype, count=points, offset=offset)
        _check_trailing(path, data, offset + points * dtype.itemsize)
        return np.stack([records[f"f{i}"][:, 0].astype(np.float64) for i in columns], 1)
    if mode == "binary_compressed":
        return _read_compressed_pcd(path, data, offset, points, dtype)
    raise ValueError(f"{path}: header line {fields['DATA'][0]}: expected DATA ascii, binary or binary_compressed, "
                     f"got {mode!r}")


def _read_compressed_pcd(path: Path, data: bytes, offset: int, points: int, dtype: np.dtype) -> np.ndarray:
    if offset + 8 > len(data):
        raise ValueError(f"{path}: the file ends before the compressed data sizes (file cut short?)")
    compressed, uncompressed = (int(v) for v in np.frombuffer(data, "<u4", 2, offset))
    if uncompressed != points * dtype.itemsize:
        raise ValueError(f"{path}: the compressed data holds {uncompressed} bytes, POINTS announces {points} points "
                         f"of {dtype.itemsize} bytes")
    if offset + 8 + compressed > len(data):
        raise ValueError(f"{path}: the compressed data announces {compressed} bytes, the file has "
                         f"{len(data) - offset - 8} (file cut short?)")
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(path), format="pcd", remove_nan_points=False, remove_infinite_points=False)
    array = np.asarray(cloud.points)
    if array.shape[0] != points:
        raise ValueError(f"{path}: POINTS announces {points} points, the compressed data decodes to {array.shape[0]}")
    return array
