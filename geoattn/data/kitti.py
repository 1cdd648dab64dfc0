"""KITTI object-detection readers and camera <-> LiDAR box conversions.

Two sources are supported:

* the raw KITTI layout ``<root>/<split>/{velodyne,image_2,calib,label_2}/<frame>.{bin,png,txt}``
  (:func:`load_kitti_frame`);
* mmdetection3d v1.x info pickles (``{'metainfo', 'data_list': [...]}``), read with a restricted unpickler
  that only accepts plain containers and numpy arrays/scalars -- mmdet3d is never imported and a pickle
  that asks for any other global is refused (:func:`load_info_pickle`, :func:`load_mmdet3d_frame`).

Frames:
    * LiDAR (velodyne): x forward, y left, z up; boxes ``(x, y, z, dx, dy, dz, heading)`` with the box
      centre (OpenPCDet, the library convention).
    * rectified camera (KITTI labels, mmdet3d ``bbox_3d``): x right, y down, z forward; boxes
      ``(x, y, z, l, h, w, ry)`` with ``(x, y, z)`` the centre of the bottom face.
    * ``lidar2cam`` below is the 4x4 map LiDAR -> *rectified* camera, i.e. ``R0_rect @ Tr_velo_to_cam``
      (mmdet3d stores exactly this product for CAM2), and ``lidar2img = cam2img @ lidar2cam``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.points import checked_points
from geoattn.io import PickleRefusedError, atomic_write_bytes, atomic_write_text, restricted_pickle_load
from geoattn.sparse.boxes import limit_angle

__all__ = [
    "KittiCalibration",
    "KittiLabels",
    "KittiFrame",
    "read_velodyne",
    "read_image",
    "read_calib",
    "read_label",
    "write_label",
    "write_calib",
    "write_velodyne",
    "read_image_set",
    "load_info_pickle",
    "load_kitti_frame",
    "load_mmdet3d_frame",
    "boxes_camera_to_lidar",
    "boxes_lidar_to_camera",
    "camera_box_corners",
    "KITTI_CLASSES",
]

#: mmdetection3d's KITTI label order (``bbox_label_3d`` indexes it; -1 is DontCare).
KITTI_CLASSES = ("Pedestrian", "Cyclist", "Car", "Van", "Truck", "Person_sitting", "Tram", "Misc")


def _as_path(path, name: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name}: expected a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    return path


def read_velodyne(path, num_features: int = 4) -> Tensor:
    """A KITTI ``.bin`` point cloud: float32 ``[N, num_features]`` (x, y, z, reflectance, ...).

    ``ValueError`` naming the file when its size is not a whole number of points or a value is NaN or infinite
    (:func:`geoattn.data.points.checked_points`; an empty file gives ``[0, num_features]``)."""
    path = _as_path(path, "path")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % num_features != 0:
        raise ValueError(f"path: {path} holds {raw.size} float32 values, not a multiple of "
                         f"num_features={num_features}")
    return checked_points(raw.reshape(-1, num_features), path, columns=None, allow_empty=True)


def read_image(path) -> Tensor:
    """An RGB image as uint8 ``[H, W, 3]`` (palette and grey images are converted to RGB). ``ValueError``
    naming the file when it is not an image or is cut short."""
    path = _as_path(path, "path")
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow ships with matplotlib
        raise ImportError("reading images needs pillow: pip install 'geoattn[point]'") from error
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's corrupt-file errors
        raise ValueError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
    return torch.from_numpy(array.copy())


def _homogeneous(matrix, rows: int, cols: int, name: str) -> Tensor:
    matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if matrix.numel() != rows * cols:
        raise ValueError(f"{name}: expected {rows * cols} values ({rows}x{cols}), got {matrix.numel()}")
    out = torch.eye(4, dtype=torch.float64)
    out[:rows, :cols] = matrix.reshape(rows, cols)
    return out


@dataclass
class KittiCalibration:
    """KITTI calibration as float64 4x4 homogeneous matrices.

    Attributes:
        P: ``[4, 4, 4]`` projection matrices of cameras 0..3 (rectified camera -> pixels).
        R0_rect: ``[4, 4]`` rectifying rotation of camera 0.
        Tr_velo_to_cam: ``[4, 4]`` LiDAR -> (unrectified) camera 0.
        Tr_imu_to_velo: ``[4, 4]`` or ``None``.
    """

    P: Tensor
    R0_rect: Tensor
    Tr_velo_to_cam: Tensor
    Tr_imu_to_velo: Tensor | None = None

    @property
    def lidar2cam(self) -> Tensor:
        """LiDAR -> rectified camera, ``R0_rect @ Tr_velo_to_cam``."""
        return self.R0_rect @ self.Tr_velo_to_cam

    def cam2img(self, camera: int = 2) -> Tensor:
        """Rectified camera -> homogeneous pixels of camera ``camera`` (4x4)."""
        if camera not in (0, 1, 2, 3):
            raise ValueError(f"camera: expected 0, 1, 2 or 3, got {camera!r}")
        return self.P[camera]

    def lidar2img(self, camera: int = 2) -> Tensor:
        """LiDAR -> homogeneous pixels of camera ``camera`` (4x4)."""
        return self.cam2img(camera) @ self.lidar2cam


def read_calib(path) -> KittiCalibration:
    """A KITTI ``calib/<frame>.txt`` (``P0..P3``, ``R0_rect``, ``Tr_velo_to_cam``, ``Tr_imu_to_velo``)."""
    path = _as_path(path, "path")
    sizes = {**{f"P{i}": (3, 4) for i in range(4)}, "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4),
             "Tr_imu_to_velo": (3, 4)}
    matrices: dict[str, Tensor] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{path}:{number}: expected 'KEY: values', got {line[:60]!r}")
        key, rest = (part.strip() for part in line.split(":", 1))
        if key not in sizes:  # other entries (calib_time, ...) are not used
            continue
        rows, cols = sizes[key]
        values = _parse_floats(path, number, rest.split(), f"{key} value")
        if len(values) != rows * cols:
            raise ValueError(f"{path}:{number}: {key}: expected {rows * cols} values ({rows}x{cols}), "
                             f"got {len(values)}")
        matrices[key] = _homogeneous(values, rows, cols, key)
    missing = [key for key in ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam") if key not in matrices]
    if missing:
        raise ValueError(f"path: {path} lacks calibration entries {missing}")
    return KittiCalibration(
        P=torch.stack([matrices[f"P{i}"] for i in range(4)]),
        R0_rect=matrices["R0_rect"],
        Tr_velo_to_cam=matrices["Tr_velo_to_cam"],
        Tr_imu_to_velo=matrices.get("Tr_imu_to_velo"),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None


def _parse_floats(path: Path, number: int, tokens: list[str], what: str, first: int = 1) -> list[float]:
    """The finite floats of ``tokens`` (line ``number`` of ``path``, ``first`` the column number of the first
    token), or a ``ValueError`` naming the line and the column."""
    values = []
    for column, token in enumerate(tokens, start=first):
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{path}:{number}: {what} {column}: expected a finite number, got {token!r}")
        values.append(value)
    return values


@dataclass
class KittiLabels:
    """Parsed ``label_2`` rows (or mmdet3d ``instances``), DontCare included unless filtered.

    ``boxes_camera [K, 7]`` are ``(x, y, z, l, h, w, ry)`` in the rectified camera frame (bottom centre).
    """

    names: list[str]
    truncated: Tensor
    occluded: Tensor
    alpha: Tensor
    bbox: Tensor
    boxes_camera: Tensor
    score: Tensor | None = None
    num_lidar_pts: Tensor | None = None

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: Tensor) -> "KittiLabels":
        """The rows where boolean ``keep [K]`` is true."""
        index = keep.nonzero().flatten()
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return KittiLabels([self.names[i] for i in index.tolist()], self.truncated[index],
                           self.occluded[index], self.alpha[index], self.bbox[index],
                           self.boxes_camera[index], pick(self.score), pick(self.num_lidar_pts))

    def without_dontcare(self) -> "KittiLabels":
        return self.select(torch.tensor([name != "DontCare" for name in self.names], dtype=torch.bool))


def read_label(path) -> KittiLabels:
    """A KITTI ``label_2/<frame>.txt`` (15 columns, a 16th score column for detections)."""
    path = _as_path(path, "path")
    names, rows, scores = [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (15, 16):
            raise ValueError(f"path: {path}:{number}: expected 15 or 16 columns, got {len(parts)}")
        names.append(parts[0])
        values = _parse_floats(path, number, parts[1:], "column", first=2)
        rows.append(values[:14])
        if len(parts) == 16:
            scores.append(values[14])
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 14)
    height, width, length = table[:, 7], table[:, 8], table[:, 9]
    boxes = torch.stack([table[:, 10], table[:, 11], table[:, 12], length, height, width, table[:, 13]], 1)
    score = torch.tensor(scores, dtype=torch.float64) if len(scores) == len(names) and scores else None
    return KittiLabels(names, table[:, 0], table[:, 1].long(), table[:, 2], table[:, 3:7], boxes, score)


# ---------------------------------------------------------------------------------------------------------
# Writers (atomic: a temporary file in the same folder, then os.replace; mode 0o666 & ~umask)
# ---------------------------------------------------------------------------------------------------------

def _as_output_path(path, name: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name}: expected a str or pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _float64_array(value, name: str, shape: tuple) -> np.ndarray:
    """``value`` (Tensor / array-like) as float64 numpy; ``shape`` entries of ``None`` match any size."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name}: expected a numeric tensor, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = "[" + ", ".join("K" if want is None else str(want) for want in shape) + "]"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds non-finite values")
    return array


def write_label(path, labels: KittiLabels, precision: int | None = None) -> Path:
    r"""Write ``labels`` as a KITTI ``label_2`` text file (atomically); the exact inverse of :func:`read_label`.

    One line per object, the 15 KITTI columns
    ``name truncated occluded alpha x1 y1 x2 y2 h w l x y z ry`` and a 16th ``score`` column when
    ``labels.score`` is set. ``boxes_camera [K, 7]`` is ``(x, y, z, l, h, w, ry)``, so the file's dimension
    columns are ``(h, w, l) = (boxes[:, 4], boxes[:, 5], boxes[:, 3])``. ``truncated`` is printed with 2
    decimals, ``occluded`` as an integer, every other float with ``precision`` decimals (default 2, as the
    KITTI ground-truth files, or 4 when a score is present, as OpenPCDet's prediction files), the score with
    ``max(precision, 4)``. Reading the file back gives every value rounded to its printed precision.

    Args:
        path: output file (its folder is created).
        labels: ``K`` rows (``K = 0`` writes an empty file).
        precision: decimals of alpha, the 2-D box, the dimensions, the location and ``ry``.
    """
    path = _as_output_path(path, "path")
    if not isinstance(labels, KittiLabels):
        raise TypeError(f"labels: expected KittiLabels, got {type(labels).__name__}")
    if precision is None:
        precision = 2 if labels.score is None else 4
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 <= precision <= 12:
        raise ValueError(f"precision: expected an int in [0, 12], got {precision!r}")
    count = len(labels.names)
    for index, name in enumerate(labels.names):
        if not isinstance(name, str) or not name or any(char.isspace() for char in name):
            raise ValueError(f"labels.names[{index}]: expected a non-empty name without whitespace, got {name!r}")
    truncated = _float64_array(labels.truncated, "labels.truncated", (count,))
    occluded = _float64_array(labels.occluded, "labels.occluded", (count,))
    if not np.array_equal(occluded, np.round(occluded)):
        raise ValueError("labels.occluded: expected integers (0, 1, 2, 3 or -1)")
    alpha = _float64_array(labels.alpha, "labels.alpha", (count,))
    bbox = _float64_array(labels.bbox, "labels.bbox", (count, 4))
    boxes = _float64_array(labels.boxes_camera, "labels.boxes_camera", (count, 7))
    score = None if labels.score is None else _float64_array(labels.score, "labels.score", (count,))
    f = f"%.{precision}f"
    s = f"%.{max(precision, 4)}f"
    lines = []
    for k in range(count):
        x, y, z, length, height, width, ry = boxes[k]
        row = [labels.names[k], "%.2f" % truncated[k], "%d" % int(occluded[k]), f % alpha[k],
               *(f % v for v in bbox[k]), f % height, f % width, f % length, f % x, f % y, f % z, f % ry]
        if score is not None:
            row.append(s % score[k])
        lines.append(" ".join(row) + "\n")
    return atomic_write_text(path, "".join(lines))


def _format_calib_value(value: float) -> str:
    """KITTI's ``%.12e`` when it reads back exactly, else the shortest exact ``repr``."""
    text = "%.12e" % value
    return text if float(text) == value else repr(float(value))


def write_calib(path, calib: KittiCalibration) -> Path:
    r"""Write ``calib`` as a KITTI ``calib/<frame>.txt`` (atomically); :func:`read_calib` reads it back exactly.

    Lines ``P0..P3`` (the top 3x4 of each ``P[i]``), ``R0_rect`` (top-left 3x3), ``Tr_velo_to_cam`` (top 3x4)
    and ``Tr_imu_to_velo`` (top 3x4, only when set), row-major, each value as ``%.12e`` (KITTI's own style)
    or, when that would round it, its exact shortest representation.
    """
    path = _as_output_path(path, "path")
    if not isinstance(calib, KittiCalibration):
        raise TypeError(f"calib: expected KittiCalibration, got {type(calib).__name__}")
    projections = _float64_array(calib.P, "calib.P", (4, 4, 4))
    rect = _float64_array(calib.R0_rect, "calib.R0_rect", (4, 4))
    velo = _float64_array(calib.Tr_velo_to_cam, "calib.Tr_velo_to_cam", (4, 4))
    entries = [(f"P{i}", projections[i, :3, :4]) for i in range(4)]
    entries += [("R0_rect", rect[:3, :3]), ("Tr_velo_to_cam", velo[:3, :4])]
    if calib.Tr_imu_to_velo is not None:
        entries.append(("Tr_imu_to_velo", _float64_array(calib.Tr_imu_to_velo, "calib.Tr_imu_to_velo", (4, 4))[:3, :4]))
    text = "".join(f"{key}: " + " ".join(_format_calib_value(v) for v in matrix.ravel()) + "\n"
                   for key, matrix in entries)
    return atomic_write_text(path, text + "\n")


def write_velodyne(path, points, num_features: int = 4) -> Path:
    """Write a point cloud ``[N, num_features]`` as a KITTI ``.bin`` (float32, row-major; atomically).

    Floating tensors/arrays of any precision are stored as float32; :func:`read_velodyne` reads the file
    back (exactly, for float32 input). ``N = 0`` writes an empty file.
    """
    path = _as_output_path(path, "path")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 3:
        raise ValueError(f"num_features: expected an int >= 3, got {num_features!r}")
    if isinstance(points, Tensor):
        points = points.detach().cpu().numpy()
    if not isinstance(points, np.ndarray):
        raise TypeError(f"points: expected a Tensor or numpy array, got {type(points).__name__}")
    if not np.issubdtype(points.dtype, np.floating):
        raise TypeError(f"points: expected a floating dtype (stored as float32), got {points.dtype}")
    if points.ndim != 2 or points.shape[1] != num_features:
        raise ValueError(f"points: expected shape [N, {num_features}], got {tuple(points.shape)}")
    if not np.isfinite(points).all():
        raise ValueError("points: holds non-finite values")
    return atomic_write_bytes(path, np.ascontiguousarray(points, dtype=np.float32).tobytes())


_FRAME_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def read_image_set(root, split: str) -> list[str]:
    """Frame ids of ``<root>/ImageSets/<split>.txt`` (one id a line, blank lines skipped), in file order.

    Raises ``FileNotFoundError`` naming the file when it is missing and ``ValueError`` naming the file and
    the line when a line is not one id (letters, digits, ``_ . -``) or an id repeats. An empty file gives ``[]``.
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root: expected a str or pathlib.Path, got {type(root).__name__}")
    if not isinstance(split, str) or not _FRAME_ID.match(split) or split in (".", ".."):
        raise ValueError(f"split: expected a split name such as 'train' or 'val', got {split!r}")
    path = Path(root) / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split {split!r}: no image-set file {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file of frame ids ({error})") from None
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        if not _FRAME_ID.match(token):
            raise ValueError(f"{path}:{number}: expected one frame id per line, got {line!r}")
        if token in seen:
            raise ValueError(f"{path}:{number}: frame id {token!r} is listed twice")
        seen.add(token)
        ids.append(token)
    return ids


# ---------------------------------------------------------------------------------------------------------
# Box conversions
# ---------------------------------------------------------------------------------------------------------

def _check_boxes7(boxes: Tensor, name: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 7:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name}: expected a tensor [K, 7], got {shape}")


def _transform(points: Tensor, matrix: Tensor) -> Tensor:
    matrix = matrix.to(points)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def boxes_camera_to_lidar(boxes_camera: Tensor, lidar2cam: Tensor) -> Tensor:
    """Camera-frame KITTI boxes ``(x, y, z, l, h, w, ry)`` (bottom centre) -> LiDAR ``(x, y, z, dx, dy, dz,
    heading)`` (centre).

    The bottom centre is mapped exactly by the inverse of ``lidar2cam`` and the LiDAR box stands upright
    on it (centre = bottom + h/2 along LiDAR +z), as mmdetection3d and OpenPCDet do; sizes become
    ``(l, w, h)`` and the yaw ``heading = -ry - pi/2`` (the camera y axis is the LiDAR -z axis up to a
    sub-degree tilt that the label format cannot express), wrapped into ``[-pi, pi)``.
    :func:`boxes_lidar_to_camera` is the exact inverse.
    """
    _check_boxes7(boxes_camera, "boxes_camera")
    length, height, width, ry = boxes_camera[:, 3], boxes_camera[:, 4], boxes_camera[:, 5], boxes_camera[:, 6]
    cam2lidar = torch.linalg.inv(lidar2cam.to(torch.float64)).to(boxes_camera)
    bottom = _transform(boxes_camera[:, 0:3], cam2lidar)
    centre = torch.cat([bottom[:, :2], bottom[:, 2:3] + height[:, None] / 2], 1)
    heading = limit_angle(-ry - math.pi / 2)
    return torch.cat([centre, torch.stack([length, width, height, heading], 1)], 1)


def camera_box_corners(boxes_camera: Tensor) -> Tensor:
    r"""The 8 corners ``[K, 8, 3]`` of camera-frame KITTI boxes ``[K, 7]`` ``(x, y, z, l, h, w, ry)`` (bottom
    centre), as the KITTI devkit builds them: :math:`X = R_y(ry)\,(\pm l/2, \{0, -h\}, \pm w/2) + (x, y, z)`.

    Order: bottom face (``y`` offset 0) then top face (``-h``), each ``(+l, +w), (-l, +w), (-l, -w), (+l, -w)``.
    """
    _check_boxes7(boxes_camera, "boxes_camera")
    signs = boxes_camera.new_tensor([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    along_w = boxes_camera.new_tensor([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    up = boxes_camera.new_tensor([0, 0, 0, 0, 1, 1, 1, 1])
    length, height, width, ry = (boxes_camera[:, i, None] for i in (3, 4, 5, 6))
    lx, ly, lz = signs * length, -up * height, along_w * width
    cos, sin = torch.cos(ry), torch.sin(ry)
    return torch.stack([cos * lx + sin * lz, ly, -sin * lx + cos * lz], -1) + boxes_camera[:, None, 0:3]


def boxes_lidar_to_camera(boxes_lidar: Tensor, lidar2cam: Tensor) -> Tensor:
    """LiDAR boxes ``(x, y, z, dx, dy, dz, heading)`` -> camera-frame KITTI ``(x, y, z, l, h, w, ry)``."""
    _check_boxes7(boxes_lidar, "boxes_lidar")
    length, width, height = boxes_lidar[:, 3], boxes_lidar[:, 4], boxes_lidar[:, 5]
    bottom = torch.cat([boxes_lidar[:, :2], boxes_lidar[:, 2:3] - height[:, None] / 2], 1)
    bottom_camera = _transform(bottom, lidar2cam.to(boxes_lidar))
    ry = limit_angle(-boxes_lidar[:, 6] - math.pi / 2)
    return torch.cat([bottom_camera, torch.stack([length, height, width, ry], 1)], 1)


# ---------------------------------------------------------------------------------------------------------
# mmdetection3d info pickles
# ---------------------------------------------------------------------------------------------------------

def load_info_pickle(path) -> dict | list:
    """Read an mmdetection3d info pickle (or calib pickle) without importing mmdet3d.

    Only dicts/lists/tuples, numbers, strings and numpy arrays/scalars are accepted
    (:func:`geoattn.io.restricted_pickle_load`); any other class in the pickle raises :class:`InfoPickleError`
    (a ``ValueError`` and a ``pickle.UnpicklingError``) naming the file instead of running its code, and so
    does a file that is not a pickle at all or is cut short.
    """
    return restricted_pickle_load(_as_path(path, "path"), "info pickle")


#: The error of a refused or unreadable info pickle (the name under which geoattn.data.kitti has always raised it).
InfoPickleError = PickleRefusedError


@dataclass
class KittiFrame:
    """One KITTI frame in library conventions.

    Attributes:
        points: float32 ``[N, F]`` LiDAR points (x, y, z, reflectance, ...).
        image: uint8 ``[H, W, 3]`` CAM2 image, or ``None`` when not loaded.
        lidar2img: float64 ``{camera name: [4, 4]}`` (always has ``'CAM2'``).
        lidar2cam: float64 ``[4, 4]`` LiDAR -> rectified camera.
        boxes: ``[K, 7]`` LiDAR-frame boxes (DontCare removed).
        labels: class names ``[K]``.
        truncated, occluded: ``[K]`` as in the label file.
        num_lidar_pts: ``[K]`` long when the source stores it, else ``None``.
        boxes_camera: ``[K, 7]`` the original camera-frame boxes.
        image_hw: ``(H, W)`` of CAM2.
        sample_id: frame id.
    """

    points: Tensor
    image: Tensor | None
    lidar2img: dict[str, Tensor]
    lidar2cam: Tensor
    boxes: Tensor
    labels: list[str]
    truncated: Tensor
    occluded: Tensor
    boxes_camera: Tensor
    image_hw: tuple[int, int]
    num_lidar_pts: Tensor | None = None
    sample_id: str = ""
    extra: dict = field(default_factory=dict)


def load_kitti_frame(root, frame_id, split: str = "training", load_image: bool = True,
                     num_features: int = 4) -> KittiFrame:
    """Read ``<root>/<split>/{velodyne,image_2,calib,label_2}/<frame_id>`` (``split`` may be ``''``).

    With ``load_image=False`` the image is not decoded: ``image_hw`` comes from the PNG header (24 bytes), or
    is ``(0, 0)`` (unknown, as for an mmdet3d info without image sizes) when there is no image file."""
    root = _as_path(root, "root")
    base = root / split if split else root
    name = f"{int(frame_id):06d}" if str(frame_id).isdigit() else str(frame_id)
    points = read_velodyne(base / "velodyne" / f"{name}.bin", num_features)
    calib = read_calib(base / "calib" / f"{name}.txt")
    image_path = base / "image_2" / f"{name}.png"
    if load_image:
        image = read_image(image_path)
        image_hw = (int(image.shape[0]), int(image.shape[1]))
    else:
        image, image_hw = None, _png_size(image_path) if image_path.exists() else (0, 0)
    label_path = base / "label_2" / f"{name}.txt"
    if label_path.exists():
        labels = read_label(label_path).without_dontcare()
    else:
        labels = KittiLabels([], torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64),
                             torch.zeros(0, 7, dtype=torch.float64))
    lidar2cam = calib.lidar2cam
    return KittiFrame(
        points=points, image=image,
        lidar2img={f"CAM{i}": calib.lidar2img(i) for i in range(4)},
        lidar2cam=lidar2cam,
        boxes=boxes_camera_to_lidar(labels.boxes_camera, lidar2cam),
        labels=labels.names, truncated=labels.truncated, occluded=labels.occluded,
        boxes_camera=labels.boxes_camera, image_hw=image_hw, num_lidar_pts=None, sample_id=name,
        extra={"calib": calib},
    )


def _png_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from a PNG's signature and IHDR chunk; ``ValueError`` naming the file when they are not there."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG image (no PNG signature and IHDR header in its first 24 bytes)")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _resolve(root: Path, relative: str, subdirs: tuple[str, ...]) -> Path:
    for sub in ("",) + subdirs:
        candidate = root / sub / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative!r} not found under {root} (tried {', '.join(('.',) + subdirs)})")


def load_mmdet3d_frame(info_path, index: int = 0, root=None, load_image: bool = True,
                       camera: str = "CAM2") -> KittiFrame:
    """One frame of an mmdetection3d v1.x KITTI info pickle.

    File names in the info (``lidar_points.lidar_path``, ``images.CAM2.img_path``) are looked up under
    ``root`` (default: the pickle's folder), then under ``training/velodyne`` / ``training/image_2`` and
    ``velodyne`` / ``image_2`` as mmdet3d lays them out.
    """
    info_path = _as_path(info_path, "info_path")
    root = Path(root) if root is not None else info_path.parent
    info = load_info_pickle(info_path)
    if not isinstance(info, dict) or "data_list" not in info:
        raise ValueError(f"info_path: {info_path} is not an mmdetection3d v1.x info pickle "
                         "(expected a dict with 'data_list')")
    metainfo = _info_dict(info_path, info, "metainfo", "", {})
    dataset = str(metainfo.get("dataset", metainfo.get("DATASET", "kitti")))
    if dataset.lower() != "kitti":
        raise ValueError(f"info_path: {info_path} is a {dataset!r} info pickle; this reader handles KITTI infos "
                         "(camera-frame bbox_3d) only")
    class_names = {index: name for name, index in _info_dict(info_path, metainfo, "categories", "metainfo",
                                                              {}).items()}
    frames = info["data_list"]
    if not isinstance(frames, (list, tuple)):
        raise ValueError(f"{info_path}: 'data_list': expected a list of frames, got {type(frames).__name__}")
    if not -len(frames) <= index < len(frames):
        raise IndexError(f"index: {index} out of range for {len(frames)} frames")
    where = f"data_list[{index}]"
    entry = frames[index]
    if not isinstance(entry, dict):
        raise ValueError(f"{info_path}: {where}: expected a dict, got {type(entry).__name__}")
    lidar = _info_dict(info_path, entry, "lidar_points", where)
    num_features = int(_info_array(info_path, lidar, "num_pts_feats", f"{where}.lidar_points", (), 4))
    lidar_path = _info_value(info_path, lidar, "lidar_path", f"{where}.lidar_points", str)
    points = read_velodyne(_resolve(root, lidar_path, ("training/velodyne", "velodyne")), num_features)
    images = _info_dict(info_path, entry, "images", where, {})
    cameras = {name: cam for name, cam in images.items() if isinstance(cam, dict)}
    if camera not in cameras or "lidar2img" not in cameras[camera]:
        raise ValueError(f"camera: {camera!r} has no calibration in {info_path} (has {sorted(cameras)})")
    lidar2img = {name: torch.from_numpy(_info_array(info_path, cam, "lidar2img", f"{where}.images.{name}", (4, 4)))
                 for name, cam in cameras.items() if "lidar2img" in cam}
    cam = cameras[camera]
    if "lidar2cam" in cam:
        lidar2cam = torch.from_numpy(_info_array(info_path, cam, "lidar2cam", f"{where}.images.{camera}", (4, 4)))
    else:
        rect = torch.from_numpy(_info_array(info_path, images, "R0_rect", f"{where}.images", (4, 4)))
        lidar2cam = rect @ torch.from_numpy(_info_array(info_path, lidar, "Tr_velo_to_cam", f"{where}.lidar_points",
                                                        (4, 4)))
    image = None
    image_hw = (int(_info_array(info_path, cam, "height", f"{where}.images.{camera}", (), 0)),
                int(_info_array(info_path, cam, "width", f"{where}.images.{camera}", (), 0)))
    if load_image and "img_path" in cam:
        img_path = _info_value(info_path, cam, "img_path", f"{where}.images.{camera}", str)
        image = read_image(_resolve(root, img_path, ("training/image_2", "image_2")))
        image_hw = (int(image.shape[0]), int(image.shape[1]))
    raw_instances = entry.get("instances", [])
    if not isinstance(raw_instances, (list, tuple)) or not all(isinstance(i, dict) for i in raw_instances):
        raise ValueError(f"{info_path}: {where}.instances: expected a list of dicts")
    chosen = [(k, inst) for k, inst in enumerate(raw_instances)
              if int(_info_array(info_path, inst, "bbox_label_3d", f"{where}.instances[{k}]", (), -1)) >= 0]

    def column(key: str, shape: tuple, dtype=torch.float64) -> Tensor:
        values = [_info_array(info_path, inst, key, f"{where}.instances[{k}]", shape) for k, inst in chosen]
        return torch.from_numpy(np.stack(values) if values else np.zeros((0,) + shape)).to(dtype)

    boxes_camera = column("bbox_3d", (7,))
    names = class_names or dict(enumerate(KITTI_CLASSES))
    labels = [names.get(int(inst["bbox_label_3d"]), str(inst["bbox_label_3d"])) for _, inst in chosen]
    cam2img = {name: torch.from_numpy(_info_array(info_path, c, "cam2img", f"{where}.images.{name}", None))
               for name, c in cameras.items() if "cam2img" in c}
    return KittiFrame(
        points=points, image=image, lidar2img=lidar2img, lidar2cam=lidar2cam,
        boxes=boxes_camera_to_lidar(boxes_camera, lidar2cam), labels=labels,
        truncated=column("truncated", ()), occluded=column("occluded", (), torch.long),
        boxes_camera=boxes_camera, image_hw=image_hw,
        num_lidar_pts=column("num_lidar_pts", (), torch.long) if all(
            "num_lidar_pts" in inst for _, inst in chosen) else None,
        sample_id=str(entry.get("sample_idx", entry.get("sample_id", index))),
        extra={"cam2img": cam2img},
    )


_MISSING = object()


def _info_value(path: Path, mapping: dict, key: str, where: str, kind: type, default=_MISSING):
    """``mapping[key]`` of an info pickle, checked to be a ``kind``; ``ValueError`` naming the file and the
    key path when it is missing (without a default) or of another type."""
    if key not in mapping:
        if default is _MISSING:
            raise ValueError(f"{path}: {where + '.' if where else ''}{key}: missing key")
        return default
    value = mapping[key]
    if not isinstance(value, kind):
        raise ValueError(f"{path}: {where + '.' if where else ''}{key}: expected a {kind.__name__}, got "
                         f"{type(value).__name__}")
    return value


def _info_dict(path: Path, mapping: dict, key: str, where: str, default=_MISSING) -> dict:
    return _info_value(path, mapping, key, where, dict, default)


def _info_array(path: Path, mapping: dict, key: str, where: str, shape: tuple | None, default=_MISSING) -> np.ndarray:
    """``mapping[key]`` as a finite float64 array of ``shape`` (``None``: a 3x3, 3x4 or 4x4 matrix; ``()``: a
    number); ``ValueError`` naming the file, the key path, the expected and the actual shape."""
    name = f"{where + '.' if where else ''}{key}"
    if key not in mapping:
        if default is _MISSING:
            raise ValueError(f"{path}: {name}: missing key")
        return np.asarray(default, dtype=np.float64)
    try:
        array = np.asarray(mapping[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {name}: expected numbers, got {type(mapping[key]).__name__}") from None
    if shape is None:
        if array.shape not in ((3, 3), (3, 4), (4, 4)):
            raise ValueError(f"{path}: {name}: expected a 3x3, 3x4 or 4x4 matrix, got shape {list(array.shape)}")
        shape = array.shape
    elif array.size == int(np.prod(shape)) and array.shape != shape:
        array = array.reshape(shape)  # e.g. a [1, 7] box or a 16-vector matrix
    if array.shape != shape:
        raise ValueError(f"{path}: {name}: expected shape {list(shape)}, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: {name}: holds NaN or infinite values")
    return array
